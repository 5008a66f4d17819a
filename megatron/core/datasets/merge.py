"""Merging indexed datasets into one (`tools/merge_datasets.py`), with their token counts."""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence

from megatron.core.datasets.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
    data_file_path,
    index_file_path,
)
from megatron.core.datasets.token_counts import (
    save_token_counts,
    sum_token_counts,
    token_counts_path,
)
from megatron.core.files import remove_stale_temporaries_beside, temporary_path

logger = logging.getLogger(__name__)


def list_dataset_prefixes(directory: str) -> List[str]:
    """Prefixes of every `.bin`/`.idx` pair in `directory`, sorted by name.

    Raises:
        ValueError: the folder has a `.bin` without its `.idx` or the reverse, or no pair.
    """
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory")
    names = os.listdir(directory)
    bins = {n[:-4] for n in names if n.endswith(".bin")}
    idxs = {n[:-4] for n in names if n.endswith(".idx")}
    lonely = sorted(bins ^ idxs)
    if lonely:
        raise ValueError(
            f"{directory}: {', '.join(lonely)} has a .bin without .idx or the reverse; "
            "remove the stray file or list the prefixes to merge explicitly"
        )
    if not bins:
        raise ValueError(f"{directory}: no .bin/.idx pairs to merge")
    return [os.path.join(directory, n) for n in sorted(bins)]


def merge_datasets(prefixes: Sequence[str], output_prefix: str) -> Optional[str]:
    """Concatenate datasets (same dtype) into `output_prefix`, atomically.

    Token-count files are summed into `<output_prefix>.token_counts.npy` when every input has one
    (any stale one at the output is removed otherwise).

    Returns:
        The token-count file written, or None.

    Raises:
        IndexedDatasetError: an input is missing or corrupt.
        ValueError: no inputs, the output is one of the inputs, or the dtypes differ.
    """
    if not prefixes:
        raise ValueError("nothing to merge: no input prefixes")
    out = os.path.abspath(output_prefix)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise ValueError(f"--output-prefix {output_prefix} is also an input; choose another name")
    remove_stale_temporaries_beside(output_prefix)
    dtypes = {p: IndexedDataset(p).dtype for p in prefixes}  # opening validates each input
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{p} ({d.name})" for p, d in dtypes.items())
        raise ValueError(
            f"cannot merge datasets of different dtypes: {listing}; re-run preprocessing with "
            "the same tokenizer for all of them"
        )
    count_files = [token_counts_path(p) for p in prefixes]
    have_counts = all(os.path.isfile(c) for c in count_files)
    if not have_counts and any(os.path.isfile(c) for c in count_files):
        logger.warning("not all inputs have a token-count file; the merged output gets none")
    counts = sum_token_counts(count_files) if have_counts else None
    final_counts, tmp_counts = token_counts_path(output_prefix), None
    with IndexedDatasetBuilder(data_file_path(output_prefix), dtype=dtypes[prefixes[0]]) as b:
        try:
            for p in prefixes:
                b.add_index(p)
            if counts is not None:
                tmp_counts = temporary_path(final_counts)
                save_token_counts(tmp_counts, counts)
            if os.path.exists(final_counts):
                os.remove(final_counts)
            b.finalize(index_file_path(output_prefix))
            if tmp_counts is not None:
                os.replace(tmp_counts, final_counts)
        finally:
            if tmp_counts is not None and os.path.exists(tmp_counts):
                os.remove(tmp_counts)
    return final_counts if counts is not None else None
