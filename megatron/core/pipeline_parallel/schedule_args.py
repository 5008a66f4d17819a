"""The arguments of one call of a forward/backward schedule, shared by every schedule."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

from ..parallel_state import ParallelState
from ..transformer.config import TransformerConfig
from .p2p_communication import P2PCommunicator


@dataclasses.dataclass
class ScheduleArgs:
    """What a schedule needs to run the micro-batches of one global batch.

    Every schedule takes one of these, or the same names as keyword arguments (a misspelt keyword
    is a TypeError that lists the valid names).
    """

    forward_step_func: Callable
    """(data_iterator, model) -> (output, loss_func); see the schedules module."""

    data_iterator: Any
    """Yields this rank's micro-batches; a list (one per model chunk) for the interleaved
    schedule, or one iterator that is read once and replayed to every chunk."""

    model: Any
    """One module, or this rank's model chunks in virtual-rank order."""

    num_microbatches: int
    """Micro-batches in this global batch on this rank."""

    seq_length: Optional[int] = None
    """Sequence length of this global batch's micro-batches (pipelined schedules compute the
    exchanged tensor shape from it; it may change between calls, e.g. with a curriculum)."""

    micro_batch_size: Optional[int] = None
    """Rows of each micro-batch (pipelined schedules)."""

    forward_only: bool = False
    """No backward (evaluation)."""

    grad_scale_func: Optional[Callable] = None
    """loss -> scaled loss (the loss scale of mixed-precision training)."""

    no_sync_func: Any = None
    """Context-manager factory that holds back data-parallel gradient reduction, or a list of
    them, one per model chunk; it wraps every backward except each chunk's last."""

    pstate: Optional[ParallelState] = None
    """The rank's process groups (pipelined schedules)."""

    config: Optional[TransformerConfig] = None
    """hidden_size, sequence_parallel and params_dtype are read (pipelined schedules)."""

    p2p: Optional[P2PCommunicator] = None
    """The stage-to-stage communicator (default: torch.distributed over pstate's pipeline
    group)."""

    deallocate_outputs: bool = True
    """Free each sent output's storage until its backward (pipelined schedules)."""


def schedule_args(args: Optional[ScheduleArgs], kwargs: Dict[str, Any]) -> ScheduleArgs:
    """`args`, or a ScheduleArgs built from keyword arguments (not both)."""
    if args is not None:
        if kwargs:
            raise TypeError(f"pass a ScheduleArgs or keyword arguments, not both: {sorted(kwargs)}")
        if not isinstance(args, ScheduleArgs):
            raise TypeError(f"expected a ScheduleArgs, got {type(args).__name__}")
        return args
    names = {f.name for f in dataclasses.fields(ScheduleArgs)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(
            f"unknown schedule argument(s) {unknown}; the arguments are {sorted(names)}"
        )
    return ScheduleArgs(**kwargs)
