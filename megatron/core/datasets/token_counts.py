"""Token-frequency files written next to indexed datasets by `tools/preprocess_data.py`.

For an output prefix `P` (the `P.bin`/`P.idx` pair), `P.token_counts.npy` is a NumPy `.npy` file
holding a 1-D int64 array of length `vocab_size`: entry `i` is how many times token id `i` occurs
in `P.bin` (appended end-of-document tokens included). `tools/merge_datasets.py` sums the files of
its inputs. The vocabulary-rarity curriculum metric reads it through `load_token_counts`.

The file is written under a temporary name and renamed when complete, so it is either absent or
whole.

`check_token_ids` uses it to check, when a dataset opens, that every id of the `.bin` is in the
model's vocabulary (a scan of the `.bin` when the file is missing or does not match the data).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets.indexed_dataset import IndexedDataset, data_file_path
from megatron.core.datasets.utils import atomic_save_npy
from megatron.core.files import temporary_path  # noqa: F401 (the name writers of counts use)

logger = logging.getLogger(__name__)

SCAN_CHUNK_TOKENS = 1 << 24
"""Tokens per step of the `.bin` scan (bounded temporaries whatever the file size)."""

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


def _counts_matching(dataset: IndexedDataset) -> Optional[np.ndarray]:
    """The dataset's token counts when they exist and describe its `.bin` (same token total)."""
    path = token_counts_path(dataset.path_prefix)
    if not os.path.isfile(path):
        return None
    try:
        counts = load_token_counts(path)
    except ValueError as err:
        logger.warning("%s; scanning the .bin instead", err)
        return None
    total = int(counts.sum())
    if total != dataset.num_tokens:
        logger.warning(
            "%s counts %d tokens but %s holds %d: the counts are stale (the data was rewritten "
            "without them); scanning the .bin instead. Re-run tools/preprocess_data.py to renew "
            "them.",
            path,
            total,
            data_file_path(dataset.path_prefix),
            dataset.num_tokens,
        )
        return None
    return counts


def scan_token_range(dataset: IndexedDataset) -> Tuple[int, int]:
    """(smallest, largest) token id of the `.bin`, read in chunks; (0, -1) when it is empty."""
    lo, hi = 0, -1
    for start in range(0, dataset.num_tokens, SCAN_CHUNK_TOKENS):
        chunk = dataset.tokens(start, start + SCAN_CHUNK_TOKENS)
        lo = int(chunk.min()) if hi < 0 else min(lo, int(chunk.min()))
        hi = max(hi, int(chunk.max()))
    return lo, hi


def _first_outside(dataset: IndexedDataset, vocab_size: int) -> Optional[int]:
    """Position in the `.bin` of the first token id outside [0, vocab_size) (None: none)."""
    for start in range(0, dataset.num_tokens, SCAN_CHUNK_TOKENS):
        chunk = dataset.tokens(start, start + SCAN_CHUNK_TOKENS)
        bad = np.flatnonzero((chunk < 0) | (chunk >= vocab_size))
        if bad.size:
            return start + int(bad[0])
    return None


def _id_range(dataset: IndexedDataset) -> Tuple[int, int, Optional[np.ndarray], str]:
    """(smallest id, largest id, the token counts or None, where the range was read)."""
    counts = _counts_matching(dataset)
    if counts is not None:
        used = np.flatnonzero(counts)
        smallest, largest = (int(used[0]), int(used[-1])) if used.size else (0, -1)
        return smallest, largest, counts, os.path.basename(token_counts_path(dataset.path_prefix))
    logger.info("scanning %s for its token id range", data_file_path(dataset.path_prefix))
    return (*scan_token_range(dataset), None, "a scan of the file")


def check_token_ids(dataset: IndexedDataset, vocab_size: int) -> int:
    """Check that every token id of `dataset` is in [0, vocab_size); returns the largest id.

    The range comes from `<prefix>.token_counts.npy` when it matches the `.bin` (its total equals
    the number of tokens), else from a scan of the `.bin`. A counts file made for another
    vocabulary size is reported (a warning) even when its ids fit.

    Args:
        dataset: the opened dataset.
        vocab_size: the model's vocabulary, the tokenizer's `vocab_size` (ids beyond it are
            padding of the embedding, or outside it).

    Raises:
        ValueError: naming the file, the offending id, where it first occurs, the vocabulary
            size and the fix.
    """
    prefix = dataset.path_prefix
    smallest, largest, counts, source = _id_range(dataset)
    if smallest >= 0 and largest < vocab_size:
        if counts is not None and counts.size != vocab_size:
            logger.warning(
                "%s has counts for %d token ids but the model's vocabulary has %d: %s was "
                "probably preprocessed with another tokenizer; re-run tools/preprocess_data.py "
                "with the training tokenizer if so",
                token_counts_path(prefix),
                counts.size,
                vocab_size,
                data_file_path(prefix),
            )
        return largest
    position = _first_outside(dataset, vocab_size)
    if position is None:  # counts with the right total but not the .bin's ids
        logger.warning(
            "%s does not match the .bin's ids; checked by a scan", token_counts_path(prefix)
        )
        return scan_token_range(dataset)[1]
    doc, seq, offset = dataset.locate_token(position)
    token = int(dataset.tokens(position, position + 1)[0])
    raise ValueError(
        f"{data_file_path(prefix)}: token id {token} at document {doc}, sequence {seq}, token "
        f"{offset} is outside the model's vocabulary of {vocab_size} ids (the file's ids span "
        f"{smallest}..{largest}, read from {source}). The data was preprocessed with another "
        "tokenizer or is corrupt: train with the tokenizer it was made with (--tokenizer-type, "
        "--vocab-file, --vocab-size), or re-run tools/preprocess_data.py with the training "
        "tokenizer"
    )
