"""Token-frequency files written next to indexed datasets by `tools/preprocess_data.py`.

For an output prefix `P` (the `P.bin`/`P.idx` pair), `P.token_counts.npy` is a NumPy `.npy` file
holding a 1-D int64 array of length `vocab_size`: entry `i` is how many times token id `i` occurs
in `P.bin` (appended end-of-document tokens included). `tools/merge_datasets.py` sums the files of
its inputs. The vocabulary-rarity curriculum metric reads it through `load_token_counts`.

The file is written under a temporary name and renamed when complete, so it is either absent or
whole.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from megatron.core.datasets.utils import atomic_save_npy
from megatron.core.files import temporary_path  # noqa: F401 (the name writers of counts use)

TOKEN_COUNTS_SUFFIX = ".token_counts.npy"


def token_counts_path(path_prefix: str) -> str:
    """Path of the token-count file of a dataset prefix (`<prefix>.token_counts.npy`)."""
    return path_prefix + TOKEN_COUNTS_SUFFIX


def save_token_counts(path: str, counts: np.ndarray) -> None:
    """Write `counts` (1-D, non-negative) as int64 to `path` atomically (temporary + rename)."""
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"{path}: token counts must be 1-D, got shape {counts.shape}")
    if counts.size and counts.min() < 0:
        raise ValueError(f"{path}: token counts must be non-negative, got min {counts.min()}")
    atomic_save_npy(path, counts.astype("<i8"))


def load_token_counts(path_or_prefix: str, vocab_size: Optional[int] = None) -> np.ndarray:
    """Load a token-count file (given by its path or by its dataset prefix).

    Args:
        path_or_prefix: `<prefix>.token_counts.npy`, or the dataset prefix `<prefix>`.
        vocab_size: when given, the array length must equal it (the tokenizer's vocab_size, not
            the padded embedding size).

    Returns:
        int64 array [vocab_size] of counts per token id.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a 1-D integer array, has negative counts, or its length
            differs from `vocab_size`.
    """
    path = path_or_prefix
    if not path.endswith(TOKEN_COUNTS_SUFFIX):
        path = token_counts_path(path_or_prefix)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no token-count file; tools/preprocess_data.py writes one per output "
            "(re-run it, or merge inputs that all have one with tools/merge_datasets.py)"
        )
    try:
        counts = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy token-count file ({e})") from None
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(
            f"{path}: expected a 1-D integer array, got dtype {counts.dtype} shape {counts.shape}"
        )
    if counts.size and counts.min() < 0:
        raise ValueError(f"{path}: negative token count {counts.min()}; the file is corrupt")
    if vocab_size is not None and counts.size != vocab_size:
        raise ValueError(
            f"{path}: has counts for {counts.size} token ids but the tokenizer's vocab_size is "
            f"{vocab_size}; it was made with another tokenizer: re-run tools/preprocess_data.py "
            "with the tokenizer used for training"
        )
    return counts.astype(np.int64, copy=False)


def sum_token_counts(paths: Sequence[str]) -> np.ndarray:
    """Element-wise sum of several token-count files, which must all have the same length."""
    if not paths:
        raise ValueError("sum_token_counts needs at least one file")
    total = load_token_counts(paths[0]).copy()
    for path in paths[1:]:
        counts = load_token_counts(path)
        if counts.size != total.size:
            raise ValueError(
                f"{path}: has {counts.size} entries but {paths[0]} has {total.size}; the inputs "
                "were tokenized with different vocabularies and cannot be merged"
            )
        total += counts
    return total
