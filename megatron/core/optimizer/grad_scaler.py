"""Loss scalers for fp16 training.

The loss is multiplied by `scale` before backward so small fp16 gradients do not flush to zero;
the optimizer divides the gradients by it again. A step whose gradients overflowed (inf/nan) is
skipped and reported to `update(found_inf=True)`.

Dynamic scaling follows Megatron's rule: each overflow decrements a hysteresis counter and the
scale is multiplied by `backoff_factor` (not below `min_scale`) once that counter reaches zero;
every overflow also restarts the count of clean steps. After `growth_interval` consecutive clean
steps the scale is multiplied by `growth_factor` and the hysteresis counter is refilled.
"""

from __future__ import annotations

from typing import Dict

import torch


class MegatronGradScaler:
    """Base class: a loss scale held as a one-element fp32 tensor on `device`."""

    def __init__(self, initial_scale: float, device="cpu"):
        if initial_scale <= 0:
            raise ValueError(f"loss scale must be > 0, got {initial_scale}")
        self._scale = torch.tensor([float(initial_scale)], dtype=torch.float32, device=device)

    @property
    def scale(self) -> torch.Tensor:
        """Current scale, shape [1]."""
        return self._scale

    @property
    def inv_scale(self) -> torch.Tensor:
        """1 / scale, shape [1] (fp64 reciprocal rounded once to fp32)."""
        return self._scale.double().reciprocal().float()

    def update(self, found_inf: bool) -> None:
        """Record whether this step's gradients overflowed."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, float]:
        """Plain numbers (loadable with weights_only=True)."""
        raise NotImplementedError

    def load_state_dict(self, state: Dict[str, float]) -> None:
        """Restore `state_dict()` output."""
        raise NotImplementedError


class ConstantGradScaler(MegatronGradScaler):
    """A fixed scale (--loss-scale)."""

    def update(self, found_inf: bool) -> None:
        pass

    def state_dict(self) -> Dict[str, float]:
        return {"scale": float(self._scale.item())}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self._scale.fill_(float(state["scale"]))


class DynamicGradScaler(MegatronGradScaler):
    """Megatron's dynamic loss scale.

    Args:
        initial_scale: --initial-loss-scale.
        min_scale: --min-loss-scale.
        growth_factor: multiplier after `growth_interval` clean steps (2).
        backoff_factor: multiplier after `hysteresis` overflows (0.5).
        growth_interval: --loss-scale-window.
        hysteresis: --hysteresis.
    """

    def __init__(
        self,
        initial_scale: float,
        min_scale: float,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 1000,
        hysteresis: int = 2,
        device="cpu",
    ):
        super().__init__(initial_scale, device)
        if not 0 < min_scale <= initial_scale:
            raise ValueError(f"need 0 < min_scale ({min_scale}) <= initial_scale ({initial_scale})")
        if growth_factor <= 1.0 or not 0.0 < backoff_factor < 1.0:
            raise ValueError(
                f"need growth_factor > 1 and 0 < backoff_factor < 1, got {growth_factor}, "
                f"{backoff_factor}"
            )
        if growth_interval < 1 or hysteresis < 1:
            raise ValueError(
                f"growth_interval ({growth_interval}) and hysteresis ({hysteresis}) must be >= 1"
            )
        self.min_scale, self.growth_factor, self.backoff_factor = (
            min_scale,
            growth_factor,
            backoff_factor,
        )
        self.growth_interval, self.hysteresis = growth_interval, hysteresis
        self.growth_tracker = 0
        self.hysteresis_tracker = hysteresis

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.growth_tracker = 0
            self.hysteresis_tracker -= 1
            if self.hysteresis_tracker <= 0:
                new = max(float(self._scale.item()) * self.backoff_factor, self.min_scale)
                self._scale.fill_(new)
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.growth_tracker = 0
            self.hysteresis_tracker = self.hysteresis
            self._scale.mul_(self.growth_factor)

    def state_dict(self) -> Dict[str, float]:
        return {
            "scale": float(self._scale.item()),
            "growth_tracker": int(self.growth_tracker),
            "hysteresis_tracker": int(self.hysteresis_tracker),
        }

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self._scale.fill_(float(state["scale"]))
        self.growth_tracker = int(state.get("growth_tracker", 0))
        self.hysteresis_tracker = int(state.get("hysteresis_tracker", self.hysteresis))
