"""A stack of transformer layers: one pipeline stage (or virtual stage) of the model."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..tensor_parallel.random import checkpoint
from .config import TransformerConfig
from .layer import TransformerLayer
from .norm import build_norm


class TransformerBlock(torch.nn.Module):
    """Layers [offset, offset + count) of the model, plus the final norm on the last stage.

    Args:
        config: the stack's configuration.
        layer_offset: global 0-based index of the first layer of this block.
        num_layers: layers in this block.
        causal: GPT (True) or BERT (False) attention.
        post_process: this block ends the model (adds the final norm).
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_offset: int,
        num_layers: int,
        causal: bool,
        post_process: bool,
        tp_group=None,
        rng_tracker=None,
    ):
        super().__init__()
        self.config, self.rng_tracker = config, rng_tracker
        self.layers = torch.nn.ModuleList(
            TransformerLayer(config, layer_offset + i, causal, tp_group, rng_tracker)
            for i in range(num_layers)
        )
        self.final_layernorm = (
            build_norm(config, config.hidden_size, config.sequence_parallel)
            if post_process
            else None
        )

    def _run(self, start: int, end: int):
        def run(hidden, attention_mask, rotary_cos, rotary_sin, random_ltd):
            rotary = None if rotary_cos is None else (rotary_cos, rotary_sin)
            for layer in self.layers[start:end]:
                hidden = layer(hidden, attention_mask, rotary, random_ltd)
            return hidden

        return run

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        rotary: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        random_ltd=None,
    ) -> torch.Tensor:
        """hidden [s, b, h] -> [s, b, h] (normalised when this block ends the model).

        `random_ltd` (a RandomLTDState or None) is handed to every layer; the recomputation of a
        checkpointed chunk receives the same object, so it reuses the same kept tokens.
        """
        cos, sin = rotary if rotary is not None else (None, None)
        args = (attention_mask, cos, sin, random_ltd)
        n = len(self.layers)
        full = self.config.recompute_granularity == "full" and self.training
        if not full:
            hidden = self._run(0, n)(hidden, *args)
        elif self.config.recompute_method == "uniform":
            # Checkpoint chunks of recompute_num_layers layers; only chunk inputs are kept.
            step = self.config.recompute_num_layers
            for start in range(0, n, step):
                fn = self._run(start, min(start + step, n))
                hidden = checkpoint(fn, self.rng_tracker, hidden, *args)
        else:
            # "block": recompute the first recompute_num_layers layers of this stage one by one.
            for i in range(n):
                fn = self._run(i, i + 1)
                if i < self.config.recompute_num_layers:
                    hidden = checkpoint(fn, self.rng_tracker, hidden, *args)
                else:
                    hidden = fn(hidden, *args)
        if self.final_layernorm is not None:
            hidden = self.final_layernorm(hidden)
        return hidden
