"""Curriculum data analysis: metric values of every sample, in training order.

Two ways to run it, with identical values:

1. **Attached to a dataset** (`attach_metrics(dataset, config)`, which the training loop calls
   on the training split): once the dataset has built or loaded its index, each metric is
   computed for every dataset index i (the i of `dataset[i]`, so analysis and training cannot
   disagree on sample order) and cached beside the index files, under the same hash and the
   metric name:

       <cache>/<hash>-GPTDataset-train-metric-<name>-values.npy
       <cache>/<hash>-GPTDataset-train-metric-<name>-description.json

   (`<hash>-BertDataset-train-...` for BERT; written atomically, description last; a description
   that no longer matches, e.g. other token frequencies, triggers a recompute). The values are
   returned and set as `dataset.curriculum_metric_values[name]`: int64 [len(dataset)] (float64
   for float user metrics; the summed array for accumulate metrics). With `is_built_on_rank` /
   `synchronize` the building rank computes and caches first, the others load after the barrier.
   The datasets know nothing of this: they only describe their samples (`sample_source()`).

2. **Distributed, for corpora too big for one machine** (`tools/analyze_data.py`): `run_map`
   scores one worker's contiguous shard of dataset indices and writes one `.npy` of values per
   metric plus a done marker (`<save>/<metric>/map/worker-<w>-of-<W>.npy/.json`); `run_reduce`
   checks that all shards are present and consistent, merges them with one sort and writes
   DeepSpeed's output files (`analysis_output`). A failed worker is re-run alone with its worker
   id; finished shards are kept (a matching done marker skips the work).

Built-in metrics use the vectorised kernels over token pieces (`scoring`); user metrics are called
on batches of materialised samples.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import json
import logging
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from megatron.core.curriculum.analysis_output import (
    MetricIndex,
    atomic_save_npy,
    atomic_write_json,
    write_metric_index,
    write_metric_value,
)
from megatron.core.curriculum.metrics import (
    ACCUMULATE,
    NEEDS_TOKEN_COUNTS,
    CallableMetric,
    CurriculumMetricsConfig,
    Metric,
    MetricContext,
    build_metric,
    corpus_token_counts,
    load_frequency_file,
    parse_metric_spec,
)
from megatron.core.curriculum.scoring import evaluate, make_sample_source
from megatron.core.datasets.sample_source import SampleSource
from megatron.core.datasets.utils import IndexCache
from megatron.core.files import remove_stale_temporaries_beside

logger = logging.getLogger(__name__)

CHUNK_SAMPLES = 65536
"""Samples scored per kernel call (bounds memory; one progress report per chunk)."""

ProgressFn = Callable[[int, int, float], None]
"""progress(samples_done, samples_total, seconds_elapsed)."""


def metric_context(source: SampleSource, config: CurriculumMetricsConfig) -> MetricContext:
    """The `MetricContext` of a source: vocabulary size and, when a metric needs them, token
    frequencies (config.token_counts_path, else the corpus token-count files)."""
    vocab_size = config.vocab_size or source.vocab_size
    needs_counts = any(parse_metric_spec(s).name in NEEDS_TOKEN_COUNTS for s in config.metrics)
    counts, where = None, ""
    if needs_counts:
        if config.token_counts_path:
            counts = load_frequency_file(config.token_counts_path, vocab_size)
            where = config.token_counts_path
        elif source.corpus_prefixes:
            counts, where = corpus_token_counts(source.corpus_prefixes, vocab_size)
        else:
            raise ValueError(
                "vocab_rarity needs token frequencies: set CurriculumMetricsConfig."
                "token_counts_path (--token-counts) for a dataset without a prefix"
            )
        logger.info("token frequencies for the rarity metrics: %s", where)
        vocab_size = vocab_size or int(counts.size)
    return MetricContext(source.max_sample_tokens, vocab_size, counts, where)


def build_metrics(source: SampleSource, config: CurriculumMetricsConfig) -> List[Metric]:
    """The metrics of `config` for the samples of `source`."""
    context = metric_context(source, config)
    return [build_metric(spec, context) for spec in config.metrics]


def compute_metric_values(
    source: SampleSource,
    metrics: Sequence[Metric],
    begin: int = 0,
    end: Optional[int] = None,
    batch_size: int = 1024,
    progress: Optional[ProgressFn] = None,
) -> Dict[str, np.ndarray]:
    """Metric values of dataset indices [begin, end): [end - begin] per single-value metric
    (int64, or float64 when a user metric returns floats), the sum for accumulate metrics.

    Samples are visited in file order (`source.storage_order`) and the values put back in
    dataset-index order, so user metrics get batches of samples that are not consecutive.
    """
    end = source.num_samples if end is None else int(end)
    if not 0 <= begin <= end <= source.num_samples:
        raise ValueError(f"sample range [{begin}, {end}) outside [0, {source.num_samples})")
    indices = np.arange(begin, end, dtype=np.int64)
    if all(m.lengths_only for m in metrics):  # no token is read: any order will do
        order = np.arange(indices.size)
    else:
        order = source.storage_order(indices)  # positions in `indices`, file order
    parts: Dict[str, List[np.ndarray]] = {m.name: [] for m in metrics}
    start = time.perf_counter()
    for lo in range(0, indices.size, CHUNK_SAMPLES):
        chunk = order[lo : lo + CHUNK_SAMPLES]
        values = evaluate(source, metrics, indices[chunk], batch_size)
        for metric in metrics:
            parts[metric.name].append(values[metric.name])
        if progress is not None:
            progress(lo + chunk.size, indices.size, time.perf_counter() - start)
    return {m.name: _merge_parts(m, parts[m.name], order) for m in metrics}


def _merge_parts(metric: Metric, parts: List[np.ndarray], order: np.ndarray) -> np.ndarray:
    if metric.metric_type == ACCUMULATE:
        total = None
        for part in parts:
            total = part if total is None else total + part
        return total if total is not None else np.zeros(0, dtype=np.int64)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    visited = np.concatenate(parts)  # values in visiting order
    merged = np.empty_like(visited, dtype=np.float64 if visited.dtype.kind == "f" else np.int64)
    merged[order] = visited
    return merged


def _metric_fingerprint(metric: Metric) -> Dict[str, Any]:
    """metric.describe(), plus a hash of a user function's source so edits invalidate caches."""
    description = metric.describe()
    if isinstance(metric, CallableMetric):
        try:
            code = inspect.getsource(metric.function).encode()
        except (OSError, TypeError):
            code = getattr(getattr(metric.function, "__code__", None), "co_code", b"")
        description["code_md5"] = hashlib.md5(code).hexdigest()
    return description


