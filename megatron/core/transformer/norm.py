"""Normalisation layers selected by --normalization."""

from __future__ import annotations

import torch

from ..tensor_parallel.layers import set_init


def build_norm(config, hidden_size: int, sequence_parallel: bool = False) -> torch.nn.Module:
    """LayerNorm or RMSNorm of `hidden_size` features, in the model's params dtype.

    With sequence parallelism each TP rank normalises its own sequence shard, so the gradients of
    the (replicated) norm weights are partial sums: they are marked for an all-reduce over TP.
    """
    kw = dict(eps=config.layernorm_epsilon, dtype=config.params_dtype)
    if config.normalization == "LayerNorm":
        norm = torch.nn.LayerNorm(hidden_size, **kw)
    else:
        norm = torch.nn.RMSNorm(hidden_size, **kw)
    for name, p in norm.named_parameters():
        set_init(p, "ones" if name == "weight" else "zeros")
        p.sequence_parallel = sequence_parallel
    return norm
