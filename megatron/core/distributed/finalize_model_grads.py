"""Make every gradient final after the last backward of a step, before the optimizer runs.

Three reductions, in this order on every rank:

1. Data parallel: `finish_grad_sync()` of each model chunk (DistributedDataParallel) averages the
   gradients over the DP group (all-reduce, or reduce-scatter into shards for the distributed
   optimizer).
2. Sequence parallel: parameters replicated across the tensor-parallel group that only saw this
   rank's slice of the sequence (norm weights and biases, row-parallel biases; marked
   `param.sequence_parallel = True`) hold partial gradients; they are summed over the TP group.
3. Tied embeddings: with pipeline parallelism the word embeddings live on the first stage and a
   copy is the output layer of the last stage (both marked `param.shared_embedding = True`);
   their gradients are summed over the embedding group so both copies take the same step.

Steps 2 and 3 all-reduce the whole `main_grad`. With the distributed optimizer only this rank's
shards are valid after step 1, and they stay correct: the TP peers have identical buffer layouts,
and the tied embedding sits alone in its own bucket on both stages, so the shards line up.
"""

from __future__ import annotations

from typing import List, Sequence

import torch

from ..parallel_state import ParallelState
from ..tensor_parallel.mappings import all_reduce_tensor, group_size


def _chunk_params(model_chunks: Sequence[torch.nn.Module]):
    for chunk in model_chunks:
        for p in chunk.parameters():
            if p.requires_grad:
                yield p


def grad_of(param: torch.nn.Parameter) -> torch.Tensor:
    """The gradient the optimizer will read: `main_grad` under DDP, else `.grad` (zeros are
    materialised for parameters that received none, so collectives stay aligned)."""
    main = getattr(param, "main_grad", None)
    if main is not None:
        return main
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    return param.grad


def allreduce_coalesced(grads: List[torch.Tensor], group) -> None:
    """Sum a list of tensors over `group` with one collective (flatten, reduce, copy back)."""
    if not grads or group_size(group) == 1:
        return
    flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
    all_reduce_tensor(flat, group)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def allreduce_sequence_parallel_grads(model_chunks, tp_group) -> None:
    """Sum the partial gradients of sequence-parallel replicated parameters over TP."""
    grads = [
        grad_of(p) for p in _chunk_params(model_chunks) if getattr(p, "sequence_parallel", False)
    ]
    allreduce_coalesced(grads, tp_group)


def allreduce_shared_embedding_grads(model_chunks, embedding_group) -> None:
    """Sum the gradients of the tied word-embedding copies over the first/last stage group."""
    grads = [
        grad_of(p) for p in _chunk_params(model_chunks) if getattr(p, "shared_embedding", False)
    ]
    allreduce_coalesced(grads, embedding_group)


def finalize_model_grads(model_chunks: Sequence[torch.nn.Module], pstate: ParallelState) -> None:
    """Finish DP reduction, then the TP (sequence parallel) and tied-embedding reductions.

    Args:
        model_chunks: this rank's model chunks (DistributedDataParallel wrappers, or plain
            modules when DP is 1 and no wrapper is used).
        pstate: process groups of this rank.

    Every rank of a group must call this at the same point of the step; ranks of one TP group
    have the same sequence-parallel parameters and the two ends of the embedding group mark
    the same number of shared-embedding parameters.
    """
    for chunk in model_chunks:
        finish = getattr(chunk, "finish_grad_sync", None)
        if finish is not None:
            finish()
    allreduce_sequence_parallel_grads(model_chunks, pstate.tp_group)
    allreduce_shared_embedding_grads(model_chunks, pstate.embedding_group)
