"""Curriculum sampler: which dataset indices form global batch k, for every rank alike.

Semantics (DeepSpeed's DeepSpeedDataSampler): global batches are numbered from step 1. At each
step every curriculum metric's difficulty comes from its schedule (`pacing`); at the first step
and whenever a schedule_based metric's difficulty changes, a new *cluster* of samples forms:

- one schedule_based metric, value difficulty: the samples with metric in (previous, current];
  percentile difficulty: positions [N * previous // 100, N * current // 100) of the samples in
  ascending metric order (ties by sample id, or in the analysis file's row order);
- several schedule_based metrics: the samples allowed by every metric ("<= current": value
  <= current, position < N * current // 100) minus the samples of all earlier clusters;
- no schedule_based metric (only single_cluster ones, which drive post-processing): one cluster
  of all samples.

(DeepSpeed cuts percentiles at multiples of N // max_difficulty, which puts the N mod 100
remainder into the last percentile; here position N * p // 100 is exact.)

Empty clusters are skipped. Each global batch of G samples makes G independent cluster picks with
probability proportional to cluster size (so the counts per cluster are multinomial), reads each
cluster's count from its cursor in a seeded permutation of the cluster (a new permutation each time
the cluster is exhausted), and puts the samples in random order: slot j of the batch holds the
next sample of the cluster picked by draw j (the same distribution as DeepSpeed's concatenation
in cluster order followed by a shuffle, without a second random stream). DP rank r then takes, in
micro-batch j, positions [j * mbs * dp + r * mbs, ... + mbs).

Randomness: draw j of step s is `splitmix64(key(seed, s) + (j + 1) * golden) mod total_size`
mapped to clusters by cumulative size; the permutation of epoch e of the cluster formed at step t
is the stable argsort of the words of `key(seed, t, e)` (clusters up to 8192 samples) or
`RandomState(key words).permutation` (bigger ones). Nothing depends on the platform, the numpy
version, the number of ranks or workers.

**Fix** (DeepSpeed computes this on global rank 0, writes cluster files, broadcasts every batch
and checkpoints the wrong RNG): every draw here is a pure function of (seed, step) and every
permutation of (seed, cluster, epoch), through counter-based hashing, so all ranks compute the
same batches with no I/O and no communication. The only state is the step, the consumed samples
and each cluster's (epoch, cursor): `state_dict` is a small plain dict, and a new sampler that
loads it continues with exactly the batches the uninterrupted run would have drawn, for any
data-parallel size (the global batch is formed first, then sliced), micro-batch size and number of
loader workers (the sampler runs in the main process as the DataLoader's batch_sampler).
`state_dict(step)` gives the state after any recent step, so a loader that prefetches ahead of
the training loop still checkpoints the right position.

Metric data: per-sample arrays in dataset-index order (what `analysis.attach_metrics` sets as
`dataset.curriculum_metric_values`), or DeepSpeed-format `<m>_index_to_sample` /
`<m>_index_to_metric` files (`tools/analyze_data.py`); see `resolve_metrics`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from megatron.core.counter_rng import permutation, stream_key, uniform_u64
from megatron.core.curriculum.clusters import ClusterTable
from megatron.core.curriculum.metric_data import SortedMetric, resolve_metrics
from megatron.core.curriculum.pacing import curriculum_difficulties
from megatron.core.deepspeed_config import DataEfficiencyConfig
from megatron.core.json_config import to_plain_dict

logger = logging.getLogger(__name__)

STATE_FORMAT = "curriculum_sampler/1"
_TAG_DRAW, _TAG_PERM = 1, 3
_REPLAY_CHUNK = 2048
"""Steps counted together when replaying (bounds the memory of the draws)."""


@dataclasses.dataclass
class _State:
    step: int
    """Global batches drawn so far (the next one is step + 1)."""
    consumed: int
    """Samples drawn so far."""
    epochs: np.ndarray
    """int64 [C]: times each active cluster was exhausted."""
    cursors: np.ndarray
    """int64 [C]: next position in each active cluster's current permutation."""

    def copy(self) -> "_State":
        return _State(self.step, self.consumed, self.epochs.copy(), self.cursors.copy())


