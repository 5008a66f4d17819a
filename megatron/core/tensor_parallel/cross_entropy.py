"""Cross entropy over logits whose vocabulary is split across the tensor-parallel group.

The full [s, b, v] logits never exist on one rank: each rank reduces its shard to a max, the
target logit (held by exactly one rank) and a sum of exponentials, and three all-reduces over
[s, b] tensors combine them. Backward is softmax - one_hot on the local shard.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .mappings import all_reduce_tensor, group_rank, group_size


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group):
        # logits: [s, b, v/tp] (any float dtype; computed in fp32), target: [s, b] int64
        logits = logits.float()
        local_max = logits.max(dim=-1).values
        all_reduce_tensor(local_max, group, op=dist.ReduceOp.MAX)
        shifted = logits - local_max.unsqueeze(-1)
        per = shifted.shape[-1]
        start = group_rank(group) * per
        outside = (target < start) | (target >= start + per)
        local_target = (target - start).masked_fill(outside, 0)
        picked = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1)
        picked = picked.masked_fill(outside, 0.0)
        all_reduce_tensor(picked, group)
        exp = shifted.exp_()  # reuse the buffer: shifted is not needed any more
        sum_exp = exp.sum(dim=-1)
        all_reduce_tensor(sum_exp, group)
        loss = sum_exp.log() - picked
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_target, outside = ctx.saved_tensors
        grad = softmax  # reuse: backward runs once
        inside = (~outside).to(grad.dtype)
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -inside.unsqueeze(-1))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group) -> torch.Tensor:
    """Per-token loss [s, b] (fp32) of `logits` [s, b, v/tp] sharded over `group` (None = whole)."""
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target shape {tuple(target.shape)} != logits shape {tuple(logits.shape[:-1])}"
        )
    if group_size(group) == 1:
        # Whole vocabulary on this rank: torch's fused log-softmax + NLL is faster.
        flat = logits.float().reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat, target.reshape(-1), reduction="none").view(target.shape)
    return _VocabParallelCrossEntropy.apply(logits, target, group)
