"""Pacing functions: the reference values of DeepSpeed's schedules, the clamp fix, random-LTD."""

import math
import os
import pathlib
import subprocess

import pytest

from megatron.core.curriculum.config import DifficultySchedule, ScheduleConfig
from megatron.core.curriculum.pacing import (
    difficulty_at,
    difficulty_segments,
    fixed_root_difficulty,
)
from megatron.core.json_config import ConfigError
from megatron.core.random_ltd.config import (
    RandomLTDConfig,
    RandomLTDScheduleConfig,
    RandomLTDScheduleParams,
)
from megatron.core.random_ltd.schedule import (
    random_ltd_effective_seqlen,
    random_ltd_layer_tokens,
    random_ltd_value,
)


def linear(lo, hi, total, step=1):
    return DifficultySchedule(lo, hi, "fixed_linear", ScheduleConfig(total, step))


def root(lo, hi, total, step=1, degree=2):
    return DifficultySchedule(lo, hi, "fixed_root", ScheduleConfig(total, step, degree))


def test_reference_values():
    gpt_seqlen = linear(80, 2048, 110000, 8)
    assert [difficulty_at(gpt_seqlen, s) for s in (1, 500, 1000, 55000)] == [80, 88, 96, 1064]
    voc = root(1, 100, 110000, 1, 2)
    assert [difficulty_at(voc, s) for s in (1, 1000, 10000, 27500)] == [1, 10, 30, 50]
    assert difficulty_at(gpt_seqlen, 110000) == 2048 and difficulty_at(voc, 10**9) == 100


def test_clamp_fix_min_not_a_multiple_of_the_step():
    schedule = linear(5, 100, 1000, 8)
    raw = math.floor(1 / 1000 * 95 + 5)
    assert raw - raw % 8 == 0  # DeepSpeed's formula alone: a zero-length sequence
    assert difficulty_at(schedule, 1) == 5
    values = [difficulty_at(schedule, s) for s in range(0, 1200)]
    assert min(values) == 5 and max(values) == 100
    assert all(v % 8 == 0 for v in values if 5 < v < 100)
    assert values == sorted(values)


def test_max_not_a_multiple_of_the_step_is_reached_after_total():
    schedule = linear(8, 100, 1000, 16)
    assert difficulty_at(schedule, 1000) == 96  # rounded down
    segments = difficulty_segments(schedule)
    assert segments[-1][1] == 100 and segments[-1][0] > 1000
    assert difficulty_at(schedule, segments[-1][0] - 1) == 96


def test_fixed_discrete_matches_deepspeed_ground_truth():
    schedule = DifficultySchedule(
        1, 5, "fixed_discrete", ScheduleConfig(difficulty=[1, 2, 3, 4, 5], max_step=[2, 4, 6, 8])
    )
    truth = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4, 9: 5, 100: 5}
    assert {s: difficulty_at(schedule, s) for s in truth} == truth
    assert difficulty_segments(schedule) == [(1, 1), (3, 2), (5, 3), (7, 4), (9, 5)]


@pytest.mark.parametrize(
    "schedule",
    [linear(80, 2048, 5000, 8), root(1, 100, 3000, 1, 2), root(128, 512, 2000, 8, 3)],
    ids=["linear", "root2", "root3"],
)
def test_segments_match_step_by_step_evaluation(schedule):
    values = [difficulty_at(schedule, s) for s in range(1, 6001)]
    expected = [(1, values[0])] + [
        (s + 1, values[s]) for s in range(1, len(values)) if values[s] != values[s - 1]
    ]
    assert difficulty_segments(schedule) == expected
    assert difficulty_segments(schedule, last_step=100) == [x for x in expected if x[0] <= 100]


def tenth_of_step(step):
    """A custom schedule for the tests: step // 10."""
    return step // 10


def test_custom_schedule_by_name_and_callable():
    by_name = DifficultySchedule(
        1, 50, "custom", ScheduleConfig(custom_function="tests.unit.test_pacing:tenth_of_step")
    )
    assert [difficulty_at(by_name, s) for s in (1, 25, 200, 10**6)] == [1, 2, 20, 50]  # clamped
    in_code = DifficultySchedule(1, 50, "custom", custom_callable=lambda s: 60 - s)
    assert [difficulty_at(in_code, s) for s in (1, 30, 59)] == [50, 30, 1]
    assert difficulty_segments(by_name, last_step=25)[:3] == [(1, 1), (20, 2)]
    with pytest.raises(ValueError, match="last_step"):
        difficulty_segments(by_name)


@pytest.mark.parametrize(
    "target,match",
    [
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("tests.unit.test_pacing:missing", "has no attribute 'missing'"),
        ("tests.unit.test_pacing:pytest.__name__", "not callable"),
    ],
)
def test_custom_schedule_errors(target, match):
    schedule = DifficultySchedule(1, 5, "custom", ScheduleConfig(custom_function=target))
    with pytest.raises(ConfigError, match=match):
        difficulty_at(schedule, 1)


