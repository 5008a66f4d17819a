"""Self-attention: fused QKV column-parallel projection, SDPA core, row-parallel output.

Heads are split across the tensor-parallel group (each rank computes num_heads / tp of them).
The QKV weight is laid out per head as [q | k | v] (Megatron's `linear_qkv` layout), so a
contiguous split of its rows gives each rank whole heads.

Masks follow Megatron's convention: a bool tensor where True means "masked out", broadcastable to
[b, heads, s_q, s_k]; None with `causal=True` means a plain causal mask (SDPA's fast path).
"""

from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from ..tensor_parallel.mappings import group_size
from ..tensor_parallel.random import checkpoint
from .config import TransformerConfig
from .rotary import apply_rotary


class SelfAttention(torch.nn.Module):
    """Multi-head self-attention over [s, b, h] activations."""

    def __init__(self, config: TransformerConfig, causal: bool, tp_group=None, rng_tracker=None):
        super().__init__()
        self.config, self.causal, self.rng_tracker = config, causal, rng_tracker
        tp = group_size(tp_group)
        self.heads_per_partition = config.num_attention_heads // tp
        self.head_dim = config.kv_channels
        proj = config.num_attention_heads * config.kv_channels
        common = dict(
            tp_group=tp_group,
            bias=config.add_bias_linear,
            sequence_parallel=config.sequence_parallel,
            params_dtype=config.params_dtype,
        )
        self.linear_qkv = ColumnParallelLinear(
            config.hidden_size, 3 * proj, init_std=config.init_method_std, **common
        )
        self.linear_proj = RowParallelLinear(
            proj,
            config.hidden_size,
            init_std=config.output_layer_init_std,
            **common,
        )

    def _dropout_context(self):
        if self.rng_tracker is not None and self.training and self.config.attention_dropout > 0:
            return self.rng_tracker.fork()
        return contextlib.nullcontext()

    def core_attention(self, q, k, v, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """q, k, v: [b, np, s, hn] -> context [b, np, s, hn]."""
        dropout = self.config.attention_dropout if self.training else 0.0
        is_causal, mask = False, None
        if attention_mask is None:
            is_causal = self.causal
        else:
            masked = attention_mask
            if self.causal:
                s_q, s_k = q.shape[2], k.shape[2]
                tri = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).triu_(1)
                masked = masked | tri
            mask = ~masked  # SDPA's bool masks mark the positions that take part
        with self._dropout_context():
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
            )

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        rotary: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ):
        """hidden [s, b, h] -> (output [s, b, h], output bias or None)."""
        qkv = self.linear_qkv(hidden)  # [s, b, np * 3 * hn]
        s, b = qkv.shape[:2]
        qkv = qkv.view(s, b, self.heads_per_partition, 3 * self.head_dim)  # [s, b, np, 3 * hn]
        q, k, v = qkv.split(self.head_dim, dim=-1)  # each [s, b, np, hn]
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, np, s, hn]
        if self.config.recompute_granularity == "selective" and self.training:
            ctx = checkpoint(self.core_attention, self.rng_tracker, q, k, v, attention_mask)
        else:
            ctx = self.core_attention(q, k, v, attention_mask)
        ctx = ctx.permute(2, 0, 1, 3).reshape(s, b, -1)  # [s, b, np * hn]
        return self.linear_proj(ctx), None  # the bias is added inside the projection
