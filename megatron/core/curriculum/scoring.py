"""Scoring samples: the values of metrics at given dataset indices of a `SampleSource`.

Built-in metrics run vectorised over the samples' token pieces (`Metric.compute_pieces`), length
metrics over their lengths when the source knows them without reading tokens, and user metrics
on batches of materialised samples. A composite source (a blend) is scored member by member.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from megatron.core.curriculum.metrics import ACCUMULATE, Metric
from megatron.core.datasets.sample_source import SampleSource, SequenceSampleSource


def make_sample_source(dataset: Any) -> SampleSource:
    """The `SampleSource` of a dataset: its own `sample_source()` when it has one (GPT, BERT and
    blended datasets), the dataset itself when it is a source, else its items read one by one
    (`SequenceSampleSource`)."""
    if isinstance(dataset, SampleSource):
        return dataset
    if hasattr(dataset, "sample_source"):
        return dataset.sample_source()
    return SequenceSampleSource(dataset)


def evaluate(
    source: SampleSource, metrics: Sequence[Metric], indices: np.ndarray, batch_size: int = 1024
) -> Dict[str, np.ndarray]:
    """Each metric's values at `indices` ([len(indices)]) or its sum over them (accumulate).

    User metrics get batches of at most `batch_size` samples.
    """
    indices = source.check_indices(indices)
    if source.members:
        return _evaluate_members(source, metrics, indices, batch_size)
    out: Dict[str, np.ndarray] = {}
    lengths = None
    if any(m.lengths_only for m in metrics):
        lengths = source.lengths_at(indices)
    for metric in metrics:
        if metric.lengths_only and lengths is not None:
            out[metric.name] = metric.compute_lengths(lengths)
    pending = [m for m in metrics if m.name not in out]
    if not pending:
        return out
    pieces = source.pieces_at(indices)
    for metric in pending:
        if type(metric).compute_pieces is not Metric.compute_pieces:  # a vectorised built-in
            out[metric.name] = metric.compute_pieces(pieces)
            continue
        parts = []
        for begin in range(0, indices.size, batch_size):
            batch = pieces.select(np.arange(begin, min(indices.size, begin + batch_size)))
            parts.append(metric.compute(batch.materialize()))
        out[metric.name] = _combine(metric, parts)
    return out


def _combine(metric: Metric, parts: List[np.ndarray]) -> np.ndarray:
    if metric.metric_type == ACCUMULATE:
        total = None
        for part in parts:
            total = part.copy() if total is None else total + part
        return total if total is not None else np.zeros(0, dtype=np.int64)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts)


def _evaluate_members(
    source: SampleSource, metrics: Sequence[Metric], indices: np.ndarray, batch_size: int
) -> Dict[str, np.ndarray]:
    """`evaluate` of a composite source: each member scores its own samples."""
    member_of, member_sample = source.locate(indices)
    out: Dict[str, np.ndarray] = {}
    for d, member in enumerate(source.members):
        chosen = np.flatnonzero(member_of == d)
        if chosen.size == 0:
            continue
        values = evaluate(member, metrics, member_sample[chosen], batch_size)
        for metric in metrics:
            v = values[metric.name]
            if metric.metric_type == ACCUMULATE:
                out[metric.name] = v if metric.name not in out else out[metric.name] + v
                continue
            if metric.name not in out:
                out[metric.name] = np.zeros(indices.size, dtype=v.dtype)
            elif v.dtype.kind == "f" and out[metric.name].dtype.kind != "f":
                out[metric.name] = out[metric.name].astype(np.float64)
            out[metric.name][chosen] = v
    for metric in metrics:
        if metric.name not in out:
            size = 0 if metric.metric_type == ACCUMULATE else indices.size
            out[metric.name] = np.zeros(size, np.int64)
    return out
