"""`TransformerConfig`: the one description of a GPT / BERT transformer stack.

Field names follow the Megatron command-line flags (`--num-layers` -> `num_layers`) so the
training application can build its parser from this class; each field's docstring is its
`--help` text. The parallel layout is not part of it: it belongs to the process groups
(`ParallelState.layout`), and `check_layout` tells whether the stack can be split that way.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from megatron.core.parallel_state import RankLayout


@dataclasses.dataclass
class TransformerConfig:
    """Architecture and numerics of a transformer stack."""

    num_layers: int = 2
    """Number of transformer layers."""

    hidden_size: int = 128
    """Transformer hidden size."""

    num_attention_heads: int = 4
    """Number of attention heads."""

    ffn_hidden_size: Optional[int] = None
    """MLP hidden size; default 4 * hidden_size (with --swiglu: 2/3 of that rounded down to a
    multiple of 64, as Megatron does)."""

    kv_channels: Optional[int] = None
    """Size of each attention head; default hidden_size / num_attention_heads."""

    hidden_dropout: float = 0.1
    """Dropout on the outputs of attention and MLP (and on embeddings)."""

    attention_dropout: float = 0.1
    """Dropout on the attention probabilities."""

    normalization: str = "LayerNorm"
    """LayerNorm or RMSNorm."""

    layernorm_epsilon: float = 1e-5
    """Epsilon of the normalisation layers."""

    add_bias_linear: bool = True
    """Biases in the linear layers (--disable-bias-linear turns them off)."""

    swiglu: bool = False
    """SwiGLU MLP (gated SiLU) instead of GeLU."""

    position_embedding_type: str = "learned_absolute"
    """learned_absolute or rope (--use-rotary-position-embeddings)."""

    rotary_percent: float = 1.0
    """Fraction of each head's channels that rotary embeddings rotate."""

    rotary_base: int = 10000
    """Base of the rotary frequencies."""

    init_method_std: float = 0.02
    """Std of the normal initialisation; output layers of each block use std / sqrt(2 * layers)."""

    params_dtype: torch.dtype = torch.float32
    """Dtype of the model's parameters and activations (bf16/fp16 with --bf16/--fp16)."""

    sequence_parallel: bool = False
    """Shard norm/dropout regions along the sequence across the TP group (a no-op at TP 1)."""

    recompute_granularity: Optional[str] = None
    """None, "full" (recompute whole layers) or "selective" (only the attention core)."""

    recompute_method: Optional[str] = None
    """With full recompute: "uniform" (chunks of recompute_num_layers layers) or "block" (the
    first recompute_num_layers layers of each stage)."""

    recompute_num_layers: Optional[int] = None
    """Layers per recompute chunk (uniform) or recomputed layers per stage (block)."""

    def __post_init__(self) -> None:
        if self.num_layers <= 0 or self.hidden_size <= 0 or self.num_attention_heads <= 0:
            raise ValueError(
                "--num-layers, --hidden-size and --num-attention-heads must be positive"
            )
        if self.kv_channels is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                    f"{self.num_attention_heads}; change one of them or set --kv-channels"
                )
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.ffn_hidden_size is None:
            if self.swiglu:
                self.ffn_hidden_size = int((4 * self.hidden_size * 2 / 3) / 64) * 64 or 64
            else:
                self.ffn_hidden_size = 4 * self.hidden_size
        self._validate_sizes()
        if self.normalization not in ("LayerNorm", "RMSNorm"):
            raise ValueError(
                f"--normalization must be LayerNorm or RMSNorm, got {self.normalization!r}"
            )
        if self.position_embedding_type not in ("learned_absolute", "rope"):
            raise ValueError(f"unknown position embedding type {self.position_embedding_type!r}")
        if not 0.0 < self.rotary_percent <= 1.0:
            raise ValueError(f"rotary_percent must be in (0, 1], got {self.rotary_percent}")
        self._validate_recompute()

    def _validate_sizes(self) -> None:
        for name in ("kv_channels", "ffn_hidden_size"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {value}; leave it out for the "
                    "default (see --help)"
                )
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"--{name.replace('_', '-')} is a probability and must be in [0, 1], got "
                    f"{value} (0 turns dropout off)"
                )
        if not self.layernorm_epsilon > 0:
            raise ValueError(f"--layernorm-epsilon must be > 0, got {self.layernorm_epsilon}")
        if self.init_method_std < 0:
            raise ValueError(f"--init-method-std must be >= 0, got {self.init_method_std}")
        if self.rotary_base < 1:
            raise ValueError(f"--rotary-base must be >= 1, got {self.rotary_base}")

    def check_layout(self, layout: RankLayout) -> None:
        """Raise ValueError (naming the flags) unless the stack can be split over `layout`:
        heads and MLP columns over the TP ranks, layers over the model chunks (PP x virtual)."""
        tp = layout.tensor_model_parallel_size
        if self.num_attention_heads % tp:
            raise ValueError(
                f"--num-attention-heads {self.num_attention_heads} is not divisible by "
                f"--tensor-model-parallel-size {tp}"
            )
        if self.ffn_hidden_size % tp:
            raise ValueError(
                f"--ffn-hidden-size {self.ffn_hidden_size} is not divisible by "
                f"--tensor-model-parallel-size {tp}"
            )
        pp = layout.pipeline_model_parallel_size
        vpp = layout.virtual_pipeline_model_parallel_size
        if self.num_layers % (pp * (vpp or 1)):
            raise ValueError(
                f"--num-layers {self.num_layers} must be divisible by "
                "--pipeline-model-parallel-size "
                f"{pp}" + (f" x virtual stages {vpp}" if vpp else "")
            )

    def _validate_recompute(self) -> None:
        g = self.recompute_granularity
        if g not in (None, "full", "selective"):
            raise ValueError(f"--recompute-granularity must be full or selective, got {g!r}")
        if g == "full":
            if self.recompute_method not in ("uniform", "block"):
                raise ValueError(
                    "--recompute-granularity full needs --recompute-method uniform or block "
                    f"(got {self.recompute_method!r})"
                )
            if not self.recompute_num_layers or self.recompute_num_layers < 1:
                raise ValueError("--recompute-granularity full needs --recompute-num-layers >= 1")
        elif self.recompute_method is not None and g is None:
            raise ValueError("--recompute-method needs --recompute-granularity full")

    def num_layers_per_chunk(self, layout: RankLayout) -> int:
        """Layers in one model chunk (one pipeline stage, or one virtual stage) of `layout`."""
        vpp = layout.virtual_pipeline_model_parallel_size or 1
        return self.num_layers // (layout.pipeline_model_parallel_size * vpp)

    def layer_offset(self, layout: RankLayout, pp_rank: int, vp_rank: Optional[int] = None) -> int:
        """Global index of the first layer of chunk `vp_rank` of pipeline rank `pp_rank`
        (Megatron's interleaved assignment: chunk v of every rank before chunk v + 1)."""
        per = self.num_layers_per_chunk(layout)
        vpp = layout.virtual_pipeline_model_parallel_size
        if vpp:
            return (vp_rank or 0) * (self.num_layers // vpp) + pp_rank * per
        return pp_rank * per

    @property
    def output_layer_init_std(self) -> float:
        """Scaled init of the output projection of each block (GPT-2 / Megatron)."""
        return self.init_method_std / (2.0 * self.num_layers) ** 0.5
