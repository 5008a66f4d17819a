"""Token pieces: samples described as runs of a flat token array, without copying their tokens.

A `TokenPieces` describes a batch of N samples: sample i is the concatenation of pieces
`piece_ptr[i] .. piece_ptr[i + 1] - 1`; a piece with `piece_start >= 0` is the run
`tokens[piece_start : piece_start + piece_len]` of the flat token array (typically the
memory-mapped `.bin` of an indexed dataset), and a piece with `piece_start < 0` is the literal
token id `-piece_start - 1` repeated `piece_len` times (special tokens that are not in the `.bin`,
such as BERT's [CLS] and [SEP]).

Datasets describe their samples this way (`sample_source`), and vectorised kernels (the
curriculum metrics) read them in place.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import numpy as np


@dataclasses.dataclass
class TokenPieces:
    """N samples as pieces of a flat token array (see the module docstring).

    Attributes:
        tokens: 1-D integer array the pieces index (any integer dtype; may be a memory map).
        piece_ptr: int64 [N + 1], sample i owns pieces [piece_ptr[i], piece_ptr[i + 1]).
        piece_start: int64 [P], first token of each piece, or -(id + 1) for a literal id.
        piece_len: int64 [P], tokens in each piece (>= 0).
    """

    tokens: np.ndarray
    piece_ptr: np.ndarray
    piece_start: np.ndarray
    piece_len: np.ndarray

    def __post_init__(self) -> None:
        self.piece_ptr = np.ascontiguousarray(self.piece_ptr, dtype=np.int64)
        self.piece_start = np.ascontiguousarray(self.piece_start, dtype=np.int64)
        self.piece_len = np.ascontiguousarray(self.piece_len, dtype=np.int64)
        if self.tokens.ndim != 1 or self.tokens.dtype.kind not in "iu":
            raise ValueError(
                f"TokenPieces.tokens must be a 1-D integer array, got "
                f"{self.tokens.dtype}{list(self.tokens.shape)}"
            )
        if self.piece_start.shape != self.piece_len.shape or self.piece_ptr.ndim != 1:
            raise ValueError(
                f"TokenPieces: piece_start {self.piece_start.shape} and piece_len "
                f"{self.piece_len.shape} must have one shape and piece_ptr must be 1-D"
            )

    @property
    def num_samples(self) -> int:
        """Number of samples N."""
        return int(self.piece_ptr.shape[0]) - 1

    @classmethod
    def from_samples(cls, samples: Sequence[np.ndarray]) -> "TokenPieces":
        """One piece per sample over the concatenation of `samples` (1-D integer arrays)."""
        arrays = [np.asarray(s).reshape(-1) for s in samples]
        for i, a in enumerate(arrays):
            if a.size and a.dtype.kind not in "iu":
                raise ValueError(f"sample {i} holds {a.dtype} values; token ids must be integers")
        lengths = np.array([a.size for a in arrays], dtype=np.int64)
        tokens = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
        starts = np.zeros(lengths.size, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        ptr = np.arange(lengths.size + 1, dtype=np.int64)
        return cls(tokens, ptr, starts, lengths)

    def lengths(self) -> np.ndarray:
        """int64 [N]: tokens per sample."""
        ends = np.zeros(self.piece_len.size + 1, dtype=np.int64)
        np.cumsum(self.piece_len, out=ends[1:])
        return ends[self.piece_ptr[1:]] - ends[self.piece_ptr[:-1]]

    def token_ids(self) -> np.ndarray:
        """int64 [sum of lengths]: every sample's token ids, samples back to back."""
        lens = self.piece_len
        if lens.size and lens.min() < 0:
            raise ValueError(f"TokenPieces: negative piece length {lens.min()}")
        total = int(lens.sum())
        first = np.zeros(lens.size, dtype=np.int64)  # output position of each piece's first token
        np.cumsum(lens[:-1], out=first[1:])
        within = np.arange(total, dtype=np.int64) - np.repeat(first, lens)
        starts = np.repeat(self.piece_start, lens)
        literal = starts < 0
        out = np.empty(total, dtype=np.int64)
        ranged = ~literal
        index = starts[ranged] + within[ranged]
        if index.size and (index.max() >= self.tokens.size):
            raise ValueError(
                f"TokenPieces: a piece reaches token {index.max()} of a "
                f"{self.tokens.size}-token array"
            )
        out[ranged] = self.tokens[index]
        out[literal] = -starts[literal] - 1
        return out

    def materialize(self) -> List[np.ndarray]:
        """The samples as a list of int64 arrays."""
        ids = self.token_ids()
        return np.split(ids, np.cumsum(self.lengths())[:-1]) if self.num_samples else []

    def select(self, samples: np.ndarray) -> "TokenPieces":
        """The pieces of the samples at positions `samples` (in that order), same token array."""
        samples = np.asarray(samples, dtype=np.int64)
        counts = self.piece_ptr[samples + 1] - self.piece_ptr[samples]
        ptr = np.zeros(samples.size + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        pieces = np.repeat(self.piece_ptr[samples] - ptr[:-1], counts) + np.arange(ptr[-1])
        return TokenPieces(self.tokens, ptr, self.piece_start[pieces], self.piece_len[pieces])
