"""One pre-norm transformer layer: x + attn(norm(x)); x + mlp(norm(x))."""

from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from megatron.core.random_ltd.routing import run_on_kept_tokens

from .attention import SelfAttention
from .config import TransformerConfig
from .mlp import MLP
from .norm import build_norm


class TransformerLayer(torch.nn.Module):
    """Pre-LayerNorm transformer layer over [s, b, h] activations.

    Args:
        config: the stack's configuration.
        layer_id: global 0-based index of this layer in the whole model (independent of the
            pipeline layout; used for checkpoint names and random-LTD layer selection).
        causal: causal self-attention (GPT) or bidirectional (BERT).
        tp_group: tensor-parallel group.
        rng_tracker: RNG streams for dropout on sharded activations.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_id: int,
        causal: bool,
        tp_group=None,
        rng_tracker=None,
    ):
        super().__init__()
        self.config, self.layer_id, self.rng_tracker = config, layer_id, rng_tracker
        sp = config.sequence_parallel
        self.input_layernorm = build_norm(config, config.hidden_size, sp)
        self.self_attention = SelfAttention(config, causal, tp_group, rng_tracker)
        self.pre_mlp_layernorm = build_norm(config, config.hidden_size, sp)
        self.mlp = MLP(config, tp_group)

    def _bias_dropout_add(self, out, bias, residual):
        if bias is not None:
            out = out + bias
        p = self.config.hidden_dropout if self.training else 0.0
        if p == 0.0:
            return residual + out
        # Under sequence parallelism each rank holds different tokens: draw from the TP stream.
        fork = (
            self.rng_tracker.fork()
            if self.config.sequence_parallel and self.rng_tracker is not None
            else contextlib.nullcontext()
        )
        with fork:
            return residual + F.dropout(out, p=p, training=True)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        rotary: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        random_ltd=None,
    ) -> torch.Tensor:
        """hidden [s, b, h] -> [s, b, h].

        With a `RandomLTDState` that selects this layer (training only), the layer runs on the
        kept tokens of each sequence and the other tokens pass through unchanged.
        """
        s, b = hidden.shape[:2]
        if random_ltd is not None and self.training and random_ltd.applies(self.layer_id, s):
            idx = random_ltd.indices(self.layer_id, b, s, hidden.device)  # [b, k], sorted
            return run_on_kept_tokens(self._dense_forward, hidden, attention_mask, rotary, idx)
        return self._dense_forward(hidden, attention_mask, rotary)

    def _dense_forward(self, hidden, attention_mask, rotary) -> torch.Tensor:
        attn_out, attn_bias = self.self_attention(
            self.input_layernorm(hidden), attention_mask, rotary
        )
        hidden = self._bias_dropout_add(attn_out, attn_bias, hidden)
        mlp_out, mlp_bias = self.mlp(self.pre_mlp_layernorm(hidden))
        return self._bias_dropout_add(mlp_out, mlp_bias, hidden)
