"""Train index files under Megatron-DeepSpeed's names, and training on exactly such files.

Megatron-DeepSpeed's curriculum recipes analyse the training split once, on an index built from
an exact number of epochs, and then force training onto that index (`--train-doc-idx-path
--train-sample-idx-path --train-shuffle-idx-path` for GPT, `--train-idx-path` for BERT) so that
the sample ids of the analysis keep pointing at the same samples. The files sit next to the data:

    GPT:  <prefix>_train_indexmap_exact<E>ep_<S>sl_<seed>s_{doc,sample,shuffle}_idx.npy
    BERT: <prefix>_train_indexmap_exact<E>ep_<S-3>msl_<ssp:.2f>ssp_<seed>s.npy

`gpt_index_paths` / `bert_index_path` give these names, `save_train_index` writes a dataset's
arrays there (atomically), and `force_gpt_index` / `force_bert_index` replace a built training
dataset's arrays by the files' after checking that they fit it.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Dict, Optional, Tuple

import numpy as np

from megatron.core.files import atomic_save_npy

from .utils import md5_of_array

logger = logging.getLogger(__name__)

_EPOCHS = re.compile(r"_exact(\d+)ep_")
GPT_FLAGS = ("--train-doc-idx-path", "--train-sample-idx-path", "--train-shuffle-idx-path")
BERT_FLAG = "--train-idx-path"


def gpt_index_paths(prefix: str, epochs: int, seq_length: int, seed: int) -> Tuple[str, str, str]:
    """(doc_idx, sample_idx, shuffle_idx) paths of Megatron-DeepSpeed's GPT train index."""
    stem = f"{prefix}_train_indexmap_exact{epochs}ep_{seq_length}sl_{seed}s"
    return tuple(f"{stem}_{kind}_idx.npy" for kind in ("doc", "sample", "shuffle"))  # type: ignore


def bert_index_path(
    prefix: str, epochs: int, seq_length: int, short_seq_prob: float, seed: int
) -> str:
    """Path of Megatron-DeepSpeed's BERT train sample mapping."""
    return (
        f"{prefix}_train_indexmap_exact{epochs}ep_{seq_length - 3}msl_{short_seq_prob:0.2f}ssp_"
        f"{seed}s.npy"
    )


def epochs_in_name(path: str) -> Optional[int]:
    """The epochs a Megatron-DeepSpeed index file name states (`..._exact<E>ep_...`), or None."""
    match = _EPOCHS.search(os.path.basename(path))
    return int(match.group(1)) if match else None


def save_train_index(dataset, epochs: int) -> Dict[str, str]:
    """Write a GPT or BERT training dataset's index next to its data under Megatron-DeepSpeed's
    names; returns {what: path}."""
    prefix, cfg = dataset.dataset_path, dataset.config
    if hasattr(dataset, "mapping"):
        path = bert_index_path(
            prefix, epochs, cfg.sequence_length, cfg.short_sequence_probability, cfg.random_seed
        )
        atomic_save_npy(path, dataset.mapping)
        return {"mapping": path}
    paths = gpt_index_paths(prefix, epochs, cfg.sequence_length, cfg.random_seed)
    arrays = (dataset.document_index, dataset.sample_index, dataset.shuffle_index)
    for path, array in zip(paths, arrays):
        atomic_save_npy(path, array)
    return dict(zip(("doc_idx", "sample_idx", "shuffle_idx"), paths))


