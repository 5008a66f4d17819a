"""NullTokenizer (--tokenizer-type NullTokenizer --vocab-size N): the text already is token ids.

Ids are written as decimal numbers separated by whitespace ("12 7 3"); the end-of-document id is
N, so the tokenizer has N + 1 ids. Useful for synthetic data and benchmarks.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .base import MegatronTokenizer


class NullTokenizer(MegatronTokenizer):
    """Ids as text. Args: vocab_size: N, the number of ids before the end-of-document id."""

    def __init__(self, vocab_size: int):
        super().__init__("NullTokenizer")
        vocab_size = int(vocab_size)
        if vocab_size <= 0:
            raise ValueError(f"NullTokenizer needs --vocab-size > 0, got {vocab_size}")
        self._eod = vocab_size
        self._size = vocab_size + 1
        self._vocab: Optional[Dict[str, int]] = None
        self._inv_vocab: Optional[Dict[int, str]] = None

    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def vocab(self) -> Dict[str, int]:
        """{"0": 0, "1": 1, ..., str(N): N} (built on first use)."""
        if self._vocab is None:
            self._vocab = {str(i): i for i in range(self._size)}
        return self._vocab

    @property
    def inv_vocab(self) -> Dict[int, str]:
        """{0: "0", ..., N: str(N)} (built on first use)."""
        if self._inv_vocab is None:
            self._inv_vocab = {i: t for t, i in self.vocab.items()}
        return self._inv_vocab

    def tokenize(self, text: str) -> List[int]:
        try:
            ids = [int(x) for x in text.split()]
        except ValueError as e:
            raise ValueError(f"NullTokenizer reads whitespace-separated integers: {e}") from None
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod
