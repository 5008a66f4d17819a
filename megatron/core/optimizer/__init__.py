"""Optimizers: AdamW / SGD with fp32 master weights, fp16 loss scaling, model-parallel gradient
clipping, the DP-sharded distributed optimizer and one layout-independent state-dict format."""

from __future__ import annotations

from typing import Sequence

import torch

from ..parallel_state import ParallelState
from .clip_grads import (
    clip_grad_norm,
    clip_grads_by_norm,
    counts_toward_norm,
    get_grad_norm_fp32,
    global_grad_norm,
)
from .config import OptimizerConfig
from .distrib_optimizer import DistributedOptimizer
from .grad_scaler import ConstantGradScaler, DynamicGradScaler, MegatronGradScaler
from .optimizer import (
    STATE_FORMAT,
    MegatronOptimizer,
    NonFiniteGradError,
    model_named_params,
    uses_weight_decay,
)


def get_megatron_optimizer(
    config: OptimizerConfig, model_chunks: Sequence[torch.nn.Module], pstate: ParallelState
) -> MegatronOptimizer:
    """Build the optimizer of this rank's model chunks.

    Args:
        config: optimizer options (config.use_distributed_optimizer picks the sharded one,
            which needs the chunks wrapped in DistributedDataParallel with
            DDPConfig(use_distributed_optimizer=True)).
        model_chunks: the model chunks, in order (DistributedDataParallel wrappers, or plain
            modules for the non-distributed optimizer).
        pstate: process groups of this rank.

    Returns:
        A MegatronOptimizer (or DistributedOptimizer): zero_grad(), step(check_finite) -> (ok,
        grad_norm, None), get_loss_scale(), scale_loss(loss), param_groups, state_dict(),
        load_state_dict(sd), reload_model_params().
    """
    if config.use_distributed_optimizer:
        return DistributedOptimizer(config, model_chunks, pstate)
    return MegatronOptimizer(config, model_chunks, pstate)


__all__ = [
    "OptimizerConfig",
    "MegatronOptimizer",
    "DistributedOptimizer",
    "get_megatron_optimizer",
    "MegatronGradScaler",
    "ConstantGradScaler",
    "DynamicGradScaler",
    "clip_grad_norm",
    "clip_grads_by_norm",
    "counts_toward_norm",
    "get_grad_norm_fp32",
    "global_grad_norm",
    "NonFiniteGradError",
    "model_named_params",
    "uses_weight_decay",
    "STATE_FORMAT",
]