# ------------------------------------------------------------------------ attached to datasets


def attach_metrics(
    dataset: Any,
    config: Any,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
    synchronize: Optional[Callable[[], None]] = None,
) -> Dict[str, np.ndarray]:
    """Values of `config`'s metrics for every sample of `dataset`, cached beside its index.

    The samples come from `make_sample_source(dataset)` (the dataset's `sample_source()`). Each
    value array is cached under the dataset's index hash (`SampleSource.cache_location`) and
    reused while its description matches. A blend scores and caches each member on its own and
    gathers the blend's values from the members'. The values are also set as
    `dataset.curriculum_metric_values` (and on each member of a blend).

    Args:
        dataset: a GPTDataset, BertDataset, BlendedDataset or any dataset with `sample_source()`.
        config: a `CurriculumMetricsConfig`, a list of metric specs, or None (no metric: {}).
        is_built_on_rank: True on the rank(s) that compute and cache first (e.g. global rank 0).
        synchronize: barrier called once on every rank when is_built_on_rank is given.

    Returns:
        {metric name: int64 [len(dataset)]} (float64 for float user metrics; the summed array for
        accumulate metrics).
    """
    config = CurriculumMetricsConfig.coerce(config)
    if config is None:
        dataset.curriculum_metric_values = {}
        return {}
    source = make_sample_source(dataset)
    if is_built_on_rank is None:
        return _attach(source, config)
    if synchronize is None:
        raise ValueError("is_built_on_rank needs a synchronize callable (e.g. a barrier)")
    if is_built_on_rank():
        try:
            return _attach(source, config)
        finally:
            synchronize()
    synchronize()
    return _attach(source, config)


def _attach(source: SampleSource, config: CurriculumMetricsConfig) -> Dict[str, np.ndarray]:
    """Load or compute the values of one source (of each member of a composite source)."""
    if source.members:
        member_values = [_attach(m, config) for m in source.members]
        member_of, member_index = source.locate(np.arange(source.num_samples))
        values = {}
        for name in member_values[0]:
            kind = np.float64 if any(v[name].dtype.kind == "f" for v in member_values) else np.int64
            values[name] = np.empty(source.num_samples, dtype=kind)
            for d, member in enumerate(member_values):
                chosen = member_of == d
                values[name][chosen] = member[name][member_index[chosen]]
    else:
        values = _load_or_compute(source, config)
    dataset = getattr(source, "dataset", None)
    if dataset is not None:
        dataset.curriculum_metric_values = values
    return values


