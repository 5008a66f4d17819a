"""Tensor-parallel layers on TP=2 against their serial twins, and the RNG streams.

Each parallel layer gets the shards (`tensor_parallel.init.shard_of`) of a full serial weight;
its outputs and gradients must equal the matching slices of the serial layer's, with and without
sequence parallelism. Inputs are float64 so the comparisons are tight.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.core.tensor_parallel import (
    MODEL_PARALLEL_RNG,
    ColumnParallelLinear,
    RNGStatesTracker,
    RowParallelLinear,
    VocabParallelEmbedding,
    checkpoint,
    model_parallel_seed,
    parallel_lm_logits,
    vocab_parallel_cross_entropy,
)
from megatron.core.tensor_parallel.init import shard_of
from tests.distributed.launcher import run_distributed

S, B, H, FFN, VOCAB = 4, 2, 8, 12, 16
F64 = torch.float64


def _full(shape, salt: int, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(salt)
    return torch.randn(shape, generator=g, dtype=dtype)


def _blocks(t: torch.Tensor, dim: int, r: int, n: int, stride: int = 1) -> torch.Tensor:
    """Rank r's part of t along dim: blocks r, n + r, ... of stride * n (written independently
    of shard_of)."""
    parts = t.chunk(stride * n, dim=dim)
    return torch.cat([parts[s * n + r] for s in range(stride)], dim=dim)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def _close(name, got, want, tol=1e-12):
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def _load(param, full, r, n):
    with torch.no_grad():
        param.copy_(shard_of(full, param, r, n))


def _column(group, r, n, sp, gather_output, stride):
    name = f"column sp={sp} gather={gather_output} stride={stride}"
    layer = ColumnParallelLinear(
        H,
        FFN,
        tp_group=group,
        gather_output=gather_output,
        stride=stride,
        sequence_parallel=sp,
        params_dtype=F64,
    )
    w, b = _leaf(_full((FFN, H), 1)), _leaf(_full((FFN,), 2))
    _load(layer.weight, w, r, n)
    _load(layer.bias, b, r, n)
    _close(name + " weight shard", layer.weight, _blocks(w, 0, r, n, stride), 0)
    x, grad = _leaf(_full((S, B, H), 3)), _full((S, B, FFN), 4)
    ref = F.linear(x, w, b)
    ref.backward(grad)
    xin = _leaf(x.chunk(n, 0)[r] if sp else x)
    y = layer(xin)
    if gather_output:
        _close(name + " out", y, ref)
        y.backward(grad)
    else:
        _close(name + " out", y, _blocks(ref, -1, r, n, stride))
        y.backward(_blocks(grad, -1, r, n, stride))
    _close(name + " dW", layer.weight.grad, _blocks(w.grad, 0, r, n, stride))
    _close(name + " db", layer.bias.grad, _blocks(b.grad, 0, r, n, stride))
    _close(name + " dx", xin.grad, x.grad.chunk(n, 0)[r] if sp else x.grad)


def _row(group, r, n, sp):
    name = f"row sp={sp}"
    layer = RowParallelLinear(FFN, H, tp_group=group, sequence_parallel=sp, params_dtype=F64)
    w, b = _leaf(_full((H, FFN), 5)), _leaf(_full((H,), 6))
    _load(layer.weight, w, r, n)
    _close(name + " weight shard", layer.weight, _blocks(w, 1, r, n), 0)
    with torch.no_grad():
        layer.bias.copy_(b)
    x, grad = _leaf(_full((S, B, FFN), 7)), _full((S, B, H), 8)
    ref = F.linear(x, w, b)
    ref.backward(grad)
    xin = _leaf(_blocks(x, -1, r, n))
    y = layer(xin)
    _close(name + " out", y, ref.chunk(n, 0)[r] if sp else ref)
    y.backward(grad.chunk(n, 0)[r] if sp else grad)
    _close(name + " dW", layer.weight.grad, _blocks(w.grad, 1, r, n))
    _close(name + " dx", xin.grad, _blocks(x.grad, -1, r, n))
    db = layer.bias.grad.clone()
    assert layer.bias.sequence_parallel == sp
    if sp:  # each rank saw its part of the sequence: the bias gradient is partial
        dist.all_reduce(db, group=group)
    _close(name + " db", db, b.grad)


def _embedding(group, r, n):
    emb = VocabParallelEmbedding(VOCAB, H, tp_group=group, params_dtype=F64)
    table = _leaf(_full((VOCAB, H), 9))
    _load(emb.weight, table, r, n)
    ids = torch.tensor([[0, 7, 8, 15], [3, 3, 12, 9]])  # [b, s], ids in both halves, a repeat
    grad = _full((S, B, H), 10)
    ref = F.embedding(ids.t(), table)
    ref.backward(grad)
    y = emb(ids)
    _close("embedding out", y, ref)
    y.backward(grad)
    _close("embedding dW", emb.weight.grad, _blocks(table.grad, 0, r, n))
    assert (emb.vocab_start, emb.vocab_end) == (r * VOCAB // n, (r + 1) * VOCAB // n)


def _cross_entropy(group, r, n):
    logits = _leaf(_full((S, B, VOCAB), 11, torch.float32) * 3)
    target = torch.tensor([[0, 15], [8, 7], [3, 12], [9, 9]])  # [s, b]
    grad = _full((S, B), 12, torch.float32)
    ref = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), reduction="none").view(
        S, B
    )
    ref.backward(grad)
    shard = _leaf(_blocks(logits, -1, r, n))
    loss = vocab_parallel_cross_entropy(shard, target, group)
    _close("cross entropy", loss, ref, 1e-5)
    loss.backward(grad)
    _close("cross entropy dlogits", shard.grad, _blocks(logits.grad, -1, r, n), 1e-6)
    with pytest.raises(ValueError, match="target shape"):
        vocab_parallel_cross_entropy(shard, target.t(), group)


def _cross_entropy_padded(group, r, n, vocab_size):
    """Columns >= vocab_size are padding: out of the softmax (huge logits there change nothing),
    zero gradient (the reference's, through the slice); with vocab_size 5 rank 1 holds padding
    only."""
    logits = _full((S, B, VOCAB), 18, torch.float32) * 3
    logits[..., vocab_size:] += 100.0
    logits = _leaf(logits)
    target = torch.tensor([[0, vocab_size - 1], [2, 1], [vocab_size - 1, 3], [4, 0]])
    grad = _full((S, B), 19, torch.float32)
    real = logits[..., :vocab_size]
    ref = F.cross_entropy(real.reshape(-1, vocab_size), target.reshape(-1), reduction="none")
    ref.view(S, B).backward(grad)
    shard = _leaf(_blocks(logits, -1, r, n))
    loss = vocab_parallel_cross_entropy(shard, target, group, vocab_size)
    name = f"cross entropy vocab_size={vocab_size}"
    _close(name, loss, ref.view(S, B), 1e-5)
    loss.backward(grad)
    _close(name + " dlogits", shard.grad, _blocks(logits.grad, -1, r, n), 1e-6)
    with pytest.raises(ValueError, match=r"vocab_size 17 must be in \[1, 16\]"):
        vocab_parallel_cross_entropy(shard, target, group, VOCAB + 1)


def _lm_logits(group, r, n, sp):
    name = f"lm logits sp={sp}"
    hidden, w = _leaf(_full((S, B, H), 13)), _leaf(_full((VOCAB, H), 14))
    grad = _full((S, B, VOCAB), 15)
    ref = F.linear(hidden, w)
    ref.backward(grad)
    hin, wshard = _leaf(hidden.chunk(n, 0)[r] if sp else hidden), _leaf(_blocks(w, 0, r, n))
    out = parallel_lm_logits(hin, wshard, group, sp)
    _close(name, out, _blocks(ref, -1, r, n))
    out.backward(_blocks(grad, -1, r, n))
    _close(name + " dW", wshard.grad, _blocks(w.grad, 0, r, n))
    _close(name + " dhidden", hin.grad, hidden.grad.chunk(n, 0)[r] if sp else hidden.grad)


def _gather(t: torch.Tensor, n: int):
    out = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(out, t)
    return out


def _rng_streams(r, n):
    torch.manual_seed(123)  # the default stream: same seed on every TP rank
    tracker = RNGStatesTracker("cpu")
    tracker.add(MODEL_PARALLEL_RNG, model_parallel_seed(123, r))
    with pytest.raises(ValueError, match="already exists"):
        tracker.add(MODEL_PARALLEL_RNG, 1)
    with tracker.fork():
        a1 = torch.rand(8)
    d = torch.rand(8)
    with tracker.fork():
        a2 = torch.rand(8)
    sharded, default = _gather(a1, n), _gather(d, n)
    assert not torch.equal(sharded[0], sharded[1]), (
        "model-parallel stream must differ across TP ranks"
    )
    assert torch.equal(default[0], default[1]), "default stream must agree across TP ranks"
    # fork() neither disturbed the default stream nor restarted its own.
    assert torch.equal(d, torch.rand(8, generator=torch.Generator().manual_seed(123)))
    g = torch.Generator().manual_seed(model_parallel_seed(123, r))
    assert torch.equal(a1, torch.rand(8, generator=g)) and torch.equal(
        a2, torch.rand(8, generator=g)
    )
    with pytest.raises(KeyError), tracker.fork("missing"):
        pass


def _body(rank, world_size):
    group, n = dist.group.WORLD, world_size
    for sp in (False, True):
        _column(group, rank, n, sp, gather_output=False, stride=1)
        _column(group, rank, n, sp, gather_output=False, stride=2)
        _row(group, rank, n, sp)
        _lm_logits(group, rank, n, sp)
    _embedding(group, rank, n)
    _cross_entropy(group, rank, n)
    for vocab_size in (5, 11):
        _cross_entropy_padded(group, rank, n, vocab_size)
    _rng_streams(rank, n)
    return "ok"


def test_parallel_layers_match_serial():
    assert run_distributed(_body, 2, timeout=120) == ["ok", "ok"]


def _gather_output_body(rank, world_size):
    _column(dist.group.WORLD, rank, world_size, False, gather_output=True, stride=1)
    return "ok"


def test_column_parallel_gather_output_matches_serial():
    assert run_distributed(_gather_output_body, 2, timeout=120) == ["ok", "ok"]


# ---- recomputation (one process) -----------------------------------------------------------
def test_checkpoint_recomputation_gives_identical_gradients():
    w = torch.nn.Parameter(_full((H,), 16))

    def fn(x, scale):
        h = F.dropout(x * w * scale, p=0.5, training=True)  # default stream
        with tracker.fork():  # model-parallel stream
            h = F.dropout(h.tanh(), p=0.3, training=True)
        return h

    def run(use_checkpoint):
        torch.manual_seed(7)
        tracker.set_states(start)
        w.grad = None
        x = _leaf(_full((S, B, H), 17))
        out = checkpoint(fn, tracker, x, 2.0) if use_checkpoint else fn(x, 2.0)
        out.pow(2).sum().backward()
        return out.detach(), x.grad, w.grad.clone(), torch.rand(4), tracker.get_states()

    tracker = RNGStatesTracker("cpu")
    tracker.add(MODEL_PARALLEL_RNG, 99)
    start = tracker.get_states()
    plain, recomputed = run(False), run(True)
    for name, a, b in zip(["out", "dx", "dw", "default rng after", "tracker"], plain, recomputed):
        if isinstance(a, dict):
            assert all(torch.equal(a[k], b[k]) for k in a), name
        else:
            assert torch.equal(a, b), name
    assert (plain[0] == 0).any(), "dropout was active"
