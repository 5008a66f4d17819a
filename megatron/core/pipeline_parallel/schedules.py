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
through `set_input_tensor` of the unwrapped model chunk (see `get_model_chunk_module`); a stage
other than the last returns its hidden states [s, b, h] ([s/tp, b, h] under sequence parallelism)
and its loss_func is never called. Losses, and so the reported dicts, exist on the last stage
only: use `broadcast_from_last_stage` to give every rank the values it logs.

All schedules take the same keyword arguments:
    forward_step_func, data_iterator, model, num_microbatches: as above; `model` is one module
        or a list of model chunks (interleaved: one per virtual stage, in virtual-rank order).
    seq_length, micro_batch_size: shape of this global batch's micro-batches (pipelined
        schedules compute the exchanged tensor shape from them; they may change from one call to
        the next, e.g. with curriculum learning).
    forward_only: no backward (evaluation).
    grad_scale_func: loss -> scaled loss (the loss scale of mixed-precision training).
    no_sync_func: context manager factory that holds back data-parallel gradient reduction, or a
        list of them, one per model chunk. It wraps every backward except each chunk's last.
    pstate: the rank's ParallelState; config: the TransformerConfig (hidden_size,
        sequence_parallel and params_dtype are read).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.autograd.variable import Variable

from ..parallel_state import ParallelState
from .p2p_communication import P2PCommunicator, check_send_tensor, pipeline_tensor_shape

logger = logging.getLogger(__name__)


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


# ---- helpers shared by the pipelined schedules ---------------------------------------------
def get_model_chunk_module(model: torch.nn.Module) -> torch.nn.Module:
    """The model chunk inside wrappers that keep it as `.module` (DistributedDataParallel)."""
    while hasattr(model, "module"):
        model = model.module
    return model


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
    box = [dict(values or {}) if pstate.is_pipeline_last_stage(ignore_virtual=True) else None]
    dist.broadcast_object_list(box, src=pstate.pp_ranks[-1], group=pstate.pp_group)
    return box[0]


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


def _chunk_iterators(data_iterator, num_chunks: int) -> List[Iterator]:
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


class _GradSync:
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


def _as_chunks(model, pstate, config) -> List[torch.nn.Module]:
    if pstate is None or config is None:
        raise ValueError(
            "pipelined schedules need pstate= (ParallelState) and config= (TransformerConfig)"
        )
    return list(model) if isinstance(model, (list, tuple)) else [model]


