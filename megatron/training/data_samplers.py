"""Batch samplers that turn consumed samples into the indices of this rank's micro-batches.

Which samples form global batch k depends only on the number of samples consumed before it (and
the seed), never on the data-parallel size or the number of loader workers: resuming from any
checkpoint, with any DP size, reads exactly the batches the uninterrupted run would have read.
"""

from __future__ import annotations

from typing import Iterator, List

import torch


class _SamplerBase:
    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
    ):
        if total_samples <= 0:
            raise ValueError(f"the dataset has no samples (total {total_samples})")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"data-parallel rank {dp_rank} outside [0, {dp_size})")
        self.total_samples, self.consumed_samples = total_samples, consumed_samples
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    def _slice(self, batch: List[int]) -> List[int]:
        start = self.dp_rank * self.micro_batch_size
        return batch[start : start + self.micro_batch_size]


class PretrainingSampler(_SamplerBase):
    """Samples in dataset order (the dataset's own shuffle index does the shuffling).

    Each step of micro_batch_size x dp_size consecutive samples is one micro-batch on every DP
    rank; rank r takes the r-th slice. Stops at the end of the dataset (drop_last semantics).
    """

    def __len__(self) -> int:
        return self.total_samples

    def __iter__(self) -> Iterator[List[int]]:
        span = self.micro_batch_size * self.dp_size
        start = self.consumed_samples
        while start + span <= self.total_samples:
            yield self._slice(list(range(start, start + span)))
            start += span


class CyclicSampler(_SamplerBase):
    """A seeded permutation of the whole dataset per epoch (--dataloader-type cyclic).

    The permutation of epoch e is drawn from a generator seeded with seed + e, so it is the same
    on every rank and for every DP size; it runs forever (epoch after epoch).
    """

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed

    def __len__(self) -> int:
        return self.total_samples

    def _epoch_perm(self, epoch: int) -> List[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(self.total_samples, generator=g).tolist()

    def __iter__(self) -> Iterator[List[int]]:
        span = self.micro_batch_size * self.dp_size
        pos = self.consumed_samples
        epoch, perm = -1, []
        while True:
            batch = []
            for p in range(pos, pos + span):
                e, i = divmod(p, self.total_samples)
                if e != epoch:
                    epoch, perm = e, self._epoch_perm(e)
                batch.append(perm[i])
            yield self._slice(batch)
            pos += span
