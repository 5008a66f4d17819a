"""Curriculum analysis results: the sorted metric index, and its files in DeepSpeed's layout.

For a metric `m` analysed into folder `<save>`, the files are those DeepSpeed's DataAnalyzer
writes (so its DeepSpeedDataSampler and Megatron-DeepSpeed launchers can read them), each an
MMIDIDX `.bin`/`.idx` pair under `<save>/<m>/`:

- `<m>_sample_to_metric`: N rows of one value, the metric of sample i (dataset index order);
  document_indices [0, N, N].
- `<m>_index_to_sample`: V rows, row r = the ids (ascending) of the samples having the r-th
  smallest distinct value; [0, V, V].
- `<m>_index_to_metric`: V rows of one value, that value; [0, V, V].
- `<m>_index_to_sample_percentile_merged`: R = ceil(V / step) rows with step = max(1, V // 100),
  row k = the concatenation of index_to_sample rows [k * step, (k + 1) * step); [0, R].
- `<m>_metric_value` (accumulate metrics): one row, the summed array; [0, 1].

(The repeated last document boundary is what DataAnalyzer's single-threaded reduce writes.)
Integer dtypes are the narrowest of uint8, int8, int16, int32, int64 that hold the values (codes
1-5, which Megatron and DeepSpeed read alike; DeepSpeed itself may choose uint16/32/64, whose
codes 6-8 Megatron reads as other types). Sample ids are int64-safe.

Float metrics (user metrics returning floats) keep the integer files DeepSpeed-readable by storing
the *dense rank* of each value (0 for the smallest distinct value, 1 for the next, ...) in
`sample_to_metric` and `index_to_metric` (row r holds r); the float64 values are in
`<m>_sample_to_metric.float64.npy` [N] and `<m>_index_to_metric.float64.npy` [V] (and a float
accumulate result only in `<m>_metric_value.float64.npy`). `<m>_analysis.json`, written last,
describes the result (metric, value type, counts, dtypes, provenance); its presence means the
files are complete. Every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional

import numpy as np

from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDatasetError,
    data_file_path,
    index_file_path,
    write_index,
)
from megatron.core.datasets.utils import atomic_save_npy, atomic_write_json  # noqa: F401 (re-exported)
from megatron.core.files import remove_stale_temporaries_beside, temporary_path

SAMPLE_TO_METRIC = "sample_to_metric"
INDEX_TO_SAMPLE = "index_to_sample"
INDEX_TO_METRIC = "index_to_metric"
PERCENTILE_MERGED = "index_to_sample_percentile_merged"
METRIC_VALUE = "metric_value"
FLOAT_SUFFIX = ".float64.npy"

_SIGNED = (np.int8, np.int16, np.int32, np.int64)


def fit_int_dtype(low: int, high: int) -> np.dtype:
    """Narrowest of uint8, int8, int16, int32, int64 (MMIDIDX codes 1-5) holding [low, high]."""
    low, high = int(low), int(high)
    if 0 <= low and high <= 255:
        return np.dtype(np.uint8)
    for dtype in _SIGNED:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"values in [{low}, {high}] do not fit int64")


def metric_prefix(save_path: str, name: str, kind: str) -> str:
    """`<save>/<name>/<name>_<kind>` (an MMIDIDX prefix)."""
    return os.path.join(save_path, name, f"{name}_{kind}")


def write_rows(prefix: str, flat: np.ndarray, row_sizes: np.ndarray, dtype, doc_index) -> None:
    """Write rows (the consecutive runs of `flat` of `row_sizes`) as an MMIDIDX pair, atomically.

    Args:
        prefix: output prefix (without .bin/.idx).
        flat: all values, row after row.
        row_sizes: int [R] values per row (sum = flat.size).
        dtype: one of the code 1-5 dtypes.
        doc_index: the document_indices array to store.
    """
    dtype = np.dtype(dtype)
    if DType.code_of(dtype) > DType.int64:
        raise IndexedDatasetError(f"{prefix}: analysis files use dtype codes 1-5, not {dtype}")
    if int(np.sum(row_sizes, dtype=np.int64)) != flat.size:
        raise AssertionError(f"{prefix}: row sizes sum to {np.sum(row_sizes)}, not {flat.size}")
    bin_path, idx_path = data_file_path(prefix), index_file_path(prefix)
    remove_stale_temporaries_beside(prefix)
    tmp_bin, tmp_idx = temporary_path(bin_path), temporary_path(idx_path)
    try:
        with open(tmp_bin, "wb") as f:
            np.ascontiguousarray(flat).astype(dtype, copy=False).tofile(f)
        write_index(tmp_idx, dtype, row_sizes, doc_index)
        if os.path.exists(idx_path):  # never an old index beside new data
            os.remove(idx_path)
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_idx, idx_path)
    finally:
        for tmp in (tmp_bin, tmp_idx):
            if os.path.exists(tmp):
                os.remove(tmp)


def read_rows(prefix: str) -> tuple:
    """(flat values, row_ptr int64 [R + 1], document_indices) of an MMIDIDX pair."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    sizes = np.asarray(dataset.sequence_lengths, dtype=np.int64)
    row_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if row_ptr[-1] == 0:
        flat = np.zeros(0, dtype=dataset.dtype)
    else:
        flat = np.fromfile(data_file_path(prefix), dtype=dataset.dtype)
    return flat, row_ptr, np.array(dataset.document_indices)