BatchSize = Union[int, Callable[[int], int]]


class CurriculumSampler:
    """Batch sampler of curriculum learning (see the module docstring for the semantics).

    Args:
        config: the data-efficiency config (seed, num_epochs, curriculum metrics). With curriculum
            learning off, all samples form one cluster (seeded shuffling, reshuffled per epoch).
        num_samples: length of the training dataset (its indices are what the sampler yields).
        micro_batch_size: samples per micro-batch per DP rank.
        data_parallel_rank: this rank's DP rank.
        data_parallel_size: DP ranks.
        global_batch_size: samples per global batch, or a function of the samples consumed so
            far (batch-size ramp-up, e.g. `MicroBatchCalculator.global_batch_at`); every global
            batch must be a multiple of micro_batch_size * data_parallel_size.
        metric_values: per-metric data (see `resolve_metrics`): arrays of per-sample values in
            dataset-index order or `SortedMetric`s; metrics missing here are read from their
            analysis files.
        anchor_interval: a copy of the state is kept every this many steps, so that the state
            after a past step is recomputed from the nearest copy (`state_dict(step)`).

    Iterating yields this rank's micro-batches (lists of dataset indices) global batch after
    global batch, from the current state on; use it as a DataLoader's `batch_sampler`.
    """

    def __init__(
        self,
        config: DataEfficiencyConfig,
        num_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        global_batch_size: BatchSize,
        metric_values: Optional[Mapping[str, Union[np.ndarray, SortedMetric]]] = None,
        anchor_interval: int = 256,
    ):
        if num_samples <= 0:
            raise ValueError(f"the training dataset has no samples ({num_samples})")
        if micro_batch_size < 1 or not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(
                f"bad micro batch size {micro_batch_size} or DP rank {data_parallel_rank} of "
                f"{data_parallel_size}"
            )
        self.config = config
        self.curriculum = config.data_sampling.curriculum_learning
        self.seed, self.num_samples = int(config.seed), int(num_samples)
        self.micro_batch_size, self.dp_rank, self.dp_size = (
            micro_batch_size,
            data_parallel_rank,
            data_parallel_size,
        )
        self._batch_size = (
            global_batch_size
            if callable(global_batch_size)
            else (lambda _c, g=global_batch_size: g)
        )
        self.sample_limit = config.data_sampling.num_epochs * self.num_samples
        self.id_dtype = np.int32 if num_samples < 2**31 else np.int64
        metrics = (
            resolve_metrics(self.curriculum, num_samples, metric_values)
            if self.curriculum.enabled
            else {}
        )
        self._metrics = metrics
        self._table = ClusterTable(self.curriculum, metrics, self.num_samples, self.id_dtype)
        self.anchor_interval = max(1, int(anchor_interval))
        self._live = _State(0, 0, np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._anchors: Dict[int, _State] = {0: self._live.copy()}
        self._buf = np.zeros(0, self.id_dtype)
        self._offsets = np.zeros(0, np.int64)
        self._mat_epoch = np.zeros(0, np.int64)
        self._fingerprint: Optional[str] = None

    # ------------------------------------------------------------------ pure schedule queries

    def difficulties_at(self, step: int) -> Dict[str, float]:
        """{metric: difficulty} at global batch `step` (1-based); {} without curriculum."""
        return curriculum_difficulties(self.curriculum, step) if self.curriculum.enabled else {}

    @property
    def step(self) -> int:
        """Global batches drawn so far (the next batch is step + 1)."""
        return self._live.step

    @property
    def consumed_samples(self) -> int:
        """Samples drawn so far."""
        return self._live.consumed

    @property
    def clusters(self) -> List[np.ndarray]:
        """Members of the clusters formed so far (for inspection and tests)."""
        return [c.members for c in self._table.clusters[: self._table.num_active(self._live.step)]]

    def __len__(self) -> int:
        return self.sample_limit

    # ------------------------------------------------------------------ drawing

    def _global_batch_size(self, consumed: int) -> int:
        size = int(self._batch_size(consumed))
        unit = self.micro_batch_size * self.dp_size
        if size < unit or size % unit:
            raise ValueError(
                f"global batch size {size} (after {consumed} samples) is not a positive multiple "
                f"of micro batch {self.micro_batch_size} x data-parallel size {self.dp_size}"
            )
        return size

    def _advance(self, state: _State, read: bool) -> Tuple[_State, Optional[np.ndarray]]:
        """The state after drawing global batch state.step + 1 (and the batch when `read`)."""
        step = state.step + 1
        count = self._table.num_active(step)
        if count == 0:
            raise ValueError(
                f"no sample is eligible at curriculum step {step} (difficulties "
                f"{self.difficulties_at(step)}); lower min_difficulty of the schedule_based metrics"
            )
        sizes = self._table.sizes[:count]
        grow = count - state.epochs.size
        epochs = np.concatenate([state.epochs, np.zeros(grow, np.int64)]) if grow else state.epochs
        cursors = (
            np.concatenate([state.cursors, np.zeros(grow, np.int64)]) if grow else state.cursors
        )
        size = self._global_batch_size(state.consumed)
        draws = uniform_u64(stream_key(self.seed, _TAG_DRAW, step), size) % np.uint64(sizes.sum())
        picks = np.searchsorted(self._table.cum_sizes[:count], draws.astype(np.int64), "right")
        counts = np.bincount(picks, minlength=count).astype(np.int64)
        batch = None
        if read:  # draw j's slot gets the next sample of the cluster it picked
            batch = np.empty(size, self.id_dtype)
            slots = np.argsort(picks.astype(np.int16 if count < 2**15 else np.int64), kind="stable")
            batch[slots] = self._read(counts, epochs, cursors, sizes)
        end = cursors + counts
        new = _State(step, state.consumed + size, epochs + end // sizes, end % sizes)
        return new, batch

    def _replay(self, state: _State, target: int) -> _State:
        """The state after `target` global batches, from `state`, counting draws only: cursors
        and epochs only depend on each cluster's total draws, so runs of steps with the same
        clusters and batch size are counted together."""
        self._table.form_upto(target)
        while state.step < target:
            first = state.step + 1
            count = self._table.num_active(first)
            if count == 0:
                return self._advance(state, read=False)[0]  # raises the explanation
            later = [s for s in self._table.steps[count:] if s <= target]
            last = min(target, later[0] - 1) if later else target
            size = self._global_batch_size(state.consumed)
            run, consumed = 1, state.consumed + size
            while (
                first + run <= last
                and run < _REPLAY_CHUNK
                and self._global_batch_size(consumed) == size
            ):
                run, consumed = run + 1, consumed + size
            sizes = self._table.sizes[:count]
            keys = [stream_key(self.seed, _TAG_DRAW, s) for s in range(first, first + run)]
            draws = uniform_u64(np.array(keys, np.uint64), size) % np.uint64(sizes.sum())
            picks = np.searchsorted(np.cumsum(sizes), draws.reshape(-1).astype(np.int64), "right")
            grow = count - state.epochs.size
            end = np.concatenate([state.cursors, np.zeros(grow, np.int64)])
            end += np.bincount(picks, minlength=count)
            epochs = np.concatenate([state.epochs, np.zeros(grow, np.int64)]) + end // sizes
            state = _State(first + run - 1, consumed, epochs, end % sizes)
        return state

    def _materialize(self, c: int, epoch: int) -> None:
        cluster = self._table.clusters[c]
        n, off = cluster.members.size, self._offsets[c]
        perm = permutation(n, stream_key(self.seed, _TAG_PERM, cluster.step, epoch))
        self._buf[off : off + n] = cluster.members[perm]
        self._mat_epoch[c] = epoch

    def _ensure_buffer(self, count: int) -> None:
        """Room in the permutation buffer for the first `count` clusters."""
        have = self._offsets.size
        if count <= have:
            return
        sizes = self._table.sizes[:count]
        self._offsets = np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.int64)
        self._mat_epoch = np.concatenate([self._mat_epoch, np.full(count - have, -1, np.int64)])
        need = int(sizes.sum())
        if need > self._buf.size:
            grown = np.zeros(max(need, int(self._buf.size * 1.5)), self.id_dtype)
            grown[: self._buf.size] = self._buf
            self._buf = grown

    def _read(self, counts, epochs, cursors, sizes) -> np.ndarray:
        """The samples of each cluster from its cursor on, in cluster order."""
        count, total = counts.size, int(counts.sum())
        self._ensure_buffer(count)
        for c in np.flatnonzero(self._mat_epoch[:count] != epochs):
            self._materialize(int(c), int(epochs[c]))
        starts = np.cumsum(counts) - counts
        # Slot k of cluster c reads buffer position offset + cursor + k; clusters that run out
        # are redone below (clipped here so that their positions stay in the buffer).
        src = np.repeat(self._offsets[:count] + cursors - starts, counts) + np.arange(total)
        out = self._buf[np.minimum(src, self._buf.size - 1)]
        for c in np.flatnonzero(cursors + counts > sizes):  # continue in the next permutation
            c, left, cur, epoch = int(c), int(counts[c]), int(cursors[c]), int(epochs[c])
            size, off, pos = int(sizes[c]), int(self._offsets[c]), int(starts[c])
            while left:
                if self._mat_epoch[c] != epoch:
                    self._materialize(c, epoch)
                take = min(left, size - cur)
                out[pos : pos + take] = self._buf[off + cur : off + cur + take]
                pos, left, cur = pos + take, left - take, cur + take
                if cur == size:
                    epoch, cur = epoch + 1, 0
        return out

    def next_global_batch(self) -> Optional[np.ndarray]:
        """Draw the next global batch (all DP ranks' samples, in order); None when num_epochs
        passes over the data have been drawn."""
        size = self._global_batch_size(self._live.consumed)
        if self._live.consumed + size > self.sample_limit:
            return None
        self._live, batch = self._advance(self._live, read=True)
        if self._live.step % self.anchor_interval == 0:
            self._anchors[self._live.step] = self._live.copy()
        return batch

    def split(self, global_batch: np.ndarray) -> List[np.ndarray]:
        """This DP rank's micro-batches of a global batch: micro-batch j is
        global_batch[j * mbs * dp + rank * mbs : ... + mbs]."""
        unit, mbs = self.micro_batch_size * self.dp_size, self.micro_batch_size
        if len(global_batch) % unit:
            raise ValueError(f"global batch of {len(global_batch)} is not a multiple of {unit}")
        start = self.dp_rank * mbs
        return [
            global_batch[j + start : j + start + mbs] for j in range(0, len(global_batch), unit)
        ]

    def iter_global_batches(self) -> Iterator[Tuple[int, np.ndarray]]:
        """(step, global batch) from the current state on."""
        while True:
            batch = self.next_global_batch()
            if batch is None:
                return
            yield self._live.step, batch

    def iter_micro_batches(self) -> Iterator[Tuple[int, List[List[int]]]]:
        """(step, this rank's micro-batches of that global batch) from the current state on."""
        for step, batch in self.iter_global_batches():
            yield step, [mb.tolist() for mb in self.split(batch)]

    def __iter__(self) -> Iterator[List[int]]:
        for _, micro_batches in self.iter_micro_batches():
            yield from micro_batches

    def global_batch_at(self, step: int) -> np.ndarray:
        """Global batch `step` (1-based) computed from the nearest kept state, without changing
        this sampler (slower than iterating; for checks and tools)."""
        clone = CurriculumSampler.__new__(CurriculumSampler)
        clone.__dict__.update(self.__dict__)
        clone._buf, clone._offsets = np.zeros(0, self.id_dtype), np.zeros(0, np.int64)
        clone._mat_epoch, clone._anchors = np.zeros(0, np.int64), dict(self._anchors)
        clone._live = self._state_at(step - 1)
        return clone._advance(clone._live, read=True)[1]

    # ------------------------------------------------------------------ state

    def _state_at(self, step: int) -> _State:
        """The state after `step` global batches, replayed (draw counts only) from the nearest
        kept state at or before it (or from the start)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step == self._live.step:
            return self._live.copy()
        bases = [s for s in self._anchors if s <= step]
        if step >= self._live.step:
            state = self._live.copy()
        elif bases:
            state = self._anchors[max(bases)].copy()
        else:
            logger.info("curriculum sampler: replaying %d steps from the start", step)
            state = _State(0, 0, np.zeros(0, np.int64), np.zeros(0, np.int64))
        return self._replay(state, step)

    def fast_forward(self, step: int) -> None:
        """Move to the state after `step` global batches without reading samples (resuming a
        run whose checkpoint has no sampler state: the state is a function of the step)."""
        self._live = self._state_at(step)
        self._anchors = {self._live.step: self._live.copy()}

    def fingerprint(self) -> str:
        """md5 of everything the batches depend on besides the state: seed, dataset size,
        curriculum config and metric data."""
        if self._fingerprint is None:
            h = hashlib.md5()
            schedules = {}  # not the file paths: moved analysis files are the same data
            for name, m in self.curriculum.curriculum_metrics.items():
                plain = to_plain_dict(m)
                plain.pop("index_to_sample_path"), plain.pop("index_to_metric_path")
                plain["custom_callable"] = getattr(m.custom_callable, "__qualname__", None)
                schedules[name] = plain
            key = [self.seed, self.num_samples, self.curriculum.enabled and schedules]
            h.update(json.dumps(key, sort_keys=True).encode())
            for name in sorted(self._metrics):  # the same data from arrays or files alike
                data = self._metrics[name]
                h.update(name.encode() + np.ascontiguousarray(data.order, np.int64).tobytes())
                if self.curriculum.curriculum_metrics[name].difficulty_type == "value":
                    values = data.sorted_values
                    kind = np.float64 if values.dtype.kind == "f" else np.int64
                    h.update(np.ascontiguousarray(values, kind).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def state_dict(self, step: Optional[int] = None) -> Dict:
        """The sampler state after `step` global batches (default: all drawn so far) as a plain
        dict of ints, lists and strings.

        Pass the training loop's iteration when a DataLoader with workers prefetches batches: the
        sampler itself is then ahead of the model by the prefetched batches.
        """
        state = self._state_at(self._live.step if step is None else int(step))
        base = max((s for s in self._anchors if s <= state.step), default=None)
        for s in [s for s in self._anchors if base is not None and s < base]:
            del self._anchors[s]  # later requests are for later steps
        count = state.epochs.size
        return {
            "format": STATE_FORMAT,
            "step": state.step,
            "consumed_samples": state.consumed,
            "fingerprint": self.fingerprint(),
            "cluster_steps": [int(s) for s in self._table.steps[:count]],
            "cluster_sizes": [int(s) for s in self._table.sizes[:count]],
            "cluster_epochs": [int(e) for e in state.epochs],
            "cluster_cursors": [int(c) for c in state.cursors],
        }

    def load_state_dict(self, state: Dict, strict: bool = True) -> None:
        """Continue from a `state_dict` (of a sampler with any DP size or micro-batch size).

        Raises:
            ValueError: another format, or (with strict) a state saved with another seed, dataset
                size, curriculum config or metric data; without strict that is a warning.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a curriculum sampler state (format {state.get('format')!r})")
        if state["fingerprint"] != self.fingerprint():
            message = (
                "the curriculum sampler state was saved with another seed, dataset size, "
                "curriculum config or metric data; the batches will differ from the saved run"
            )
            if strict:
                raise ValueError(message + " (load with strict=False to continue anyway)")
            logger.warning(message)
        step, count = int(state["step"]), len(state["cluster_epochs"])
        active = self._table.num_active(step)
        saved = (list(state["cluster_steps"]), list(state["cluster_sizes"]))
        ours = (self._table.steps[:active], [int(s) for s in self._table.sizes[:active]])
        if count != active or saved != ours:
            raise ValueError(
                f"the saved sampler state has clusters {saved} at step {step}, this configuration "
                f"forms {ours}; the curriculum config or metric data changed"
            )
        self._live = _State(
            step,
            int(state["consumed_samples"]),
            np.array(state["cluster_epochs"], np.int64).reshape(-1),
            np.array(state["cluster_cursors"], np.int64).reshape(-1),
        )
        self._anchors = {step: self._live.copy()}
