"""Whole-model statistics of Megatron's iteration line: the parameter norm (--log-params-norm)
and the zero entries of the gradients (--log-num-zeros-in-grad).

Each parameter is counted once over the model-parallel ranks (tensor-parallel replicas such as
norm weights on TP rank 0 only, the last pipeline stage's copy of tied embeddings not at all),
the rule of the gradient norm (`counts_toward_norm`); data-parallel replicas hold the same
values, so the sums run over the model-parallel group only.
"""

from __future__ import annotations

from typing import Iterable, List

import torch
import torch.distributed as dist

from megatron.core.optimizer.clip_grads import counts_toward_norm, get_grad_norm_fp32
from megatron.core.parallel_state import ParallelState
from megatron.core.tensor_parallel.mappings import all_reduce_tensor
from megatron.core.utils import unwrap_model


def _counted(model_chunks: Iterable[torch.nn.Module], pstate: ParallelState) -> List:
    return [
        p
        for chunk in model_chunks
        for p in unwrap_model(chunk).parameters()
        if p.requires_grad and counts_toward_norm(p, pstate)
    ]


def params_norm(model_chunks, pstate: ParallelState) -> float:
    """L2 norm of every parameter of the model (fp32), the same on every rank."""
    params = [p.detach() for p in _counted(model_chunks, pstate)]
    return get_grad_norm_fp32(params, (pstate.mp_group,))


def num_zeros_in_grad(model_chunks, pstate: ParallelState) -> int:
    """Zero entries of the gradients the last optimizer step applied (the data-parallel
    all-reduced `main_grad` buffers), the same on every rank."""
    grads = [
        getattr(p, "main_grad", None) if getattr(p, "main_grad", None) is not None else p.grad
        for p in _counted(model_chunks, pstate)
    ]
    zeros = sum(int(g.numel() - torch.count_nonzero(g)) for g in grads if g is not None)
    total = torch.tensor([float(zeros)], dtype=torch.float64)
    if pstate.mp_group is not None and dist.is_initialized():
        if dist.get_backend(pstate.mp_group) == "nccl":
            total = total.cuda()
        all_reduce_tensor(total, pstate.mp_group)
    return int(total.item())