def _load(flag: str, path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise ValueError(
            f"{flag} {path}: no such file; tools/analyze_data.py run with the training's "
            "--data-path, --split, --seq-length, --seed and --train-data-exact-num-epochs writes "
            "it next to the data"
        )
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        raise ValueError(f"{flag} {path}: not a numpy .npy array ({exc})") from None
    if array.dtype.kind not in "iu":
        raise ValueError(f"{flag} {path}: holds {array.dtype} values, not integer indices")
    return np.asarray(array)


def _where(dataset) -> str:
    return (
        f"the train split of {dataset.dataset_path} ({len(dataset.indices)} documents, "
        f"--train-data-exact-num-epochs {dataset.config.train_data_exact_num_epochs})"
    )


def _check_gpt(dataset, doc: np.ndarray, sample: np.ndarray, shuffle: np.ndarray, paths) -> None:
    """Raise ValueError naming the flag when the arrays cannot index this dataset."""
    flags = dict(zip(GPT_FLAGS, paths))
    n_docs = len(dataset.indices)
    if doc.ndim != 1 or len(doc) % max(n_docs, 1):
        raise ValueError(
            f"--train-doc-idx-path {flags[GPT_FLAGS[0]]}: {len(doc)} document positions are not "
            f"a whole number of epochs of the {n_docs} documents of {_where(dataset)}: the index "
            "belongs to another --data-path or --split"
        )
    if not np.isin(doc, dataset.indices).all():
        raise ValueError(
            f"--train-doc-idx-path {flags[GPT_FLAGS[0]]}: holds document ids outside "
            f"{_where(dataset)}: it was made with another --split or --data-path"
        )
    epochs = len(doc) // max(n_docs, 1)
    if epochs != dataset.config.train_data_exact_num_epochs:
        raise ValueError(
            f"--train-doc-idx-path {flags[GPT_FLAGS[0]]} holds {epochs} epoch(s) of "
            f"{_where(dataset)}; pass --train-data-exact-num-epochs {epochs}"
        )
    if sample.ndim != 2 or sample.shape[1] != 2 or shuffle.ndim != 1:
        raise ValueError(
            f"--train-sample-idx-path / --train-shuffle-idx-path: shapes {sample.shape} and "
            f"{shuffle.shape} are not [S+1, 2] and [S]"
        )
    try:
        dataset._check_cached_indices(
            {"document_index": doc, "sample_index": sample, "shuffle_index": shuffle}
        )
    except ValueError as exc:
        raise ValueError(
            f"{' / '.join(f'{k} {v}' for k, v in flags.items())} do not fit {_where(dataset)}: "
            f"{exc}"
        ) from None
    sizes = dataset.dataset.sequence_lengths
    positions = np.minimum(sample[:, 0], len(doc) - 1)
    if np.any(sample[:, 1] > sizes[doc[positions]]):
        raise ValueError(
            f"--train-sample-idx-path {flags[GPT_FLAGS[1]]}: sample offsets past the end of "
            f"their documents of {_where(dataset)} (another --seq-length or data?)"
        )


def force_gpt_index(dataset, doc_path: str, sample_path: str, shuffle_path: str) -> None:
    """Make a built GPT training dataset read the given index files (checked against it first)."""
    doc, sample, shuffle = (
        _load(flag, path) for flag, path in zip(GPT_FLAGS, (doc_path, sample_path, shuffle_path))
    )
    _check_gpt(dataset, doc, sample, shuffle, (doc_path, sample_path, shuffle_path))
    same = (
        np.array_equal(doc, dataset.document_index)
        and np.array_equal(sample, dataset.sample_index)
        and np.array_equal(shuffle, dataset.shuffle_index)
    )
    logger.info(
        "train index forced from %s, %s, %s (%d samples; %s the index built here)",
        doc_path,
        sample_path,
        shuffle_path,
        len(shuffle),
        "the same as" if same else "differs from",
    )
    if same:
        return
    dataset.document_index, dataset.sample_index, dataset.shuffle_index = doc, sample, shuffle
    dataset.unique_description = dict(
        dataset.unique_description,
        forced_index=[md5_of_array(a) for a in (doc, sample, shuffle)],
    )


def force_bert_index(dataset, path: str) -> None:
    """Make a built BERT training dataset read the given sample mapping (checked against it)."""
    mapping = _load(BERT_FLAG, path).astype(np.int64)
    if not dataset._mapping_is_valid(mapping):
        raise ValueError(
            f"{BERT_FLAG} {path}: a {list(mapping.shape)} mapping whose sentence ids or target "
            f"lengths do not fit the train split of {dataset.dataset_path} (sentences "
            f"[{dataset._docs[0]}, {dataset._docs[-1]}), targets <= {dataset.max_seq_length}): "
            "it was made with another --data-path, --split or --seq-length"
        )
    same = np.array_equal(mapping, dataset.mapping)
    logger.info(
        "train sample mapping forced from %s (%d samples; %s the mapping built here)",
        path,
        len(mapping),
        "the same as" if same else "differs from",
    )
    if same:
        return
    dataset.mapping = mapping
    forced = md5_of_array(mapping)
    dataset.unique_description = dict(dataset.unique_description, forced_index=forced)
