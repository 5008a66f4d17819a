"""Curriculum clusters: the groups of samples that become eligible as the difficulties grow.

At the first step and whenever a schedule_based metric's difficulty changes, a new cluster forms
(see `sampler` for the rules); `ClusterTable` forms them lazily as later steps are asked for.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
from typing import Dict, List, Optional

import numpy as np

from megatron.core.curriculum.config import CurriculumLearningConfig
from megatron.core.curriculum.metric_data import SortedMetric
from megatron.core.curriculum.pacing import difficulty_at, difficulty_segments

logger = logging.getLogger(__name__)

_NO_RANK = np.iinfo(np.int64).max


@dataclasses.dataclass
class Cluster:
    step: int
    """Formation step (also the cluster's id in its permutation seeds)."""
    members: np.ndarray
    """Sample ids, in a canonical order (ascending metric or ascending id)."""


class ClusterTable:
    """The clusters formed up to a step; extended lazily as later steps are asked for."""

    def __init__(
        self,
        config: CurriculumLearningConfig,
        metrics: Dict[str, SortedMetric],
        num_samples: int,
        id_dtype,
    ):
        self.config, self.num_samples, self.id_dtype = config, num_samples, id_dtype
        metric_cfgs = config.curriculum_metrics if config.enabled else {}
        self.names = [n for n, m in metric_cfgs.items() if m.filters_samples]
        self.cfgs = [metric_cfgs[n] for n in self.names]
        self.orders = [metrics[n].order.astype(id_dtype) for n in self.names]
        self.metrics = [metrics[n] for n in self.names]
        self.clusters: List[Cluster] = []
        self.steps: List[int] = []
        self.sizes = np.zeros(0, np.int64)
        self.cum_sizes = np.zeros(0, np.int64)
        self.formed_upto = 0
        self._prev = [0] * len(self.names)  # thresholds at the last change
        self._ranks: Optional[List[np.ndarray]] = None
        self._assigned: Optional[np.ndarray] = None  # only after a schedule went back down
        self._starts = [  # steps where each (non-custom) schedule changes
            [s for s, _ in difficulty_segments(c)] if c.schedule_type != "custom" else []
            for c in self.cfgs
        ]

    def num_active(self, step: int) -> int:
        """Clusters formed at or before `step`."""
        self.form_upto(step)
        return bisect.bisect_right(self.steps, step)

    def form_upto(self, step: int) -> None:
        """Form the clusters of every change step up to `step`."""
        if step <= self.formed_upto:
            return
        if step < self._next_change():  # the common case: nothing changes
            self.formed_upto = step
            return
        for s in self._change_steps(self.formed_upto + 1, step):
            self._form(s)
        self.formed_upto = step

    def _next_change(self) -> float:
        """The first change step after formed_upto (custom schedules: the next step)."""
        if self.formed_upto == 0 or any(c.schedule_type == "custom" for c in self.cfgs):
            return self.formed_upto + 1
        later = [
            starts[i]
            for starts in self._starts
            for i in [bisect.bisect_right(starts, self.formed_upto)]
            if i < len(starts)
        ]
        return min(later, default=math.inf)

    def _change_steps(self, first: int, last: int) -> List[int]:
        steps = {1} if first <= 1 else set()
        for i, cfg in enumerate(self.cfgs):
            if cfg.schedule_type == "custom":  # evaluated step by step
                prev = difficulty_at(cfg, first - 1) if first > 1 else None
                for s in range(first, last + 1):
                    value = difficulty_at(cfg, s)
                    if value != prev:
                        steps.add(s)
                    prev = value
            else:
                starts = self._starts[i]
                lo, hi = bisect.bisect_left(starts, first), bisect.bisect_right(starts, last)
                steps.update(starts[lo:hi])
        return sorted(steps)

    def _form(self, step: int) -> None:
        if not self.cfgs:
            members = (
                np.arange(self.num_samples, dtype=self.id_dtype) if not self.clusters else None
            )
        else:
            cur = [
                m.threshold(difficulty_at(c, step), c.difficulty_type)
                for c, m in zip(self.cfgs, self.metrics)
            ]
            if len(self.cfgs) == 1:
                lo, hi = self._prev[0], cur[0]
                members = self.orders[0][lo:hi] if hi > lo else None
            else:
                members = self._form_intersection(cur)
            self._prev = cur
        if members is None or members.size == 0:
            return
        self.clusters.append(Cluster(step, members))
        self.steps.append(step)
        self.sizes = np.append(self.sizes, members.size)
        self.cum_sizes = np.cumsum(self.sizes)
        logger.debug(
            "curriculum cluster %d formed at step %d (difficulties %s): %d samples",
            len(self.clusters) - 1,
            step,
            {c.name: difficulty_at(c, step) for c in self.cfgs},
            members.size,
        )

    def _form_intersection(self, cur: List[int]) -> Optional[np.ndarray]:
        """Samples allowed by every metric at thresholds `cur`, minus those of earlier clusters."""
        if self._ranks is None:
            self._ranks = []
            for order in self.orders:
                rank = np.full(self.num_samples, _NO_RANK, dtype=np.int64)
                rank[order] = np.arange(order.size)
                self._ranks.append(rank)
        prev = self._prev
        if self._assigned is None and any(c < p for c, p in zip(cur, prev)):
            self._assigned = np.zeros(self.num_samples, dtype=bool)  # leave the nested regime
            for cluster in self.clusters:
                self._assigned[cluster.members] = True
        if self._assigned is not None:
            allowed = np.ones(self.num_samples, dtype=bool)
            for rank, t in zip(self._ranks, cur):
                allowed &= rank < t
            allowed &= ~self._assigned
            self._assigned |= allowed
            return np.flatnonzero(allowed).astype(self.id_dtype)
        # Nested regime: allowed sets only grow, so the new cluster is allowed(cur) - allowed(prev):
        # the samples each metric newly admits, kept when every metric allows them (a sample
        # newly admitted by several metrics is taken by the first of them).
        changed = [i for i, (c, p) in enumerate(zip(cur, prev)) if c > p]
        parts = []
        for k, i in enumerate(changed):
            candidates = self.orders[i][prev[i] : cur[i]]
            keep = np.ones(candidates.size, dtype=bool)
            for j, rank in enumerate(self._ranks):
                if j != i:
                    limit = prev[j] if j in changed[:k] else cur[j]
                    keep &= rank[candidates] < limit
            parts.append(candidates[keep])
        return np.sort(np.concatenate(parts)) if parts else None
