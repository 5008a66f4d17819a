"""Tensor-parallel linear and embedding layers.

Weights are sharded Megatron-style: a column-parallel layer splits its output features across the
TP group, a row-parallel layer its input features, the vocab-parallel embedding its rows. Every
sharded parameter carries `tensor_model_parallel = True`, `partition_dim` and `partition_stride`
so initialisation, checkpoint resharding and gradient-norm computation can map it to the full
tensor. Parameters are created uninitialised; `megatron.core.tensor_parallel.init` fills them
from per-parameter seeded generators so weights do not depend on the parallel layout.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .mappings import (
    copy_to_tensor_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_parallel_region,
    group_rank,
    group_size,
    reduce_from_tensor_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)


def set_init(param: torch.nn.Parameter, kind: str, std: float = 0.0) -> None:
    """Record how `param` is initialised: kind in {"normal", "zeros", "ones"}."""
    param.init_kind, param.init_std = kind, std


def mark_vocab_padding(param: torch.nn.Parameter, vocab_size: Optional[int]) -> None:
    """Mark the rows at and beyond `vocab_size` (dim 0 of the full tensor) as vocabulary padding.

    Initialisation then generates the real rows as a tensor of their own and zeroes the padding,
    so the real rows are the same whatever padding --make-vocab-size-divisible-by x TP adds.
    None: every row is real.
    """
    param.real_rows = vocab_size


def mark_tensor_parallel(param: torch.nn.Parameter, partition_dim: int, stride: int = 1) -> None:
    """Mark a parameter as one TP shard of a full tensor split along `partition_dim`."""
    param.tensor_model_parallel = True
    param.partition_dim = partition_dim
    param.partition_stride = stride


def divide(numerator: int, denominator: int, what: str = "") -> int:
    """Exact division with an error naming what did not divide."""
    if numerator % denominator:
        raise ValueError(
            f"{what or 'value'} {numerator} is not divisible by the tensor-parallel size "
            f"{denominator}"
        )
    return numerator // denominator


def _param(shape, dtype, device) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.empty(shape, dtype=dtype, device=device))


class ColumnParallelLinear(torch.nn.Module):
    """Y = X A + b with A split along its output columns: each rank computes Y[..., shard].

    Args:
        input_size / output_size: full (unsharded) sizes.
        tp_group: tensor-parallel group (None = TP 1).
        bias: whether the layer has a bias (sharded like the output).
        gather_output: all-gather the output so every rank holds all columns.
        init_std: std of the normal init of the weight.
        stride: number of interleaved blocks in the output (2 for a fused gate/up projection)
            so each rank gets its slice of each block.
        sequence_parallel: the input is sharded along the sequence; all-gather it first.
        skip_bias_add: return (output, bias) so the bias can be fused into a later op.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        tp_group=None,
        bias: bool = True,
        gather_output: bool = False,
        init_std: float = 0.02,
        stride: int = 1,
        sequence_parallel: bool = False,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        self.tp_group, self.gather_output = tp_group, gather_output
        self.sequence_parallel, self.skip_bias_add = sequence_parallel, skip_bias_add
        tp = group_size(tp_group)
        self.input_size, self.output_size = input_size, output_size
        self.output_size_per_partition = divide(output_size, tp, "output features")
        self.weight = _param((self.output_size_per_partition, input_size), params_dtype, device)
        mark_tensor_parallel(self.weight, 0, stride)
        set_init(self.weight, "normal", init_std)
        if bias:
            self.bias = _param((self.output_size_per_partition,), params_dtype, device)
            mark_tensor_parallel(self.bias, 0, stride)
            set_init(self.bias, "zeros")
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None):
        """x: [s, b, h] (or [s/tp, b, h] with sequence parallelism) -> [s, b, out/tp]."""
        weight = self.weight if weight is None else weight
        if self.sequence_parallel:
            x = gather_from_sequence_parallel_region(x, self.tp_group, grad_is_partial=True)
        else:
            x = copy_to_tensor_parallel_region(x, self.tp_group)
        bias = None if self.skip_bias_add else self.bias
        out = F.linear(x, weight, bias)
        if self.gather_output:
            out = gather_from_tensor_parallel_region(out, self.tp_group)
        if self.skip_bias_add:
            return out, self.bias
        return out


class RowParallelLinear(torch.nn.Module):
    """Y = X A + b with A split along its input rows; partial outputs are summed across ranks.

    Args:
        input_size / output_size: full sizes.
        tp_group: tensor-parallel group.
        bias: a bias added after the reduction (replicated on every rank).
        init_std: std of the normal init (the scaled init of output layers is passed in here).
        sequence_parallel: reduce-scatter the output along the sequence instead of all-reducing.
        skip_bias_add: return (output, bias) instead of adding the bias.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        tp_group=None,
        bias: bool = True,
        init_std: float = 0.02,
        sequence_parallel: bool = False,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        self.tp_group = tp_group
        self.sequence_parallel, self.skip_bias_add = sequence_parallel, skip_bias_add
        tp = group_size(tp_group)
        self.input_size, self.output_size = input_size, output_size
        self.input_size_per_partition = divide(input_size, tp, "input features")
        self.weight = _param((output_size, self.input_size_per_partition), params_dtype, device)
        mark_tensor_parallel(self.weight, 1)
        set_init(self.weight, "normal", init_std)
        if bias:
            self.bias = _param((output_size,), params_dtype, device)
            set_init(self.bias, "zeros")
            # Under SP each rank sees only its sequence shard: the bias grad is partial.
            self.bias.sequence_parallel = sequence_parallel
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor):
        """x: [s, b, in/tp] -> [s, b, out] (or [s/tp, b, out] with sequence parallelism)."""
        if group_size(self.tp_group) == 1 and not self.skip_bias_add:
            return F.linear(x, self.weight, self.bias)  # one fused addmm, nothing to reduce
        out = F.linear(x, self.weight)
        if self.sequence_parallel:
            out = reduce_scatter_to_sequence_parallel_region(out, self.tp_group)
        else:
            out = reduce_from_tensor_parallel_region(out, self.tp_group)
        if self.skip_bias_add:
            return out, self.bias
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(torch.nn.Module):
    """Embedding table split along the vocabulary: each rank holds rows [start, end).

    Lookups of ids outside a rank's range give zeros there; the all-reduce sums the one rank
    that holds each id. Output layout is [s, b, h] (ids come in as [b, s]).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        tp_group=None,
        init_std: float = 0.02,
        params_dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        self.tp_group = tp_group
        tp, rank = group_size(tp_group), group_rank(tp_group)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        per = divide(num_embeddings, tp, "padded vocabulary size")
        self.vocab_start, self.vocab_end = rank * per, (rank + 1) * per
        self.weight = _param((per, embedding_dim), params_dtype, device)
        mark_tensor_parallel(self.weight, 0)
        set_init(self.weight, "normal", init_std)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [b, s] -> [s, b, h] (summed over the TP group)."""
        ids = input_ids.t()  # [s, b]
        if group_size(self.tp_group) == 1:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight)  # [s, b, h]
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_parallel_region(out, self.tp_group)


def parallel_lm_logits(
    hidden: torch.Tensor, weight: torch.Tensor, tp_group, sequence_parallel: bool, bias=None
) -> torch.Tensor:
    """Logits of this rank's vocabulary shard: [s, b, h] -> [s, b, v/tp] (never gathered)."""
    if sequence_parallel:
        hidden = gather_from_sequence_parallel_region(hidden, tp_group, grad_is_partial=True)
    else:
        hidden = copy_to_tensor_parallel_region(hidden, tp_group)
    return F.linear(hidden, weight, bias)
