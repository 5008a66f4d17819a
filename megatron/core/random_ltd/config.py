"""Typed configuration of random-LTD: the `data_efficiency.data_routing` block of a DeepSpeed
config file (read by `megatron.core.deepspeed_config`).

Every field has a docstring and every dataclass validates itself in `__post_init__`. Layer ids are
0-based global layer indices, as in DeepSpeed's `random_ltd_layer_id` and as
`TransformerLayer.layer_id`.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

from megatron.core.json_config import ConfigError, check_choice, disable_child, json_field

LTD_MODEL_TYPES = ("decoder", "encoder")
LTD_HIDDEN_STATE_ORDERS = ("seq_batch_dim", "batch_seq_dim")
LTD_SCHEDULE_TYPES = ("fixed_linear",)
LAYER_TOKEN_WARMUP_TYPES = ("linear",)


@dataclasses.dataclass
class RandomLTDScheduleParams:
    """`random_ltd_schedule.schedule_config`."""

    require_steps: int = 1
    """Steps over which the kept tokens grow from min_value to max_value."""

    seq_per_step: int = 16
    """The kept tokens are rounded down to a multiple of this."""

    def __post_init__(self) -> None:
        if self.require_steps < 1 or self.seq_per_step < 1:
            raise ConfigError(
                f"require_steps and seq_per_step must be >= 1, got {self.require_steps} and "
                f"{self.seq_per_step}"
            )


@dataclasses.dataclass
class RandomLTDScheduleConfig:
    """`random_ltd.random_ltd_schedule`: tokens kept by each dropping layer as a function of the
    step (see `schedule.random_ltd_value`)."""

    min_value: Optional[int] = None
    """Tokens kept at the first step (required)."""

    max_value: Optional[int] = None
    """Tokens kept at the end of the schedule, normally the sequence length (required)."""

    schedule_type: str = "fixed_linear"
    """Only fixed_linear (as in DeepSpeed)."""

    schedule_config: RandomLTDScheduleParams = json_field(factory=RandomLTDScheduleParams)
    """Ramp length and granularity."""

    def __post_init__(self) -> None:
        check_choice("random_ltd_schedule.schedule_type", self.schedule_type, LTD_SCHEDULE_TYPES)
        if self.min_value is None or self.max_value is None:
            raise ConfigError("random_ltd_schedule needs min_value and max_value")
        if not 1 <= self.min_value <= self.max_value:
            raise ConfigError(
                f"random_ltd_schedule needs 1 <= min_value <= max_value, got {self.min_value} "
                f"and {self.max_value}"
            )
        if self.min_value < self.schedule_config.seq_per_step:
            raise ConfigError(
                f"random_ltd_schedule.min_value {self.min_value} is below seq_per_step "
                f"{self.schedule_config.seq_per_step}: rounding down would keep 0 tokens; raise "
                "min_value or lower seq_per_step"
            )


@dataclasses.dataclass
class LayerTokenLRScheduleConfig:
    """`random_ltd.layer_token_lr_schedule`: learning-rate warmup/decay counted in layer-tokens
    (DeepSpeed raises NotImplementedError when it is enabled; here it is implemented)."""

    enabled: bool = False
    """Drive the learning-rate schedule by consumed layer-tokens instead of samples."""

    total_layer_tokens: Optional[int] = None
    """Layer-tokens of the whole run (decay span)."""

    warmup_type: str = "linear"
    """Warmup shape (linear)."""

    warmup_layer_tokens: int = 0
    """Layer-tokens of warmup."""

    def __post_init__(self) -> None:
        check_choice(
            "layer_token_lr_schedule.warmup_type", self.warmup_type, LAYER_TOKEN_WARMUP_TYPES
        )
        if self.enabled and (self.total_layer_tokens is None or self.total_layer_tokens < 1):
            raise ConfigError("layer_token_lr_schedule.enabled needs total_layer_tokens >= 1")
        if self.warmup_layer_tokens < 0:
            raise ConfigError(f"warmup_layer_tokens must be >= 0, got {self.warmup_layer_tokens}")


@dataclasses.dataclass
class RandomLTDConfig:
    """`data_routing.random_ltd`: random layerwise token dropping."""

    enabled: bool = False
    """Turn random-LTD on (needs data_efficiency.enabled and data_routing.enabled)."""

    total_layer_num: Optional[int] = None
    """Transformer layers of the model."""

    random_ltd_layer_num: Optional[int] = None
    """Number of layers that drop tokens (= len(random_ltd_layer_id))."""

    random_ltd_layer_id: Optional[List[int]] = None
    """0-based ids of the layers that drop tokens (usually 1 .. total_layer_num - 2)."""

    model_mask_name: str = "attention_mask"
    """Name of the attention-mask argument of the layers."""

    model_type: str = "decoder"
    """decoder (GPT, causal) or encoder (BERT)."""

    hidden_state_order: str = "seq_batch_dim"
    """Layout of the layers' hidden states: seq_batch_dim ([s, b, h]) or batch_seq_dim."""

    random_ltd_schedule: Optional[RandomLTDScheduleConfig] = None
    """How many tokens the dropping layers keep at each step (required when enabled)."""

    layer_token_lr_schedule: LayerTokenLRScheduleConfig = json_field(
        factory=LayerTokenLRScheduleConfig
    )
    """Learning-rate schedule by layer-tokens."""

    global_batch_size: Optional[int] = None
    """Filled in by DeepSpeed at run time; accepted and ignored (the global batch is
    --global-batch-size)."""

    micro_batch_size: Optional[int] = None
    """Filled in by DeepSpeed at run time; accepted and ignored."""

    def __post_init__(self) -> None:
        check_choice("model_type", self.model_type, LTD_MODEL_TYPES)
        check_choice("hidden_state_order", self.hidden_state_order, LTD_HIDDEN_STATE_ORDERS)
        if not self.enabled:
            return
        missing = [
            k
            for k in ("total_layer_num", "random_ltd_layer_id", "random_ltd_schedule")
            if getattr(self, k) is None
        ]
        if missing:
            raise ConfigError(f"random-LTD is enabled but {missing} are not set")
        ids = list(self.random_ltd_layer_id)
        if not ids:
            raise ConfigError(
                "random_ltd_layer_id is empty: random-LTD would drop tokens in no layer; list the "
                "0-based layers that drop tokens (usually 1 .. total_layer_num - 2) or set "
                "enabled to false"
            )
        if self.random_ltd_layer_num is None:
            self.random_ltd_layer_num = len(ids)
        if self.random_ltd_layer_num != len(ids):
            raise ConfigError(
                f"random_ltd_layer_num {self.random_ltd_layer_num} != {len(ids)} entries of "
                "random_ltd_layer_id"
            )
        if sorted(set(ids)) != ids or (ids and not 0 <= ids[0] <= ids[-1] < self.total_layer_num):
            raise ConfigError(
                f"random_ltd_layer_id must be distinct ascending layer ids in "
                f"[0, {self.total_layer_num}), got {ids}"
            )


@dataclasses.dataclass
class DataRoutingConfig:
    """`data_efficiency.data_routing`."""

    enabled: bool = False
    """Turn data routing (random-LTD) on; needs data_efficiency.enabled."""

    random_ltd: RandomLTDConfig = json_field(factory=RandomLTDConfig)
    """Random layerwise token dropping."""

    def __post_init__(self) -> None:
        disable_child(self.enabled, self.random_ltd, "data_routing", "random_ltd")
