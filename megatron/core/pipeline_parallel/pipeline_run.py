"""The machinery of the pipelined schedules: one call's forwards, backwards and exchanges.

`PipelineRun` runs one micro-batch forward or backward through one model chunk and exchanges
activations and gradients with the neighbouring stages; the schedules (`schedules`,
`interleaved`) only decide the order. Also here: freeing sent outputs (`deallocate_output_tensor`,
`custom_backward`), replaying one data iterator to several chunks, and holding back data-parallel
gradient reduction until each chunk's last backward (`GradSync`).
"""

from __future__ import annotations

import collections
import contextlib
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch.autograd.variable import Variable

from ..utils import unwrap_model
from .p2p_communication import P2PCommunicator, check_send_tensor, pipeline_tensor_shape
from .schedule_args import ScheduleArgs


def deallocate_output_tensor(output: torch.Tensor) -> bool:
    """Free the storage of an output already sent to the next stage, keeping its autograd graph.

    Only the graph is needed for backward (the gradient arrives from the next stage), so `.data`
    is replaced by a one-element tensor. Skipped (returns False) for views and for outputs their
    own backward reads (e.g. tanh), whose storage must survive.
    """
    if output is None or output._base is not None:
        return False
    if output.grad_fn is not None and hasattr(output.grad_fn, "_saved_result"):
        return False
    output.data = torch.empty((1,), device=output.device, dtype=output.dtype)
    return True


def custom_backward(output: torch.Tensor, grad_output: torch.Tensor) -> None:
    """Backward from `output` with `grad_output`, without torch.autograd.backward's check that
    their shapes agree (the output's storage may have been freed by deallocate_output_tensor;
    the graph still records the true shape)."""
    Variable._execution_engine.run_backward(
        tensors=(output,),
        grad_tensors=(grad_output,),
        keep_graph=False,
        create_graph=False,
        inputs=tuple(),
        allow_unreachable=True,
        accumulate_grad=True,
    )


class _SharedStream:
    """Several iterators over one source: each yields every item, the source is read once."""

    def __init__(self, source: Iterator, n: int):
        self.source, self.buffer, self.base = source, collections.deque(), 0
        self.positions = [0] * n

    def take(self, i: int):
        pos = self.positions[i]
        while pos - self.base >= len(self.buffer):
            self.buffer.append(next(self.source))
        item = self.buffer[pos - self.base]
        self.positions[i] = pos + 1
        while self.buffer and min(self.positions) > self.base:
            self.buffer.popleft()
            self.base += 1
        return item


class _StreamView:
    def __init__(self, stream: _SharedStream, i: int):
        self.stream, self.i = stream, i

    def __iter__(self):
        return self

    def __next__(self):
        return self.stream.take(self.i)


def replicate_data_iterator(iterator: Iterator, n: int) -> List[Iterator]:
    """`n` iterators that each yield the items of `iterator`, which is read only once.

    The interleaved schedule runs every micro-batch once per model chunk, each chunk reading its
    own iterator; this turns the training loop's single iterator into those. Items are kept
    until every view has passed them (a few micro-batches with the interleaved schedule).
    """
    stream = _SharedStream(iter(iterator), n)
    return [_StreamView(stream, i) for i in range(n)]


def chunk_iterators(data_iterator, num_chunks: int) -> List[Iterator]:
    """One iterator per model chunk: a list as given (checked), or one iterator replicated."""
    if not isinstance(data_iterator, (list, tuple)):
        return (
            replicate_data_iterator(data_iterator, num_chunks)
            if num_chunks > 1
            else [data_iterator]
        )
    its = list(data_iterator)
    if len(its) != num_chunks:
        raise ValueError(
            f"got {len(its)} data iterators for {num_chunks} model chunks; pass one per chunk"
        )
    if num_chunks > 1 and all(it is its[0] for it in its):
        # One iterator listed per chunk: each chunk must see every micro-batch, not a share.
        return replicate_data_iterator(its[0], num_chunks)
    if len({id(it) for it in its}) != len(its):
        raise ValueError("the data iterators of different model chunks must be distinct objects")
    return its


class GradSync:
    """Holds back data-parallel gradient reduction until each chunk's last backward.

    A single no_sync_func covers all chunks: it is left for the duration of each chunk's last
    backward. A list holds one per chunk: chunk c's is left for good before c's last backward.
    """

    def __init__(self, no_sync_func, num_chunks: int, active: bool):
        self.shared = callable(no_sync_func)
        if not active or no_sync_func is None:
            self.funcs = []
        elif self.shared:
            self.funcs = [no_sync_func]
        else:
            self.funcs = list(no_sync_func)
            if len(self.funcs) != num_chunks:
                raise ValueError(
                    f"got {len(self.funcs)} no_sync functions for {num_chunks} model chunks"
                )
        self.open: Dict[int, object] = {}
        self.remaining = set(range(num_chunks))

    def hold(self, key: Optional[int] = None) -> None:
        for i in range(len(self.funcs)) if key is None else [key]:
            if i not in self.open:
                ctx = self.funcs[i]()
                ctx.__enter__()
                self.open[i] = ctx

    def release(self, key: Optional[int] = None) -> None:
        for i in list(self.open) if key is None else [key]:
            ctx = self.open.pop(i, None)
            if ctx is not None:
                ctx.__exit__(None, None, None)

    @contextlib.contextmanager
    def last_backward(self, chunk: int):
        """Let `chunk`'s gradients be reduced during the enclosed (last) backward."""
        key = 0 if self.shared else chunk
        if key < len(self.funcs):
            self.release(key)
        try:
            yield
        finally:
            self.remaining.discard(chunk)
            if self.shared and self.funcs and self.remaining:
                self.hold(0)


