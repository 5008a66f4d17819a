"""Index builders of the GPT, blended and BERT datasets: C++ kernels and their references.

Each builder exists twice: in the compiled extension `megatron.core.datasets.helpers_cpp`
(csrc/data_helpers/, built by `pip install -e .`) and as a pure reference named
`<op>_reference` (numpy here; the BERT mapping's in `bert_helpers_ref`, which also documents its
algorithm). The dispatching functions `build_sample_idx`, `build_blending_indices`,
`build_blending_indices_largest_error` and `build_mapping` choose between them through
`megatron.core.kernels` (`backend`: "auto", "kernel", "reference", or None for
$MEGATRON_KERNEL_BACKEND); both paths give identical arrays
(tests/unit/test_dataset_helpers.py, tests/unit/test_bert_dataset.py).

The two formulations differ on purpose: the C++ sample index walks documents sample by sample,
the reference locates every sample start at once with a binary search over cumulative token
counts, so the parity test compares two independent derivations of the same definition.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from megatron.core import kernels
from megatron.core.datasets.bert_helpers_ref import LONG_SENTENCE_LEN, build_mapping_reference

_INT32_MAX = np.iinfo(np.int32).max


def build_sample_idx(
    sizes: np.ndarray,
    doc_idx: np.ndarray,
    seq_length: int,
    num_epochs: int,
    tokens_per_epoch: int,
    drop_last_partial_sequence: bool = True,
    add_extra_token: int = 1,
    backend: Optional[str] = None,
    force_int64: bool = False,
) -> np.ndarray:
    """Where each GPT sample starts: [S + 1, 2] rows of (position in doc_idx, token offset).

    Args:
        sizes: int32 [N] tokens of every sequence of the indexed dataset.
        doc_idx: int32/int64 sequence ids in the (shuffled, multi-epoch) order samples read them.
        seq_length: tokens per sample seen by the model.
        num_epochs: epochs that doc_idx holds.
        tokens_per_epoch: tokens of one epoch (sum of sizes over one epoch's documents).
        drop_last_partial_sequence: drop the final incomplete sample (Megatron's default); when
            False it is kept (S rounds up) and reaches the last token of doc_idx.
        add_extra_token: tokens each sample shares with the next (1: inputs and labels both get
            seq_length tokens from seq_length + 1).
        backend: "auto" (C++ when built), "kernel" or "reference"; None reads
            $MEGATRON_KERNEL_BACKEND (see `megatron.core.kernels`).
        force_int64: return int64 even when int32 would do (tests the wide path).

    Returns:
        int32 array (int64 when a position or offset could exceed int32) of shape [S + 1, 2] with
        S = (num_epochs * tokens_per_epoch - add_extra_token) // seq_length. Row i is where sample
        i starts; sample i holds seq_length + add_extra_token tokens from there, spanning
        documents, and ends where row i + 1 starts plus add_extra_token tokens.
    """
    module = kernels.resolve(kernels.DATASET_HELPERS, backend)
    args = (int(seq_length), int(num_epochs), int(tokens_per_epoch))
    flags = (bool(drop_last_partial_sequence), int(add_extra_token), bool(force_int64))
    if module is None:
        return build_sample_idx_reference(sizes, doc_idx, *args, *flags)
    doc_idx = np.asarray(doc_idx)
    if doc_idx.dtype not in (np.int32, np.int64):
        doc_idx = doc_idx.astype(np.int64)
    return module.build_sample_idx(sizes, doc_idx, *args, *flags)


def _check_sample_idx_args(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch, extra):
    if sizes.ndim != 1 or doc_idx.ndim != 1:
        raise ValueError(
            f"build_sample_idx: sizes and doc_idx must be 1-D arrays, got {sizes.ndim}-D and "
            f"{doc_idx.ndim}-D"
        )
    if doc_idx.size and not np.issubdtype(doc_idx.dtype, np.integer):
        raise TypeError(f"build_sample_idx: doc_idx must be int32 or int64, got {doc_idx.dtype}")
    if seq_length < 1 or num_epochs < 1 or tokens_per_epoch < 0 or extra < 0:
        raise ValueError(
            "build_sample_idx: need seq_length >= 1, num_epochs >= 1, tokens_per_epoch >= 0 and "
            f"add_extra_token >= 0; got {seq_length}, {num_epochs}, {tokens_per_epoch}, {extra}"
        )
    if num_epochs * tokens_per_epoch < extra:
        raise ValueError(
            f"build_sample_idx: {num_epochs * tokens_per_epoch} tokens cannot hold even one "
            f"sample (add_extra_token = {extra})"
        )
    if doc_idx.size and (doc_idx.min() < 0 or doc_idx.max() >= sizes.size):
        bad = int(np.argmax((doc_idx < 0) | (doc_idx >= sizes.size)))
        raise ValueError(
            f"build_sample_idx: doc_idx[{bad}] = {doc_idx[bad]} is not a valid index into sizes "
            f"({sizes.size} entries)"
        )


def build_sample_idx_reference(
    sizes: np.ndarray,
    doc_idx: np.ndarray,
    seq_length: int,
    num_epochs: int,
    tokens_per_epoch: int,
    drop_last_partial_sequence: bool = True,
    add_extra_token: int = 1,
    force_int64: bool = False,
) -> np.ndarray:
    """Numpy reference of `build_sample_idx` (same arguments and result).

    Sample i > 0 starts at global token position p = i * seq_length of the concatenated
    documents. It lies in the document that holds token p + add_extra_token - 1 (the last token
    of sample i - 1), i.e. the first position j of doc_idx with cumsum[j + 1] >= p + extra,
    at offset p - cumsum[j]. Past the end of doc_idx (only a kept partial last sample) the start
    is `add_extra_token` tokens before the end of the last document.
    """
    sizes = np.asarray(sizes)
    doc_idx = np.asarray(doc_idx)
    seq_length, num_epochs = int(seq_length), int(num_epochs)
    tokens_per_epoch, extra = int(tokens_per_epoch), int(add_extra_token)
    _check_sample_idx_args(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch, extra)
    doc_sizes = sizes[doc_idx].astype(np.int64)
    ends = np.cumsum(doc_sizes)  # ends[j] = cumsum[j + 1]: tokens up to the end of doc_idx[j]
    available = int(ends[-1]) if ends.size else 0
    total = num_epochs * tokens_per_epoch
    if available < total:
        raise ValueError(
            f"build_sample_idx: num_epochs * tokens_per_epoch = {total} but doc_idx spans only "
            f"{available} tokens; pass the doc_idx of all epochs"
        )
    usable = total - extra
    num_samples = usable // seq_length if drop_last_partial_sequence else -(-usable // seq_length)
    if num_samples > 0 and doc_idx.size == 0:
        raise ValueError("build_sample_idx: doc_idx is empty but samples were requested")

    starts = np.arange(1, num_samples + 1, dtype=np.int64) * seq_length  # [S]
    pos = np.searchsorted(ends, starts + extra, side="left")  # [S]
    past_end = pos >= doc_idx.size
    pos = np.minimum(pos, doc_idx.size - 1)
    begins = ends[pos] - doc_sizes[pos]  # cumsum[j]
    offsets = np.where(past_end, doc_sizes[pos] - extra, starts - begins)

    max_value = max(doc_idx.size, int(sizes.max()) if sizes.size else 0)
    dtype = np.int64 if force_int64 or max_value > _INT32_MAX else np.int32
    out = np.zeros((num_samples + 1, 2), dtype=dtype)  # [S + 1, 2]; row 0 = (0, 0)
    out[1:, 0] = pos
    out[1:, 1] = offsets
    return out


def build_blending_indices(
    weights: np.ndarray, size: int, backend: Optional[str] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Which dataset, and which of its samples, each of `size` blended samples comes from
    (the earliest-deadline order of --legacy-split-and-blend; megatron-core's order is
    `build_blending_indices_largest_error`).

    Args:
        weights: float64 [D] non-negative weights (normally summing to 1).
        size: number of blended samples.
        backend: "auto" (C++ when built), "kernel" or "reference"; None reads
            $MEGATRON_KERNEL_BACKEND.

    Returns:
        (dataset_index int16 [size], dataset_sample_index int64 [size]). With weights w
        normalised to sum 1 and delta = 1 / (2 (D - 1)), sample n (1-based) goes, among the
        datasets with w[d] * n - count[d] >= delta, to the one whose next sample is due first
        (smallest (count[d] + 1 - delta) / w[d], first on ties): Tijdeman's solution of the
        chairman assignment problem, which keeps every prefix within 1 - delta < 1 sample of
        w[d] * n for every dataset. (Megatron's greedy rule, the largest w[d] * max(i, 1) -
        count[d], drifts up to ~1.6 samples with three or more datasets.) dataset_sample_index[i]
        is count[d] before it is incremented, so each dataset is read in order 0, 1, 2, ...
    """
    module = kernels.resolve(kernels.DATASET_HELPERS, backend)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if module is None:
        return build_blending_indices_reference(weights, size)
    return module.build_blending_indices(weights, int(size))


def build_blending_indices_reference(
    weights: np.ndarray, size: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Reference of `build_blending_indices` (same arguments and result; a plain Python loop)."""
    weights = np.asarray(weights, dtype=np.float64)
    size = int(size)
    _check_blend_arguments("build_blending_indices", weights, size)
    total = float(weights.sum())
    if not total > 0.0:
        raise ValueError("build_blending_indices: the weights sum to 0")
    w = (weights / total).tolist()  # Python floats: the same IEEE doubles as the C++ loop
    counts = [0] * len(w)
    num = len(w)
    delta = 1.0 / (2.0 * (num - 1)) if num > 1 else 0.0
    eligible = delta - 1e-9
    dataset_index = np.empty(size, dtype=np.int16)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    for i in range(size):
        n = float(i + 1)
        best, best_deadline = -1, float("inf")
        for d in range(num):
            if w[d] <= 0.0 or w[d] * n - counts[d] < eligible:
                continue
            deadline = (counts[d] + 1.0 - delta) / w[d]
            if deadline < best_deadline:
                best, best_deadline = d, deadline
        best = max(best, 0)
        dataset_index[i] = best
        dataset_sample_index[i] = counts[best]
        counts[best] += 1
    return dataset_index, dataset_sample_index


def build_blending_indices_largest_error(
    weights: np.ndarray, size: int, backend: Optional[str] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """megatron-core's blending order (its `helpers.build_blending_indices`, 0.16).

    Args:
        weights: float64 [D] non-negative weights, used as given: normalise them first (as
            megatron-core's BlendedDataset does) to get megatron-core's decisions bit for bit.
        size: number of blended samples.
        backend: "auto" (C++ when built), "kernel" or "reference"; None reads
            $MEGATRON_KERNEL_BACKEND.

    Returns:
        (dataset_index int16 [size], dataset_sample_index int64 [size]): sample i (0-based) goes
        to the dataset with the largest error w[d] * max(i, 1) - count[d] (the first on ties);
        dataset_sample_index[i] is count[d] before it is incremented, so each dataset is read in
        order 0, 1, 2, ... A prefix can drift ~1.6 samples from w[d] * n with three or more
        datasets (`build_blending_indices` keeps it within one).
    """
    module = kernels.resolve(kernels.DATASET_HELPERS, backend)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if module is None:
        return build_blending_indices_largest_error_reference(weights, size)
    return module.build_blending_indices_largest_error(weights, int(size))


def _check_blend_arguments(what: str, weights: np.ndarray, size: int) -> None:
    if weights.ndim != 1 or weights.size == 0:
        raise ValueError(f"{what}: weights must be a non-empty 1-D array")
    if weights.size > np.iinfo(np.int16).max:
        raise ValueError(
            f"{what}: {weights.size} datasets exceed the int16 dataset index (at most 32767)"
        )
    if size < 0:
        raise ValueError(f"{what}: size must be >= 0, got {size}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        bad = int(np.argmax(~np.isfinite(weights) | (weights < 0)))
        raise ValueError(
            f"{what}: weights[{bad}] = {weights[bad]} is not a finite non-negative number"
        )


def build_blending_indices_largest_error_reference(
    weights: np.ndarray, size: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Reference of `build_blending_indices_largest_error` (same arguments and result)."""
    weights = np.asarray(weights, dtype=np.float64)
    size = int(size)
    _check_blend_arguments("build_blending_indices_largest_error", weights, size)
    w = weights.tolist()  # Python floats: the same IEEE doubles as the C++ loop
    counts = [0] * len(w)
    dataset_index = np.empty(size, dtype=np.int16)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    for i in range(size):
        n = float(max(i, 1))
        best, best_error = 0, w[0] * n - counts[0]
        for d in range(1, len(w)):
            error = w[d] * n - counts[d]
            if error > best_error:
                best, best_error = d, error
        dataset_index[i] = best
        dataset_sample_index[i] = counts[best]
        counts[best] += 1
    return dataset_index, dataset_sample_index


def build_mapping(
    docs: np.ndarray,
    sizes: np.ndarray,
    num_epochs: int,
    max_num_samples: int,
    max_seq_length: int,
    short_seq_prob: float,
    seed: int,
    min_num_sent: int,
    long_sentence_len: int = LONG_SENTENCE_LEN,
    backend: Optional[str] = None,
) -> Tuple[np.ndarray, Dict[str, int]]:
    """The BERT sample mapping: which sentences form each sample, and its target length.

    Arguments and result are those of `bert_helpers_ref.build_mapping_reference`, the pure-Python
    reference that documents the algorithm (the C++ version is ~100x faster, same bits). Any
    integer dtypes and layouts of `docs` / `sizes` are accepted (converted to int64 / int32).

    Args:
        backend: "auto" (C++ when built), "kernel" or "reference"; None reads
            $MEGATRON_KERNEL_BACKEND.

    Returns:
        (mapping int64 [N, 3] of (first sentence, end sentence, target length), stats dict).
    """
    module = kernels.resolve(kernels.DATASET_HELPERS, backend)
    args = (docs, sizes, num_epochs, max_num_samples, max_seq_length, short_seq_prob, seed)
    if module is None:
        return build_mapping_reference(*args, min_num_sent, long_sentence_len)
    return module.build_mapping(*args, min_num_sent, long_sentence_len)