def _metric_cache(folder: Optional[str], base: str, name: str, description: dict) -> IndexCache:
    cache = IndexCache(folder, "metric", name, description)
    cache.base = f"{base}-metric-{name}"  # the dataset's hash and split, then the metric
    return cache


def _load_or_compute(source: SampleSource, config) -> Dict[str, np.ndarray]:
    folder, base = source.cache_location or (None, type(source).__name__)
    metrics = build_metrics(source, config)
    caches = {
        m.name: _metric_cache(
            folder,
            base,
            m.name,
            {"dataset": base, "samples": source.description(), "metric": _metric_fingerprint(m)},
        )
        for m in metrics
    }
    values: Dict[str, np.ndarray] = {}
    for m in metrics:
        loaded = caches[m.name].load(["values"])
        if loaded is not None:
            values[m.name] = loaded["values"]
            logger.info(
                "loaded curriculum metric %s from %s", m.name, caches[m.name].path("values")
            )
    missing = [m for m in metrics if m.name not in values]
    if missing:
        start = time.perf_counter()
        computed = compute_metric_values(source, missing, batch_size=config.batch_size)
        elapsed = time.perf_counter() - start
        logger.info(
            "computed curriculum metrics %s for %d samples of %s in %.2f s (%.0f samples/s)",
            [m.name for m in missing],
            source.num_samples,
            base,
            elapsed,
            source.num_samples / max(elapsed, 1e-9),
        )
        for m in missing:
            caches[m.name].save({"values": computed[m.name]})
            values[m.name] = computed[m.name]
    return {m.name: values[m.name] for m in metrics}


def blended_metric_values(blended: Any, name: str) -> np.ndarray:
    """A single-value metric of every sample of a BlendedDataset, from its members' values."""
    member_values = []
    for d, member in enumerate(blended.datasets):
        values = getattr(member, "curriculum_metric_values", {})
        if name not in values:
            raise KeyError(
                f"member {d} of the blend has no curriculum metric {name!r}; set "
                "curriculum_metrics in the dataset config"
            )
        member_values.append(np.asarray(values[name]))
    kind = np.float64 if any(v.dtype.kind == "f" for v in member_values) else np.int64
    out = np.empty(len(blended), dtype=kind)
    which = np.asarray(blended.dataset_index)
    for d, values in enumerate(member_values):
        chosen = which == d
        out[chosen] = values[np.asarray(blended.dataset_sample_index)[chosen]]
    return out


# ------------------------------------------------------------------------------ map and reduce


def shard_range(num_samples: int, worker_id: int, num_workers: int) -> tuple:
    """[begin, end) dataset indices of a worker: contiguous, sizes differing by at most one."""
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker id {worker_id} is not in [0, {num_workers})")
    return num_samples * worker_id // num_workers, num_samples * (worker_id + 1) // num_workers


def shard_paths(save_path: str, name: str, worker_id: int, num_workers: int) -> tuple:
    """(values .npy, done-marker .json) of one worker's shard of metric `name`."""
    stem = os.path.join(save_path, name, "map", f"worker-{worker_id:05d}-of-{num_workers:05d}")
    return stem + ".npy", stem + ".json"


@dataclasses.dataclass
class MapResult:
    """What `run_map` did for one metric: computed, or skipped (already done)."""

    name: str
    skipped: bool
    num_samples: int
    seconds: float


def _fingerprint(metric: Metric, source: SampleSource) -> Dict[str, Any]:
    return {
        "metric": _metric_fingerprint(metric),
        "source": source.description(),
        "num_samples": source.num_samples,
    }


def _shard_done(marker: str, fingerprint: Dict) -> bool:
    try:
        with open(marker, "rt", encoding="utf-8") as f:
            return json.load(f)["fingerprint"] == json.loads(json.dumps(fingerprint))
    except (OSError, ValueError, KeyError):
        return False


