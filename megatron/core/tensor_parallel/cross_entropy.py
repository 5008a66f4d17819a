"""Cross entropy over logits whose vocabulary is split across the tensor-parallel group.

The full [s, b, v] logits never exist on one rank: each rank reduces its shard to a max, the
target logit (held by exactly one rank) and a sum of exponentials, and three all-reduces over
[s, b] tensors combine them. Backward is softmax - one_hot on the local shard.

The padded vocabulary (--make-vocab-size-divisible-by x TP) has rows that are no token: given the
real vocabulary size, their columns take no part in the softmax (their logits count as -inf), so
the loss and the gradients of the real columns do not depend on how much padding the layout adds,
and the padded columns get zero gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .mappings import all_reduce_tensor, group_rank, group_size


def real_columns(vocab_size: Optional[int], start: int, per: int) -> int:
    """How many of the `per` columns starting at global column `start` are real ids (< vocab_size;
    None: all)."""
    if vocab_size is None:
        return per
    return max(0, min(per, vocab_size - start))


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, vocab_size):
        # logits: [s, b, v/tp] (any float dtype; computed in fp32), target: [s, b] int64
        logits = logits.float()
        per = logits.shape[-1]
        start = group_rank(group) * per
        real = real_columns(vocab_size, start, per)
        if real > 0:
            local_max = logits[..., :real].max(dim=-1).values
        else:  # a shard of padding only: the other ranks hold the maximum
            local_max = logits.new_full(logits.shape[:-1], float("-inf"))
        all_reduce_tensor(local_max, group, op=dist.ReduceOp.MAX)
        shifted = logits - local_max.unsqueeze(-1)
        shifted[..., real:] = float("-inf")  # padding ids: exp() = 0, out of the softmax
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
        return grad, None, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, group, vocab_size: Optional[int] = None
) -> torch.Tensor:
    """Per-token loss [s, b] (fp32) of `logits` [s, b, v/tp] sharded over `group` (None = whole).

    Args:
        vocab_size: the real (unpadded) vocabulary size, the tokenizer's: the columns of the
            global ids at and beyond it are padding and are left out of the softmax (zero
            gradient). None: every column is a token. Targets must be real ids.
    """
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target shape {tuple(target.shape)} != logits shape {tuple(logits.shape[:-1])}"
        )
    tp = group_size(group)
    if vocab_size is not None and not 0 < vocab_size <= logits.shape[-1] * tp:
        raise ValueError(
            f"vocab_size {vocab_size} must be in [1, {logits.shape[-1] * tp}] (the padded "
            "vocabulary of the logits)"
        )
    if tp == 1:
        # Whole vocabulary on this rank: torch's fused log-softmax + NLL is faster.
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits = logits[..., :vocab_size]
        flat = logits.float().reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat, target.reshape(-1), reduction="none").view(target.shape)
    return _VocabParallelCrossEntropy.apply(logits, target, group, vocab_size)
