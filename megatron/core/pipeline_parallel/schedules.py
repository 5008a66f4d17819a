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
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional

import torch


def _scaled_loss(loss: torch.Tensor, num_microbatches: int, grad_scale_func: Optional[Callable]):
    loss = loss / num_microbatches
    return grad_scale_func(loss) if grad_scale_func is not None else loss


def forward_backward_no_pipelining(
    *,
    forward_step_func: Callable,
    data_iterator: Iterator,
    model,
    num_microbatches: int,
    forward_only: bool = False,
    grad_scale_func: Optional[Callable] = None,
    no_sync_func: Optional[Callable] = None,
    **unused,
) -> List[Dict[str, torch.Tensor]]:
    """All micro-batches on one stage: forward + backward each in turn.

    Gradient synchronisation across data-parallel ranks is held back (`no_sync_func`) for all
    but the last micro-batch, whose backward then overlaps the reduction.
    """
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError("non-pipelined schedule expects one model chunk")
        model = model[0]
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


def get_forward_backward_func(pipeline_model_parallel_size: int = 1, virtual_pipeline_model_parallel_size=None):
    """The schedule for a layout."""
    if pipeline_model_parallel_size == 1:
        return forward_backward_no_pipelining
    raise NotImplementedError(
        "pipeline parallelism schedules are not available yet; use --pipeline-model-parallel-size 1"
    )