def run_map(
    source: SampleSource,
    metrics: Sequence[Metric],
    save_path: str,
    worker_id: int = 0,
    num_workers: int = 1,
    batch_size: int = 1024,
    overwrite: bool = False,
    progress: Optional[ProgressFn] = None,
) -> List[MapResult]:
    """Score this worker's shard of samples and write one values file + done marker per metric.

    A metric whose shard already has a done marker with the same fingerprint (metric, samples,
    sample count) is skipped unless `overwrite`.
    """
    begin, end = shard_range(source.num_samples, worker_id, num_workers)
    prints = {m.name: _fingerprint(m, source) for m in metrics}
    todo = [
        m
        for m in metrics
        if overwrite
        or not _shard_done(
            shard_paths(save_path, m.name, worker_id, num_workers)[1], prints[m.name]
        )
    ]
    results = [MapResult(m.name, True, end - begin, 0.0) for m in metrics if m not in todo]
    if not todo:
        return results
    start = time.perf_counter()
    values = compute_metric_values(source, todo, begin, end, batch_size, progress)
    seconds = time.perf_counter() - start
    for m in todo:
        npy, marker = shard_paths(save_path, m.name, worker_id, num_workers)
        os.makedirs(os.path.dirname(npy), exist_ok=True)
        remove_stale_temporaries_beside(npy)  # a killed earlier run of this worker
        remove_stale_temporaries_beside(marker)
        if os.path.exists(marker):
            os.remove(marker)  # the old marker must not vouch for the new values
        atomic_save_npy(npy, values[m.name])
        atomic_write_json(
            marker,
            {
                "fingerprint": prints[m.name],
                "metric_type": m.metric_type,
                "worker_id": worker_id,
                "num_workers": num_workers,
                "begin": begin,
                "end": end,
                "seconds": round(seconds, 3),
            },
        )
        results.append(MapResult(m.name, False, end - begin, seconds))
    return results


def finished_workers(save_path: str, name: str) -> Dict[int, List[int]]:
    """{num_workers: [worker ids with a done marker]} of the map outputs of metric `name`."""
    found: Dict[int, List[int]] = {}
    pattern = os.path.join(glob.escape(os.path.join(save_path, name, "map")), "worker-*-of-*.json")
    for path in glob.glob(pattern):
        match = re.search(r"worker-(\d+)-of-(\d+)\.json$", path)
        if match:
            found.setdefault(int(match.group(2)), []).append(int(match.group(1)))
    return {w: sorted(ids) for w, ids in found.items()}


def _read_shards(save_path: str, name: str, num_workers: int) -> tuple:
    markers, arrays = [], []
    missing = []
    for w in range(num_workers):
        npy, marker = shard_paths(save_path, name, w, num_workers)
        if not (os.path.isfile(marker) and os.path.isfile(npy)):
            missing.append(w)
            continue
        with open(marker, "rt", encoding="utf-8") as f:
            markers.append(json.load(f))
        arrays.append(np.load(npy, allow_pickle=False))
    if missing:
        raise FileNotFoundError(
            f"metric {name}: workers {missing} of {num_workers} have not finished (no done marker "
            f"in {os.path.join(save_path, name, 'map')}); re-run them with --worker-id <id> "
            f"--num-workers {num_workers}, then --reduce-only"
        )
    first = markers[0]
    for marker in markers[1:]:
        if marker["fingerprint"] != first["fingerprint"]:
            raise ValueError(
                f"metric {name}: worker {marker['worker_id']} analysed other samples or another "
                f"metric definition than worker {first['worker_id']}; re-run it with the same flags"
            )
    return markers, arrays


def run_reduce(save_path: str, name: str, num_workers: int) -> Dict[str, Any]:
    """Merge the shards of metric `name` and write its DeepSpeed-layout outputs.

    Returns the summary written to `<save>/<name>/<name>_analysis.json`.
    """
    markers, arrays = _read_shards(save_path, name, num_workers)
    total = markers[0]["fingerprint"]["num_samples"]
    info = {"fingerprint": markers[0]["fingerprint"], "num_workers": num_workers}
    if markers[0]["metric_type"] == ACCUMULATE:
        value = None
        for array in arrays:  # an empty shard (more workers than samples) adds nothing
            if array.size or value is None:
                value = array if value is None or not value.size else value + array
        write_metric_value(save_path, name, value, info)
        return info
    expected = 0
    for marker, array in zip(markers, arrays):
        if marker["begin"] != expected or array.shape != (marker["end"] - marker["begin"],):
            raise ValueError(
                f"metric {name}: shard of worker {marker['worker_id']} covers "
                f"[{marker['begin']}, {marker['end']}) with {array.shape} values, expected to "
                f"start at {expected}; re-run that worker"
            )
        expected = marker["end"]
    if expected != total:
        raise ValueError(f"metric {name}: shards cover {expected} of {total} samples")
    values = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    index = MetricIndex.from_values(values)
    write_metric_index(save_path, name, index, info)
    _log_percentiles(name, index)
    return info


def _log_percentiles(name: str, index: MetricIndex) -> None:
    if index.num_samples == 0:
        return
    ranked = index.sample_to_metric[index.order]
    n = index.num_samples
    points = [ranked[min(n - 1, n * p // 100)].item() for p in (5, 25, 50, 75, 95)]
    logger.info(
        "metric %s: %d distinct values; 5/25/50/75/95th percentiles %s",
        name,
        index.values.size,
        points,
    )
