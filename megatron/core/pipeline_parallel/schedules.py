"""Schedules that run the forward and backward passes of one global batch's micro-batches.

The contract for the user callbacks (same as Megatron's):

    def forward_step_func(data_iterator, model):
        batch = next(data_iterator)                       # this rank's micro-batch
        output = model(...)                               # per-token loss on the last stage
        return output, functools.partial(loss_func, batch)

    def loss_func(batch, output):
        loss = (output * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
        return loss, {"lm loss": loss.detach()}           # scalar to backprop, values to report

A schedule calls forward_step_func once per micro-batch, scales each loss by 1/num_microbatches
(and by the loss scale via `grad_scale_func`), runs backward unless forward_only, and returns the
list of reported dicts of the micro-batches (on the last pipeline stage; empty elsewhere).

With pipeline parallelism forward_step_func runs on every stage, and every stage reads the same
micro-batch from its own iterator (tokens, positions, masks, labels: each stage uses what it
needs). Before the call the schedule hands a stage other than the first its input activations
through `set_input_tensor` of the unwrapped model chunk (`megatron.core.utils.unwrap_model`); a
stage
other than the last returns its hidden states [s, b, h] ([s/tp, b, h] under sequence parallelism)
and its loss_func is never called. Losses, and so the reported dicts, exist on the last stage
only: use `broadcast_from_last_stage` to give every rank the values it logs.

All schedules take the same arguments: one `ScheduleArgs`, or its fields as keyword arguments
(`forward_step_func`, `data_iterator`, `model`, `num_microbatches`, `seq_length`,
`micro_batch_size`, `forward_only`, `grad_scale_func`, `no_sync_func`, `pstate`, `config`,
`p2p`, `deallocate_outputs`; see `schedule_args.ScheduleArgs` for each). A misspelt keyword is a
TypeError. The machinery the pipelined schedules share is in `pipeline_run`, the interleaved
order in `interleaved`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from ..parallel_state import ParallelState
from .interleaved import InterleavedExecution, InterleavedOrder
from .pipeline_run import PipelineRun
from .schedule_args import ScheduleArgs, schedule_args

logger = logging.getLogger(__name__)


def _scaled_loss(loss: torch.Tensor, num_microbatches: int, grad_scale_func: Optional[Callable]):
    loss = loss / num_microbatches
    return grad_scale_func(loss) if grad_scale_func is not None else loss


def forward_backward_no_pipelining(
    args: Optional[ScheduleArgs] = None, /, **kwargs
) -> List[Dict[str, torch.Tensor]]:
    """All micro-batches on one stage: forward + backward each in turn.

    Gradient synchronisation across data-parallel ranks is held back (`no_sync_func`) for all
    but the last micro-batch, whose backward then overlaps the reduction. The pipeline-only
    arguments (seq_length, micro_batch_size, pstate, config, p2p, deallocate_outputs) are not
    used.
    """
    a = schedule_args(args, kwargs)
    model, data_iterator, no_sync_func = a.model, a.data_iterator, a.no_sync_func
    forward_step_func, num_microbatches = a.forward_step_func, a.num_microbatches
    forward_only, grad_scale_func = a.forward_only, a.grad_scale_func
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError("non-pipelined schedule expects one model chunk")
        model = model[0]
    if isinstance(data_iterator, (list, tuple)):
        data_iterator = data_iterator[0]
    if isinstance(no_sync_func, (list, tuple)):
        no_sync_func = no_sync_func[0]
    no_sync = no_sync_func or contextlib.nullcontext
    reported = []

    def step(i: int):
        output, loss_func = forward_step_func(data_iterator, model)
        loss, report = loss_func(output)
        reported.append(report)
        if not forward_only:
            _scaled_loss(loss, num_microbatches, grad_scale_func).backward()

    with no_sync():
        for i in range(num_microbatches - 1):
            step(i)
    step(num_microbatches - 1)
    return reported


def broadcast_from_last_stage(
    values: Optional[Dict[str, float]], pstate: ParallelState
) -> Dict[str, float]:
    """Give every stage of this rank's pipeline the values computed on its last stage.

    The schedules return the reported dicts on the last stage only. The training loop averages
    them there (over micro-batches and the data-parallel group), then calls this on every rank
    of the pipeline (a collective over the pipeline group) before logging.

    Args:
        values: the averaged reports on the last stage (ignored elsewhere).
    """
    if pstate.pp_size == 1:
        return dict(values or {})
    box = [dict(values or {}) if pstate.is_pipeline_last_stage() else None]
    dist.broadcast_object_list(box, src=pstate.pp_ranks[-1], group=pstate.pp_group)
    return box[0]


# ---- 1F1B ----------------------------------------------------------------------------------
def _one_forward_one_backward(run: PipelineRun) -> None:
    """Warm-up forwards, steady one-forward-one-backward, cool-down backwards (one chunk)."""
    size, rank, m = run.pstate.pp_size, run.pstate.pp_rank, run.num_microbatches
    first, last, train = run.is_first(0), run.is_last(0), not run.forward_only
    # Stage r runs (size - r - 1) forwards ahead before its first backward.
    warmup = min(size - rank - 1, m)
    steady = m - warmup
    pending = collections.deque()  # (input, output) of micro-batches awaiting backward
    for _ in range(warmup):
        x = run.exchange(recv_prev=not first)[0]
        y = run.forward(0, x)
        run.exchange(send_next=y)  # a stage with warm-up forwards is never the last
        if train:
            pending.append((x, y))
    x = run.exchange(recv_prev=not first)[0] if steady else None
    for i in range(steady):
        final = i == steady - 1
        y = run.forward(0, x)
        send = None if last else y
        if not train:
            run.exchange(send_next=send)
            x = None if final else run.exchange(recv_prev=not first)[0]
            continue
        dy = run.exchange(send_next=send, recv_next=not last)[1]
        pending.append((x, y))
        x_old, y_old = pending.popleft()
        dx = run.backward(0, x_old, y_old, dy)
        x = run.exchange(send_prev=None if first else dx, recv_prev=not (first or final))[0]
    if train:
        for _ in range(warmup):
            x_old, y_old = pending.popleft()
            dy = run.exchange(recv_next=True)[1]
            dx = run.backward(0, x_old, y_old, dy)
            run.exchange(send_prev=None if first else dx)


def forward_backward_pipelining_without_interleaving(
    args: Optional[ScheduleArgs] = None, /, **kwargs
) -> List[Dict[str, torch.Tensor]]:
    """The 1F1B pipeline schedule (PipeDream-flush): one model chunk per rank.

    Stage r runs pp_size - r - 1 warm-up forwards, then alternates one forward and one backward,
    then drains the remaining backwards, so at most pp_size - r micro-batches' activations are
    alive at once. See the module docstring for the arguments (pstate and config are required).

    Returns:
        The reported dicts of the micro-batches on the last stage, [] on other stages.
    """
    a = schedule_args(args, kwargs)
    chunks = a.model if isinstance(a.model, (list, tuple)) else [a.model]
    if len(chunks) != 1:
        raise ValueError(
            f"the non-interleaved pipeline schedule takes one model chunk, got {len(chunks)}; "
            "use forward_backward_pipelining_with_interleaving for virtual pipeline stages"
        )
    return PipelineRun(a, 1).execute(_one_forward_one_backward)


# ---- interleaved ---------------------------------------------------------------------------
def forward_backward_pipelining_with_interleaving(
    args: Optional[ScheduleArgs] = None, /, **kwargs
) -> List[Dict[str, torch.Tensor]]:
    """The interleaved 1F1B schedule: each rank holds several model chunks (virtual stages).

    Chunk v of rank r holds layers `config.layer_offset(layout, r, v)`...; activations go r -> r + 1
    within a chunk and from the last rank's chunk v to the first rank's chunk v + 1. This cuts
    the pipeline bubble by the number of chunks at the price of more communication.

    Arguments (see the module docstring; pstate and config are required):
        model: list of this rank's chunks in virtual-rank order.
        data_iterator: a list with one iterator per chunk, each yielding the same micro-batches,
            or a single iterator (read once and replayed to every chunk).
        num_microbatches: must be a multiple of the pipeline size.
        no_sync_func: preferably a list, one per chunk (e.g. [m.no_sync for m in model]).

    Returns:
        The reported dicts of the micro-batches on the last stage, [] on other stages.
    """
    a = schedule_args(args, kwargs)
    chunks = list(a.model) if isinstance(a.model, (list, tuple)) else [a.model]
    pstate = a.pstate
    if pstate is None or a.config is None:
        raise ValueError(
            "pipelined schedules need pstate= (ParallelState) and config= (TransformerConfig)"
        )
    if pstate.vpp_size is not None and pstate.vpp_size != len(chunks):
        raise ValueError(
            f"got {len(chunks)} model chunks but the virtual pipeline size is {pstate.vpp_size}"
        )
    if pstate.pp_size < 2:
        raise ValueError("the interleaved schedule needs --pipeline-model-parallel-size >= 2")
    owner = getattr(a.no_sync_func, "__self__", None)
    if len(chunks) > 1 and owner is not None and any(owner is c for c in chunks):
        raise ValueError(
            "no_sync_func is the no_sync of a single model chunk; with virtual pipeline stages "
            "pass one per chunk: no_sync_func=[m.no_sync for m in model]"
        )
    order = InterleavedOrder(
        pstate.pp_size, pstate.pp_rank, len(chunks), a.num_microbatches, a.forward_only
    )
    return PipelineRun(a, len(chunks)).execute(lambda r: InterleavedExecution(r, order).execute())


def get_forward_backward_func(
    pipeline_model_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: Optional[int] = None,
) -> Callable:
    """The schedule for a layout: no pipelining (PP 1), 1F1B, or interleaved (virtual stages
    > 1)."""
    if pipeline_model_parallel_size < 1:
        raise ValueError(f"pipeline size must be >= 1, got {pipeline_model_parallel_size}")
    if pipeline_model_parallel_size == 1:
        return forward_backward_no_pipelining
    if (
        virtual_pipeline_model_parallel_size is not None
        and virtual_pipeline_model_parallel_size > 1
    ):
        return forward_backward_pipelining_with_interleaving
    return forward_backward_pipelining_without_interleaving
