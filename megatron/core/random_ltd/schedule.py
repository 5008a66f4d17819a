"""How many tokens random-LTD keeps at each step, and the token accounting that follows from it.

`random_ltd_value`: the tokens kept by each dropping layer at DeepSpeed's `global_steps` g
(completed optimizer steps, 0 during the first step):
`k = floor(g / require_steps * (max - min) + min)`, `k -= k % seq_per_step`, `k = min(k, max)`,
exactly DeepSpeed's fixed_linear random-LTD scheduler. `random_ltd_keep` is what the training loop
uses at iteration k: `random_ltd_value` at g = k - 1, capped by the current sequence length (a
curriculum may have shortened it). There is no other K schedule.

All functions are pure functions of the step and the configuration.
"""

from __future__ import annotations

import math

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


def random_ltd_keep(schedule: RandomLTDScheduleConfig, step: int, length: int) -> int:
    """Tokens each random-LTD layer keeps at training iteration `step` (1-based) of sequences of
    `length` tokens: `random_ltd_value(schedule, step - 1)`, at most `length`."""
    if step < 1:
        raise ValueError(f"step is the 1-based training iteration, got {step}")
    return min(random_ltd_value(schedule, step - 1), length)


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
