"""The data-efficiency parts of a DeepSpeed config file, read into typed dataclasses.

Users of Megatron-DeepSpeed already have a DeepSpeed config file with a `data_efficiency` block
(and possibly the older top-level `curriculum_learning` block). `load_deepspeed_config` reads such
a file unchanged: `data_efficiency.data_sampling` into the curriculum config
(`megatron.core.curriculum.config`), `data_efficiency.data_routing` into the random-LTD config
(`megatron.core.random_ltd.config`). The other top-level DeepSpeed keys (`train_batch_size`,
`fp16`, `zero_optimization`, ...) are accepted and returned as they are
(`DeepSpeedConfig.ignored`): the training application reads the ones it has options for
(megatron/training/deepspeed_settings.py).

Differences from DeepSpeed, on purpose:

- Validation is strict: an unknown key raises `ConfigError` naming the key, its path and the
  closest valid key; a value of the wrong type raises with its path. DeepSpeed ignores both.
- Parent `enabled` flags are honoured: `data_efficiency.enabled = false` turns curriculum learning
  and random-LTD off even when their own flags are true (the children's `enabled` fields are set to
  the effective value, and a log line says so). DeepSpeed only looks at the innermost flags.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import os
from typing import Any, Dict, Optional, Union

from megatron.core.curriculum.config import (
    CurriculumLearningConfig,
    DataSamplingConfig,
    LegacyCurriculumConfig,
)
from megatron.core.json_config import (
    ConfigError,
    disable_child,
    from_dict,
    json_field,
    to_plain_dict,
)
from megatron.core.random_ltd.config import DataRoutingConfig, RandomLTDConfig

logger = logging.getLogger(__name__)

KNOWN_DEEPSPEED_KEYS = tuple(
    """train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps steps_per_print
    wall_clock_breakdown dump_state optimizer scheduler fp16 bf16 amp zero_optimization
    zero_allow_untested_optimizer gradient_clipping prescale_gradients gradient_predivide_factor
    sparse_gradients communication_data_type activation_checkpointing flops_profiler tensorboard
    wandb csv_monitor comms_logger elasticity pipeline checkpoint aio dataloader_drop_last
    memory_breakdown zero_force_ds_cpu_optimizer compression_training autotuning sparse_attention
    data_types seq_parallel_communication_data_type torch_autocast compile nebula
    weight_quantization hybrid_engine eigenvalue progressive_layer_drop quantize_training
    disable_allgather fp32_allreduce train_batch_size_per_gpu gradient_accumulation_dtype
    use_data_before_expert_parallelism timers monitor_config""".split()
)
"""Top-level DeepSpeed keys that belong to DeepSpeed itself (accepted and ignored here)."""


@dataclasses.dataclass
class DataEfficiencyConfig:
    """The DeepSpeed `data_efficiency` block."""

    enabled: bool = False
    """Main switch of data sampling and data routing."""

    seed: int = 1234
    """Seed of the curriculum sampler (cluster shuffles and batch draws)."""

    data_sampling: DataSamplingConfig = json_field(factory=DataSamplingConfig)
    """Curriculum learning."""

    data_routing: DataRoutingConfig = json_field(factory=DataRoutingConfig)
    """Random-LTD."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        disable_child(self.enabled, self.data_sampling, "data_efficiency", "data_sampling")
        disable_child(self.enabled, self.data_routing, "data_efficiency", "data_routing")
        # Re-apply to grandchildren: a parent switched off above switches its children off.
        disable_child(
            self.data_sampling.enabled,
            self.data_sampling.curriculum_learning,
            "data_sampling",
            "curriculum_learning",
        )
        disable_child(
            self.data_routing.enabled, self.data_routing.random_ltd, "data_routing", "random_ltd"
        )

    @property
    def curriculum_learning(self) -> CurriculumLearningConfig:
        """data_sampling.curriculum_learning (its `enabled` is the effective switch)."""
        return self.data_sampling.curriculum_learning

    @property
    def random_ltd(self) -> RandomLTDConfig:
        """data_routing.random_ltd (its `enabled` is the effective switch)."""
        return self.data_routing.random_ltd


@dataclasses.dataclass
class DeepSpeedConfig:
    """The data-efficiency parts of a DeepSpeed JSON file (see `load_deepspeed_config`)."""

    data_efficiency: DataEfficiencyConfig = json_field(factory=DataEfficiencyConfig)
    """The `data_efficiency` block."""

    curriculum_learning: Optional[LegacyCurriculumConfig] = None
    """The legacy top-level `curriculum_learning` block, when present."""

    ignored: Dict[str, Any] = json_field(factory=dict, json_key=False)
    """Top-level DeepSpeed keys that are not ours (train_batch_size, fp16, ...), as read."""

    def __post_init__(self) -> None:
        legacy = self.curriculum_learning is not None and self.curriculum_learning.enabled
        if legacy and self.data_efficiency.curriculum_learning.enabled:
            raise ConfigError(
                "both the legacy curriculum_learning block and data_efficiency curriculum "
                "learning are enabled; use one (data_efficiency.data_sampling.curriculum_learning "
                "with a seqlen_truncate metric replaces the legacy block)"
            )

    def to_plain_dict(self) -> Dict[str, Any]:
        """JSON-compatible dict of the configuration (for checkpoints and logs)."""
        out = {"data_efficiency": to_plain_dict(self.data_efficiency)}
        if self.curriculum_learning is not None:
            out["curriculum_learning"] = to_plain_dict(self.curriculum_learning)
        return out


def _check_top_level(data: Dict[str, Any]) -> Dict[str, Any]:
    """The top-level keys that are not ours; a near-miss of one of ours is an error."""
    ours = ("data_efficiency", "curriculum_learning")
    ignored = {}
    for key, value in data.items():
        if key in ours:
            continue
        if key not in KNOWN_DEEPSPEED_KEYS:
            close = difflib.get_close_matches(key, ours, n=1, cutoff=0.8)
            if close:
                raise ConfigError(f"<root>: unknown key {key!r}; did you mean {close[0]!r}?")
        ignored[key] = value
    if ignored:
        logger.debug("DeepSpeed config: engine keys %s (left to the caller)", sorted(ignored))
    return ignored


def load_deepspeed_config(path_or_dict: Union[str, os.PathLike, Dict[str, Any]]) -> DeepSpeedConfig:
    """Read the data-efficiency parts of a DeepSpeed JSON file (or an already parsed dict).

    Args:
        path_or_dict: path of the JSON file, or its content as a dict (not modified).

    Returns:
        A validated `DeepSpeedConfig`; `.ignored` holds the other top-level keys.

    Raises:
        ConfigError: malformed JSON, unknown keys, wrong types or invalid values, with the key
            path (e.g. `data_efficiency.data_sampling.curriculum_learning.curriculum_metrics.
            voc.schedule_config.root_degree`) and the closest valid key.
    """
    if isinstance(path_or_dict, dict):
        data, where = copy.deepcopy(path_or_dict), "<dict>"
    else:
        where = os.fspath(path_or_dict)
        try:
            with open(where, "rt", encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where}: not valid JSON ({exc}); placeholders of a launcher template (e.g. "
                "CL_1st_MIN) must be substituted first"
            ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object")
    try:
        ignored = _check_top_level(data)
        de = from_dict(DataEfficiencyConfig, data.get("data_efficiency", {}), "data_efficiency")
        legacy = data.get("curriculum_learning")
        if legacy is not None:
            legacy = from_dict(LegacyCurriculumConfig, legacy, "curriculum_learning")
        return DeepSpeedConfig(data_efficiency=de, curriculum_learning=legacy, ignored=ignored)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
