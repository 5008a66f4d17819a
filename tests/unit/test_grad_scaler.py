"""Loss scalers: Megatron's dynamic rule (hysteresis, backoff, growth window, floor)."""

import pytest
import torch

from megatron.core.optimizer import ConstantGradScaler, DynamicGradScaler


def _scale(s) -> float:
    return float(s.scale.item())


def test_overflows_halve_only_after_hysteresis():
    s = DynamicGradScaler(1024.0, 1.0, growth_interval=1000, hysteresis=2)
    s.update(found_inf=True)
    assert _scale(s) == 1024.0 and s.hysteresis_tracker == 1
    s.update(found_inf=True)
    assert _scale(s) == 512.0 and s.hysteresis_tracker == 0
    # With the tracker exhausted, every further overflow halves again.
    s.update(found_inf=True)
    assert _scale(s) == 256.0


def test_clean_steps_do_not_refill_hysteresis_until_growth():
    s = DynamicGradScaler(1024.0, 1.0, growth_interval=3, hysteresis=2)
    s.update(True)
    s.update(False)
    s.update(False)
    assert s.hysteresis_tracker == 1 and s.growth_tracker == 2
    s.update(True)  # second overflow (not consecutive) still exhausts the hysteresis
    assert _scale(s) == 512.0 and s.growth_tracker == 0


def test_growth_after_window_of_clean_steps():
    s = DynamicGradScaler(64.0, 1.0, growth_interval=3, hysteresis=2)
    s.update(True)  # tracker 1, growth count restarts
    for _ in range(2):
        s.update(False)
    assert _scale(s) == 64.0
    s.update(False)
    assert _scale(s) == 128.0
    assert s.growth_tracker == 0 and s.hysteresis_tracker == 2
    for _ in range(3):
        s.update(False)
    assert _scale(s) == 256.0


def test_scale_never_below_min():
    s = DynamicGradScaler(4.0, 2.0, growth_interval=10, hysteresis=1)
    for _ in range(5):
        s.update(True)
    assert _scale(s) == 2.0


def test_inv_scale_and_state_dict_round_trip():
    s = DynamicGradScaler(2.0**16, 1.0, growth_interval=5, hysteresis=3)
    s.update(True)
    s.update(False)
    state = s.state_dict()
    assert state == {"scale": 65536.0, "growth_tracker": 1, "hysteresis_tracker": 2}
    t = DynamicGradScaler(8.0, 1.0, growth_interval=5, hysteresis=3)
    t.load_state_dict(state)
    assert _scale(t) == 65536.0 and t.growth_tracker == 1 and t.hysteresis_tracker == 2
    assert float(t.inv_scale) == 2.0**-16


def test_constant_scaler_never_changes():
    s = ConstantGradScaler(128.0)
    for found in (True, True, False, True):
        s.update(found)
    assert _scale(s) == 128.0
    assert s.state_dict() == {"scale": 128.0}
    assert s.scale.dtype == torch.float32 and s.scale.shape == (1,)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(initial_scale=1.0, min_scale=2.0),
        dict(initial_scale=8.0, min_scale=1.0, hysteresis=0),
        dict(initial_scale=8.0, min_scale=1.0, growth_interval=0),
        dict(initial_scale=8.0, min_scale=1.0, backoff_factor=1.5),
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        DynamicGradScaler(**kwargs)
