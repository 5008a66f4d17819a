"""Flags of Megatron-LM / Megatron-DeepSpeed launch scripts that have no option of their own here.

Each entry is accepted on the command line so that the public launchers run unchanged. A flag
given on the command line either maps onto one of our options (`--zero-stage 1` turns on the
distributed optimizer), is a no-op here (with one warning line saying why), or asks for something
this framework cannot do (an error naming the alternative). The table of README.md ("Flags
accepted from Megatron launch scripts") lists the same entries; a unit test keeps them in sync.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Any, Dict, Iterable, Optional, Tuple

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CompatFlag:
    """One accepted flag.

    Attributes:
        name: the flag as launch scripts spell it.
        effect: what it does here (the warning line and the README table row).
        kwargs: argparse keyword arguments (type, choices, action); default: a store_true flag.
    """

    name: str
    effect: str
    kwargs: Tuple[Tuple[str, Any], ...] = (("action", "store_true"),)

    @property
    def dest(self) -> str:
        """The argparse destination of the flag."""
        return "compat_" + self.name.lstrip("-").replace("-", "_")


def _int(choices: Optional[Iterable[int]] = None):
    kw: Tuple[Tuple[str, Any], ...] = (("type", int),)
    return kw + ((("choices", tuple(choices)),) if choices is not None else ())


def _str(choices: Optional[Iterable[str]] = None):
    kw: Tuple[Tuple[str, Any], ...] = (("type", str),)
    return kw + ((("choices", tuple(choices)),) if choices is not None else ())


COMPAT_FLAGS = (
    CompatFlag(
        "--zero-stage",
        "0: no sharding (the default); 1 and 2: --use-distributed-optimizer (fp32 master weights "
        "and optimizer state sharded over the data-parallel ranks, gradients reduce-scattered); "
        "3 (sharded parameters) is an error: use tensor / pipeline parallelism instead",
        _int((0, 1, 2, 3)),
    ),
    CompatFlag(
        "--deepspeed-activation-checkpointing",
        "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
        "(as --checkpoint-activations)",
    ),
    CompatFlag(
        "--no-pipeline-parallel",
        "no-op at --pipeline-model-parallel-size 1 (a single stage runs without a pipeline "
        "schedule); with more stages an error: drop one of the two flags",
    ),
    CompatFlag(
        "--data-impl",
        "no-op: datasets are always read through memory maps (Megatron's mmap format)",
        _str(("mmap", "infer")),
    ),
    CompatFlag(
        "--ckpt-format",
        "torch: no-op (Megatron's iter_*/mp_rank_* layout is the format written here); "
        "torch_dist and zarr are errors: tools/checkpoint_util.py converts layouts instead",
        _str(("torch", "torch_dist", "zarr")),
    ),
    CompatFlag(
        "--no-masked-softmax-fusion",
        "no-op: attention always runs torch's scaled_dot_product_attention (no apex fused "
        "softmax kernel)",
    ),
    CompatFlag(
        "--no-async-tensor-model-parallel-allreduce",
        "no-op: the tensor-parallel all-reduce of the input gradient is not overlapped here",
    ),
    CompatFlag(
        "--attention-backend",
        "no-op: attention always runs torch's scaled_dot_product_attention, which picks the "
        "flash / memory-efficient / math kernel itself",
        _str(("auto", "flash", "fused", "unfused", "local")),
    ),
    CompatFlag(
        "--tensorboard-queue-size",
        "no-op: the TensorBoard writer keeps its default queue and is flushed at the end",
        _int(),
    ),
    CompatFlag(
        "--tensorboard-log-interval",
        "no-op: scalars are written every --log-interval iterations",
        _int(),
    ),
    CompatFlag(
        "--log-optimizer-states-to-tensorboard",
        "no-op: optimizer-state norms are not computed here",
    ),
    CompatFlag(
        "--log-progress",
        "no-op: no progress.txt is written; the iteration line shows consumed samples / tokens",
    ),
    CompatFlag(
        "--wandb-entity",
        "no-op: runs go to the default entity of the logged-in W&B account",
        _str(),
    ),
)
"""Every accepted flag, in the order of the README table."""

_BY_DEST = {f.dest: f for f in COMPAT_FLAGS}
_BY_NAME = {f.name: f for f in COMPAT_FLAGS}


def add_compat_options(parser: argparse.ArgumentParser) -> None:
    """Add the accepted launch-script flags as one argument group."""
    group = parser.add_argument_group(
        "accepted from Megatron-LM / Megatron-DeepSpeed launch scripts (see README.md)"
    )
    for flag in COMPAT_FLAGS:
        kwargs: Dict[str, Any] = dict(flag.kwargs)
        kwargs.setdefault("default", None)
        group.add_argument(flag.name, dest=flag.dest, help=flag.effect, **kwargs)


def _given(ns: argparse.Namespace) -> Dict[str, Any]:
    """{flag: value} of the accepted flags on the command line (removed from `ns`)."""
    given = {}
    for dest, flag in _BY_DEST.items():
        value = getattr(ns, dest, None)
        if hasattr(ns, dest):
            delattr(ns, dest)
        if value is not None:
            given[flag.name] = value
    return given


def _level_here() -> int:
    """WARNING on global rank 0 (torchrun's RANK before initialisation), DEBUG elsewhere."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    return logging.WARNING if rank == 0 else logging.DEBUG


def _recompute(ns: argparse.Namespace) -> None:
    if ns.recompute_granularity is None:
        ns.checkpoint_activations = True


def apply_compat_flags(
    ns: argparse.Namespace, explicit: Iterable[str], zero_stage_from_config: Optional[int] = None
) -> Optional[int]:
    """Apply the accepted flags to the namespace of our options; one warning line per flag given.

    Args:
        ns: the parsed namespace (the accepted flags' entries are removed from it).
        explicit: the destinations given on the command line (a mapping never overrides them).
        zero_stage_from_config: zero_optimization.stage of --deepspeed_config, if any.

    Returns:
        The ZeRO stage in force (None when neither the flag nor the config gives one).

    Raises:
        ValueError: a flag asks for something not available here, or contradicts another.
    """
    given = _given(ns)
    for name, value in given.items():
        shown = "" if value is True else f" {value}"
        effect = _zero_effect(value) if name == "--zero-stage" else _BY_NAME[name].effect
        # one line per job, not per rank (parsing runs on every rank)
        logger.log(_level_here(), "%s%s: %s", name, shown, effect)
    stage = given.get("--zero-stage")
    if stage is not None and zero_stage_from_config is not None and stage != zero_stage_from_config:
        raise ValueError(
            f"--zero-stage {stage} contradicts zero_optimization.stage {zero_stage_from_config} "
            "of --deepspeed_config; make them agree"
        )
    stage = stage if stage is not None else zero_stage_from_config
    _apply_zero_stage(ns, stage, explicit)
    if given.get("--deepspeed-activation-checkpointing"):
        _recompute(ns)
    if given.get("--no-pipeline-parallel") and ns.pipeline_model_parallel_size > 1:
        raise ValueError(
            f"--no-pipeline-parallel contradicts --pipeline-model-parallel-size "
            f"{ns.pipeline_model_parallel_size}; drop --no-pipeline-parallel to train with "
            "pipeline stages, or set --pipeline-model-parallel-size 1"
        )
    fmt = given.get("--ckpt-format")
    if fmt not in (None, "torch"):
        raise ValueError(
            f"--ckpt-format {fmt}: distributed checkpoints are not written here; use "
            "--ckpt-format torch (Megatron's iter_*/mp_rank_* layout; tools/checkpoint_util.py "
            "changes the TP / PP layout of a checkpoint)"
        )
    return stage


def _zero_effect(stage: int) -> str:
    if stage == 0:
        return "ZeRO stage 0: no optimizer sharding"
    if stage in (1, 2):
        return (
            f"ZeRO stage {stage} maps to --use-distributed-optimizer (optimizer state sharded "
            "over the data-parallel ranks)"
        )
    return "ZeRO stage 3 (sharded parameters) is not available here"


def _apply_zero_stage(ns: argparse.Namespace, stage: Optional[int], explicit) -> None:
    if stage is None:
        return
    if stage == 3:
        raise ValueError(
            "ZeRO stage 3 (--zero-stage 3 or zero_optimization.stage 3) shards the parameters, "
            "which this framework does not do; use --zero-stage 1 (--use-distributed-optimizer) "
            "with --tensor-model-parallel-size / --pipeline-model-parallel-size to fit the model"
        )
    wanted = stage in (1, 2)
    if "use_distributed_optimizer" in explicit and ns.use_distributed_optimizer != wanted:
        raise ValueError(
            f"--use-distributed-optimizer contradicts ZeRO stage {stage} (--zero-stage or "
            "zero_optimization.stage of --deepspeed_config); stage 0 is no sharding, 1 and 2 "
            "are --use-distributed-optimizer: make them agree"
        )
    ns.use_distributed_optimizer = wanted
