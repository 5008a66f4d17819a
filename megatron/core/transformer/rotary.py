"""Rotary position embeddings (RoPE), non-interleaved ("rotate half") as in Megatron / GPT-NeoX.

The tables are built per token from position ids, so documents with reset position ids and
token subsets kept by random-LTD rotate each token by its own position.
"""

from __future__ import annotations

from typing import Tuple

import torch


class RotaryEmbedding(torch.nn.Module):
    """cos / sin tables for positions; `dim` channels of each head are rotated."""

    def __init__(self, kv_channels: int, rotary_percent: float = 1.0, base: int = 10000):
        super().__init__()
        dim = int(kv_channels * rotary_percent)
        dim -= dim % 2
        if dim == 0:
            raise ValueError(
                f"rotary_percent {rotary_percent} of {kv_channels} channels rotates nothing"
            )
        self.dim = dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """position_ids [b, s] -> (cos, sin), each [s, b, 1, dim] in fp32."""
        freqs = position_ids.t().unsqueeze(-1).float() * self.inv_freq  # [s, b, dim/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(2)  # [s, b, 1, dim]
        return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of t [s, b, np, hn]; the rest pass through."""
    dim = cos.shape[-1]
    rot, rest = t[..., :dim], t[..., dim:]
    rot = (rot.float() * cos + _rotate_half(rot.float()) * sin).to(t.dtype)
    return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot
