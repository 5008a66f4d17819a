"""Kernels over `TokenPieces` (samples described as runs of a flat token array, see
`megatron.core.datasets.token_pieces`) that the built-in curriculum metrics run on.

Kernels (C++ in csrc/data_helpers/metric_helpers.cpp, numpy references here, identical results):

- `token_table_sums(pieces, table)`: float64 [N], each sample's `table[id]` summed over its tokens
  in sample order, accumulated sequentially in float64 from 0.0. The order is part of the
  definition so that every path (C++, numpy, the brute-force test reference) gives the same bits,
  and values truncated to integers (vocabulary rarity) never differ between them.
- `token_bincount(pieces, num_ids)`: int64 [num_ids], occurrences of every id over all samples.

Both raise ValueError for a token id outside the table. `backend` is chosen by
`megatron.core.kernels`: "auto" (C++ when the extension is built, else the numpy reference after
one logged warning), "kernel" or "reference"; None reads $MEGATRON_KERNEL_BACKEND. The numpy
references are `token_table_sums_reference` and `token_bincount_reference`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from megatron.core import kernels
from megatron.core.datasets.token_pieces import TokenPieces

_REFERENCE_CHUNK_TOKENS = 1 << 22
"""Tokens the numpy reference materialises at a time."""


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


def token_table_sums(
    pieces: TokenPieces, table: np.ndarray, backend: Optional[str] = None
) -> np.ndarray:
    """float64 [N]: per sample, `table[id]` summed over its tokens in order (sequential float64).

    Args:
        pieces: the samples.
        table: float64 [V] value of every token id.
        backend: "auto", "kernel" or "reference"; None reads $MEGATRON_KERNEL_BACKEND.
    """
    table = np.ascontiguousarray(table, dtype=np.float64)
    module = kernels.resolve(kernels.DATASET_HELPERS, backend)
    if module is None:
        return token_table_sums_reference(pieces, table)
    return module.token_table_sums(
        _tokens_for_cpp(pieces.tokens),
        pieces.piece_ptr,
        pieces.piece_start,
        pieces.piece_len,
        table,
    )


def token_table_sums_reference(pieces: TokenPieces, table: np.ndarray) -> np.ndarray:
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


def token_bincount(pieces: TokenPieces, num_ids: int, backend: Optional[str] = None) -> np.ndarray:
    """int64 [num_ids]: occurrences of every token id over all samples of `pieces`.

    `backend`: "auto", "kernel" or "reference"; None reads $MEGATRON_KERNEL_BACKEND.
    """
    module = kernels.resolve(kernels.DATASET_HELPERS, backend)
    if module is None:
        return token_bincount_reference(pieces, num_ids)
    return module.token_bincount(
        _tokens_for_cpp(pieces.tokens),
        pieces.piece_ptr,
        pieces.piece_start,
        pieces.piece_len,
        int(num_ids),
    )


def token_bincount_reference(pieces: TokenPieces, num_ids: int) -> np.ndarray:
    """numpy reference of `token_bincount`."""
    counts = np.zeros(int(num_ids), dtype=np.int64)
    n, step = pieces.num_samples, 4096
    for begin in range(0, n, step):
        ids = pieces.select(np.arange(begin, min(n, begin + step))).token_ids()
        _check_ids(ids, num_ids, "token_bincount")
        counts += np.bincount(ids, minlength=num_ids).astype(np.int64)
    return counts
