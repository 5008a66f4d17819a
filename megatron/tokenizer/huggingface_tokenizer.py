"""HF `tokenizers` tokenizer.json (--tokenizer-type HuggingFaceTokenizer --tokenizer-model PATH).

Only local files are read; nothing is ever downloaded.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence

from .base import MegatronTokenizer

logger = logging.getLogger(__name__)

_SPECIAL_KEYS = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")

_WELL_KNOWN = {
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[BOS]"),
    "eos": ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "[EOS]"),
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "cls": ("[CLS]", "<cls>", "<CLS>"),
    "sep": ("[SEP]", "<sep>", "<SEP>"),
    "mask": ("[MASK]", "<mask>", "<MASK>"),
}
"""Token names tried, in order, for a special id that tokenizer_config.json does not name."""


def _read_special_tokens(folder: str) -> Dict[str, str]:
    """Special token strings named in tokenizer_config.json / special_tokens_map.json."""
    found: Dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        for key in _SPECIAL_KEYS:
            value = config.get(f"{key}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found


class HuggingFaceTokenizer(MegatronTokenizer):
    """A ``tokenizers.Tokenizer`` loaded from tokenizer.json (or a folder holding one).

    Special ids: the token strings named in the folder's tokenizer_config.json or
    special_tokens_map.json (bos_token, eos_token, ...) when present, else the first well-known
    name in the vocabulary (eos: "</s>", "<eos>", "<|endoftext|>", ...). ``eod`` is ``eos``.

    Args:
        path: tokenizer.json, or a folder containing it.
        add_special_tokens: apply the tokenizer's post-processor in ``tokenize`` (e.g. a leading
            BOS), as Megatron's HuggingFaceTokenizer does.
    """

    def __init__(self, path: str, add_special_tokens: bool = True):
        super().__init__("HuggingFaceTokenizer")
        from tokenizers import Tokenizer

        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        self._tok = Tokenizer.from_file(file)
        self.add_special_tokens = add_special_tokens
        self._vocab = self._tok.get_vocab(with_added_tokens=True)
        self._inv_vocab = {i: t for t, i in self._vocab.items()}
        named = _read_special_tokens(folder)
        self._special: Dict[str, Optional[int]] = {}
        for key in _SPECIAL_KEYS:
            candidates = (named[key],) if key in named else _WELL_KNOWN[key]
            self._special[key] = next(
                (self._vocab[t] for t in candidates if t in self._vocab), None
            )
        logger.info("HuggingFaceTokenizer: %d ids from %s", self.vocab_size, file)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self) -> Dict[str, int]:
        return self._vocab

    @property
    def inv_vocab(self) -> Dict[int, str]:
        return self._inv_vocab

    def tokenize(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=self.add_special_tokens).ids

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        texts = list(texts)
        fast = getattr(self._tok, "encode_batch_fast", None)
        encodings = (fast or self._tok.encode_batch)(
            texts, add_special_tokens=self.add_special_tokens
        )
        return [e.ids for e in encodings]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def _get(self, key: str) -> int:
        idx = self._special[key]
        if idx is None:
            raise self._missing(
                key,
                f"name it as {key}_token in a tokenizer_config.json beside tokenizer.json "
                f"(tried {', '.join(_WELL_KNOWN[key])})",
            )
        return idx

    @property
    def bos(self) -> int:
        return self._get("bos")

    @property
    def eos(self) -> int:
        return self._get("eos")

    @property
    def eod(self) -> int:
        """The eos id."""
        return self._get("eos")

    @property
    def pad(self) -> int:
        return self._get("pad")

    @property
    def unk(self) -> int:
        return self._get("unk")

    @property
    def cls(self) -> int:
        return self._get("cls")

    @property
    def sep(self) -> int:
        return self._get("sep")

    @property
    def mask(self) -> int:
        return self._get("mask")
