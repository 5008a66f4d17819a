"""Pipeline schedules: 1F1B and interleaved against the single-stage schedule.

Two levels:
- threads: every stage of a pipeline runs in a thread of this process with an in-memory
  communicator that has the semantics of a batch of isend/irecv (a batch completes only when its
  sends were received and its receives arrived), on a toy residual model. This covers many
  pipeline sizes, virtual stages and micro-batch counts cheaply, and would hang (time out) on a
  send without its matching receive.
- processes: tiny GPT and BERT models split over 2 gloo ranks (and 2 x 2 with tensor
  parallelism) give the per-micro-batch losses and gradients of the unsplit model.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import types

import pytest
import torch

from megatron.core.parallel_state import ParallelState, RankLayout
from megatron.core.pipeline_parallel.interleaved import InterleavedOrder
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator, pipeline_tensor_shape
from megatron.core.pipeline_parallel.pipeline_run import replicate_data_iterator
from megatron.core.pipeline_parallel.schedules import (
    broadcast_from_last_stage,
    forward_backward_no_pipelining,
    forward_backward_pipelining_with_interleaving,
    forward_backward_pipelining_without_interleaving,
    get_forward_backward_func,
)
from tests.distributed.launcher import run_distributed
from tests.distributed.test_tp_model import (
    KINDS,
    assert_close_grads,
    assert_close_reports,
    build_chunks,
    gather_full_grads,
    make_config,
    serial_reference,
)

TIMEOUT = 20.0


# ---- pure pieces ---------------------------------------------------------------------------
def test_get_forward_backward_func():
    assert get_forward_backward_func(1) is forward_backward_no_pipelining
    assert get_forward_backward_func(1, None) is forward_backward_no_pipelining
    assert get_forward_backward_func(2) is forward_backward_pipelining_without_interleaving
    assert get_forward_backward_func(4, 1) is forward_backward_pipelining_without_interleaving
    assert get_forward_backward_func(2, 2) is forward_backward_pipelining_with_interleaving
    with pytest.raises(ValueError):
        get_forward_backward_func(0)


def test_tensor_shape():
    assert pipeline_tensor_shape(16, 2, 32) == (16, 2, 32)
    assert pipeline_tensor_shape(16, 2, 32, tp_size=4) == (16, 2, 32)
    assert pipeline_tensor_shape(16, 2, 32, tp_size=4, sequence_parallel=True) == (4, 2, 32)
    with pytest.raises(ValueError, match="18 is not divisible by --tensor-model-parallel-size 4"):
        pipeline_tensor_shape(18, 2, 32, tp_size=4, sequence_parallel=True)
    with pytest.raises(ValueError, match="seq_length"):
        pipeline_tensor_shape(None, 2, 32)


def test_interleaved_order():
    o = InterleavedOrder(pp_size=2, pp_rank=0, num_chunks=3, num_microbatches=4, forward_only=False)
    assert o.total == 12
    assert [o.chunk(k) for k in range(12)] == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
    assert [o.chunk(k, forward=False) for k in range(6)] == [2, 2, 1, 1, 0, 0]
    assert [o.microbatch(k) for k in range(12)] == [0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3]
    assert o.warmup == 2 * (2 - 0 - 1) + (3 - 1) * 2
    # Each (chunk, micro-batch) pair is visited exactly once.
    assert len({(o.chunk(k), o.microbatch(k)) for k in range(o.total)}) == o.total
    assert InterleavedOrder(2, 1, 2, 2, False).all_warmup
    assert InterleavedOrder(4, 3, 2, 8, True).warmup == 16
    with pytest.raises(ValueError, match=r"\(6 = .*--pipeline-model-parallel-size 4"):
        InterleavedOrder(4, 0, 2, 6, False)


@pytest.mark.parametrize(
    "schedule",
    [
        forward_backward_no_pipelining,
        forward_backward_pipelining_without_interleaving,
        forward_backward_pipelining_with_interleaving,
    ],
)
def test_a_misspelt_argument_is_an_error(schedule):
    with pytest.raises(TypeError, match="forward_onyl"):
        schedule(
            forward_step_func=None,
            data_iterator=None,
            model=None,
            num_microbatches=1,
            forward_onyl=True,
        )


def test_replicate_data_iterator():
    pulled = []

    def source():
        for i in range(5):
            pulled.append(i)
            yield i

    a, b = replicate_data_iterator(source(), 2)
    assert [next(a), next(a), next(a)] == [0, 1, 2]
    assert next(b) == 0 and pulled == [0, 1, 2]
    assert list(b) == [1, 2, 3, 4] and list(a) == [3, 4]
    assert pulled == [0, 1, 2, 3, 4]
    assert len(a.stream.buffer) == 0


def test_layer_offsets_cover_every_layer_once():
    from megatron.core.transformer import TransformerConfig

    cfg = TransformerConfig(num_layers=16)
    for pp, vpp in [(2, None), (4, None), (2, 2), (4, 2), (2, 4)]:
        layout = RankLayout(pp, 1, pp, vpp)
        cfg.check_layout(layout)
        seen = []
        for v in range(vpp or 1):  # model order: chunk v of every rank, then chunk v + 1
            for r in range(pp):
                start = cfg.layer_offset(layout, r, v)
                seen.extend(range(start, start + cfg.num_layers_per_chunk(layout)))
        assert seen == list(range(16)), (pp, vpp)


# ---- threaded pipelines on a toy model -----------------------------------------------------
class _ToyChunk(torch.nn.Module):
    """Residual layers x + tanh(x * w + b) over [s, b, h]; the last chunk returns a per-token
    loss."""

    def __init__(self, layers, hidden, first, last):
        super().__init__()
        self.layers, self.first, self.last = list(layers), first, last
        self.w = torch.nn.ParameterList()
        self.b = torch.nn.ParameterList()
        for layer in self.layers:
            g = torch.Generator().manual_seed(1000 + layer)
            self.w.append(torch.nn.Parameter(torch.randn(hidden, generator=g, dtype=torch.float64)))
            self.b.append(torch.nn.Parameter(torch.randn(hidden, generator=g, dtype=torch.float64)))
        self.input_tensor = None

    def set_input_tensor(self, tensor):
        self.input_tensor = tensor

    def forward(self, batch):
        x = batch["x"] if self.first else self.input_tensor
        for w, b in zip(self.w, self.b):
            x = x + torch.tanh(x * w + b)
        if self.last:
            return ((x - batch["y"]) ** 2).mean(-1)  # [s, b]
        return x

    def named_grads(self):
        out = {}
        for layer, w, b in zip(self.layers, self.w, self.b):
            out[f"{layer}.w"], out[f"{layer}.b"] = w.grad, b.grad
        return out


def _toy_batches(n, s, b, h, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "id": i,
            "x": torch.randn(s, b, h, generator=g, dtype=torch.float64),
            "y": torch.randn(s, b, h, generator=g, dtype=torch.float64),
        }
        for i in range(n)
    ]


def _toy_loss(batch, output):
    loss = output.mean()
    return loss, {"loss": loss.detach(), "id": batch["id"]}


def _toy_forward_step(data_iterator, model):
    batch = next(data_iterator)
    return model(batch), functools.partial(_toy_loss, batch)


class _Pipe:
    """Message channels between thread ranks: (src, dst) -> FIFO of (kind, tensor, ack)."""

    def __init__(self, size):
        self.channels = {(s, d): queue.Queue() for s in range(size) for d in range(size)}


class _ThreadComm:
    """In-memory stand-in for P2PCommunicator with batched-isend/irecv semantics."""

    def __init__(self, pipe, rank, size):
        self.pipe, self.rank, self.size = pipe, rank, size
        self.sent_outputs = []

    def exchange(
        self,
        send_next=None,
        send_prev=None,
        recv_prev=False,
        recv_next=False,
        shape=None,
        dtype=None,
    ):
        nxt, prv = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        acks = []
        # Same posting order as the real communicator: forward direction first.
        for kind, dst, t in (("fwd", nxt, send_next), ("bwd", prv, send_prev)):
            if t is not None:
                ack = threading.Event()
                self.pipe.channels[(self.rank, dst)].put((kind, t.detach().clone(), ack))
                acks.append(ack)
        if send_next is not None:
            self.sent_outputs.append(send_next)
        got = []
        for kind, src, wanted in (("fwd", prv, recv_prev), ("bwd", nxt, recv_next)):
            if not wanted:
                got.append(None)
                continue
            try:
                msg_kind, t, ack = self.pipe.channels[(src, self.rank)].get(timeout=TIMEOUT)
            except queue.Empty:
                raise TimeoutError(
                    f"rank {self.rank}: no {kind} message from {src} (deadlock)"
                ) from None
            assert msg_kind == kind, f"rank {self.rank} expected a {kind} message, got {msg_kind}"
            assert tuple(t.shape) == tuple(shape) and t.dtype == dtype
            ack.set()
            got.append(t)
        for ack in acks:
            if not ack.wait(TIMEOUT):
                raise TimeoutError(f"rank {self.rank}: a send was never received (deadlock)")
        return got[0], got[1]


def _toy_chunks(pp, vpp, rank, layers_per_chunk, hidden):
    n_chunks = vpp or 1
    total = pp * n_chunks * layers_per_chunk
    chunks = []
    for v in range(n_chunks):
        start = v * (total // n_chunks) + rank * layers_per_chunk
        first, last = rank == 0 and v == 0, rank == pp - 1 and v == n_chunks - 1
        chunks.append(_ToyChunk(range(start, start + layers_per_chunk), hidden, first, last))
    return chunks


def _sync_recorder(chunks):
    """no_sync functions per chunk, and for each chunk the sync state at every gradient arrival."""
    enabled = [True] * len(chunks)
    seen = [[] for _ in chunks]

    def make(c):
        def no_sync():
            class _Ctx:
                def __enter__(self):
                    enabled[c] = False

                def __exit__(self, *exc):
                    enabled[c] = True

            return _Ctx()

        return no_sync

    for c, chunk in enumerate(chunks):
        chunk.w[0].register_post_accumulate_grad_hook(lambda p, c=c: seen[c].append(enabled[c]))
    return [make(c) for c in range(len(chunks))], seen, enabled


def _run_toy_rank(pipe, pp, vpp, rank, calls, hidden, forward_only):
    layout = RankLayout(pp, 1, pp, vpp)
    pstate = ParallelState(layout, rank, {}, {"pp": list(range(pp))})
    config = types.SimpleNamespace(
        hidden_size=hidden, sequence_parallel=False, params_dtype=torch.float64
    )
    chunks = _toy_chunks(pp, vpp, rank, 1, hidden)
    comm = _ThreadComm(pipe, rank, pp)
    no_sync, seen, enabled = _sync_recorder(chunks)
    schedule = get_forward_backward_func(pp, vpp)
    pstate_before = dict(vars(pstate))
    results = []
    for m, s, b in calls:
        for c in chunks:
            c.zero_grad(set_to_none=True)
        seen_before = [len(x) for x in seen]
        batches = _toy_batches(m, s, b, hidden, seed=s)
        reports = schedule(
            forward_step_func=_toy_forward_step,
            data_iterator=iter(batches),
            model=chunks if vpp else chunks[0],
            num_microbatches=m,
            seq_length=s,
            micro_batch_size=b,
            forward_only=forward_only,
            grad_scale_func=lambda x: x * 2.0,
            no_sync_func=no_sync if vpp else no_sync[0],
            pstate=pstate,
            config=config,
            p2p=comm,
        )
        grads = {
            k: (None if g is None else g.clone())
            for c in chunks
            for k, g in c.named_grads().items()
        }
        sync = [seen[c][seen_before[c] :] for c in range(len(chunks))]
        results.append((reports, grads, sync, list(enabled)))
    freed = [t.numel() for t in comm.sent_outputs]
    return results, freed, dict(vars(pstate)) == pstate_before


def _run_threads(pp, vpp, calls, hidden=3, forward_only=False):
    pipe = _Pipe(pp)
    out, errors = [None] * pp, []

    def target(rank):
        try:
            out[rank] = _run_toy_rank(pipe, pp, vpp, rank, calls, hidden, forward_only)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append((rank, e))

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(pp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    if errors:
        raise RuntimeError(f"rank {errors[0][0]} failed") from errors[0][1]
    assert all(o is not None for o in out), "a pipeline thread hung"
    return out


def _toy_reference(pp, vpp, m, s, b, hidden=3):
    chunk = _ToyChunk(range(pp * (vpp or 1)), hidden, True, True)
    reports = forward_backward_no_pipelining(
        forward_step_func=_toy_forward_step,
        data_iterator=iter(_toy_batches(m, s, b, hidden, seed=s)),
        model=chunk,
        num_microbatches=m,
        grad_scale_func=lambda x: x * 2.0,
    )
    return reports, chunk.named_grads()


@pytest.mark.parametrize(
    "pp,vpp,m",
    [
        (2, None, 4),
        (2, None, 1),
        (3, None, 2),
        (4, None, 7),
        (4, None, 4),
        (2, 2, 4),
        (2, 2, 2),
        (3, 2, 6),
        (4, 2, 4),
        (4, 3, 8),
        (2, 3, 6),
        (3, 4, 9),
    ],
)
def test_threaded_pipeline_matches_single_stage(pp, vpp, m):
    calls = [(m, 4, 2), (m, 3, 2)]  # the sequence length changes between two calls
    out = _run_threads(pp, vpp, calls)
    for i, (mm, s, b) in enumerate(calls):
        ref_reports, ref_grads = _toy_reference(pp, vpp, mm, s, b)
        merged = {}
        for rank in range(pp):
            reports, grads, sync, enabled = out[rank][0][i]
            assert (reports != []) == (rank == pp - 1)
            merged.update(grads)
            # Gradient reduction is allowed exactly in each chunk's last backward.
            for chunk_sync in sync:
                assert chunk_sync == [False] * (mm - 1) + [True]
            assert all(enabled)
        last_reports = out[pp - 1][0][i][0]
        assert [r["id"] for r in last_reports] == list(range(mm))
        for r, ref in zip(last_reports, ref_reports):
            torch.testing.assert_close(r["loss"], ref["loss"], rtol=1e-12, atol=0)
        assert merged.keys() == ref_grads.keys()
        for k in ref_grads:
            torch.testing.assert_close(merged[k], ref_grads[k], rtol=1e-10, atol=1e-12, msg=k)
    n_chunks = vpp or 1
    for rank in range(pp):
        freed, pstate_unchanged = out[rank][1], out[rank][2]
        sending_chunks = n_chunks - 1 if rank == pp - 1 else n_chunks
        assert len(freed) == sum(mm for mm, _, _ in calls) * sending_chunks
        assert all(n == 1 for n in freed), "sent outputs keep their storage"
        assert pstate_unchanged  # the schedule leaves the process-group state as it was


@pytest.mark.parametrize("pp,vpp,m", [(3, None, 5), (2, 2, 4), (4, 2, 8)])
def test_threaded_pipeline_forward_only(pp, vpp, m):
    out = _run_threads(pp, vpp, [(m, 4, 2)], forward_only=True)
    ref_reports, _ = _toy_reference(pp, vpp, m, 4, 2)
    for rank in range(pp):
        _, grads, sync, _ = out[rank][0][0]
        assert all(g is None for g in grads.values())
        assert all(s == [] for s in sync)
    last = out[pp - 1][0][0][0]
    assert [r["id"] for r in last] == list(range(m))
    for r, ref in zip(last, ref_reports):
        torch.testing.assert_close(r["loss"], ref["loss"], rtol=1e-12, atol=0)


def test_interleaved_rejects_bad_microbatch_count():
    pstate = ParallelState(RankLayout(2, 1, 2, 2), 0, {}, {"pp": [0, 1]})
    config = types.SimpleNamespace(
        hidden_size=3, sequence_parallel=False, params_dtype=torch.float64
    )
    with pytest.raises(ValueError, match=r"micro-batches per global batch \(3 ="):
        forward_backward_pipelining_with_interleaving(
            forward_step_func=_toy_forward_step,
            data_iterator=iter([]),
            model=_toy_chunks(2, 2, 0, 1, 3),
            num_microbatches=3,
            seq_length=4,
            micro_batch_size=2,
            pstate=pstate,
            config=config,
        )


def test_interleaved_rejects_one_chunks_no_sync_for_all_chunks():
    class _Wrapped(torch.nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        @contextlib.contextmanager
        def no_sync(self):
            yield

    pstate = ParallelState(RankLayout(2, 1, 2, 2), 0, {}, {"pp": [0, 1]})
    config = types.SimpleNamespace(
        hidden_size=3, sequence_parallel=False, params_dtype=torch.float64
    )
    chunks = [_Wrapped(c) for c in _toy_chunks(2, 2, 0, 1, 3)]
    with pytest.raises(ValueError, match=r"\[m.no_sync for m in model\]"):
        forward_backward_pipelining_with_interleaving(
            forward_step_func=_toy_forward_step,
            data_iterator=iter([]),
            model=chunks,
            num_microbatches=2,
            seq_length=4,
            micro_batch_size=2,
            no_sync_func=chunks[0].no_sync,
            pstate=pstate,
            config=config,
        )


def test_stage_output_shape_is_checked():
    pstate = ParallelState(RankLayout(2, 1, 2), 0, {}, {"pp": [0, 1]})
    config = types.SimpleNamespace(
        hidden_size=3, sequence_parallel=False, params_dtype=torch.float64
    )
    chunk = _toy_chunks(2, None, 0, 1, 3)[0]
    with pytest.raises(ValueError, match=r"shape \(5, 2, 3\).*expects \(4, 2, 3\)"):
        forward_backward_pipelining_without_interleaving(
            forward_step_func=_toy_forward_step,
            data_iterator=iter(_toy_batches(2, 5, 2, 3, 0)),
            model=chunk,
            num_microbatches=2,
            seq_length=4,
            micro_batch_size=2,
            pstate=pstate,
            config=config,
            p2p=_ThreadComm(_Pipe(2), 0, 2),
        )


# ---- real models over gloo processes -------------------------------------------------------
def _p2p_checks(pstate):
    """With 2 stages, one batch can carry an activation and a gradient to the same peer."""
    comm = P2PCommunicator(pstate)
    r, peer = pstate.pp_rank, 1 - pstate.pp_rank
    for dtype in (torch.float32, torch.bfloat16):
        act, grad = (
            torch.full((2, 3), 10.0 + r, dtype=dtype),
            torch.full((2, 3), 20.0 + r, dtype=dtype),
        )
        from_prev, from_next = comm.exchange(act, grad, True, True, (2, 3), dtype)
        assert from_prev.dtype == dtype and from_prev.eq(10.0 + peer).all()
        assert from_next.eq(20.0 + peer).all()
    if r == 0:
        comm.send_forward(torch.arange(4.0))
        got = comm.send_forward_recv_backward(torch.ones(4), (4,), torch.float32)
        assert got.eq(7.0).all() and comm.recv_backward((2,), torch.float32).eq(3.0).all()
    else:
        assert comm.recv_forward((4,), torch.float32).equal(torch.arange(4.0))
        got = comm.send_backward_recv_forward(torch.full((4,), 7.0), (4,), torch.float32)
        assert got.eq(1.0).all()
        comm.send_backward(torch.full((2,), 3.0))


def _pipeline_body(rank, world_size, kind, tp, pp, vpp, cfg_kw, calls, check_p2p=False):
    pstate = ParallelState.initialize(tp, pp, vpp)
    if check_p2p:
        _p2p_checks(pstate)
    make_batches, forward_step = KINDS[kind][1:]
    cfg = make_config(**cfg_kw)
    chunks = build_chunks(kind, cfg, pstate)
    schedule = get_forward_backward_func(pp, vpp)
    last = pstate.is_pipeline_last_stage()
    names = set()
    for i, (m, s, forward_only) in enumerate(calls):
        where = (
            f"{kind} tp{tp} pp{pp} vpp{vpp} call {i} (m={m}, s={s}, forward_only={forward_only})"
        )
        batches = make_batches(m, s, 2, seed=100 + i)
        ref_reports, ref_grads = serial_reference(kind, cfg_kw, batches)
        for chunk in chunks:
            chunk.zero_grad(set_to_none=True)
        # Interleaved: a list of per-chunk iterators on odd calls, one shared iterator otherwise.
        data = [iter(batches) for _ in chunks] if vpp and i % 2 else iter(batches)
        with torch.no_grad() if forward_only else contextlib.nullcontext():
            reports = schedule(
                forward_step_func=forward_step,
                data_iterator=data,
                model=chunks if vpp else chunks[0],
                num_microbatches=m,
                seq_length=s,
                micro_batch_size=2,
                forward_only=forward_only,
                pstate=pstate,
                config=cfg,
            )
        if last:
            assert_close_reports(reports, ref_reports, where)
        else:
            assert reports == [], where
        logged = broadcast_from_last_stage(
            {"lm loss": float(reports[0]["lm loss"])} if last else None, pstate
        )
        assert logged == {"lm loss": pytest.approx(float(ref_reports[0]["lm loss"]), rel=1e-5)}, (
            where
        )
        if forward_only:
            assert all(p.grad is None for c in chunks for p in c.parameters()), where
            continue
        full = gather_full_grads(chunks, pstate)
        assert_close_grads(full, ref_grads, where)
        names |= set(full)
    return sorted(names), sorted(ref_grads)


def _check_coverage(results):
    """Every parameter of the serial model is held (and was compared) on some rank."""
    held = set().union(*(set(names) for names, _ in results))
    assert held == set(results[0][1])


RECOMPUTE = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)


def test_gpt_pipeline_1f1b_matches_single_stage():
    # Sequence length changes between calls (curriculum); full recomputation in the pipeline.
    calls = [(4, 8, False), (4, 6, False), (4, 8, True)]
    results = run_distributed(
        _pipeline_body, 2, "gpt", 1, 2, None, RECOMPUTE, calls, True, timeout=180
    )
    _check_coverage(results)


def test_gpt_pipeline_interleaved_matches_single_stage():
    # m = pp runs every forward in the warm-up phase; the last call is forward-only.
    calls = [(4, 8, False), (2, 6, False), (4, 8, True)]
    results = run_distributed(
        _pipeline_body, 2, "gpt", 1, 2, 2, dict(position_embedding_type="rope"), calls, timeout=180
    )
    _check_coverage(results)


def _bert_body(rank, world_size):
    calls = [(4, 8, False), (4, 6, False)]
    a = _pipeline_body(rank, world_size, "bert", 1, 2, None, {}, calls)
    b = _pipeline_body(
        rank, world_size, "bert", 1, 2, 2, dict(recompute_granularity="selective"), calls
    )
    return a, b


def test_bert_pipeline_matches_single_stage():
    results = run_distributed(_bert_body, 2, timeout=180)
    _check_coverage([r[0] for r in results])
    _check_coverage([r[1] for r in results])


def test_gpt_pipeline_with_tensor_parallel():
    calls = [(4, 8, False), (4, 6, False)]
    cfg_kw = dict(sequence_parallel=True, swiglu=True)
    results = run_distributed(_pipeline_body, 4, "gpt", 2, 2, 2, cfg_kw, calls, timeout=240)
    _check_coverage(results)


def _ddp_body(rank, world_size):
    """PP 2 x DP 2, interleaved, chunks wrapped in DistributedDataParallel with overlapped,
    bucketed reduction: two steps (the second with a shorter sequence and readiness counts
    learned in the first) give the serial gradients of all the data-parallel micro-batches."""
    from megatron.core.distributed import DDPConfig, DistributedDataParallel, finalize_model_grads
    from megatron.core.models.common import global_named_parameters
    from tests.distributed.test_tp_model import WORD_EMB, gpt_batches, gpt_forward_step

    pstate = ParallelState.initialize(1, 2, 2)
    cfg = make_config()
    ddp_cfg = DDPConfig(overlap_grad_reduce=True, bucket_size=2000)
    model = [
        DistributedDataParallel(c, ddp_cfg, pstate.dp_group)
        for c in build_chunks("gpt", cfg, pstate)
    ]
    assert sum(len(m.buckets) for m in model) > 2
    schedule = get_forward_backward_func(2, 2)
    for step, s in enumerate([8, 6]):
        per_dp = [gpt_batches(4, s, 2, seed=10 * step + d) for d in range(pstate.dp_size)]
        ref_reports, ref = serial_reference("gpt", {}, [b for batches in per_dp for b in batches])
        for m in model:
            m.zero_grad_buffer()
        reports = schedule(
            forward_step_func=gpt_forward_step,
            data_iterator=iter(per_dp[pstate.dp_rank]),
            model=model,
            num_microbatches=4,
            seq_length=s,
            micro_batch_size=2,
            no_sync_func=[m.no_sync for m in model],
            pstate=pstate,
            config=cfg,
        )
        finalize_model_grads(model, pstate)
        where = f"ddp step {step}"
        if pstate.is_pipeline_last_stage():
            mine = ref_reports[4 * pstate.dp_rank : 4 * pstate.dp_rank + 4]
            assert_close_reports(reports, mine, where)
        for m in model:
            for name, p in global_named_parameters(m.module):
                name = WORD_EMB if getattr(p, "shared_embedding", False) else name
                # Serial grads average over 8 micro-batches; DDP averages 2 ranks x 4.
                torch.testing.assert_close(p.main_grad, ref[name], rtol=1e-4, atol=2e-6, msg=where)
    return True


def test_pipeline_with_data_parallel_ddp_overlap():
    assert run_distributed(_ddp_body, 4, timeout=240) == [True] * 4
