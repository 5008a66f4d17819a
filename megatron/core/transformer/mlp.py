"""The feed-forward block: column-parallel fc1, GeLU or SwiGLU, row-parallel fc2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from .config import TransformerConfig


class MLP(torch.nn.Module):
    """h -> ffn -> h over [s, b, h] activations.

    With SwiGLU, fc1 produces [gate | up] (2 * ffn features); its rows are sharded with stride 2
    so each TP rank holds matching slices of the gate and of the up projection.
    """

    def __init__(self, config: TransformerConfig, tp_group=None):
        super().__init__()
        self.swiglu = config.swiglu
        common = dict(
            tp_group=tp_group,
            bias=config.add_bias_linear,
            sequence_parallel=config.sequence_parallel,
            params_dtype=config.params_dtype,
        )
        fc1_out = config.ffn_hidden_size * (2 if config.swiglu else 1)
        self.linear_fc1 = ColumnParallelLinear(
            config.hidden_size,
            fc1_out,
            init_std=config.init_method_std,
            stride=2 if config.swiglu else 1,
            **common,
        )
        self.linear_fc2 = RowParallelLinear(
            config.ffn_hidden_size,
            config.hidden_size,
            init_std=config.output_layer_init_std,
            **common,
        )

    def forward(self, hidden: torch.Tensor):
        """hidden [s, b, h] -> (output [s, b, h], output bias or None)."""
        x = self.linear_fc1(hidden)  # [s, b, ffn/tp] or [s, b, 2 * ffn/tp]
        if self.swiglu:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        else:
            x = F.gelu(x)  # exact erf GeLU, Megatron's default
        return self.linear_fc2(x), None  # the bias is added inside the projection
