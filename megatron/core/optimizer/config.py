"""`OptimizerConfig`: the optimizer, mixed-precision and loss-scaling options.

Field names follow the Megatron flags (`--adam-beta1` -> `adam_beta1`); each docstring is the
flag's help text.
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass
class OptimizerConfig:
    """Options of `get_megatron_optimizer`."""

    optimizer: str = "adam"
    """adam (AdamW: decoupled weight decay) or sgd (with momentum)."""

    lr: Optional[float] = None
    """Initial / peak learning rate (--lr). The learning-rate scheduler overwrites each param
    group's lr every step; this is the value before the first step."""

    min_lr: float = 0.0
    """Minimum learning rate of the decay schedule (used by the scheduler, not here)."""

    weight_decay: float = 0.01
    """Weight decay of >= 2-D weights; biases and norm parameters get none."""

    adam_beta1: float = 0.9
    """Adam coefficient of the running average of the gradient."""

    adam_beta2: float = 0.999
    """Adam coefficient of the running average of the squared gradient."""

    adam_eps: float = 1e-8
    """Adam term added to the denominator for numerical stability."""

    sgd_momentum: float = 0.9
    """Momentum factor of SGD."""

    clip_grad: float = 1.0
    """Clip gradients to this global L2 norm (0 disables clipping and the norm computation)."""

    fp16: bool = False
    """The model is fp16: keep fp32 master weights and scale the loss."""

    bf16: bool = False
    """The model is bf16: keep fp32 master weights (no loss scaling)."""

    loss_scale: Optional[float] = None
    """Static loss scale (a positive power of 2 helps convergence); None: dynamic scaling."""

    initial_loss_scale: float = 2.0**32
    """Initial scale of dynamic loss scaling."""

    min_loss_scale: float = 1.0
    """Dynamic loss scaling never goes below this."""

    loss_scale_window: int = 1000
    """Clean (finite-gradient) steps before the dynamic loss scale doubles."""

    hysteresis: int = 2
    """Overflowing steps tolerated before the dynamic loss scale is halved."""

    use_distributed_optimizer: bool = False
    """Shard fp32 master weights and optimizer state across the data-parallel group (needs the
    model wrapped in DistributedDataParallel with use_distributed_optimizer=True)."""

    use_fused_adam: bool = True
    """Use torch's fused AdamW kernel (CPU and CUDA; about 10x faster than the per-tensor loop
    on CPU). False: torch's default AdamW implementation."""

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"--optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 are mutually exclusive; pick one")
        if self.lr is not None and self.lr < 0:
            raise ValueError(f"--lr must be >= 0, got {self.lr}")
        if self.min_lr < 0:
            raise ValueError(f"--min-lr must be >= 0, got {self.min_lr}")
        if self.lr is not None and self.min_lr > self.lr:
            raise ValueError(
                f"--min-lr {self.min_lr} is larger than --lr {self.lr}: the decay goes from --lr "
                "down to --min-lr; lower --min-lr or raise --lr"
            )
        if self.weight_decay < 0:
            raise ValueError(
                f"--weight-decay must be >= 0, got {self.weight_decay} (0 turns it off)"
            )
        if self.clip_grad < 0:
            raise ValueError(
                f"--clip-grad must be >= 0 (0 disables clipping), got {self.clip_grad}"
            )
        for name in ("adam_beta1", "adam_beta2", "sgd_momentum"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if self.adam_eps <= 0:
            raise ValueError(f"--adam-eps must be > 0, got {self.adam_eps}")
        if self.loss_scale is not None and self.loss_scale <= 0:
            raise ValueError(
                f"--loss-scale must be > 0 (or unset for dynamic), got {self.loss_scale}"
            )
        if not 0 < self.min_loss_scale <= self.initial_loss_scale:
            raise ValueError(
                f"need 0 < --min-loss-scale ({self.min_loss_scale}) <= --initial-loss-scale "
                f"({self.initial_loss_scale})"
            )
        if self.loss_scale_window < 1 or self.hysteresis < 1:
            raise ValueError(
                f"--loss-scale-window ({self.loss_scale_window}) and --hysteresis "
                f"({self.hysteresis}) must be >= 1"
            )
