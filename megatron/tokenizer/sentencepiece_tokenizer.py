"""SentencePiece model (--tokenizer-type SentencePieceTokenizer --tokenizer-model m.model)."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

from .base import MegatronTokenizer

logger = logging.getLogger(__name__)

_PIECE_NAMES = {
    "cls": ("<CLS>", "[CLS]", "<cls>"),
    "sep": ("<SEP>", "[SEP]", "<sep>"),
    "mask": ("<MASK>", "[MASK]", "<mask>"),
}
"""Pieces looked up for the special ids SentencePiece itself does not define."""


class SentencePieceTokenizer(MegatronTokenizer):
    """Wraps ``sentencepiece.SentencePieceProcessor``.

    Special ids come from the model: ``bos``/``eos``/``pad``/``unk`` are the ids the model was
    trained with (a disabled one, id -1, raises), ``eod`` is ``eos``; ``cls``/``sep``/``mask`` are
    the pieces <CLS>/[CLS]/<cls> (etc.) when the model has them (tools/train_tokenizer.py adds
    <CLS>, <SEP>, <MASK> as control symbols). --vocab-extra-ids appends <extra_id_N> ids after
    the model's pieces; they are never produced from text.

    Args:
        model_file: the .model file.
        vocab_extra_ids: number of <extra_id_N> tokens to append.
    """

    def __init__(self, model_file: str, vocab_extra_ids: int = 0):
        super().__init__("SentencePieceTokenizer")
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self._num_pieces = self._sp.get_piece_size()
        self._vocab: Dict[str, int] = {}
        self._inv_vocab: Dict[int, str] = {}
        for idx in range(self._num_pieces):
            piece = self._sp.id_to_piece(idx)
            self._vocab.setdefault(piece, idx)
            self._inv_vocab[idx] = piece
        self._extra_ids = []
        for i in range(vocab_extra_ids):
            token = f"<extra_id_{i}>"
            idx = self._vocab.get(token)
            if idx is None:
                idx = len(self._inv_vocab)
                self._vocab[token] = idx
                self._inv_vocab[idx] = token
            self._extra_ids.append(idx)
        logger.info("SentencePieceTokenizer: %d ids from %s", self.vocab_size, model_file)

    @property
    def vocab_size(self) -> int:
        return len(self._inv_vocab)

    @property
    def vocab(self) -> Dict[str, int]:
        return self._vocab

    @property
    def inv_vocab(self) -> Dict[int, str]:
        return self._inv_vocab

    def tokenize(self, text: str) -> List[int]:
        return self._sp.encode(text, out_type=int)

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Decodes runs of model ids with SentencePiece; appended tokens are spelled as is."""
        parts: List[str] = []
        run: List[int] = []
        for idx in ids:
            if 0 <= idx < self._num_pieces:
                run.append(idx)
                continue
            if idx not in self._inv_vocab:
                raise ValueError(f"token id {idx} is not in the vocabulary")
            if run:
                parts.append(self._sp.decode(run))
                run = []
            parts.append(self._inv_vocab[idx])
        if run:
            parts.append(self._sp.decode(run))
        return "".join(parts)

    @property
    def additional_special_tokens_ids(self) -> List[int]:
        return list(self._extra_ids)

    def _model_id(self, idx: int, token: str) -> int:
        if idx < 0:
            raise self._missing(token, f"the model was trained with {token}_id=-1")
        return idx

    def _piece(self, kind: str) -> int:
        idx: Optional[int] = next(
            (self._vocab[p] for p in _PIECE_NAMES[kind] if p in self._vocab), None
        )
        if idx is None:
            raise self._missing(
                kind,
                f"the model has none of the pieces {', '.join(_PIECE_NAMES[kind])}; train it "
                "with --control_symbols=<CLS>,<SEP>,<MASK>",
            )
        return idx

    @property
    def bos(self) -> int:
        return self._model_id(self._sp.bos_id(), "bos")

    @property
    def eos(self) -> int:
        return self._model_id(self._sp.eos_id(), "eos")

    @property
    def pad(self) -> int:
        return self._model_id(self._sp.pad_id(), "pad")

    @property
    def unk(self) -> int:
        return self._model_id(self._sp.unk_id(), "unk")

    @property
    def eod(self) -> int:
        """The model's eos id."""
        return self.eos

    @property
    def cls(self) -> int:
        return self._piece("cls")

    @property
    def sep(self) -> int:
        return self._piece("sep")

    @property
    def mask(self) -> int:
        return self._piece("mask")
