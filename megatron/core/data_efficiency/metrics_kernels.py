"""Token pieces: samples described as runs of a flat token array, and the kernels over them.

A `TokenPieces` describes a batch of N samples without copying their tokens: sample i is the
concatenation of pieces `piece_ptr[i] .. piece_ptr[i + 1] - 1`; a piece with `piece_start >= 0` is
the run `tokens[piece_start : piece_start + piece_len]` of the flat token array (typically the
memory-mapped `.bin` of an indexed dataset), and a piece with `piece_start < 0` is the literal
token id `-piece_start - 1` repeated `piece_len` times (special tokens that are not in the `.bin`,
such as BERT's [CLS] and [SEP]).

Kernels (C++ in csrc/data_helpers/metric_helpers.cpp, numpy references here, identical results):

- `token_table_sums(pieces, table)`: float64 [N], each sample's `table[id]` summed over its tokens
  in sample order, accumulated sequentially in float64 from 0.0. The order is part of the
  definition so that every path (C++, numpy, the brute-force test reference) gives the same bits,
  and values truncated to integers (vocabulary rarity) never differ between them.
- `token_bincount(pieces, num_ids)`: int64 [num_ids], occurrences of every id over all samples.

Both raise ValueError for a token id outside the table. `backend` is "auto" (C++ when the
extension is built, else numpy with one warning), "cpp" or "python".
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from types import ModuleType
from typing import List, Optional, Sequence

import numpy as np

from megatron.core.datasets.helpers import load_extension, resolve_extension

logger = logging.getLogger(__name__)

_REFERENCE_CHUNK_TOKENS = 1 << 22
"""Tokens the numpy reference materialises at a time."""


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


@functools.lru_cache(maxsize=None)
def _cpp_module() -> Optional[ModuleType]:
    """The compiled metric kernels, or None (logging the reason once per process)."""
    return load_extension(("token_table_sums",), "curriculum metrics")


def cpp_available() -> bool:
    """Whether the compiled metric kernels can be used."""
    return _cpp_module() is not None


def _resolve(backend: str) -> Optional[ModuleType]:
    return resolve_extension(backend, _cpp_module)


def _tokens_for_cpp(tokens: np.ndarray) -> np.ndarray:
    # np.memmap is an ndarray subclass; a plain view avoids a copy and keeps the buffer shared.
    arr = np.asarray(tokens)
    if not arr.flags.c_contiguous or arr.dtype.byteorder == ">":
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    if arr.dtype == np.uint64:
        if arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError("token ids above int64 range")
        arr = arr.astype(np.int64)
    return arr


def _check_ids(ids: np.ndarray, num_ids: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= num_ids):
        bad = ids[(ids < 0) | (ids >= num_ids)][0]
        raise ValueError(
            f"{what}: a sample holds token id {bad}, outside the table of {num_ids} ids (is the "
            "vocabulary size right?)"
        )


def token_table_sums(pieces: TokenPieces, table: np.ndarray, backend: str = "auto") -> np.ndarray:
    """float64 [N]: per sample, `table[id]` summed over its tokens in order (sequential float64).

    Args:
        pieces: the samples.
        table: float64 [V] value of every token id.
        backend: "auto", "cpp" or "python".
    """
    table = np.ascontiguousarray(table, dtype=np.float64)
    module = _resolve(backend)
    if module is not None:
        return module.token_table_sums(
            _tokens_for_cpp(pieces.tokens),
            pieces.piece_ptr,
            pieces.piece_start,
            pieces.piece_len,
            table,
        )
    return token_table_sums_py(pieces, table)


def token_table_sums_py(pieces: TokenPieces, table: np.ndarray) -> np.ndarray:
    """numpy reference of `token_table_sums` (a row-wise cumulative sum is sequential)."""
    n = pieces.num_samples
    out = np.zeros(n, dtype=np.float64)
    lengths = pieces.lengths()
    begin = 0
    while begin < n:
        end, tokens = begin, 0
        while end < n and (end == begin or tokens + lengths[end] <= _REFERENCE_CHUNK_TOKENS):
            tokens += int(lengths[end])
            end += 1
        chunk = pieces.select(np.arange(begin, end))
        ids = chunk.token_ids()
        _check_ids(ids, table.size, "token_table_sums")
        lens = lengths[begin:end]
        width = int(lens.max()) if lens.size else 0
        if width:
            grid = np.zeros((end - begin, width), dtype=np.float64)  # [samples, longest]
            column = np.arange(ids.size) - np.repeat(np.cumsum(lens) - lens, lens)
            grid[np.repeat(np.arange(end - begin), lens), column] = table[ids]
            running = np.cumsum(grid, axis=1)  # [samples, longest], sequential along each row
            nonempty = lens > 0
            out[begin:end][nonempty] = running[nonempty, lens[nonempty] - 1]
        begin = end
    return out


def token_bincount(pieces: TokenPieces, num_ids: int, backend: str = "auto") -> np.ndarray:
    """int64 [num_ids]: occurrences of every token id over all samples of `pieces`."""
    module = _resolve(backend)
    if module is not None:
        return module.token_bincount(
            _tokens_for_cpp(pieces.tokens),
            pieces.piece_ptr,
            pieces.piece_start,
            pieces.piece_len,
            int(num_ids),
        )
    return token_bincount_py(pieces, num_ids)


def token_bincount_py(pieces: TokenPieces, num_ids: int) -> np.ndarray:
    """numpy reference of `token_bincount`."""
    counts = np.zeros(int(num_ids), dtype=np.int64)
    n, step = pieces.num_samples, 4096
    for begin in range(0, n, step):
        ids = pieces.select(np.arange(begin, min(n, begin + step))).token_ids()
        _check_ids(ids, num_ids, "token_bincount")
        counts += np.bincount(ids, minlength=num_ids).astype(np.int64)
    return counts
