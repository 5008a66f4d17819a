"""Weighted blend of several datasets (`--data-path 0.3 a 0.7 b`).

Sample i of the blend is sample dataset_sample_index[i] of dataset dataset_index[i]; both arrays
come from `helpers.build_blending_indices_largest_error` (megatron-core's order: each sample goes
to the dataset furthest behind its share), or with `config.legacy_split_and_blend` from
`helpers.build_blending_indices` (the eligible dataset whose next sample is due first: every
prefix of n samples holds within one sample of weight * n). Each dataset is read in its own
(already shuffled) order. The two arrays are cached like the GPT indices (utils.IndexCache).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from megatron.core.datasets import helpers
from megatron.core.datasets.config import DatasetConfig
from megatron.core.datasets.sample_source import BlendedSampleSource, SequenceSampleSource
from megatron.core.datasets.utils import IndexCache, default_cache_dir, load_or_build, md5_of_json

logger = logging.getLogger(__name__)


def normalize_weights(
    weights: Sequence[float], num_datasets: int, exact_numpy: bool = False
) -> List[float]:
    """Weights divided by their sum, after checking count, sign and sum.

    exact_numpy: sum them as numpy does (megatron-core's `normalize`), so that the quotients are
    megatron-core's bit for bit (Python's `sum` rounds differently from 8 weights on).
    """
    weights = [float(w) for w in weights]
    if len(weights) != num_datasets:
        raise ValueError(f"{len(weights)} weights given for {num_datasets} datasets")
    bad = [w for w in weights if not np.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"blend weights must be finite and >= 0, got {weights}")
    total = float(np.sum(np.array(weights, dtype=np.float64))) if exact_numpy else sum(weights)
    if total <= 0:
        raise ValueError(f"blend weights must not all be 0, got {weights}")
    return [w / total for w in weights]


def _dataset_key(dataset: Any) -> Any:
    """What identifies a member dataset in the blend's cache description."""
    key = getattr(dataset, "unique_description_hash", None)
    if key is not None:
        return key
    return {
        "class": type(dataset).__name__,
        "dataset_path": getattr(dataset, "dataset_path", None),
        "split": getattr(dataset, "index_split", None),
        "length": len(dataset),
    }