def _chunk_device(chunk: torch.nn.Module) -> torch.device:
    param = next(chunk.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class PipelineRun:
    """One call of a pipelined schedule: forward/backward of a chunk and the exchanges.

    Args:
        args: the schedule's arguments (pstate and config are required).
        num_chunks: model chunks of this rank (1 without virtual pipeline stages).
    """

    def __init__(self, args: ScheduleArgs, num_chunks: int):
        if args.pstate is None or args.config is None:
            raise ValueError(
                "pipelined schedules need pstate= (ParallelState) and config= (TransformerConfig)"
            )
        if args.num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {args.num_microbatches}")
        model = args.model
        self.chunks = list(model) if isinstance(model, (list, tuple)) else [model]
        if len(self.chunks) != num_chunks:
            raise ValueError(f"got {len(self.chunks)} model chunks, the schedule runs {num_chunks}")
        self.iterators = chunk_iterators(args.data_iterator, num_chunks)
        self.pstate, config = args.pstate, args.config
        self.forward_step_func, self.num_microbatches = (
            args.forward_step_func,
            args.num_microbatches,
        )
        self.forward_only, self.grad_scale_func = args.forward_only, args.grad_scale_func
        self.deallocate_outputs = args.deallocate_outputs
        self.shape = pipeline_tensor_shape(
            args.seq_length,
            args.micro_batch_size,
            config.hidden_size,
            self.pstate.tp_size,
            config.sequence_parallel,
        )
        self.dtype = config.params_dtype
        device = _chunk_device(self.chunks[0])
        self.comm = args.p2p if args.p2p is not None else P2PCommunicator(self.pstate, device)
        self.sync = GradSync(args.no_sync_func, num_chunks, not args.forward_only)
        self.reports: List[Dict[str, torch.Tensor]] = []
        self._backwards = [0] * num_chunks

    def is_first(self, chunk: int) -> bool:
        """Whether `chunk` of this rank is the first stage of the whole model."""
        return self.pstate.pp_rank == 0 and chunk == 0

    def is_last(self, chunk: int) -> bool:
        """Whether `chunk` of this rank is the last stage of the whole model."""
        return self.pstate.pp_rank == self.pstate.pp_size - 1 and chunk == len(self.chunks) - 1

    def execute(self, body: Callable[["PipelineRun"], None]) -> List[Dict[str, torch.Tensor]]:
        """Run a schedule's `body` on this run; the reported dicts of the last stage."""
        self.sync.hold()
        try:
            body(self)
        finally:
            self.sync.release()
        return self.reports

    def forward(self, chunk: int, input_tensor: Optional[torch.Tensor]):
        """Run one micro-batch through `chunk`: its output, or its scaled loss on the last stage."""
        module = unwrap_model(self.chunks[chunk])
        if not self.is_first(chunk):
            if not hasattr(module, "set_input_tensor"):
                raise ValueError(
                    f"{type(module).__name__} has no set_input_tensor(tensor); pipelined schedules "
                    "hand stages after the first their input activations through it"
                )
            module.set_input_tensor(input_tensor)
        output, loss_func = self.forward_step_func(self.iterators[chunk], self.chunks[chunk])
        if not self.is_first(chunk):
            module.set_input_tensor(None)
        if not self.is_last(chunk):
            if not torch.is_tensor(output):
                raise ValueError(
                    "forward_step_func must return the hidden-state tensor on pipeline stages "
                    f"other than the last, got {type(output).__name__}"
                )
            check_send_tensor(output, self.shape, self.dtype, "stage output")
            return output
        loss, report = loss_func(output)
        self.reports.append(report)
        return loss / self.num_microbatches

    def backward(self, chunk: int, input_tensor, output, output_grad) -> Optional[torch.Tensor]:
        """Backward of one micro-batch of `chunk`; returns the gradient of its input."""
        self._backwards[chunk] += 1
        last = self._backwards[chunk] == self.num_microbatches
        with self.sync.last_backward(chunk) if last else contextlib.nullcontext():
            if self.is_last(chunk):
                if self.grad_scale_func is not None:
                    output = self.grad_scale_func(output)
                torch.autograd.backward(output)
            else:
                custom_backward(output, output_grad)
        if self.is_first(chunk):
            return None
        if input_tensor.grad is None:  # the chunk ignored its input: still send something
            return torch.zeros(self.shape, dtype=self.dtype, device=input_tensor.device)
        return input_tensor.grad

    def exchange(self, send_next=None, send_prev=None, recv_prev=False, recv_next=False):
        """Send/receive in one batch; frees the storage of a sent output."""
        from_prev, from_next = self.comm.exchange(
            send_next, send_prev, recv_prev, recv_next, self.shape, self.dtype
        )
        if from_prev is not None and not self.forward_only:
            from_prev.requires_grad_()
        if send_next is not None and self.deallocate_outputs and not self.forward_only:
            deallocate_output_tensor(send_next)
        return from_prev, from_next