def _chunk_device(chunk: torch.nn.Module) -> torch.device:
    param = next(chunk.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class _Run:
    """One call of a pipelined schedule: forward/backward of a chunk and the exchanges."""

    def __init__(
        self,
        chunks: List[torch.nn.Module],
        iterators: List[Iterator],
        interleaved: bool,
        *,
        forward_step_func: Callable,
        num_microbatches: int,
        forward_only: bool,
        grad_scale_func: Optional[Callable],
        no_sync_func,
        pstate: ParallelState,
        config,
        seq_length: Optional[int],
        micro_batch_size: Optional[int],
        p2p: Optional[P2PCommunicator],
        deallocate_outputs: bool,
    ):
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
        self.chunks, self.iterators, self.pstate = chunks, iterators, pstate
        self.forward_step_func, self.num_microbatches = forward_step_func, num_microbatches
        self.forward_only, self.grad_scale_func = forward_only, grad_scale_func
        self.deallocate_outputs, self.interleaved = deallocate_outputs, interleaved
        self.shape = pipeline_tensor_shape(
            seq_length,
            micro_batch_size,
            config.hidden_size,
            pstate.tp_size,
            config.sequence_parallel,
        )
        self.dtype = config.params_dtype
        self.comm = p2p if p2p is not None else P2PCommunicator(pstate, _chunk_device(chunks[0]))
        self.sync = _GradSync(no_sync_func, len(chunks), not forward_only)
        self.reports: List[Dict[str, torch.Tensor]] = []
        self._backwards = [0] * len(chunks)
        self._saved_virtual_rank = pstate.virtual_pipeline_rank

    def is_first(self, chunk: int) -> bool:
        """Whether `chunk` of this rank is the first stage of the whole model."""
        return self.pstate.pp_rank == 0 and chunk == 0

    def is_last(self, chunk: int) -> bool:
        """Whether `chunk` of this rank is the last stage of the whole model."""
        return self.pstate.pp_rank == self.pstate.pp_size - 1 and chunk == len(self.chunks) - 1

    def _virtual(self, chunk: int) -> None:
        if self.interleaved:
            self.pstate.virtual_pipeline_rank = chunk

    def finish(self) -> None:
        """Release every held gradient sync and restore the virtual pipeline rank."""
        self.sync.release()
        self.pstate.virtual_pipeline_rank = self._saved_virtual_rank

    def forward(self, chunk: int, input_tensor: Optional[torch.Tensor]):
        """Run one micro-batch through `chunk`: its output, or its scaled loss on the last stage."""
        module = get_model_chunk_module(self.chunks[chunk])
        if not self.is_first(chunk):
            if not hasattr(module, "set_input_tensor"):
                raise ValueError(
                    f"{type(module).__name__} has no set_input_tensor(tensor); pipelined schedules "
                    "hand stages after the first their input activations through it"
                )
            module.set_input_tensor(input_tensor)
        self._virtual(chunk)
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
        self._virtual(chunk)
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


def _run_schedule(body: Callable[[_Run], None], run: _Run) -> List[Dict[str, torch.Tensor]]:
    run.sync.hold()
    try:
        body(run)
    finally:
        run.finish()
    return run.reports


# ---- 1F1B ----------------------------------------------------------------------------------
def _one_forward_one_backward(run: _Run) -> None:
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
    *,
    forward_step_func: Callable,
    data_iterator,
    model,
    num_microbatches: int,
    seq_length: Optional[int] = None,
    micro_batch_size: Optional[int] = None,
    forward_only: bool = False,
    grad_scale_func: Optional[Callable] = None,
    no_sync_func=None,
    pstate: Optional[ParallelState] = None,
    config=None,
    p2p: Optional[P2PCommunicator] = None,
    deallocate_outputs: bool = True,
    **unused,
) -> List[Dict[str, torch.Tensor]]:
    """The 1F1B pipeline schedule (PipeDream-flush): one model chunk per rank.

    Stage r runs pp_size - r - 1 warm-up forwards, then alternates one forward and one backward,
    then drains the remaining backwards, so at most pp_size - r micro-batches' activations are
    alive at once. See the module docstring for the arguments; in addition:

    Args:
        p2p: the communicator (default: torch.distributed over pstate's pipeline group).
        deallocate_outputs: free each sent output's storage until its backward.

    Returns:
        The reported dicts of the micro-batches on the last stage, [] on other stages.
    """
    chunks = _as_chunks(model, pstate, config)
    if len(chunks) != 1:
        raise ValueError(
            f"the non-interleaved pipeline schedule takes one model chunk, got {len(chunks)}; "
            "use forward_backward_pipelining_with_interleaving for virtual pipeline stages"
        )
    run = _Run(
        chunks,
        _chunk_iterators(data_iterator, 1),
        interleaved=False,
        forward_step_func=forward_step_func,
        num_microbatches=num_microbatches,
        forward_only=forward_only,
        grad_scale_func=grad_scale_func,
        no_sync_func=no_sync_func,
        pstate=pstate,
        config=config,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        p2p=p2p,
        deallocate_outputs=deallocate_outputs,
    )
    return _run_schedule(_one_forward_one_backward, run)


