"""How many tokens random-LTD keeps at each step, and the token accounting that follows from it.

`random_ltd_value`: the tokens kept by each dropping layer at DeepSpeed's `global_steps` g
(completed optimizer steps, 0 during the first step):
`k = floor(g / require_steps * (max - min) + min)`, `k -= k % seq_per_step`, `k = min(k, max)`,
exactly DeepSpeed's fixed_linear random-LTD scheduler. The training loop uses this one.

All functions are pure functions of the step and the configuration.
"""

from __future__ import annotations

import math
from typing import Optional

from megatron.core.random_ltd.config import RandomLTDConfig, RandomLTDScheduleConfig


def random_ltd_value(schedule: RandomLTDScheduleConfig, global_steps: int) -> int:
    """Tokens each random-LTD layer keeps at DeepSpeed's `global_steps` (the number of completed
    optimizer steps: 0 during the first step, i.e. iteration - 1)."""
    if global_steps < 0:
        raise ValueError(f"global_steps must be >= 0, got {global_steps}")
    sc = schedule.schedule_config
    value = float(global_steps) / sc.require_steps  # DeepSpeed: (g / require_steps) ** (1 / 1)
    value = math.floor(value * (schedule.max_value - schedule.min_value) + schedule.min_value)
    value -= value % sc.seq_per_step
    return min(value, schedule.max_value)


def random_ltd_effective_seqlen(
    seq_length: int, kept: int, total_layers: int, ltd_layers: int
) -> int:
    """Average sequence length over the layers: `(S * (L - n) + K * n) // L` (token accounting
    for --train-tokens and token-based learning-rate schedules)."""
    return (seq_length * (total_layers - ltd_layers) + kept * ltd_layers) // total_layers


def random_ltd_layer_tokens(
    config: RandomLTDConfig, global_steps: int, global_batch_size: int
) -> int:
    """Layer-tokens consumed by one step (DeepSpeed's accounting):
    `global_batch_size * (K * n + max_value * (L - n))` with K = `random_ltd_value`."""
    kept = random_ltd_value(config.random_ltd_schedule, global_steps)
    n, total = config.random_ltd_layer_num, config.total_layer_num
    return global_batch_size * (kept * n + config.random_ltd_schedule.max_value * (total - n))


def effective_seq_length(seq_length: int, keep: int, num_layers: int, num_ltd_layers: int) -> int:
    """Tokens per sample for accounting: (S * (L - n) + K * n) // L.

    A layer that sees K tokens counts K/S of a full one; consumed tokens, the token budget and
    token-based lr schedules use this length when random-LTD is on.
    """
    keep = min(keep, seq_length)
    return (seq_length * (num_layers - num_ltd_layers) + keep * num_ltd_layers) // num_layers


def keep_for_step(
    step: int,
    min_value: int,
    max_value: int,
    require_steps: int,
    seq_per_step: int,
    seq_length: Optional[int] = None,
) -> int:
    """K at a step for the fixed_linear random-LTD schedule, capped by the current length.

    K grows linearly from min_value to max_value over require_steps steps, rounded down to a
    multiple of seq_per_step (DeepSpeed's formula), and never exceeds the sequence length (a
    curriculum may have truncated it).
    """
    if require_steps <= 0:
        k = max_value
    else:
        frac = min(1.0, step / require_steps)
        k = int(frac * (max_value - min_value)) + min_value
        k -= k % seq_per_step if seq_per_step > 0 else 0
        k = min(max(k, min_value), max_value)
    if seq_length is not None:
        k = min(k, seq_length)
    return k
