"""The data of curriculum metrics: each metric's samples in ascending metric order.

The curriculum sampler cuts its clusters from these. A metric's data comes from per-sample values
in dataset-index order (what `analysis.attach_metrics` computes) or from DeepSpeed-format
`<m>_index_to_sample` / `<m>_index_to_metric` files (`tools/analyze_data.py`); see
`resolve_metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from megatron.core.curriculum.config import CurriculumLearningConfig, CurriculumMetricConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, data_file_path

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SortedMetric:
    """One metric's samples in ascending metric order (what clusters are cut from).

    Attributes:
        order: int [N] sample ids sorted by metric value (ties by id, or in file order).
        sorted_values: [N] the metric value at each position of `order`; None when only
            percentile difficulty is used (e.g. read from a percentile_merged file).
        source: where the data came from (for messages).
    """

    order: np.ndarray
    sorted_values: Optional[np.ndarray] = None
    source: str = ""

    @classmethod
    def from_values(cls, values: np.ndarray, source: str = "metric values") -> "SortedMetric":
        """From per-sample values in dataset-index order (a stable sort keeps ties by id)."""
        values = np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"{source}: metric values must be 1-D, got shape {values.shape}")
        order = np.argsort(values, kind="stable")
        return cls(order, values[order], source)

    @classmethod
    def from_index_files(
        cls, index_to_sample_path: str, index_to_metric_path: Optional[str] = None
    ) -> "SortedMetric":
        """From DeepSpeed analysis files: row r of index_to_sample holds the samples of the r-th
        smallest value, row r of index_to_metric that value (read when a path is given; a float
        metric's true values come from the `.float64.npy` file beside it)."""
        order, sizes = _read_rows(index_to_sample_path)
        if index_to_metric_path is None:
            return cls(order, None, index_to_sample_path)
        floats = index_to_metric_path + ".float64.npy"
        if os.path.isfile(floats):
            values = np.load(floats, allow_pickle=False)
        else:
            values, value_sizes = _read_rows(index_to_metric_path)
            if np.any(value_sizes != 1):
                raise ValueError(f"{index_to_metric_path}: expected one value per row")
        if values.size != sizes.size:
            raise ValueError(
                f"{index_to_sample_path} has {sizes.size} rows but {index_to_metric_path} has "
                f"{values.size} values; value difficulty needs the <metric>_index_to_sample file "
                "(not _percentile_merged) of the same analysis"
            )
        return cls(order, np.repeat(values, sizes), index_to_sample_path)

    @property
    def num_samples(self) -> int:
        return int(self.order.size)

    def threshold(self, difficulty: float, difficulty_type: str) -> int:
        """Positions of `order` admitted by "metric <= difficulty" (value) or "position <
        N * difficulty // 100" (percentile)."""
        n = self.num_samples
        if difficulty_type == "percentile":
            if difficulty <= 0:
                return 0
            if isinstance(difficulty, int):
                return min(n, n * difficulty // 100)
            return min(n, math.floor(n * difficulty / 100))
        if difficulty == -math.inf:
            return 0
        if self.sorted_values is None:
            raise ValueError(f"{self.source}: value difficulty needs metric values")
        return int(np.searchsorted(self.sorted_values, difficulty, side="right"))


def _read_rows(prefix: str) -> Tuple[np.ndarray, np.ndarray]:
    """(all values row after row as int64, row sizes) of an MMIDIDX pair."""
    dataset = IndexedDataset(prefix)
    sizes = np.asarray(dataset.sequence_lengths, dtype=np.int64)
    total = int(sizes.sum())
    pointers = np.asarray(dataset.sequence_pointers, dtype=np.int64)
    expected = np.concatenate([[0], np.cumsum(sizes[:-1])]) * dataset.dtype.itemsize
    if total and np.array_equal(pointers, expected):
        flat = np.fromfile(data_file_path(prefix), dtype=dataset.dtype, count=total)
    else:
        flat = np.concatenate([dataset.get(i) for i in range(len(dataset))] or [np.zeros(0)])
    return flat.astype(np.int64), sizes


_PLACEHOLDERS = ("", "dummy", "none", "null")


def resolve_metrics(
    config: CurriculumLearningConfig,
    num_samples: int,
    metric_values: Optional[Mapping[str, Union[np.ndarray, SortedMetric]]] = None,
) -> Dict[str, SortedMetric]:
    """The data of every schedule_based metric, checked against the dataset size.

    For metric `m` (in this order): `metric_values[m]` (an array of N values in dataset-index
    order, or a SortedMetric); the analysis files `index_to_sample_path` (and
    `index_to_metric_path` for value difficulty) when they exist; `metric_values[x]` where the
    index_to_sample_path's file name is `x_index_to_sample...` (so a seed config naming
    `.../vocab_rarity/vocab_rarity_index_to_sample_percentile_merged` also works with the
    in-builder analysis of `vocab_rarity`).

    Raises:
        ValueError: no data for a metric, or sample ids outside [0, num_samples).
    """
    metric_values = dict(metric_values or {})
    out = {}
    for name, metric in config.curriculum_metrics.items():
        if not metric.filters_samples:
            continue
        data = _metric_data(name, metric, metric_values)
        ids = data.order
        if ids.size and (ids.min() < 0 or ids.max() >= num_samples):
            raise ValueError(
                f"curriculum metric {name} ({data.source}) holds sample ids in [{ids.min()}, "
                f"{ids.max()}] but the training dataset has {num_samples} samples; analyse the "
                "same dataset (same --data-path, --split, --seq-length, --seed, epochs)"
            )
        if ids.size != num_samples:
            logger.warning(
                "curriculum metric %s covers %d samples, the training dataset has %d; the others "
                "are never drawn",
                name,
                ids.size,
                num_samples,
            )
        if metric.difficulty_type == "value" and data.sorted_values is None:
            raise ValueError(
                f"curriculum metric {name}: value difficulty needs index_to_metric_path"
            )
        out[name] = data
    return out


def _metric_data(name: str, metric: CurriculumMetricConfig, values: Mapping) -> SortedMetric:
    if name in values:
        v = values[name]
        return (
            v if isinstance(v, SortedMetric) else SortedMetric.from_values(v, f"values of {name}")
        )
    path = metric.index_to_sample_path
    if path and path.lower() not in _PLACEHOLDERS and IndexedDataset.exists(path):
        need_values = metric.difficulty_type == "value"
        return SortedMetric.from_index_files(
            path, metric.index_to_metric_path if need_values else None
        )
    stem = os.path.basename(path or "").split("_index_to_sample")[0]
    if stem in values:
        v = values[stem]
        return (
            v if isinstance(v, SortedMetric) else SortedMetric.from_values(v, f"values of {stem}")
        )
    raise ValueError(
        f"curriculum metric {name!r} is schedule_based but has no data: index_to_sample_path "
        f"{path!r} does not exist and no per-sample values named {name!r}"
        + (f" or {stem!r}" if stem else "")
        + f" were given (available: {sorted(values)}); run tools/analyze_data.py or compute the "
        "metric with the dataset (curriculum_metrics in the dataset config)"
    )
