"""Every collective of the model, as pairs of autograd functions whose backward is the conjugate
collective of the forward. Model code never calls torch.distributed directly; it calls these with
an explicit process group. A group of None (or of size 1) makes every function the identity.

    copy_to_tensor_parallel_region        fwd identity        bwd all-reduce
    reduce_from_tensor_parallel_region    fwd all-reduce      bwd identity
    scatter_to_tensor_parallel_region     fwd split last dim  bwd all-gather last dim
    gather_from_tensor_parallel_region    fwd all-gather last bwd split last dim
    scatter_to_sequence_parallel_region   fwd split first dim bwd all-gather first dim
    gather_from_sequence_parallel_region  fwd all-gather 1st  bwd reduce-scatter first dim
                                                              (or split, when the gathered
                                                               output feeds replicated compute)
    reduce_scatter_to_sequence_parallel_region
                                          fwd reduce-scatter  bwd all-gather first dim
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_size(group) -> int:
    """World size of a group, 1 for None."""
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    """Rank within a group, 0 for None."""
    return 0 if group is None else dist.get_rank(group)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, group=group)
    return x


def _split_last(x: torch.Tensor, group) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    if x.shape[-1] % n:
        raise ValueError(f"last dimension {x.shape[-1]} is not divisible by the group size {n}")
    return x.chunk(n, dim=-1)[group_rank(group)].contiguous()


def _gather_last(x: torch.Tensor, group) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    x = x.contiguous()
    # all_gather_into_tensor concatenates along dim 0 (gloo rejects a new leading dim).
    out = torch.empty(
        (n * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device
    )  # [n*s, ..., h/n]
    dist.all_gather_into_tensor(out, x, group=group)
    return torch.cat(out.chunk(n, dim=0), dim=-1)  # [s, ..., h]


def _split_first(x: torch.Tensor, group) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    if x.shape[0] % n:
        raise ValueError(
            f"sequence dimension {x.shape[0]} is not divisible by the tensor-parallel size {n} "
            "(--sequence-parallel needs seq-length divisible by TP)"
        )
    return x.chunk(n, dim=0)[group_rank(group)].contiguous()


def _gather_first(x: torch.Tensor, group) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    x = x.contiguous()
    out = torch.empty((n * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x, group=group)
    return out


def _reduce_scatter_first(x: torch.Tensor, group) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    if x.shape[0] % n:
        raise ValueError(f"first dimension {x.shape[0]} is not divisible by the group size {n}")
    x = x.contiguous()
    out = torch.empty((x.shape[0] // n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, x, group=group)
    return out


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone() if group_size(group) > 1 else x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last(grad, ctx.group), None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last(grad, ctx.group), None


class _ScatterToSequenceRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_first(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_first(grad, ctx.group), None


class _GatherFromSequenceRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, grad_is_partial):
        ctx.group, ctx.grad_is_partial = group, grad_is_partial
        return _gather_first(x, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.grad_is_partial:
            return _reduce_scatter_first(grad, ctx.group), None, None
        return _split_first(grad, ctx.group), None, None


class _ReduceScatterToSequenceRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter_first(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_first(grad, ctx.group), None


def copy_to_tensor_parallel_region(x: torch.Tensor, group) -> torch.Tensor:
    """Identity forward; all-reduce of the gradient backward (input of a column-parallel layer)."""
    return x if group_size(group) == 1 else _CopyToRegion.apply(x, group)


def reduce_from_tensor_parallel_region(x: torch.Tensor, group) -> torch.Tensor:
    """All-reduce forward (output of a row-parallel layer); identity backward."""
    return x if group_size(group) == 1 else _ReduceFromRegion.apply(x, group)


def scatter_to_tensor_parallel_region(x: torch.Tensor, group) -> torch.Tensor:
    """Keep this rank's slice of the last dimension; all-gather backward."""
    return x if group_size(group) == 1 else _ScatterToRegion.apply(x, group)


def gather_from_tensor_parallel_region(x: torch.Tensor, group) -> torch.Tensor:
    """All-gather along the last dimension; split backward."""
    return x if group_size(group) == 1 else _GatherFromRegion.apply(x, group)


def scatter_to_sequence_parallel_region(x: torch.Tensor, group) -> torch.Tensor:
    """Keep this rank's slice of the sequence (first) dimension; all-gather backward."""
    return x if group_size(group) == 1 else _ScatterToSequenceRegion.apply(x, group)


def gather_from_sequence_parallel_region(
    x: torch.Tensor, group, grad_is_partial: bool = True
) -> torch.Tensor:
    """All-gather along the sequence dimension.

    Backward reduce-scatters when the gradient arriving is a partial sum over TP ranks (the input
    of a column-parallel layer), and only splits it when every rank holds the full gradient.
    """
    if group_size(group) == 1:
        return x
    return _GatherFromSequenceRegion.apply(x, group, grad_is_partial)


def reduce_scatter_to_sequence_parallel_region(x: torch.Tensor, group) -> torch.Tensor:
    """Reduce-scatter along the sequence dimension (output of a row-parallel layer under SP)."""
    return x if group_size(group) == 1 else _ReduceScatterToSequenceRegion.apply(x, group)


def all_reduce_tensor(x: torch.Tensor, group, op=None) -> torch.Tensor:
    """In-place all-reduce outside autograd (norms, loss averaging, inf checks)."""
    if group_size(group) > 1:
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM, group=group)
    return x
