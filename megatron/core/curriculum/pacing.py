"""Pacing functions: curriculum difficulty as a pure function of the step.

Curriculum difficulty at step s (s counts global batches and is 1 for the first batch, the
curriculum sampler's step and DeepSpeed's `global_steps + 1`), for a schedule with min, max and
T = total_curriculum_step (DeepSpeed's formulas):

- fixed_root (degree d) and fixed_linear (d = 1): `v = floor((s / T) ** (1 / d) * (max - min)
  + min)`, then `v -= v % difficulty_step` and `v = min(v, max)`.
- fixed_discrete: `difficulty[i]` for the first i with `s <= max_step[i]`, `difficulty[-1]` after
  the last max step.
- custom: a function of the step ("package.module:function" or a callable).

**Fix:** every result is clamped to [min, max]. DeepSpeed's rounding to a multiple of
difficulty_step can land below min (min 5, step 8 gives 0 at the first steps, a zero-length
sequence for seqlen metrics); here it gives 5. (DeepSpeed 0.19 rounds such values up to the next
multiple of the step instead, 8 in that example.)

The value is a function of the step alone: DeepSpeed's schedulers also stop updating once the
difficulty reached max, which only differs for schedules that go back down (custom or an
unordered fixed_discrete list); here such a schedule is followed as written.
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Callable, Dict, List, Optional, Tuple, Union

from megatron.core.curriculum.config import CurriculumLearningConfig, DifficultySchedule
from megatron.core.json_config import ConfigError
from megatron.core.utils import load_function

logger = logging.getLogger(__name__)

Number = Union[int, float]
_MAX_SEARCH_DOUBLINGS = 64


def fixed_root_difficulty(
    step: int,
    min_difficulty: int,
    max_difficulty: int,
    total_step: int,
    difficulty_step: int = 1,
    root_degree: Number = 1,
) -> int:
    """DeepSpeed's fixed_root pacing (fixed_linear is root_degree 1), clamped to [min, max]."""
    value = (float(step) / total_step) ** (1.0 / root_degree)  # the same float ops as DeepSpeed
    value = math.floor(value * (max_difficulty - min_difficulty) + min_difficulty)
    value -= value % difficulty_step
    return max(min_difficulty, min(value, max_difficulty))


def fixed_discrete_difficulty(step: int, difficulty: List[Number], max_step: List[int]) -> Number:
    """difficulty[i] for the first i with step <= max_step[i], else difficulty[-1]."""
    return difficulty[bisect.bisect_left(max_step, step)]


def load_schedule_function(target: str) -> Callable[[int], Number]:
    """The function named by "package.module:function" (dots after ':' walk attributes).

    Raises:
        ConfigError: the module cannot be imported, lacks the attribute, or it is not callable.
    """
    return load_function(target, "custom schedule", ConfigError)


def _custom_function(schedule: DifficultySchedule) -> Callable[[int], Number]:
    if schedule.custom_callable is not None:
        return schedule.custom_callable
    target = schedule.schedule_config.custom_function
    if target is None:
        raise ConfigError(
            "schedule_type custom needs a function: set schedule_config.custom_function to "
            "'package.module:function' or DifficultySchedule.custom_callable in code"
        )
    resolved = schedule.__dict__.get("_resolved_custom_function")
    if resolved is None or resolved[0] != target:  # resolved once per target (not a field)
        resolved = (target, load_schedule_function(target))
        schedule.__dict__["_resolved_custom_function"] = resolved
    return resolved[1]


def difficulty_at(schedule: DifficultySchedule, step: int) -> Number:
    """The difficulty of `schedule` at step `step` (>= 1; 0 gives the value before the first
    step, i.e. min for the fixed schedules), clamped to [min_difficulty, max_difficulty]."""
    if step < 0:
        raise ValueError(f"curriculum step must be >= 0, got {step}")
    sc, kind = schedule.schedule_config, schedule.schedule_type
    lo, hi = schedule.min_difficulty, schedule.max_difficulty
    if kind == "fixed_linear":
        return fixed_root_difficulty(step, lo, hi, sc.total_curriculum_step, sc.difficulty_step, 1)
    if kind == "fixed_root":
        return fixed_root_difficulty(
            step, lo, hi, sc.total_curriculum_step, sc.difficulty_step, sc.root_degree
        )
    if kind == "fixed_discrete":
        value = fixed_discrete_difficulty(step, sc.difficulty, sc.max_step)
    else:
        value = _custom_function(schedule)(step)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"custom schedule returned {type(value).__name__} {value!r} at step {step}; "
                "it must return a number"
            )
    return max(lo, min(value, hi))


def difficulty_segments(
    schedule: DifficultySchedule, last_step: Optional[int] = None
) -> List[Tuple[int, Number]]:
    """Where the difficulty changes: [(first step, difficulty)] from step 1 on, ascending.

    For fixed_linear / fixed_root the change points are found by bisection over the steps (the
    schedule is non-decreasing), for fixed_discrete from max_step; the list then covers every
    step (the last segment lasts forever) and `last_step` only truncates it. A custom schedule is
    evaluated at every step up to `last_step`, which is then required.
    """
    kind = schedule.schedule_type
    if kind == "fixed_discrete":
        starts = [1] + [m + 1 for m in schedule.schedule_config.max_step]
    elif kind == "custom":
        if last_step is None:
            raise ValueError("difficulty_segments of a custom schedule needs last_step")
        starts = range(1, last_step + 1)
    else:
        starts = _monotone_change_steps(
            lambda s: difficulty_at(schedule, s), schedule.max_difficulty
        )
    segments: List[Tuple[int, Number]] = []
    for start in starts:
        if last_step is not None and start > last_step:
            break
        value = difficulty_at(schedule, start)
        if not segments or value != segments[-1][1]:
            segments.append((start, value))
    return segments


def _monotone_change_steps(f: Callable[[int], Number], final: Number) -> List[int]:
    """Steps s >= 1 where a non-decreasing f changes (s = 1 included), up to where f hits final."""
    hi = 1
    for _ in range(_MAX_SEARCH_DOUBLINGS):
        if f(hi) >= final:
            break
        hi *= 2
    else:
        raise ValueError("the schedule does not reach max_difficulty")
    changes = [1]
    stack = [(1, hi, f(1), f(hi))]
    while stack:  # every change in (lo, hi] given f(lo), f(hi)
        lo, hi, f_lo, f_hi = stack.pop()
        if f_lo == f_hi:
            continue
        if hi == lo + 1:
            changes.append(hi)
            continue
        mid = (lo + hi) // 2
        f_mid = f(mid)
        stack.append((mid, hi, f_mid, f_hi))
        stack.append((lo, mid, f_lo, f_mid))
    return sorted(changes)


def curriculum_difficulties(config: CurriculumLearningConfig, step: int) -> Dict[str, Number]:
    """{metric name: difficulty at `step`} of every curriculum metric."""
    return {name: difficulty_at(m, step) for name, m in config.curriculum_metrics.items()}