@dataclasses.dataclass
class MetricIndex:
    """Samples sorted by one single-value metric (what the curriculum sampler clusters).

    Attributes:
        sample_to_metric: [N] value of each sample (int64, or float64 for float metrics).
        order: int64 [N] sample ids sorted by (value, id): the flattened index_to_sample.
        values: [V] distinct values, ascending (index_to_metric).
        row_ptr: int64 [V + 1]; samples with values[r] are order[row_ptr[r]:row_ptr[r + 1]].
    """

    sample_to_metric: np.ndarray
    order: np.ndarray
    values: np.ndarray
    row_ptr: np.ndarray

    @classmethod
    def from_values(cls, values: np.ndarray) -> "MetricIndex":
        """Sort the values of N samples (a stable sort: equal values keep ascending ids)."""
        values = np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"metric values must be 1-D, got shape {values.shape}")
        values = values.astype(np.float64 if values.dtype.kind == "f" else np.int64)
        order = np.argsort(values, kind="stable").astype(np.int64)
        ranked = values[order]
        starts = np.flatnonzero(ranked[1:] != ranked[:-1]) + 1
        row_ptr = np.concatenate([[0], starts, [values.size]]).astype(np.int64)
        if values.size == 0:
            row_ptr = np.zeros(1, dtype=np.int64)
        return cls(values, order, ranked[row_ptr[:-1]], row_ptr)

    @property
    def num_samples(self) -> int:
        return int(self.order.size)

    @property
    def is_float(self) -> bool:
        return self.sample_to_metric.dtype.kind == "f"

    def samples_of_row(self, row: int) -> np.ndarray:
        """index_to_sample row `row`: ids of the samples with the row-th smallest value."""
        return self.order[self.row_ptr[row] : self.row_ptr[row + 1]]

    def dense_ranks(self) -> np.ndarray:
        """int64 [N]: the row of each sample's value (0 = smallest distinct value)."""
        ranks = np.empty(self.num_samples, dtype=np.int64)
        ranks[self.order] = np.repeat(np.arange(self.values.size), np.diff(self.row_ptr))
        return ranks

    def percentile_row_ptr(self) -> np.ndarray:
        """int64 [R + 1] offsets into `order` of the percentile-merged rows (DeepSpeed's rule:
        step = max(1, V // 100) consecutive value rows per merged row)."""
        step = max(1, self.values.size // 100)
        return np.concatenate([self.row_ptr[:-1:step], self.row_ptr[-1:]]).astype(np.int64)


def write_metric_index(save_path: str, name: str, index: MetricIndex, info: Dict) -> None:
    """Write the four single-value outputs of metric `name` (see the module docstring)."""
    os.makedirs(os.path.join(save_path, name), exist_ok=True)
    n, v = index.num_samples, int(index.values.size)
    if index.is_float:
        stored_samples, stored_values = index.dense_ranks(), np.arange(v, dtype=np.int64)
        atomic_save_npy(
            metric_prefix(save_path, name, SAMPLE_TO_METRIC) + FLOAT_SUFFIX, index.sample_to_metric
        )
        atomic_save_npy(
            metric_prefix(save_path, name, INDEX_TO_METRIC) + FLOAT_SUFFIX, index.values
        )
    else:
        stored_samples, stored_values = index.sample_to_metric, index.values
    value_dtype = (
        fit_int_dtype(stored_values.min(), stored_values.max()) if v else np.dtype(np.uint8)
    )
    id_dtype = fit_int_dtype(0, max(n - 1, 0))
    write_rows(
        metric_prefix(save_path, name, SAMPLE_TO_METRIC),
        stored_samples,
        np.ones(n, np.int64),
        value_dtype,
        [0, n, n],
    )
    row_sizes = np.diff(index.row_ptr)
    write_rows(
        metric_prefix(save_path, name, INDEX_TO_SAMPLE), index.order, row_sizes, id_dtype, [0, v, v]
    )
    write_rows(
        metric_prefix(save_path, name, INDEX_TO_METRIC),
        stored_values,
        np.ones(v, np.int64),
        value_dtype,
        [0, v, v],
    )
    merged = np.diff(index.percentile_row_ptr())
    write_rows(
        metric_prefix(save_path, name, PERCENTILE_MERGED),
        index.order,
        merged,
        id_dtype,
        [0, merged.size],
    )
    summary = {
        **info,
        "metric": name,
        "value_type": "float" if index.is_float else "int",
        "num_samples": n,
        "num_values": v,
        "value_dtype": value_dtype.name,
        "sample_id_dtype": id_dtype.name,
        "percentile_merged_rows": int(merged.size),
    }
    if index.is_float:
        summary["float_encoding"] = "integer files hold the dense rank; values in *.float64.npy"
    atomic_write_json(os.path.join(save_path, name, f"{name}_analysis.json"), summary)


def write_metric_value(save_path: str, name: str, value: np.ndarray, info: Dict) -> None:
    """Write an accumulate metric's summed array as `<name>_metric_value` (float: .npy only)."""
    os.makedirs(os.path.join(save_path, name), exist_ok=True)
    value = np.asarray(value)
    flat = value.reshape(-1)
    prefix = metric_prefix(save_path, name, METRIC_VALUE)
    summary = {**info, "metric": name, "shape": list(value.shape)}
    if value.dtype.kind == "f":
        atomic_save_npy(prefix + FLOAT_SUFFIX, value)
        summary["value_type"] = "float"
    else:
        dtype = fit_int_dtype(flat.min(), flat.max()) if flat.size else np.dtype(np.uint8)
        write_rows(prefix, flat, np.array([flat.size]), dtype, [0, 1])
        summary.update(value_type="int", value_dtype=dtype.name)
    atomic_write_json(os.path.join(save_path, name, f"{name}_analysis.json"), summary)


def read_analysis_info(save_path: str, name: str) -> Optional[Dict]:
    """The `<name>_analysis.json` of a finished analysis, or None."""
    path = os.path.join(save_path, name, f"{name}_analysis.json")
    if not os.path.isfile(path):
        return None
    with open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def load_metric_index(save_path: str, name: str) -> MetricIndex:
    """Read a single-value metric's outputs back (true float values for float metrics).

    Raises:
        FileNotFoundError: the analysis of `name` in `save_path` is missing or unfinished.
    """
    info = read_analysis_info(save_path, name)
    if info is None or "num_values" not in info:
        raise FileNotFoundError(
            f"{os.path.join(save_path, name)}: no finished single-value analysis of {name!r}; run "
            "tools/analyze_data.py (its reduce step writes <name>_analysis.json last)"
        )
    samples, _, _ = read_rows(metric_prefix(save_path, name, SAMPLE_TO_METRIC))
    order, row_ptr, _ = read_rows(metric_prefix(save_path, name, INDEX_TO_SAMPLE))
    values, _, _ = read_rows(metric_prefix(save_path, name, INDEX_TO_METRIC))
    if info.get("value_type") == "float":
        samples = np.load(metric_prefix(save_path, name, SAMPLE_TO_METRIC) + FLOAT_SUFFIX)
        values = np.load(metric_prefix(save_path, name, INDEX_TO_METRIC) + FLOAT_SUFFIX)
    cast = np.float64 if info.get("value_type") == "float" else np.int64
    return MetricIndex(samples.astype(cast), order.astype(np.int64), values.astype(cast), row_ptr)


def load_metric_value(save_path: str, name: str) -> np.ndarray:
    """An accumulate metric's summed array (int64, or float64)."""
    info = read_analysis_info(save_path, name)
    if info is None or "shape" not in info:
        raise FileNotFoundError(
            f"{os.path.join(save_path, name)}: no finished analysis of {name!r}"
        )
    prefix = metric_prefix(save_path, name, METRIC_VALUE)
    if info["value_type"] == "float":
        return np.load(prefix + FLOAT_SUFFIX)
    flat, _, _ = read_rows(prefix)
    return flat.astype(np.int64).reshape(info["shape"])
