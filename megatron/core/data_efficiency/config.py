"""Typed configuration of curriculum learning and random-LTD, filled from a DeepSpeed JSON.

Users of Megatron-DeepSpeed already have a DeepSpeed config file with a `data_efficiency` block
(and possibly the older top-level `curriculum_learning` block). `load_deepspeed_config` reads such
a file unchanged into the dataclasses below; the other top-level DeepSpeed keys (`train_batch_size`,
`fp16`, `zero_optimization`, ...) are accepted and reported as ignored (`DeepSpeedConfig.ignored`),
because the Megatron command line owns those settings here.

Differences from DeepSpeed, on purpose:

- Validation is strict: an unknown key raises `ConfigError` naming the key, its path and the
  closest valid key; a value of the wrong type raises with its path. DeepSpeed ignores both.
- Parent `enabled` flags are honoured: `data_efficiency.enabled = false` turns curriculum learning
  and random-LTD off even when their own flags are true (the children's `enabled` fields are set to
  the effective value, and a log line says so). DeepSpeed only looks at the innermost flags.
- `schedule_config.custom_function` ("package.module:function") names the schedule of a
  `schedule_type: "custom"` metric in the file itself; DeepSpeed needs a Python API call
  (a callable can still be given in code: `DifficultySchedule.custom_callable`).

Every field has a docstring (it is the help text when a field is exposed as an option) and every
dataclass validates itself in `__post_init__`, so objects built in code get the same checks.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import os
import typing
from typing import Any, Callable, Dict, List, Optional, Union

logger = logging.getLogger(__name__)

SCHEDULE_TYPES = ("fixed_linear", "fixed_root", "fixed_discrete", "custom")
"""Pacing functions of curriculum difficulty (see `pacing`)."""

DIFFICULTY_TYPES = ("value", "percentile")
CLUSTERING_TYPES = ("schedule_based", "single_cluster")
SEQLEN_TRUNCATE = "seqlen_truncate"
"""Metric name that makes GPT batches truncated to the difficulty (BERT: trimmed of padding)."""
SEQLEN_RESHAPE = "seqlen_reshape"
"""Metric name that makes GPT batches re-chunked into rows of difficulty + 1 tokens."""
SEQLEN_METRICS = (SEQLEN_TRUNCATE, SEQLEN_RESHAPE)
LTD_MODEL_TYPES = ("decoder", "encoder")
LTD_HIDDEN_STATE_ORDERS = ("seq_batch_dim", "batch_seq_dim")
LTD_SCHEDULE_TYPES = ("fixed_linear",)
LAYER_TOKEN_WARMUP_TYPES = ("linear",)

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


class ConfigError(ValueError):
    """An invalid data-efficiency configuration; the message names the key path and the fix."""


def _field(default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING, json_key=True):
    meta = {"json": json_key}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}{hint}")


# ----------------------------------------------------------------------------- curriculum


@dataclasses.dataclass
class ScheduleConfig:
    """`schedule_config` of a curriculum metric: the parameters of its pacing function."""

    total_curriculum_step: Optional[int] = None
    """fixed_linear / fixed_root: steps to go from min_difficulty to max_difficulty."""

    difficulty_step: int = 1
    """fixed_linear / fixed_root: difficulties are rounded down to a multiple of this (use a
    multiple of 8 for sequence lengths, for tensor cores)."""

    root_degree: Optional[int] = None
    """fixed_root: degree of the root (2 = square root; 1 is linear)."""

    difficulty: Optional[List[int]] = None
    """fixed_discrete: the difficulties, one more than max_step."""

    max_step: Optional[List[int]] = None
    """fixed_discrete: difficulty[i] is used up to and including step max_step[i]; after the last
    one, difficulty[-1]."""

    custom_function: Optional[str] = None
    """custom: "package.module:function" computing the difficulty from the step (1-based);
    an extension of DeepSpeed's format (DeepSpeed sets it through a Python call)."""

    def __post_init__(self) -> None:
        if self.difficulty_step < 1:
            raise ConfigError(f"difficulty_step must be >= 1, got {self.difficulty_step}")
        if self.total_curriculum_step is not None and self.total_curriculum_step < 1:
            raise ConfigError(
                f"total_curriculum_step must be >= 1, got {self.total_curriculum_step}"
            )
        if self.root_degree is not None and self.root_degree < 1:
            raise ConfigError(f"root_degree must be >= 1, got {self.root_degree}")
        if self.custom_function is not None and ":" not in self.custom_function:
            raise ConfigError(
                f"custom_function must be 'package.module:function', got {self.custom_function!r}"
            )


