"""Build the train / valid / test datasets from `--data-path` / `--split` style configuration.

- One prefix: its documents are split into contiguous train / valid / test ranges by `split`.
- Several weighted prefixes: each is split the same way, each split of each prefix becomes a
  dataset of ceil(ceil(weight * N) * 1.005) samples (megatron-core's 0.5% surplus, so the blend
  never runs a member dry), and a `BlendedDataset` of N samples mixes them. Without weights each
  member holds one epoch and weighs its length; the blend holds min(N, their sum) samples.
- `blend_per_split`: each split comes whole from its own blend (no splitting).

These are megatron-core 0.16's rules (the same flags give the same samples);
`DatasetConfig.legacy_split_and_blend` selects this project's earlier ones instead (see
`split_documents_legacy`, `helpers.build_blending_indices` and datasets/readme.md).

The dataset class is a parameter: any class with GPTDataset's constructor
`(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)`. It may
define `numel_low_level_dataset(indexed)` (units to split; default: documents) and
`build_low_level_dataset(path, config)` (default: `IndexedDataset(path)`).
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets.blended_dataset import BlendedDataset, normalize_weights
from megatron.core.datasets.config import DatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.token_counts import check_token_ids
from megatron.core.datasets.utils import Split

logger = logging.getLogger(__name__)

OVERSAMPLING = 1.005
"""Members of a weighted blend get this factor more samples than their share of the blend."""

SPLIT_NAMES = [s.name for s in Split]


def _as_float(token: str) -> Optional[float]:
    try:
        return float(token)
    except ValueError:
        return None


def parse_data_path(data_path: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """Prefixes and weights of a Megatron `--data-path` value.

    Accepted forms (elements may also hold several whitespace-separated tokens):
    `["prefix"]`; `["p1", "p2", ...]` (equal weights, returned as None);
    `["w1", "p1", "w2", "p2", ...]` (weights as given, not normalised).
    """
    tokens = [t for item in data_path for t in str(item).split()]
    if not tokens:
        raise ValueError("--data-path is empty; give a dataset prefix (path without .bin/.idx)")
    if _as_float(tokens[0]) is None:
        numeric = [t for t in tokens if _as_float(t) is not None]
        if numeric:
            raise ValueError(
                f"--data-path mixes prefixes with the number {numeric[0]!r}; use either "
                "'prefix1 prefix2 ...' or 'weight1 prefix1 weight2 prefix2 ...'"
            )
        return tokens, None
    if len(tokens) % 2:
        raise ValueError(
            f"--data-path has {len(tokens)} tokens starting with a weight; the weighted form is "
            f"'weight1 prefix1 weight2 prefix2 ...' (the last weight {tokens[-1]!r} has no prefix?)"
        )
    prefixes, weights = [], []
    for weight, prefix in zip(tokens[0::2], tokens[1::2]):
        value = _as_float(weight)
        if value is None:
            raise ValueError(
                f"--data-path: {weight!r} should be a weight (the weighted form is "
                f"'weight1 prefix1 weight2 prefix2 ...'), got tokens {tokens}"
            )
        if _as_float(prefix) is not None:
            raise ValueError(f"--data-path: {prefix!r} should be a dataset prefix, not a number")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--data-path: weight {weight!r} of {prefix} must be >= 0")
        prefixes.append(prefix)
        weights.append(value)
    if sum(weights) <= 0:
        raise ValueError(f"--data-path: the weights {weights} are all 0")
    return prefixes, weights


def parse_split(split: str) -> List[float]:
    """Normalised [train, valid, test] fractions of a `--split` string.

    "969,30,1", "98,2,0" and "90/5/5" forms; fewer than three values are padded with 0
    ("100" means all train).
    """
    text = str(split).strip()
    sep = "," if "," in text else "/"
    parts = [p.strip() for p in text.split(sep)] if text else []
    values = [_as_float(p) for p in parts]
    if not parts or any(v is None for v in values):
        raise ValueError(
            f"--split {split!r} is not a list of numbers; use e.g. '969,30,1' or '90/5/5'"
        )
    if len(values) > 3:
        raise ValueError(f"--split {split!r} has {len(values)} values; give at most 3")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--split {split!r} has a negative or non-finite value")
    total = sum(values)
    if total <= 0:
        raise ValueError(f"--split {split!r} gives every split weight 0")
    values += [0.0] * (3 - len(values))
    return [v / total for v in values]


def split_documents(
    num_docs: int, fractions: Sequence[float], legacy: bool = False
) -> List[Tuple[int, int]]:
    """[start, end) document ranges of train / valid / test.

    megatron-core's rule (0.16, `_build_megatron_dataset_splits`): with the cumulative fractions
    0 = c0 <= c1 <= c2 <= c3 (summed left to right), split i is
    [int(round(c_i * n)), int(round(c_{i+1} * n))) (Python's round, half to even).
    `legacy=True`: `split_documents_legacy`.
    """
    if legacy:
        return split_documents_legacy(num_docs, fractions)
    bounds = [0.0]
    for fraction in fractions:
        bounds.append(bounds[-1] + float(fraction))
    ends = [int(round(b * float(num_docs))) for b in bounds]
    return [(ends[i], ends[i + 1]) for i in range(len(fractions))]


def split_documents_legacy(num_docs: int, fractions: Sequence[float]) -> List[Tuple[int, int]]:
    """[start, end) document ranges by Megatron-LM's legacy rounding (Megatron-DeepSpeed's
    `get_train_valid_test_split_`; --legacy-split-and-blend).

    Boundaries are cumulative sums of round(fraction * num_docs); the rounding error is then
    subtracted from every boundary after the first so that the last one is num_docs.
    """
    bounds = [0]
    for fraction in fractions:
        bounds.append(bounds[-1] + int(round(fraction * float(num_docs))))
    diff = bounds[-1] - num_docs
    bounds = [0] + [b - diff for b in bounds[1:]]
    return [(bounds[i], bounds[i + 1]) for i in range(len(fractions))]


def _numel(dataset_cls, indexed) -> int:
    fn = getattr(dataset_cls, "numel_low_level_dataset", None)
    return int(fn(indexed)) if fn is not None else int(indexed.num_documents)


def _open(dataset_cls, prefix: str, config: DatasetConfig, cache: Dict[str, object]):
    """The low-level dataset of `prefix`, opened once; its token ids are checked against
    `config.vocab_size` when that is set."""
    if prefix not in cache:
        fn = getattr(dataset_cls, "build_low_level_dataset", None)
        indexed = (
            fn(prefix, config) if fn is not None else IndexedDataset(prefix, config.mmap_bin_files)
        )
        if config.vocab_size is not None and isinstance(indexed, IndexedDataset):
            check_token_ids(indexed, config.vocab_size)
        cache[prefix] = indexed
    return cache[prefix]


def _member_dataset(dataset_cls, indexed, prefix, doc_range, num_samples, split, config):
    """The dataset of documents [start, end) of one prefix; None when empty and not needed."""
    start, end, num_docs = doc_range
    if end <= start:
        if num_samples:
            how = (
                f"--split {config.split} over its {num_docs} documents gives it none"
                if config.blend_per_split is None
                else f"it has {num_docs} documents"
            )
            raise ValueError(
                f"the {split} split of {prefix} is empty ({how}) but {num_samples} {split} "
                f"samples were requested; change --split or request no {split} samples"
            )
        return None
    indices = np.arange(start, end, dtype=np.int32)
    return dataset_cls(indexed, prefix, indices, num_samples, split, config)


def _blend_split(dataset_cls, prefixes, weights, ranges, num_samples, split, config, opened):
    """The dataset of one split from one or more prefixes (ranges: (start, end, total) each)."""
    if num_samples == 0:
        return None
    legacy = config.legacy_split_and_blend
    if len(prefixes) == 1 and (legacy or weights is None):
        indexed = _open(dataset_cls, prefixes[0], config, opened)
        return _member_dataset(
            dataset_cls, indexed, prefixes[0], ranges[0], num_samples, split, config
        )
    if num_samples is None:
        raise ValueError(
            f"a blend of {len(prefixes)} datasets needs a number of {split} samples "
            "(got None); pass it in num_samples_per_split"
        )
    if not legacy and weights is None:
        return _blend_by_length(dataset_cls, prefixes, ranges, num_samples, split, config, opened)
    if legacy:
        weights = normalize_weights(weights or [1.0] * len(prefixes), len(prefixes))
        sizes = [int(math.ceil(w * num_samples * OVERSAMPLING)) for w in weights]
    else:  # megatron-core: the share's ceiling, then the surplus
        weights = normalize_weights(weights, len(prefixes), exact_numpy=True)
        sizes = [int(math.ceil(math.ceil(num_samples * w) * OVERSAMPLING)) for w in weights]
    members = []
    for prefix, member_samples, doc_range in zip(prefixes, sizes, ranges):
        indexed = _open(dataset_cls, prefix, config, opened)
        members.append(
            _member_dataset(dataset_cls, indexed, prefix, doc_range, member_samples, split, config)
            if member_samples > 0
            else None
        )
    kept = [(m, w) for m, w in zip(members, weights) if m is not None]
    return BlendedDataset([m for m, _ in kept], [w for _, w in kept], num_samples, config)


def _blend_by_length(dataset_cls, prefixes, ranges, num_samples, split, config, opened):
    """megatron-core's blend without weights: one epoch of each member, weighted by its length,
    min(num_samples, their total) samples."""
    members = []
    for prefix, doc_range in zip(prefixes, ranges):
        indexed = _open(dataset_cls, prefix, config, opened)
        member = _member_dataset(dataset_cls, indexed, prefix, doc_range, None, split, config)
        if member is not None and len(member) > 0:
            members.append(member)
    lengths = [len(m) for m in members]
    if not members:
        raise ValueError(
            f"the {split} split of {' '.join(prefixes)} is empty but {num_samples} {split} "
            f"samples were requested; change --split or request no {split} samples"
        )
    size = min(num_samples, sum(lengths))
    if size < num_samples:
        logger.warning(
            "%s split: the unweighted blend of %s holds %d samples (one epoch of each), fewer "
            "than the %d requested; give weights ('w1 prefix1 w2 prefix2 ...') to repeat epochs",
            split,
            " ".join(prefixes),
            size,
            num_samples,
        )
    return BlendedDataset(members, lengths, size, config)


def _build_all(dataset_cls, num_samples_per_split, config) -> List[Optional[object]]:
    opened: Dict[str, object] = {}
    datasets: List[Optional[object]] = []
    if config.blend_per_split is not None:
        if len(config.blend_per_split) != 3:
            raise ValueError("blend_per_split needs [train, valid, test] blends (None to skip)")
        for split, blend, n in zip(SPLIT_NAMES, config.blend_per_split, num_samples_per_split):
            if blend is None or not blend[0]:
                if n and split == "train":
                    raise ValueError(
                        f"{n} {split} samples requested but no --{split}-data-path was given"
                    )
                if n:
                    logger.info("no --%s-data-path: no %s dataset", split, split)
                datasets.append(None)
                continue
            prefixes, weights = blend
            ranges = []
            for prefix in prefixes:
                num = _numel(dataset_cls, _open(dataset_cls, prefix, config, opened))
                ranges.append((0, num, num))
            datasets.append(
                _blend_split(dataset_cls, prefixes, weights, ranges, n, split, config, opened)
            )
        return datasets
    if config.blend is None:
        raise ValueError("no data: set --data-path, or --train/valid/test-data-path")
    prefixes, weights = config.blend
    fractions = parse_split(config.split)
    per_prefix = []
    for prefix in prefixes:
        num = _numel(dataset_cls, _open(dataset_cls, prefix, config, opened))
        ranges = split_documents(num, fractions, legacy=config.legacy_split_and_blend)
        per_prefix.append([(a, b, num) for a, b in ranges])
        logger.info("%s: %d documents, --split %s", prefix, num, config.split)
    for i, (split, n) in enumerate(zip(SPLIT_NAMES, num_samples_per_split)):
        if fractions[i] == 0.0:
            # A split given zero weight (e.g. --split 95,5,0) simply has no dataset, as in Megatron.
            if n:
                logger.info(
                    "--split %s gives the %s split no documents: no %s dataset",
                    config.split,
                    split,
                    split,
                )
            datasets.append(None)
            continue
        ranges = [r[i] for r in per_prefix]
        datasets.append(
            _blend_split(dataset_cls, prefixes, weights, ranges, n, split, config, opened)
        )
    return datasets


def build_train_valid_test_datasets(
    dataset_cls,
    num_samples_per_split: Sequence[Optional[int]],
    config: DatasetConfig,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
    synchronize: Optional[Callable[[], None]] = None,
) -> Tuple[Optional[object], Optional[object], Optional[object]]:
    """(train, valid, test) datasets; None for a split with 0 samples requested or no data.

    Args:
        dataset_cls: GPTDataset, BertDataset or any class with the same constructor.
        num_samples_per_split: [train, valid, test] samples; None = one epoch (single prefix
            only), 0 = no dataset.
        config: dataset configuration (`blend` + `split`, or `blend_per_split`).
        is_built_on_rank: returns True on the rank(s) that build and cache the indices first
            (e.g. global rank 0). Those build, then call `synchronize()`; every other rank calls
            `synchronize()` first and then loads the cached indices. None: build locally.
        synchronize: a barrier across all ranks (e.g. torch.distributed.barrier); called exactly
            once on every rank, even when the first build fails (so no rank hangs).

    Raises:
        ValueError: for malformed --data-path / --split, or a split that is empty while samples
            are requested from it.
    """
    if len(num_samples_per_split) != 3:
        raise ValueError(f"need [train, valid, test] sample counts, got {num_samples_per_split}")
    if is_built_on_rank is None:
        return tuple(_build_all(dataset_cls, num_samples_per_split, config))
    if synchronize is None:
        raise ValueError("is_built_on_rank needs a synchronize callable (a barrier)")
    if is_built_on_rank():
        try:
            datasets = _build_all(dataset_cls, num_samples_per_split, config)
        finally:
            synchronize()
        return tuple(datasets)
    synchronize()
    return tuple(_build_all(dataset_cls, num_samples_per_split, config))
