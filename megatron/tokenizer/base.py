"""The interface every tokenizer selected by --tokenizer-type implements."""

from __future__ import annotations

import abc
from typing import Dict, List, Sequence


class MegatronTokenizer(abc.ABC):
    """Text <-> token ids, plus the vocabulary and the special ids the datasets and models need.

    Special ids (``eod``, ``pad``, ``cls``, ``sep``, ``mask``, ``bos``, ``eos``, ``unk``) are
    properties; a tokenizer that has no such token raises ``NotImplementedError`` naming the
    tokenizer and the token, so a dataset that needs e.g. [MASK] fails at start-up with a clear
    message instead of silently using a wrong id.
    """

    def __init__(self, name: str):
        self._name = name

    @property
    def name(self) -> str:
        """The --tokenizer-type this tokenizer implements, e.g. "GPT2BPETokenizer"."""
        return self._name

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (unpadded; the model pads it for tensor parallelism)."""

    @property
    @abc.abstractmethod
    def vocab(self) -> Dict[str, int]:
        """Token string -> id."""

    @property
    @abc.abstractmethod
    def inv_vocab(self) -> Dict[int, str]:
        """Id -> token string."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text`` (no special tokens are added unless documented otherwise)."""

    @abc.abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of the token ids ``ids``."""

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids of each text; fast implementations override this."""
        return [self.tokenize(text) for text in texts]

    @property
    def additional_special_tokens_ids(self) -> List[int]:
        """Ids of the <extra_id_N> sentinel tokens (--vocab-extra-ids); empty when none."""
        return []

    def _missing(self, token: str, hint: str = "") -> NotImplementedError:
        message = f"{self.name} has no {token} token"
        if hint:
            message += f"; {hint}"
        return NotImplementedError(message)

    @property
    def eod(self) -> int:
        """End-of-document id appended by --append-eod and used by --eod-mask-loss."""
        raise self._missing("end-of-document (eod)")

    @property
    def pad(self) -> int:
        """Padding id."""
        raise self._missing("pad")

    @property
    def cls(self) -> int:
        """Classification id (BERT [CLS])."""
        raise self._missing("cls", "BERT-style pretraining needs a tokenizer with [CLS]")

    @property
    def sep(self) -> int:
        """Separator id (BERT [SEP])."""
        raise self._missing("sep", "BERT-style pretraining needs a tokenizer with [SEP]")

    @property
    def mask(self) -> int:
        """Mask id (BERT [MASK])."""
        raise self._missing("mask", "masked-LM pretraining needs a tokenizer with [MASK]")

    @property
    def bos(self) -> int:
        """Beginning-of-sequence id."""
        raise self._missing("bos")

    @property
    def eos(self) -> int:
        """End-of-sequence id."""
        raise self._missing("eos")

    @property
    def unk(self) -> int:
        """Unknown-token id."""
        raise self._missing("unk")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"