@dataclasses.dataclass
class DifficultySchedule:
    """A difficulty that grows with the step: the pacing part shared by curriculum metrics and
    the legacy `curriculum_learning` block."""

    min_difficulty: Optional[int] = None
    """Difficulty at the first step (required)."""

    max_difficulty: Optional[int] = None
    """Difficulty at the end of the schedule (required)."""

    schedule_type: str = "fixed_linear"
    """Pacing function: fixed_linear, fixed_root, fixed_discrete or custom."""

    schedule_config: ScheduleConfig = _field(factory=ScheduleConfig)
    """Parameters of the pacing function."""

    custom_callable: Optional[Callable[[int], Any]] = dataclasses.field(
        default=None, repr=False, compare=False, metadata={"json": False}
    )
    """A Python callable step -> difficulty for schedule_type custom, set in code (takes
    precedence over schedule_config.custom_function; not part of the JSON)."""

    def __post_init__(self) -> None:
        _check_choice("schedule_type", self.schedule_type, SCHEDULE_TYPES)
        if self.min_difficulty is None or self.max_difficulty is None:
            raise ConfigError("min_difficulty and max_difficulty are required")
        if self.min_difficulty > self.max_difficulty:
            raise ConfigError(
                f"min_difficulty {self.min_difficulty} is above max_difficulty "
                f"{self.max_difficulty}"
            )
        sc = self.schedule_config
        if (
            self.schedule_type in ("fixed_linear", "fixed_root")
            and sc.total_curriculum_step is None
        ):
            raise ConfigError(
                f"schedule_config.total_curriculum_step is required for schedule_type "
                f"{self.schedule_type}"
            )
        if self.schedule_type == "fixed_root" and sc.root_degree is None:
            raise ConfigError(
                "schedule_config.root_degree is required for schedule_type fixed_root"
            )
        if self.schedule_type == "fixed_discrete":
            self._check_discrete()

    def _check_discrete(self) -> None:
        d, m = self.schedule_config.difficulty, self.schedule_config.max_step
        if not d or not m:
            raise ConfigError(
                "schedule_type fixed_discrete needs non-empty schedule_config.difficulty and "
                "schedule_config.max_step"
            )
        if len(d) != len(m) + 1:
            raise ConfigError(
                f"fixed_discrete: difficulty needs exactly one more entry than max_step, got "
                f"{len(d)} difficulties and {len(m)} max steps"
            )
        if any(b <= a for a, b in zip(m, m[1:])) or m[0] < 1:
            raise ConfigError(f"fixed_discrete: max_step must increase from >= 1, got {m}")


