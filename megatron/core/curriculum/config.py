"""Typed configuration of curriculum learning: metrics, their pacing schedules, data sampling.

These are the `data_efficiency.data_sampling` block of a DeepSpeed config file and the older
top-level `curriculum_learning` block (see `megatron.core.deepspeed_config`, which reads the
file). Every field has a docstring (it is the help text when a field is exposed as an option) and
every dataclass validates itself in `__post_init__`, so objects built in code get the same checks.

`schedule_config.custom_function` ("package.module:function") names the schedule of a
`schedule_type: "custom"` metric in the file itself; DeepSpeed needs a Python API call for that
(a callable can still be given in code: `DifficultySchedule.custom_callable`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, ClassVar, Dict, List, Optional

from megatron.core.json_config import ConfigError, check_choice, disable_child, json_field

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


@dataclasses.dataclass
class ScheduleConfig:
    """`schedule_config` of a curriculum metric: the parameters of its pacing function."""

    JSON_KEY_ALIASES: ClassVar[Dict[str, str]] = {"total_step": "total_curriculum_step"}
    """Older spellings accepted with a warning (DeepSpeed before 0.8 used total_step)."""

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

    schedule_config: ScheduleConfig = json_field(factory=ScheduleConfig)
    """Parameters of the pacing function."""

    custom_callable: Optional[Callable[[int], Any]] = dataclasses.field(
        default=None, repr=False, compare=False, metadata={"json": False}
    )
    """A Python callable step -> difficulty for schedule_type custom, set in code (takes
    precedence over schedule_config.custom_function; not part of the JSON)."""

    def __post_init__(self) -> None:
        check_choice("schedule_type", self.schedule_type, SCHEDULE_TYPES)
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
        if self.schedule_type in ("fixed_linear", "fixed_root"):
            self._check_difficulty_step()
        if self.schedule_type == "fixed_discrete":
            self._check_discrete()

    def _check_difficulty_step(self) -> None:
        """The rounding down to a multiple of difficulty_step must leave room to grow."""
        lo, hi, step = (
            self.min_difficulty,
            self.max_difficulty,
            self.schedule_config.difficulty_step,
        )
        top = hi - hi % step  # the largest multiple of the step <= max
        if lo < hi and top <= lo:
            raise ConfigError(
                f"schedule_config.difficulty_step {step} has no multiple in (min_difficulty "
                f"{lo}, max_difficulty {hi}]: the difficulty would stay at {lo} for the whole "
                f"run; use a difficulty_step of at most {hi - lo} that divides {hi} (e.g. 8 for "
                "sequence lengths)"
            )
        if top < hi:
            logger.warning(
                "max_difficulty %d is not a multiple of difficulty_step %d: the difficulty stops "
                "at %d",
                hi,
                step,
                max(top, lo),
            )

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

    name: str = json_field("", json_key=False)
    """The metric's name (its key in curriculum_metrics; set by the parent)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("difficulty_type", self.difficulty_type, DIFFICULTY_TYPES)
        check_choice("clustering_type", self.clustering_type, CLUSTERING_TYPES)
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

    curriculum_metrics: Dict[str, CurriculumMetricConfig] = json_field(factory=dict)
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
            check_seqlen_min(self.curriculum_metrics[name], f"curriculum metric {name}")
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

    curriculum_learning: CurriculumLearningConfig = json_field(factory=CurriculumLearningConfig)
    """Curriculum learning."""

    def __post_init__(self) -> None:
        if self.num_epochs < 1:
            raise ConfigError(f"num_epochs must be >= 1, got {self.num_epochs}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        disable_child(
            self.enabled, self.curriculum_learning, "data_sampling", "curriculum_learning"
        )


@dataclasses.dataclass
class LegacyCurriculumConfig(DifficultySchedule):
    """The older top-level `curriculum_learning` block: sequence-length warmup (each batch is
    truncated to the difficulty)."""

    enabled: bool = False
    """Turn the legacy sequence-length curriculum on."""

    curriculum_type: str = "seqlen"
    """Only seqlen."""

    def __post_init__(self) -> None:
        check_choice("curriculum_type", self.curriculum_type, ("seqlen",))
        if self.enabled:  # DeepSpeed reads the schedule only when the block is enabled
            super().__post_init__()
            check_seqlen_min(self, "the legacy curriculum_learning block")


def check_seqlen_min(schedule: DifficultySchedule, what: str) -> None:
    """A sequence-length schedule starts at a length of at least 1 token."""
    if schedule.min_difficulty < 1:
        raise ConfigError(
            f"{what}: min_difficulty {schedule.min_difficulty} is a sequence length and must be "
            ">= 1 (the length of the first steps; e.g. 64 or 80)"
        )