def test_custom_schedule_without_function_or_returning_garbage():
    with pytest.raises(ConfigError, match="custom_function"):
        difficulty_at(DifficultySchedule(1, 5, "custom"), 1)
    bad = DifficultySchedule(1, 5, "custom", custom_callable=lambda s: "easy")
    with pytest.raises(ConfigError, match="must return a number"):
        difficulty_at(bad, 3)


def test_fixed_root_difficulty_function_form():
    assert fixed_root_difficulty(27500, 1, 100, 110000, 1, 2) == 50
    assert fixed_root_difficulty(0, 80, 2048, 110000, 8, 1) == 80


def ltd_schedule(lo=128, hi=2048, steps=200000, per=16):
    return RandomLTDScheduleConfig(lo, hi, "fixed_linear", RandomLTDScheduleParams(steps, per))


def test_random_ltd_value():
    s = ltd_schedule()
    assert [random_ltd_value(s, g) for g in (0, 1, 100000, 199999, 200000, 10**9)] == [
        128,
        128,
        1088,
        2032,
        2048,
        2048,
    ]
    # DeepSpeed's formula exactly: a min that is not a multiple of seq_per_step rounds down.
    assert random_ltd_value(ltd_schedule(200, 512, 1000, 16), 0) == 192
    with pytest.raises(ConfigError, match="keep 0 tokens"):
        ltd_schedule(8, 512, 1000, 16)


def test_random_ltd_token_accounting():
    assert random_ltd_effective_seqlen(2048, 128, 24, 22) == (2048 * 2 + 128 * 22) // 24
    cfg = RandomLTDConfig(
        enabled=True,
        total_layer_num=24,
        random_ltd_layer_id=list(range(1, 23)),
        random_ltd_schedule=ltd_schedule(),
    )
    assert random_ltd_layer_tokens(cfg, 0, 512) == 512 * (128 * 22 + 2048 * 2)


# ----------------------------------------------------------------------------- DeepSpeed oracle

_ORACLE = """
import json, sys
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from deepspeed.runtime.data_pipeline.data_routing.scheduler import RandomLTDScheduler
cases, out = json.loads(sys.argv[1]), []
for cfg, steps in cases["cl"]:
    s = CurriculumScheduler(cfg)
    out.append([s.update_difficulty(t) for t in steps])
ltd = []
for cfg, steps in cases["ltd"]:
    s = RandomLTDScheduler(cfg)
    ltd.append([s.get_value(t) for t in steps])
print(json.dumps({"cl": out, "ltd": ltd}))
"""


@pytest.mark.oracle
@pytest.mark.slow
def test_matches_deepspeed_schedulers():
    root_dir = (
        os.environ.get("MEGATRON_ORACLE_CACHE")
        or pathlib.Path.home() / ".cache/megatron-de-oracles"
    )
    python = pathlib.Path(root_dir) / "deepspeed-venv" / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no DeepSpeed venv at {python}")
    import json

    steps = list(range(1, 3000, 7)) + [110000, 10**6]
    ours = [linear(80, 2048, 2500, 8), root(1, 100, 2800, 1, 2), root(128, 512, 1000, 8, 3)]
    cl = [
        [
            {
                "min_difficulty": o.min_difficulty,
                "max_difficulty": o.max_difficulty,
                "schedule_type": o.schedule_type,
                "schedule_config": {
                    "total_curriculum_step": o.schedule_config.total_curriculum_step,
                    "difficulty_step": o.schedule_config.difficulty_step,
                    "root_degree": o.schedule_config.root_degree or 1,
                },
            },
            steps,
        ]
        for o in ours
    ]
    ltd_cfg = {
        "total_layer_num": 24,
        "random_ltd_layer_num": 22,
        "global_batch_size": 8,
        "random_ltd_schedule": {
            "min_value": 128,
            "max_value": 2048,
            "schedule_type": "fixed_linear",
            "schedule_config": {"require_steps": 2000, "seq_per_step": 16},
        },
        "layer_token_lr_schedule": {"enabled": False},
    }
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(python), "-c", _ORACLE, json.dumps({"cl": cl, "ltd": [[ltd_cfg, [0] + steps]]})],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(python.parent),
    )
    if proc.returncode != 0:
        pytest.skip(f"DeepSpeed oracle failed: {proc.stderr[-500:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for schedule, theirs in zip(ours, result["cl"]):
        assert [difficulty_at(schedule, t) for t in steps] == theirs
    assert [random_ltd_value(ltd_schedule(steps=2000), t) for t in [0] + steps] == result["ltd"][0]
