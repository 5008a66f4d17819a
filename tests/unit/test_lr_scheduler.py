import math
import types

import pytest

from megatron.training.lr_scheduler import OptimizerParamScheduler


def _sched(style, warmup=10, decay=110, max_lr=1.0, min_lr=0.1, **kw):
    groups = [{"lr": 0.0}, {"lr": 0.0, "lr_mult": 0.5}]
    return OptimizerParamScheduler(
        types.SimpleNamespace(param_groups=groups), max_lr, min_lr, style, warmup, decay, **kw
    ), groups


@pytest.mark.parametrize("style", ["linear", "cosine", "constant", "inverse-square-root"])
def test_warmup_is_linear_from_zero(style):
    s, groups = _sched(style)
    assert groups[0]["lr"] == 0.0
    s.step(5)
    assert groups[0]["lr"] == pytest.approx(0.5)
    assert groups[1]["lr"] == pytest.approx(0.25)  # lr_mult
    s.step(5)
    assert groups[0]["lr"] == pytest.approx(1.0)


def test_linear_and_cosine_decay_values():
    lin, _ = _sched("linear")
    cos, _ = _sched("cosine")
    for s in (lin, cos):
        s.step(60)  # halfway through decay (10 warmup + 50 of 100)
    assert lin.get_lr() == pytest.approx(0.1 + 0.5 * 0.9)
    assert cos.get_lr() == pytest.approx(0.1 + 0.5 * (math.cos(math.pi * 0.5) + 1) * 0.9)
    for s in (lin, cos):
        s.step(50)
        assert s.get_lr() == pytest.approx(0.1)
        s.step(1000)
        assert s.get_lr() == pytest.approx(0.1)


def test_inverse_square_root():
    s, _ = _sched("inverse-square-root", warmup=16, decay=1000, min_lr=0.0)
    s.step(64)
    assert s.get_lr() == pytest.approx(math.sqrt(16) / math.sqrt(64))


def test_token_based_warmup_and_decay():
    groups = [{"lr": 0.0}]
    s = OptimizerParamScheduler(
        types.SimpleNamespace(param_groups=groups),
        1.0,
        0.0,
        "linear",
        0,
        None,
        warmup_tokens=100,
        decay_tokens=1100,
    )
    s.step(1, 50)
    assert groups[0]["lr"] == pytest.approx(0.5)
    s.step(1, 50 + 500)
    assert groups[0]["lr"] == pytest.approx(0.5)  # halfway through the token decay


def test_state_dict_round_trip_and_mismatch():
    s, _ = _sched("cosine")
    s.step(37, 1000)
    sd = s.state_dict()
    t, _ = _sched("cosine")
    t.load_state_dict(sd)
    assert t.get_lr() == s.get_lr() and t.num_tokens == 1000
    u, _ = _sched("cosine", max_lr=2.0)
    with pytest.raises(ValueError, match="use-checkpoint-opt_param-scheduler"):
        u.load_state_dict(sd)
    u.load_state_dict(sd, use_checkpoint=True)
    assert u.max_lr == 1.0


def test_errors():
    with pytest.raises(ValueError, match="min-lr"):
        _sched("linear", max_lr=0.1, min_lr=1.0)
    with pytest.raises(ValueError, match="decay span"):
        OptimizerParamScheduler(
            types.SimpleNamespace(param_groups=[{}]), 1.0, 0.0, "cosine", 0, None
        )


def test_layer_token_schedule_takes_precedence():
    groups = [{"lr": 0.0}]
    s = OptimizerParamScheduler(
        types.SimpleNamespace(param_groups=groups),
        1.0,
        0.0,
        "linear",
        8,
        100,
        warmup_layer_tokens=1000,
        decay_layer_tokens=11000,
    )
    s.step(50, 0, 500)  # halfway through the samples, but what counts are layer-tokens
    assert groups[0]["lr"] == pytest.approx(0.5)
    s.step(0, 0, 5500)  # 6000 of 11000: half of the decay span after warmup
    assert groups[0]["lr"] == pytest.approx(0.5)
    sd = s.state_dict()
    assert sd["num_layer_tokens"] == 6000 and sd["decay_layer_tokens"] == 11000
