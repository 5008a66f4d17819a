"""Global gradient norm across model-parallel ranks, and clipping by it.

A gradient must enter the norm exactly once per model replica:
- tensor-parallel shards (`param.tensor_model_parallel = True`) are distinct on every TP rank
  and all count;
- parameters replicated across the TP group (norms, row-parallel biases) count on TP rank 0 only;
- the tied word embeddings (`param.shared_embedding = True`, a copy on the first and the last
  pipeline stage) count on the first stage only.
The per-rank partial sums are then summed over the model-parallel group (and over the
data-parallel group when each DP rank holds a different shard, as with the distributed
optimizer).
"""

from __future__ import annotations

import math
from typing import Iterable, List, Sequence

import torch
import torch.distributed as dist

from ..parallel_state import ParallelState
from ..tensor_parallel.mappings import all_reduce_tensor


def counts_toward_norm(param: torch.nn.Parameter, pstate: ParallelState) -> bool:
    """Whether this rank's copy of `param` is the one counted in the global norm."""
    if getattr(param, "shared_embedding", False) and pstate.pp_rank != 0:
        return False
    return bool(getattr(param, "tensor_model_parallel", False)) or pstate.tp_rank == 0


def get_grad_norm_fp32(
    grads: Sequence[torch.Tensor], groups: Iterable = (), norm_type: float = 2.0
) -> float:
    """Norm of the concatenation of `grads` over every rank of `groups`.

    Args:
        grads: this rank's (deduplicated) gradients; any float dtype, computed in fp32.
        groups: process groups to combine over (None entries are skipped), e.g.
            (pstate.mp_group,) or (pstate.mp_group, pstate.dp_group).
        norm_type: 2.0 (L2) or math.inf (max abs).

    Returns:
        The global norm as a Python float (identical on every rank of the groups).
    """
    grads = [g for g in grads if g.numel() > 0]
    device = grads[0].device if grads else torch.device("cpu")
    groups = [g for g in groups if g is not None]
    if groups and dist.get_backend(groups[0]) == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    if norm_type == math.inf:
        local = max((g.detach().abs().max().float() for g in grads), default=None)
        total = torch.zeros(1, device=device) if local is None else local.reshape(1).to(device)
        for group in groups:
            all_reduce_tensor(total, group, op=dist.ReduceOp.MAX)
        return float(total.item())
    if norm_type != 2.0:
        raise ValueError(f"norm_type must be 2.0 or math.inf, got {norm_type}")
    total = torch.zeros(1, dtype=torch.float32, device=device)
    if grads:
        norms = torch._foreach_norm(
            [g.detach().float() if g.dtype != torch.float32 else g.detach() for g in grads]
        )
        total += torch.stack(norms).pow(2).sum().to(device)
    for group in groups:
        all_reduce_tensor(total, group)
    return float(total.sqrt().item())


def clip_grads_by_norm(grads: List[torch.Tensor], max_norm: float, total_norm: float) -> None:
    """Scale `grads` in place by max_norm / (total_norm + 1e-6) when that is below 1."""
    coeff = max_norm / (total_norm + 1.0e-6)
    if coeff < 1.0 and grads:
        torch._foreach_mul_(grads, coeff)


def clip_grad_norm(
    params: Sequence[torch.nn.Parameter],
    grads: Sequence[torch.Tensor],
    max_norm: float,
    pstate: ParallelState,
    extra_groups: Iterable = (),
) -> float:
    """Clip `grads` (the gradients of `params`, in order) to a global norm of `max_norm`.

    Args:
        params: the model parameters the gradients belong to (their attributes decide which
            rank counts each one).
        grads: the gradient tensors to measure and scale in place.
        max_norm: --clip-grad.
        pstate: process groups (norm summed over pstate.mp_group).
        extra_groups: further groups to sum over (the DP group for sharded gradients).

    Returns:
        The global norm before clipping.
    """
    norm = global_grad_norm(params, grads, pstate, extra_groups)
    clip_grads_by_norm(list(grads), max_norm, norm)
    return norm


def global_grad_norm(
    params: Sequence[torch.nn.Parameter],
    grads: Sequence[torch.Tensor],
    pstate: ParallelState,
    extra_groups: Iterable = (),
) -> float:
    """The L2 norm of the whole model's gradient (each gradient counted once per replica, see
    `counts_toward_norm`), identical on every rank of pstate.mp_group and `extra_groups`."""
    counted = [g for p, g in zip(params, grads) if counts_toward_norm(p, pstate)]
    return get_grad_norm_fp32(counted, (pstate.mp_group, *extra_groups))