@dataclasses.dataclass
class CurriculumMetricConfig(DifficultySchedule):
    """One entry of `curriculum_metrics`: a difficulty metric, its data index and its schedule."""

    index_to_sample_path: Optional[str] = None
    """MMIDIDX prefix of `<metric>_index_to_sample` (or `..._percentile_merged` for percentile
    difficulty) from the analysis; placeholders such as "dummy" are fine for single_cluster."""

    index_to_metric_path: Optional[str] = None
    """MMIDIDX prefix of `<metric>_index_to_metric` (value difficulty only)."""

    difficulty_type: str = "value"
    """value: the difficulty is a metric value; percentile: a percentile (0-100) of the samples
    in ascending metric order."""

    clustering_type: str = "schedule_based"
    """schedule_based: the metric decides which samples may be drawn; single_cluster: it does not
    filter samples (it only drives post-processing, e.g. seqlen_truncate)."""

    name: str = _field("", json_key=False)
    """The metric's name (its key in curriculum_metrics; set by the parent)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("difficulty_type", self.difficulty_type, DIFFICULTY_TYPES)
        _check_choice("clustering_type", self.clustering_type, CLUSTERING_TYPES)
        if self.difficulty_type == "percentile" and self.schedule_type != "custom":
            if not 0 <= self.min_difficulty <= self.max_difficulty <= 100:
                raise ConfigError(
                    f"percentile difficulties must lie in [0, 100], got min_difficulty "
                    f"{self.min_difficulty} and max_difficulty {self.max_difficulty}"
                )

    @property
    def filters_samples(self) -> bool:
        """Whether the metric takes part in forming clusters (schedule_based)."""
        return self.clustering_type == "schedule_based"


@dataclasses.dataclass
class CurriculumLearningConfig:
    """`data_sampling.curriculum_learning`: curriculum metrics and their schedules."""

    enabled: bool = False
    """Turn curriculum learning on (needs data_efficiency.enabled and data_sampling.enabled)."""

    data_cluster_path: Optional[str] = None
    """Accepted for compatibility and unused: clusters are computed in memory, nothing is written
    at train time."""

    curriculum_metrics: Dict[str, CurriculumMetricConfig] = _field(factory=dict)
    """Metrics by name. The names seqlen_truncate and seqlen_reshape select GPT post-processing
    (truncate each sample / re-chunk the batch to the difficulty)."""

    def __post_init__(self) -> None:
        for name, metric in self.curriculum_metrics.items():
            metric.name = name
        if self.enabled and not self.curriculum_metrics:
            raise ConfigError("curriculum learning is enabled but curriculum_metrics is empty")
        seqlen = [n for n in self.curriculum_metrics if n in SEQLEN_METRICS]
        if len(seqlen) > 1:
            raise ConfigError(
                f"give only one of {list(SEQLEN_METRICS)} (they post-process the same batch), "
                f"got {seqlen}"
            )
        for name in seqlen:
            step = self.curriculum_metrics[name].schedule_config.difficulty_step
            if step % 8:
                logger.warning(
                    "curriculum metric %s: difficulty_step %d is not a multiple of 8; sequence "
                    "lengths that are multiples of 8 use tensor cores better",
                    name,
                    step,
                )

    @property
    def seqlen_metric(self) -> Optional[CurriculumMetricConfig]:
        """The seqlen_truncate or seqlen_reshape metric, if any."""
        for name in SEQLEN_METRICS:
            if name in self.curriculum_metrics:
                return self.curriculum_metrics[name]
        return None


@dataclasses.dataclass
class DataSamplingConfig:
    """`data_efficiency.data_sampling`."""

    enabled: bool = False
    """Turn data sampling (curriculum learning) on; needs data_efficiency.enabled."""

    num_epochs: int = 1000
    """Passes over the training samples the curriculum sampler may make before it stops."""

    num_workers: int = 0
    """Data-loader workers DeepSpeed would use; accepted for compatibility (the loader's workers
    are --num-workers)."""

    curriculum_learning: CurriculumLearningConfig = _field(factory=CurriculumLearningConfig)
    """Curriculum learning."""

    def __post_init__(self) -> None:
        if self.num_epochs < 1:
            raise ConfigError(f"num_epochs must be >= 1, got {self.num_epochs}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        _disable_child(
            self.enabled, self.curriculum_learning, "data_sampling", "curriculum_learning"
        )


def _disable_child(parent_enabled: bool, child: Any, parent_name: str, child_name: str) -> None:
    """Parent flags win: a disabled parent turns its child off (and says so)."""
    if child.enabled and not parent_enabled:
        logger.info(
            "%s.enabled is true but %s.enabled is false: %s is off",
            child_name,
            parent_name,
            child_name,
        )
        child.enabled = False


# ----------------------------------------------------------------------------- random-LTD


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
    step (see `pacing.random_ltd_value`)."""

    min_value: Optional[int] = None
    """Tokens kept at the first step (required)."""

    max_value: Optional[int] = None
    """Tokens kept at the end of the schedule, normally the sequence length (required)."""

    schedule_type: str = "fixed_linear"
    """Only fixed_linear (as in DeepSpeed)."""

    schedule_config: RandomLTDScheduleParams = _field(factory=RandomLTDScheduleParams)
    """Ramp length and granularity."""

    def __post_init__(self) -> None:
        _check_choice("random_ltd_schedule.schedule_type", self.schedule_type, LTD_SCHEDULE_TYPES)
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
        _check_choice(
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

    layer_token_lr_schedule: LayerTokenLRScheduleConfig = _field(factory=LayerTokenLRScheduleConfig)
    """Learning-rate schedule by layer-tokens."""

    global_batch_size: Optional[int] = None
    """Filled in by DeepSpeed at run time; accepted and ignored (the global batch is
    --global-batch-size)."""

    micro_batch_size: Optional[int] = None
    """Filled in by DeepSpeed at run time; accepted and ignored."""

    def __post_init__(self) -> None:
        _check_choice("model_type", self.model_type, LTD_MODEL_TYPES)
        _check_choice("hidden_state_order", self.hidden_state_order, LTD_HIDDEN_STATE_ORDERS)
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

    random_ltd: RandomLTDConfig = _field(factory=RandomLTDConfig)
    """Random layerwise token dropping."""

    def __post_init__(self) -> None:
        _disable_child(self.enabled, self.random_ltd, "data_routing", "random_ltd")


@dataclasses.dataclass
class DataEfficiencyConfig:
    """The DeepSpeed `data_efficiency` block."""

    enabled: bool = False
    """Main switch of data sampling and data routing."""

    seed: int = 1234
    """Seed of the curriculum sampler (cluster shuffles and batch draws)."""

    data_sampling: DataSamplingConfig = _field(factory=DataSamplingConfig)
    """Curriculum learning."""

    data_routing: DataRoutingConfig = _field(factory=DataRoutingConfig)
    """Random-LTD."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        _disable_child(self.enabled, self.data_sampling, "data_efficiency", "data_sampling")
        _disable_child(self.enabled, self.data_routing, "data_efficiency", "data_routing")
        # Re-apply to grandchildren: a parent switched off above switches its children off.
        _disable_child(
            self.data_sampling.enabled,
            self.data_sampling.curriculum_learning,
            "data_sampling",
            "curriculum_learning",
        )
        _disable_child(
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
class LegacyCurriculumConfig(DifficultySchedule):
    """The older top-level `curriculum_learning` block: sequence-length warmup (each batch is
    truncated to the difficulty)."""

    enabled: bool = False
    """Turn the legacy sequence-length curriculum on."""

    curriculum_type: str = "seqlen"
    """Only seqlen."""

    def __post_init__(self) -> None:
        _check_choice("curriculum_type", self.curriculum_type, ("seqlen",))
        if self.enabled:  # DeepSpeed reads the schedule only when the block is enabled
            super().__post_init__()


@dataclasses.dataclass
class DeepSpeedConfig:
    """The data-efficiency parts of a DeepSpeed JSON file (see `load_deepspeed_config`)."""

    data_efficiency: DataEfficiencyConfig = _field(factory=DataEfficiencyConfig)
    """The `data_efficiency` block."""

    curriculum_learning: Optional[LegacyCurriculumConfig] = None
    """The legacy top-level `curriculum_learning` block, when present."""

    ignored: Dict[str, Any] = _field(factory=dict, json_key=False)
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


# ----------------------------------------------------------------------------- parsing


def to_plain_dict(obj: Any) -> Any:
    """A config dataclass as plain dicts/lists/scalars with the JSON key names (no code-only
    fields such as the metric name or a custom callable)."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_plain_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("json", True)
        }
    if isinstance(obj, dict):
        return {k: to_plain_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain_dict(v) for v in obj]
    return obj


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_KEY_ALIASES = {ScheduleConfig: {"total_step": "total_curriculum_step"}}
"""Older spellings accepted with a warning (DeepSpeed before 0.8 used total_step)."""


def _convert(tp: Any, value: Any, path: str) -> Any:
    """`value` checked against the annotation `tp` (JSON types), converted where lossless."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__} {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1.1e5 written by a launcher's printf
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"{path}: expected {_TYPE_NAMES.get(tp, tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def _unknown_key(key: str, valid: List[str], path: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{path}: unknown key {key!r}{hint} (valid keys: {sorted(valid)})")


def from_dict(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a JSON object with strict key and type checks.

    Raises:
        ConfigError: unknown key (with the closest valid one), wrong type, or a value that the
            dataclass's validation rejects; the message starts with the key path.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.metadata.get("json", True)]
    kwargs = {}
    for key, value in data.items():
        if key in _KEY_ALIASES.get(cls, {}):
            new = _KEY_ALIASES[cls][key]
            logger.warning("%s.%s is the old name of %s.%s", path, key, path, new)
            key = new
        if key not in valid:
            raise _unknown_key(key, valid, path)
        kwargs[key] = _convert(hints[key], value, f"{path}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


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
        logger.info(
            "DeepSpeed config: ignoring %s (set by the Megatron command line here)", sorted(ignored)
        )
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