# ---- interleaved ---------------------------------------------------------------------------
class InterleavedOrder:
    """Order of the interleaved schedule on one rank (pure arithmetic, no communication).

    Micro-batches go through the chunks in groups of pp_size: the k-th forward of every rank runs
    chunk `chunk(k)` on micro-batch `microbatch(k)`; backwards visit the chunks in reverse.
    Rank r runs `warmup` forwards before its first backward (all of them when forward_only or
    when num_microbatches == pp_size).
    """

    def __init__(
        self, pp_size: int, pp_rank: int, num_chunks: int, num_microbatches: int, forward_only: bool
    ):
        if num_microbatches % pp_size:
            raise ValueError(
                f"the interleaved pipeline schedule needs the number of micro-batches per global "
                f"batch ({num_microbatches} = global batch size / (micro batch size x data "
                f"parallel size)) to be a multiple of --pipeline-model-parallel-size {pp_size}; "
                "change --global-batch-size or --micro-batch-size, or drop "
                "--num-layers-per-virtual-pipeline-stage"
            )
        self.pp_size, self.pp_rank, self.num_chunks = pp_size, pp_rank, num_chunks
        self.total = num_microbatches * num_chunks
        if forward_only or num_microbatches == pp_size:
            self.warmup = self.total
        else:
            self.warmup = min(self.total, 2 * (pp_size - pp_rank - 1) + (num_chunks - 1) * pp_size)
        self.steady = self.total - self.warmup
        self.all_warmup = not forward_only and self.warmup == self.total

    def chunk(self, k: int, forward: bool = True) -> int:
        """Model chunk of the k-th forward (or backward) step (k may be negative)."""
        c = (k % (self.pp_size * self.num_chunks)) // self.pp_size
        return c if forward else self.num_chunks - 1 - c

    def microbatch(self, k: int) -> int:
        """Micro-batch of the k-th forward (or backward) step."""
        group = self.pp_size * self.num_chunks
        return (k // group) * self.pp_size + k % self.pp_size

    def incoming_forward_chunks(self) -> List[int]:
        """The chunk each activation arriving from the previous rank is for, in arrival order."""
        steps = [self.chunk(k) for k in range(self.total)]
        if self.pp_rank > 0:
            return steps
        # From the last rank: its chunk c feeds chunk c + 1 here; its last chunk sends nothing.
        return [c + 1 for c in steps if c < self.num_chunks - 1]

    def incoming_backward_chunks(self) -> List[int]:
        """The chunk each gradient arriving from the next rank is for, in arrival order."""
        steps = [self.chunk(k, forward=False) for k in range(self.total)]
        if self.pp_rank < self.pp_size - 1:
            return steps
        return [c - 1 for c in steps if c > 0]


class _Interleaved:
    """Executes the interleaved schedule of one rank."""

    def __init__(self, run: _Run, order: InterleavedOrder):
        self.run, self.order = run, order
        n = order.num_chunks
        self.inputs = [collections.deque() for _ in range(n)]  # received activations
        self.grads = [collections.deque() for _ in range(n)]  # received output gradients
        self.pending = [collections.deque() for _ in range(n)]  # (input, output) for backward
        self.forward_targets = iter(order.incoming_forward_chunks())
        self.backward_targets = iter(order.incoming_backward_chunks())

    def exchange(self, send_next=None, send_prev=None, recv_prev=False, recv_next=False) -> None:
        x, dy = self.run.exchange(send_next, send_prev, recv_prev, recv_next)
        if x is not None:
            self.inputs[next(self.forward_targets)].append(x)
        if dy is not None:
            self.grads[next(self.backward_targets)].append(dy)

    def forward(self, k: int) -> Optional[torch.Tensor]:
        """k-th forward step; returns the output to send (None on the model's last stage)."""
        c, run = self.order.chunk(k), self.run
        x = None if run.is_first(c) else self.inputs[c].popleft()
        y = run.forward(c, x)
        if not run.forward_only:
            self.pending[c].append((x, y))
        return None if run.is_last(c) else y

    def backward(self, k: int) -> Optional[torch.Tensor]:
        """k-th backward step; returns the input gradient to send (None on the first stage)."""
        c, run = self.order.chunk(k, forward=False), self.run
        x, y = self.pending[c].popleft()
        dy = None if run.is_last(c) else self.grads[c].popleft()
        dx = run.backward(c, x, y, dy)
        return None if run.is_first(c) else dx

    def execute(self) -> None:
        o = self.order
        first_rank, last_rank = o.pp_rank == 0, o.pp_rank == o.pp_size - 1
        self.exchange(recv_prev=not first_rank)
        for k in range(o.warmup):
            y = self.forward(k)
            recv_prev = k < o.total - 1 and not (first_rank and o.chunk(k + 1) == 0)
            # The last warm-up exchange also fetches the first gradient for the steady phase.
            recv_next = k == o.warmup - 1 and not o.all_warmup and not self.run.forward_only
            self.exchange(send_next=y, recv_prev=recv_prev, recv_next=recv_next and not last_rank)
        for i in range(o.steady):
            y = self.forward(i + o.warmup)
            dx = self.backward(i)
            # The first rank runs pp_size - 1 forward steps ahead of the last one (and the last
            # rank as many backward steps ahead of the first): the peer's chunk at that step says
            # whether it sends anything.
            recv_prev = (
                not first_rank or o.chunk(i + o.warmup - (o.pp_size - 1)) != o.num_chunks - 1
            )
            recv_next = not last_rank or o.chunk(i - (o.pp_size - 1), forward=False) != 0
            self.exchange(y, dx, recv_prev and i < o.steady - 1, recv_next)
        if self.run.forward_only:
            return
        if o.all_warmup:
            self.exchange(recv_next=not last_rank)
        for k in range(o.steady, o.total):
            dx = self.backward(k)
            recv_next = k < o.total - 1 and not (
                last_rank and o.chunk(k + 1, forward=False) == o.num_chunks - 1
            )
            self.exchange(send_prev=dx, recv_next=recv_next)
        leftovers = sum(len(q) for q in self.inputs + self.grads + self.pending)
        assert leftovers == 0, f"interleaved schedule left {leftovers} tensors unused"


def forward_backward_pipelining_with_interleaving(
    *,
    forward_step_func: Callable,
    data_iterator,
    model,
    num_microbatches: int,
    seq_length: Optional[int] = None,
    micro_batch_size: Optional[int] = None,
    forward_only: bool = False,
    grad_scale_func: Optional[Callable] = None,
    no_sync_func=None,
    pstate: Optional[ParallelState] = None,
    config=None,
    p2p: Optional[P2PCommunicator] = None,
    deallocate_outputs: bool = True,
    **unused,
) -> List[Dict[str, torch.Tensor]]:
    """The interleaved 1F1B schedule: each rank holds several model chunks (virtual stages).

    Chunk v of rank r holds layers `config.layer_offset(r, v)`...; activations go r -> r + 1
    within a chunk and from the last rank's chunk v to the first rank's chunk v + 1. This cuts
    the pipeline bubble by the number of chunks at the price of more communication.

    Args (besides the common ones in the module docstring):
        model: list of this rank's chunks in virtual-rank order.
        data_iterator: a list with one iterator per chunk, each yielding the same micro-batches,
            or a single iterator (read once and replayed to every chunk).
        num_microbatches: must be a multiple of the pipeline size.
        no_sync_func: preferably a list, one per chunk (e.g. [m.no_sync for m in model]).
        p2p / deallocate_outputs: as for the non-interleaved schedule.

    Returns:
        The reported dicts of the micro-batches on the last stage, [] on other stages.
    """
    chunks = _as_chunks(model, pstate, config)
    if pstate.vpp_size is not None and pstate.vpp_size != len(chunks):
        raise ValueError(
            f"got {len(chunks)} model chunks but the virtual pipeline size is {pstate.vpp_size}"
        )
    if pstate.pp_size < 2:
        raise ValueError("the interleaved schedule needs --pipeline-model-parallel-size >= 2")
    owner = getattr(no_sync_func, "__self__", None)
    if len(chunks) > 1 and owner is not None and any(owner is c for c in chunks):
        raise ValueError(
            "no_sync_func is the no_sync of a single model chunk; with virtual pipeline stages "
            "pass one per chunk: no_sync_func=[m.no_sync for m in model]"
        )
    order = InterleavedOrder(
        pstate.pp_size, pstate.pp_rank, len(chunks), num_microbatches, forward_only
    )
    run = _Run(
        chunks,
        _chunk_iterators(data_iterator, len(chunks)),
        interleaved=True,
        forward_step_func=forward_step_func,
        num_microbatches=num_microbatches,
        forward_only=forward_only,
        grad_scale_func=grad_scale_func,
        no_sync_func=no_sync_func,
        pstate=pstate,
        config=config,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        p2p=p2p,
        deallocate_outputs=deallocate_outputs,
    )
    return _run_schedule(lambda r: _Interleaved(r, order).execute(), run)


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
