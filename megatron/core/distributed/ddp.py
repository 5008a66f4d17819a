"""Data-parallel wrapper: contiguous fp32 gradient buffers, bucketed and overlapped reduction.

`DistributedDataParallel` gives every trainable parameter a `main_grad` view into a flat buffer
(see `grad_buffer`). A hook that runs after autograd accumulated `param.grad` adds it into
`main_grad` and frees `param.grad`. With `overlap_grad_reduce` a bucket's collective
(all-reduce, or reduce-scatter for the distributed optimizer) is launched asynchronously while
backward is still producing the gradients of earlier layers; `finish_grad_sync()` launches the
rest and waits.

When is a bucket complete? A parameter can receive gradient several times in one backward
(activation recomputation runs inner backward passes; a weight used in two recomputed regions),
so readiness is counted: the number of gradient arrivals each parameter had in the last
synchronised backward of the previous step is the number expected in this one. The first step
therefore launches everything in `finish_grad_sync`. Buckets are always launched in one fixed
order (bucket 0, 1, ...), so every rank issues the same collectives in the same order whatever
its readiness timing. Gradients that arrive after their bucket was launched (the graph changed)
are kept aside and reduced in a correction round that all ranks agree on with one small
all-reduce, so the result is exact in every case.

Gradient accumulation: run all but the last micro-batch under `no_sync()` (gradients only
accumulate in `main_grad`), the last one outside it, then `finish_grad_sync()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from ..tensor_parallel.mappings import group_rank, group_size
from .grad_buffer import Bucket, GradBuffer, reduce_scatter

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DDPConfig:
    """Data-parallel gradient reduction options."""

    grad_reduce_in_fp32: bool = False
    """Keep `main_grad` (accumulation and reduction) in fp32 for bf16/fp16 parameters
    (--accumulate-allreduce-grads-in-fp32; Megatron turns it on for --bf16). Off: main_grad has
    the parameter's dtype."""

    overlap_grad_reduce: bool = True
    """Launch each bucket's collective asynchronously as soon as its gradients are complete,
    overlapping communication with the rest of backward (--overlap-grad-reduce)."""

    bucket_size: Optional[int] = 40_000_000
    """Elements per communication bucket (a bucket closes once it holds at least this many);
    None puts each dtype's gradients in a single bucket. Small values give many buckets."""

    use_distributed_optimizer: bool = False
    """Reduce-scatter gradients into per-rank shards instead of all-reducing them, for the
    distributed optimizer (--use-distributed-optimizer)."""

    average_in_collective: bool = False
    """Average with ReduceOp.AVG inside the collective instead of scaling gradients by
    1/dp_size before it. Only NCCL supports AVG; other backends (gloo) fall back to scaling."""

    def __post_init__(self) -> None:
        if self.bucket_size is not None and self.bucket_size < 1:
            raise ValueError(
                f"DDPConfig.bucket_size must be >= 1 element or None (one bucket), "
                f"got {self.bucket_size}"
            )