class BlendedDataset:
    """`size` samples drawn from `datasets` in proportion to `weights`.

    Args:
        datasets: the member datasets (map-style; items are dicts).
        weights: one non-negative weight per dataset (normalised here).
        size: number of samples of the blend.
        config: the dataset configuration (cache folder, return_data_index).
        is_built_on_rank, synchronize: as for `GPTDataset` (rank 0 builds, the others load).

    Items are the member dataset's item (its "index", when present, is the index inside that
    member); with config.return_data_index they also carry "dataset_id" (int64, position of the
    member in `datasets`).

    Raises:
        ValueError: when a member holds fewer samples than the blend draws from it.
    """

    INDEX_NAMES = ("dataset_index", "dataset_sample_index")

    def __init__(
        self,
        datasets: Sequence[Any],
        weights: Sequence[float],
        size: int,
        config: DatasetConfig,
        *,
        is_built_on_rank: Optional[Callable[[], bool]] = None,
        synchronize: Optional[Callable[[], None]] = None,
    ) -> None:
        if not datasets:
            raise ValueError("BlendedDataset needs at least one dataset")
        if int(size) < 0:
            raise ValueError(f"BlendedDataset size must be >= 0, got {size}")
        self.datasets = list(datasets)
        self.legacy = bool(getattr(config, "legacy_split_and_blend", False))
        self.weights = normalize_weights(weights, len(self.datasets), exact_numpy=not self.legacy)
        self.size = int(size)
        self.config = config
        splits = {getattr(d, "index_split", None) for d in self.datasets}
        self.index_split = splits.pop() if len(splits) == 1 else None
        self.unique_description = {
            "class": type(self).__name__,
            "datasets": [_dataset_key(d) for d in self.datasets],
            "weights": self.weights,
            "size": self.size,
        }
        if not self.legacy:  # legacy caches keep their names
            self.unique_description["order"] = "largest-error"
        self.unique_description_hash = md5_of_json(self.unique_description)
        first_path = getattr(self.datasets[0], "dataset_path", None)
        folder = config.path_to_cache or default_cache_dir(first_path, type(self).__name__)
        split = self.index_split or "mixed"
        cache = IndexCache(folder, type(self).__name__, split, self.unique_description)
        what = f"{type(self).__name__} {split} of {len(self.datasets)} datasets"
        arrays = load_or_build(
            cache,
            self.INDEX_NAMES,
            self._build_indices,
            what,
            is_built_on_rank,
            synchronize,
            validate=self._check_cached_indices,
        )
        self.dataset_index = arrays["dataset_index"]
        self.dataset_sample_index = arrays["dataset_sample_index"]

    def _check_cached_indices(self, arrays: Dict[str, np.ndarray]) -> None:
        """Raise ValueError when cached arrays do not fit the members (a member id past the
        last member, a sample id past a member's length)."""
        which, sample = arrays["dataset_index"], arrays["dataset_sample_index"]
        if which.shape != (self.size,) or sample.shape != (self.size,):
            raise ValueError(f"shapes {which.shape}, {sample.shape}, expected ({self.size},)")
        if not self.size:
            return
        if int(which.min()) < 0 or int(which.max()) >= len(self.datasets):
            raise ValueError(f"dataset_index holds member ids outside [0, {len(self.datasets)})")
        lengths = np.array([len(d) for d in self.datasets], dtype=np.int64)
        if int(sample.min()) < 0 or bool(np.any(sample >= lengths[which])):
            raise ValueError("dataset_sample_index holds sample ids past their member's length")

    def _build_indices(self) -> Dict[str, np.ndarray]:
        build = (
            helpers.build_blending_indices
            if self.legacy
            else helpers.build_blending_indices_largest_error
        )
        dataset_index, dataset_sample_index = build(
            np.asarray(self.weights, dtype=np.float64), self.size
        )
        counts = np.bincount(dataset_index, minlength=len(self.datasets))
        for d, (dataset, count) in enumerate(zip(self.datasets, counts)):
            if count > len(dataset):
                raise ValueError(
                    f"the blend draws {count} samples from dataset {d} "
                    f"({getattr(dataset, 'dataset_path', type(dataset).__name__)}) which holds "
                    f"only {len(dataset)}; build it with more samples (the builder oversamples "
                    "each member by 0.5%: ceil(ceil(weight * size) * 1.005))"
                )
        shares = ", ".join(
            f"{w:.4f}->{c / max(self.size, 1):.4f}" for w, c in zip(self.weights, counts)
        )
        logger.info("blend of %d samples, weight->achieved share: %s", self.size, shares)
        return {"dataset_index": dataset_index, "dataset_sample_index": dataset_sample_index}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        idx = int(idx)
        if not 0 <= idx < self.size:
            raise IndexError(f"sample {idx} out of range for a blend of {self.size} samples")
        dataset_id = int(self.dataset_index[idx])
        sample = self.datasets[dataset_id][int(self.dataset_sample_index[idx])]
        if self.config.return_data_index:
            sample = {**sample, "dataset_id": np.int64(dataset_id)}
        return sample

    @property
    def dataset_paths(self) -> List[Optional[str]]:
        """Path prefix of each member (None where unknown)."""
        return [getattr(d, "dataset_path", None) for d in self.datasets]

    def sample_source(self) -> BlendedSampleSource:
        """The samples as a composite of the members' sources (a member without its own
        `sample_source()` is read item by item)."""
        members = [
            d.sample_source() if hasattr(d, "sample_source") else SequenceSampleSource(d)
            for d in self.datasets
        ]
        return BlendedSampleSource(self, members)
