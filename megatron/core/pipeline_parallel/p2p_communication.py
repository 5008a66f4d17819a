"""Point-to-point exchange of activations and gradients between adjacent pipeline stages.

Activations travel "forward" (stage i -> stage i + 1), their gradients "backward" (i + 1 -> i).
Every exchange is one batch of `torch.distributed.batch_isend_irecv` operations over the pipeline
group, waited for before returning, so a stage can send and receive in both directions at once
without either side blocking the other.

Shapes and dtypes are never sent: both ends compute them from what the training loop passes to
the schedule for the current global batch (sequence length, micro-batch size, hidden size,
sequence parallelism; see `pipeline_tensor_shape`). A receive buffer whose size differs from the
message aborts the gloo transport, so `check_send_tensor` validates every outgoing tensor first.

Matching rule: messages between one ordered pair of ranks are matched in the order they are
posted. Within a batch, operations are always posted as (send to next, receive from previous,
send to previous, receive from next), i.e. forward-direction messages before backward-direction
ones. With two stages the next and previous rank are the same peer and one batch can carry two
messages on the same channel; both ends then agree that the activation comes first.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..parallel_state import ParallelState

logger = logging.getLogger(__name__)

Shape = Tuple[int, ...]


def pipeline_tensor_shape(
    seq_length: int,
    micro_batch_size: int,
    hidden_size: int,
    tp_size: int = 1,
    sequence_parallel: bool = False,
) -> Shape:
    """Shape [s, b, h] of the activations one micro-batch passes between stages.

    Under sequence parallelism each tensor-parallel rank holds (and sends) only its slice of the
    sequence: [s / tp, b, h].
    """
    if seq_length is None or micro_batch_size is None:
        raise ValueError(
            "pipelined schedules need seq_length and micro_batch_size for every call (got "
            f"seq_length={seq_length}, micro_batch_size={micro_batch_size}); pass the current "
            "global batch's sequence length (the curriculum length when curriculum learning is on)"
        )
    if seq_length < 1 or micro_batch_size < 1:
        raise ValueError(
            f"seq_length {seq_length} and micro_batch_size {micro_batch_size} must be >= 1"
        )
    s = seq_length
    if sequence_parallel and tp_size > 1:
        if seq_length % tp_size:
            raise ValueError(
                f"sequence length {seq_length} is not divisible by --tensor-model-parallel-size "
                f"{tp_size}, which --sequence-parallel needs; change the (curriculum) sequence "
                "length or turn sequence parallelism off"
            )
        s = seq_length // tp_size
    return (s, micro_batch_size, hidden_size)


def check_send_tensor(
    tensor: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, what: str
) -> None:
    """Raise ValueError unless `tensor` has the shape and dtype the receiving stage expects."""
    if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
        raise ValueError(
            f"pipeline {what} has shape {tuple(tensor.shape)} and dtype {tensor.dtype}, but the "
            f"receiving stage expects {tuple(shape)} and {dtype} (computed from the seq_length and "
            "micro_batch_size passed to the schedule and the model config); the micro-batches "
            "must have the sequence length given to the schedule"
        )


class P2PCommunicator:
    """Sends and receives between this rank and its neighbours in its pipeline.

    Args:
        pstate: process groups of this rank (pipeline group and the ranks of its stages).
        device: where receive buffers are allocated: the model chunk's device (CPU with gloo,
            this process's GPU with NCCL).

    The communicator does exactly what it is asked: whether a stage has anything to send or
    receive (first and last stages, virtual chunks) is the schedule's decision.
    """

    def __init__(self, pstate: ParallelState, device: torch.device | str = "cpu"):
        self.pstate = pstate
        self.device = torch.device(device)

    def _empty(self, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def exchange(
        self,
        send_next: Optional[torch.Tensor] = None,
        send_prev: Optional[torch.Tensor] = None,
        recv_prev: bool = False,
        recv_next: bool = False,
        shape: Optional[Shape] = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """One batch of sends and receives; returns (tensor from previous, tensor from next).

        Args:
            send_next: activations for the next stage (None: nothing).
            send_prev: gradients for the previous stage (None: nothing).
            recv_prev / recv_next: receive a `shape`/`dtype` tensor from that neighbour.
        """
        if (recv_prev or recv_next) and shape is None:
            raise ValueError("a receive needs the tensor shape")
        from_prev = self._empty(shape, dtype) if recv_prev else None
        from_next = self._empty(shape, dtype) if recv_next else None
        ps, group = self.pstate, self.pstate.pp_group
        ops = []
        # Forward-direction messages first, then backward-direction ones (see module docstring).
        if send_next is not None:
            ops.append(
                dist.P2POp(dist.isend, send_next.contiguous(), ps.next_pipeline_rank(), group)
            )
        if from_prev is not None:
            ops.append(dist.P2POp(dist.irecv, from_prev, ps.prev_pipeline_rank(), group))
        if send_prev is not None:
            ops.append(
                dist.P2POp(dist.isend, send_prev.contiguous(), ps.prev_pipeline_rank(), group)
            )
        if from_next is not None:
            ops.append(dist.P2POp(dist.irecv, from_next, ps.next_pipeline_rank(), group))
        if ops:
            if ps.pp_size < 2:
                raise ValueError(
                    "point-to-point pipeline communication needs a pipeline of 2+ stages"
                )
            for request in dist.batch_isend_irecv(ops):
                request.wait()
            if self.device.type == "cuda":
                # Received buffers are read on the compute stream right after; batched NCCL p2p
                # completes on its own stream.
                torch.cuda.synchronize(self.device)
        return from_prev, from_next

    # ---- the exchanges the schedules use -----------------------------------------------------
    def recv_forward(self, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        """Activations from the previous stage."""
        return self.exchange(recv_prev=True, shape=shape, dtype=dtype)[0]

    def recv_backward(self, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        """Gradient of this stage's output from the next stage."""
        return self.exchange(recv_next=True, shape=shape, dtype=dtype)[1]

    def send_forward(self, output: torch.Tensor) -> None:
        """Activations to the next stage."""
        self.exchange(send_next=output)

    def send_backward(self, input_grad: torch.Tensor) -> None:
        """Gradient of this stage's input to the previous stage."""
        self.exchange(send_prev=input_grad)

    def send_forward_recv_backward(
        self, output: torch.Tensor, shape: Shape, dtype: torch.dtype
    ) -> torch.Tensor:
        """Send activations to the next stage and receive the gradient of an earlier output."""
        return self.exchange(send_next=output, recv_next=True, shape=shape, dtype=dtype)[1]

    def send_backward_recv_forward(
        self, input_grad: torch.Tensor, shape: Shape, dtype: torch.dtype
    ) -> torch.Tensor:
        """Send an input gradient to the previous stage and receive the next activations."""
        return self.exchange(send_prev=input_grad, recv_prev=True, shape=shape, dtype=dtype)[0]
