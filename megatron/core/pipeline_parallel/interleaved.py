"""The interleaved 1F1B schedule's order (pure arithmetic) and its execution on one rank."""

from __future__ import annotations

import collections
from typing import List, Optional

import torch

from .pipeline_run import PipelineRun


class InterleavedOrder:
    """Order of the interleaved schedule on one rank (pure arithmetic, no communication).

    Micro-batches go through the chunks in groups of pp_size: the k-th forward of every rank runs
    chunk `chunk(k)` on micro-batch `microbatch(k)`; backwards visit the chunks in reverse.
    Rank r runs `warmup` forwards before its first backward (all of them when forward_only or
    when num_microbatches == pp_size).
    """

    def __init__(
        self, pp_size: int, pp_rank: int, num_chunks: int, num_microbatches: int, forward_only: bool
    ):
        if num_microbatches % pp_size:
            raise ValueError(
                f"the interleaved pipeline schedule needs the number of micro-batches per global "
                f"batch ({num_microbatches} = global batch size / (micro batch size x data "
                f"parallel size)) to be a multiple of --pipeline-model-parallel-size {pp_size}; "
                "change --global-batch-size or --micro-batch-size, or drop "
                "--num-layers-per-virtual-pipeline-stage"
            )
        self.pp_size, self.pp_rank, self.num_chunks = pp_size, pp_rank, num_chunks
        self.total = num_microbatches * num_chunks
        if forward_only or num_microbatches == pp_size:
            self.warmup = self.total
        else:
            self.warmup = min(self.total, 2 * (pp_size - pp_rank - 1) + (num_chunks - 1) * pp_size)
        self.steady = self.total - self.warmup
        self.all_warmup = not forward_only and self.warmup == self.total

    def chunk(self, k: int, forward: bool = True) -> int:
        """Model chunk of the k-th forward (or backward) step (k may be negative)."""
        c = (k % (self.pp_size * self.num_chunks)) // self.pp_size
        return c if forward else self.num_chunks - 1 - c

    def microbatch(self, k: int) -> int:
        """Micro-batch of the k-th forward (or backward) step."""
        group = self.pp_size * self.num_chunks
        return (k // group) * self.pp_size + k % self.pp_size

    def incoming_forward_chunks(self) -> List[int]:
        """The chunk each activation arriving from the previous rank is for, in arrival order."""
        steps = [self.chunk(k) for k in range(self.total)]
        if self.pp_rank > 0:
            return steps
        # From the last rank: its chunk c feeds chunk c + 1 here; its last chunk sends nothing.
        return [c + 1 for c in steps if c < self.num_chunks - 1]

    def incoming_backward_chunks(self) -> List[int]:
        """The chunk each gradient arriving from the next rank is for, in arrival order."""
        steps = [self.chunk(k, forward=False) for k in range(self.total)]
        if self.pp_rank < self.pp_size - 1:
            return steps
        return [c - 1 for c in steps if c > 0]


class InterleavedExecution:
    """Executes the interleaved schedule of one rank."""

    def __init__(self, run: PipelineRun, order: InterleavedOrder):
        self.run, self.order = run, order
        n = order.num_chunks
        self.inputs = [collections.deque() for _ in range(n)]  # received activations
        self.grads = [collections.deque() for _ in range(n)]  # received output gradients
        self.pending = [collections.deque() for _ in range(n)]  # (input, output) for backward
        self.forward_targets = iter(order.incoming_forward_chunks())
        self.backward_targets = iter(order.incoming_backward_chunks())

    def exchange(self, send_next=None, send_prev=None, recv_prev=False, recv_next=False) -> None:
        x, dy = self.run.exchange(send_next, send_prev, recv_prev, recv_next)
        if x is not None:
            self.inputs[next(self.forward_targets)].append(x)
        if dy is not None:
            self.grads[next(self.backward_targets)].append(dy)

    def forward(self, k: int) -> Optional[torch.Tensor]:
        """k-th forward step; returns the output to send (None on the model's last stage)."""
        c, run = self.order.chunk(k), self.run
        x = None if run.is_first(c) else self.inputs[c].popleft()
        y = run.forward(c, x)
        if not run.forward_only:
            self.pending[c].append((x, y))
        return None if run.is_last(c) else y

    def backward(self, k: int) -> Optional[torch.Tensor]:
        """k-th backward step; returns the input gradient to send (None on the first stage)."""
        c, run = self.order.chunk(k, forward=False), self.run
        x, y = self.pending[c].popleft()
        dy = None if run.is_last(c) else self.grads[c].popleft()
        dx = run.backward(c, x, y, dy)
        return None if run.is_first(c) else dx

    def execute(self) -> None:
        o = self.order
        first_rank, last_rank = o.pp_rank == 0, o.pp_rank == o.pp_size - 1
        self.exchange(recv_prev=not first_rank)
        for k in range(o.warmup):
            y = self.forward(k)
            recv_prev = k < o.total - 1 and not (first_rank and o.chunk(k + 1) == 0)
            # The last warm-up exchange also fetches the first gradient for the steady phase.
            recv_next = k == o.warmup - 1 and not o.all_warmup and not self.run.forward_only
            self.exchange(send_next=y, recv_prev=recv_prev, recv_next=recv_next and not last_rank)
        for i in range(o.steady):
            y = self.forward(i + o.warmup)
            dx = self.backward(i)
            # The first rank runs pp_size - 1 forward steps ahead of the last one (and the last
            # rank as many backward steps ahead of the first): the peer's chunk at that step says
            # whether it sends anything.
            recv_prev = (
                not first_rank or o.chunk(i + o.warmup - (o.pp_size - 1)) != o.num_chunks - 1
            )
            recv_next = not last_rank or o.chunk(i - (o.pp_size - 1), forward=False) != 0
            self.exchange(y, dx, recv_prev and i < o.steady - 1, recv_next)
        if self.run.forward_only:
            return
        if o.all_warmup:
            self.exchange(recv_next=not last_rank)
        for k in range(o.steady, o.total):
            dx = self.backward(k)
            recv_next = k < o.total - 1 and not (
                last_rank and o.chunk(k + 1, forward=False) == o.num_chunks - 1
            )
            self.exchange(send_prev=dx, recv_next=recv_next)
        leftovers = sum(len(q) for q in self.inputs + self.grads + self.pending)
        assert leftovers == 0, f"interleaved schedule left {leftovers} tensors unused"
