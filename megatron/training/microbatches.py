"""How many micro-batches make the current global batch (constant, or ramped up by samples)."""

from __future__ import annotations

import logging
from typing import List, Optional

logger = logging.getLogger(__name__)


class MicroBatchCalculator:
    """Global batch size and number of micro-batches per rank as a function of consumed samples.

    Args:
        global_batch_size: final samples per step over all DP ranks.
        micro_batch_size: samples per micro-batch per rank.
        data_parallel_size: DP ranks.
        rampup_batch_size: [start, increment, ramp-up samples] or None.
    """

    def __init__(
        self,
        global_batch_size: int,
        micro_batch_size: int,
        data_parallel_size: int,
        rampup_batch_size: Optional[List[int]] = None,
    ):
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.data_parallel_size = data_parallel_size
        self.unit = micro_batch_size * data_parallel_size
        if global_batch_size % self.unit:
            raise ValueError(
                f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size "
                f"{micro_batch_size} x data-parallel size {data_parallel_size} = {self.unit}; "
                f"use a multiple of {self.unit}"
            )
        self.rampup = rampup_batch_size
        if rampup_batch_size is not None:
            start, incr, samples = (int(x) for x in rampup_batch_size)
            if start % self.unit or incr % self.unit:
                raise ValueError(
                    f"--rampup-batch-size start {start} and increment {incr} must be multiples of "
                    f"micro batch x DP = {self.unit}"
                )
            if (global_batch_size - start) % incr or start > global_batch_size or incr <= 0:
                raise ValueError(
                    f"--rampup-batch-size: {global_batch_size} - start {start} must be a "
                    "non-negative "
                    f"multiple of the increment {incr}"
                )
            steps = (global_batch_size - start) // incr
            self._start, self._incr = start, incr
            self._samples_per_increment = samples / steps if steps else 0.0

    def global_batch_at(self, consumed_samples: int) -> int:
        """Global batch size of the step that starts after `consumed_samples` samples."""
        if self.rampup is None or not self._samples_per_increment:
            return self.global_batch_size
        steps = int(consumed_samples / self._samples_per_increment)
        return min(self._start + steps * self._incr, self.global_batch_size)

    def num_micro_batches_at(self, consumed_samples: int) -> int:
        """Micro-batches per DP rank in the step that starts after `consumed_samples`."""
        return self.global_batch_at(consumed_samples) // self.unit