class DistributedDataParallel(torch.nn.Module):
    """Wrap one model chunk for data-parallel training.

    Args:
        module: the model chunk; its parameters must already be on their final device.
        config: reduction options.
        dp_group: data-parallel process group (None: DP size 1, no communication).

    Every parameter with requires_grad gets `param.main_grad`. `forward` calls the module.
    `state_dict` / `load_state_dict` are the module's (no "module." prefix).
    """

    def __init__(self, module: torch.nn.Module, config: DDPConfig, dp_group=None):
        super().__init__()
        self.module, self.config, self.dp_group = module, config, dp_group
        self.dp_size, self.dp_rank = group_size(dp_group), group_rank(dp_group)
        self.params: List[torch.nn.Parameter] = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("DistributedDataParallel got a module without trainable parameters")
        self.grad_buffers = self._build_buffers()
        index = {p: i for i, p in enumerate(self.params)}
        # One launch order over all buffers: by the latest-in-model parameter of each bucket,
        # which approximates the order backward completes them.
        self.buckets: List[Bucket] = sorted(
            (b for buf in self.grad_buffers for b in buf.buckets), key=lambda b: -index[b.params[0]]
        )
        self._bucket_of = [0] * len(self.params)
        for b, bucket in enumerate(self.buckets):
            for p in bucket.params:
                self._bucket_of[index[p]] = b
        self._prescale, self._reduce_op = self._scaling()
        self._sync_enabled = True
        self._expected: Optional[List[int]] = None
        self._reset_window()
        self._hook_handles = [
            p.register_post_accumulate_grad_hook(self._make_hook(i))
            for i, p in enumerate(self.params)
        ]

    def _build_buffers(self) -> List[GradBuffer]:
        by_dtype: Dict[torch.dtype, List[torch.nn.Parameter]] = {}
        for p in self.params:
            by_dtype.setdefault(p.dtype, []).append(p)
        buffers = []
        for dtype, params in by_dtype.items():
            grad_dtype = torch.float32 if self.config.grad_reduce_in_fp32 else dtype
            buffers.append(
                GradBuffer(
                    params,
                    grad_dtype,
                    self.config.bucket_size,
                    self.dp_size,
                    self.config.use_distributed_optimizer,
                )
            )
        return buffers

    def _scaling(self):
        """(factor applied before the collective, reduce op) averaging over the DP group."""
        if self.dp_size == 1:
            return 1.0, dist.ReduceOp.SUM
        if self.config.average_in_collective:
            if dist.get_backend(self.dp_group) == "nccl":
                return 1.0, dist.ReduceOp.AVG
            logger.info("average_in_collective needs NCCL; scaling by 1/dp_size instead")
        return 1.0 / self.dp_size, dist.ReduceOp.SUM

    # ---- module interface ---------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """Run the wrapped module."""
        return self.module(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        """The wrapped module's state dict."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        """Load into the wrapped module (parameters stay views of the buffers)."""
        return self.module.load_state_dict(state_dict, strict=strict, **kwargs)

    # ---- gradient hooks -----------------------------------------------------------------------
    def _make_hook(self, idx: int):
        def hook(param: torch.nn.Parameter) -> None:
            grad = param.grad
            if grad is None:
                return
            param.grad = None
            b = self._bucket_of[idx]
            if b < self._next:
                self._stash_late(b, param, grad)
            else:
                param.main_grad.add_(grad)
            if self._sync_enabled:
                self._count(idx, b)

        return hook

    def _count(self, idx: int, b: int) -> None:
        self._seen[idx] += 1
        if self._pending is None:
            return
        if self._seen[idx] == self._expected[idx]:
            self._pending[b] -= 1
        while self._next < len(self.buckets) and self._pending[self._next] == 0:
            self._launch(self._next)

    def _stash_late(self, b: int, param: torch.nn.Parameter, grad: torch.Tensor) -> None:
        """Keep a gradient that arrived after its bucket's collective was issued."""
        bucket = self.buckets[b]
        if b not in self._late:
            self._late[b] = torch.zeros_like(bucket.grad_data)
        start, end = bucket.buffer.param_ranges[param]
        self._late[b][start - bucket.offset : end - bucket.offset].add_(grad.reshape(-1))

    def _reset_window(self) -> None:
        """Start a new synchronisation window (one optimizer step's last backward)."""
        n = len(self.buckets)
        self._seen = [0] * len(self.params)
        self._next = 0
        self._handles: List[object] = [None] * n
        self._late: Dict[int, torch.Tensor] = {}
        self._pending: Optional[List[int]] = None
        if self._expected is not None and self.config.overlap_grad_reduce and self.dp_size > 1:
            self._pending = [0] * n
            for i, e in enumerate(self._expected):
                if e > 0:
                    self._pending[self._bucket_of[i]] += 1

    # ---- collectives --------------------------------------------------------------------------
    def _shard(self, bucket: Bucket, data: torch.Tensor) -> torch.Tensor:
        start, end = bucket.shard_range(self.dp_rank, self.dp_size)
        return data[start - bucket.offset : end - bucket.offset]

    def _reduce(self, bucket: Bucket, data: torch.Tensor, async_op: bool):
        """Average `data` (a bucket-sized tensor) over DP: in full, or into this rank's shard."""
        if self._prescale != 1.0:
            data.mul_(self._prescale)
        if self.config.use_distributed_optimizer:
            shard = self._shard(bucket, data)
            return reduce_scatter(shard, data, self.dp_group, async_op, self._reduce_op)
        return dist.all_reduce(data, op=self._reduce_op, group=self.dp_group, async_op=async_op)

    def _launch(self, b: int) -> None:
        bucket = self.buckets[b]
        self._handles[b] = self._reduce(bucket, bucket.grad_data, self.config.overlap_grad_reduce)
        self._next = b + 1

    def _reduce_late_grads(self) -> None:
        """Correction round for gradients that missed their bucket's collective on any rank."""
        device = self.buckets[0].grad_data.device
        flags = torch.zeros(len(self.buckets), device=device)
        for b in self._late:
            flags[b] = 1.0
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.dp_group)
        late = flags.nonzero().flatten().tolist()
        if late:
            logger.warning(
                "gradients arrived after their bucket was reduced in %d bucket(s) (the backward "
                "graph changed since the last step); reducing them in a second round",
                len(late),
            )
        for b in late:
            bucket = self.buckets[b]
            extra = self._late.get(b)
            if extra is None:
                extra = torch.zeros_like(bucket.grad_data)
            self._reduce(bucket, extra, async_op=False)
            if self.config.use_distributed_optimizer:
                self._shard(bucket, bucket.grad_data).add_(self._shard(bucket, extra))
            else:
                bucket.grad_data.add_(extra)

    def finish_grad_sync(self) -> None:
        """Finish the data-parallel reduction of this step's gradients.

        Launches every bucket not yet launched (in bucket order) and waits for all of them.
        Afterwards `main_grad` holds the DP average (with the distributed optimizer: in this
        rank's shards; the rest of the buffer is stale). Call once per optimizer step, after the
        last backward, on every DP rank.
        """
        if self.dp_size == 1:
            self._reset_window()
            return
        early_launches_possible = self._pending is not None
        while self._next < len(self.buckets):
            self._launch(self._next)
        for handle in self._handles:
            if handle is not None:
                handle.wait()
        if early_launches_possible:
            self._reduce_late_grads()
        if any(self._seen):
            self._expected = list(self._seen)
        self._reset_window()

    @property
    def buckets_launched(self) -> int:
        """Buckets whose collective was already issued in the current window (during backward
        with overlap; 0 before the first hook and after finish_grad_sync)."""
        return self._next

    @contextlib.contextmanager
    def no_sync(self):
        """Micro-batches run inside only accumulate gradients (no communication)."""
        previous, self._sync_enabled = self._sync_enabled, False
        try:
            yield
        finally:
            self._sync_enabled = previous

    def zero_grad_buffer(self) -> None:
        """Zero every main_grad (call before each step's first micro-batch)."""
        for handle in self._handles:
            if handle is not None:
                handle.wait()
        for buf in self.grad_buffers:
            buf.zero()
        for p in self.params:
            p.grad = None
        self._reset_window()

    def broadcast_params(self) -> None:
        """Copy DP rank 0's parameters (and buffers) to the other DP ranks."""
        if self.dp_size == 1:
            return
        src = dist.get_global_rank(self.dp_group, 0)
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            dist.broadcast(t.data, src=src, group=self.dp_group)
