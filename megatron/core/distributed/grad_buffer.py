"""Contiguous gradient (and parameter) buffers cut into communication buckets.

Every parameter of a buffer gets `param.main_grad`, a view into one flat tensor, so the
data-parallel reduction is a few large collectives instead of one per parameter. Parameters are
laid out in reverse model order (the order backward produces their gradients) and grouped into
buckets of about `bucket_size` elements; a bucket is reduced as one collective.

With the distributed optimizer each bucket is padded to a multiple of the data-parallel size and
split into `dp_size` equal contiguous shards; DP rank r owns shard r of every bucket (its
gradients are reduce-scattered there, its optimizer updates that range, and an all-gather of
the bucket's parameter buffer brings every rank's parameters up to date). For that the
parameters themselves are rebound to views of a flat parameter buffer with the same layout.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

# Pad distributed-optimizer shards to multiples of this many elements (aligned shard starts).
_SHARD_ALIGN = 64


@dataclasses.dataclass
class Bucket:
    """A slice of a buffer reduced by one collective.

    Attributes:
        params: parameters in buffer order (reverse model order).
        offset: first element of the bucket in the buffer.
        numel: elements in the bucket, padding included.
        grad_data: [numel] view of the gradient buffer.
        param_data: [numel] view of the parameter buffer (distributed optimizer only).
        buffer: the GradBuffer this bucket belongs to.
    """

    params: List[torch.nn.Parameter]
    offset: int
    numel: int
    grad_data: torch.Tensor
    param_data: Optional[torch.Tensor]
    buffer: "GradBuffer"

    def shard_range(self, dp_rank: int, dp_size: int) -> Tuple[int, int]:
        """[start, end) in buffer coordinates of the shard that DP rank `dp_rank` owns."""
        size = self.numel // dp_size
        return self.offset + dp_rank * size, self.offset + (dp_rank + 1) * size


def _pad(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class GradBuffer:
    """Flat gradient buffer (and, for the distributed optimizer, parameter buffer) of parameters
    that share one parameter dtype.

    Args:
        params: parameters in model order (all of `param_dtype`).
        grad_dtype: dtype of `main_grad` (fp32 with grad_reduce_in_fp32, else the param dtype).
        bucket_size: elements per bucket (a bucket closes once it reaches this size);
            None: one bucket.
        dp_size: data-parallel size (bucket padding with the distributed optimizer).
        use_distributed_optimizer: pad buckets into equal DP shards, own shared embeddings in
            their own bucket, and rebind parameters to views of a flat parameter buffer.
    """

    def __init__(
        self,
        params: List[torch.nn.Parameter],
        grad_dtype: torch.dtype,
        bucket_size: Optional[int],
        dp_size: int,
        use_distributed_optimizer: bool,
    ):
        if not params:
            raise ValueError("GradBuffer needs at least one parameter")
        self.param_dtype, self.grad_dtype = params[0].dtype, grad_dtype
        self.dp_size = dp_size
        self.use_distributed_optimizer = use_distributed_optimizer
        device = params[0].device
        # param -> (start, end) of its elements in the buffer.
        self.param_ranges: Dict[torch.nn.Parameter, Tuple[int, int]] = {}
        layout = self._layout(list(reversed(params)), bucket_size)
        total = layout[-1][1] + layout[-1][2] if layout else 0
        self.numel = total
        self.grad_data = torch.zeros(total, dtype=grad_dtype, device=device)
        self.param_data = None
        if use_distributed_optimizer:
            self.param_data = torch.zeros(total, dtype=self.param_dtype, device=device)
        self.buckets: List[Bucket] = []
        for bucket_params, offset, numel in layout:
            self.buckets.append(
                Bucket(
                    bucket_params,
                    offset,
                    numel,
                    self.grad_data[offset : offset + numel],
                    None if self.param_data is None else self.param_data[offset : offset + numel],
                    self,
                )
            )
        self._bind(params)

    def _starts_own_bucket(self, param: torch.nn.Parameter) -> bool:
        # Tied embeddings on the first and last pipeline stage are all-reduced across stages
        # after the DP reduce-scatter; alone in a bucket they are sharded identically on both.
        return self.use_distributed_optimizer and getattr(param, "shared_embedding", False)

    def _layout(self, params: List[torch.nn.Parameter], bucket_size: Optional[int]):
        """[(params, offset, padded numel)] of each bucket; also fills param_ranges."""
        multiple = self.dp_size * _SHARD_ALIGN if self.use_distributed_optimizer else 1
        buckets, current, start, offset = [], [], 0, 0

        def close():
            nonlocal current, start, offset
            numel = _pad(offset - start, multiple)
            buckets.append((current, start, numel))
            offset = start + numel
            current, start = [], offset

        for p in params:
            own = self._starts_own_bucket(p)
            if own and current:
                close()
            self.param_ranges[p] = (offset, offset + p.numel())
            offset += p.numel()
            current.append(p)
            if own or (bucket_size is not None and offset - start >= bucket_size):
                close()
        if current:
            close()
        return buckets

    def _bind(self, params: List[torch.nn.Parameter]) -> None:
        """Give every parameter its main_grad view (and move its data into the param buffer)."""
        for p in params:
            start, end = self.param_ranges[p]
            p.main_grad = self.grad_data[start:end].view(p.shape)
            if self.param_data is not None:
                view = self.param_data[start:end].view(p.shape)
                view.copy_(p.data)
                p.data = view

    def zero(self) -> None:
        """Zero the gradient buffer (padding included)."""
        self.grad_data.zero_()


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, group, async_op: bool, op=None):
    """Reduce `input` over the group (SUM unless `op`) and keep this rank's equal slice in
    `output` (which may alias that slice of `input`)."""
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(output, input, op=op or dist.ReduceOp.SUM, group=group, async_op=async_op)


def all_gather(output: torch.Tensor, input: torch.Tensor, group, async_op: bool):
    """Concatenate every rank's `input` into `output` (input may alias its slot of output)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(output, input, group=group, async_op=async_op)
