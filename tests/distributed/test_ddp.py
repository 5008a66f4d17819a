"""DistributedDataParallel on 2 gloo ranks against one process with the same global batch.

One spawned job runs every DP=2 scenario (startup dominates the cost); the DP=1 references run
in the test process. Helpers here (`tiny_gpt`, `train`, ...) are reused by
test_distrib_optimizer.py.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

from megatron.core.distributed import DDPConfig, DistributedDataParallel, finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import OptimizerConfig, clip_grad_norm, get_megatron_optimizer
from megatron.core.parallel_state import ParallelState
from megatron.core.tensor_parallel.init import shard_of
from megatron.core.tensor_parallel.random import checkpoint
from megatron.core.transformer.config import TransformerConfig
from tests.distributed.launcher import run_distributed

GLOBAL_BATCH, SEQ, VOCAB = 8, 16, 64
SMALL_BUCKET = 2000  # elements: the tiny GPT (~31k params) gets about 10 buckets


def tiny_gpt(dtype=torch.float32, pstate=None) -> GPTModel:
    tp = pstate.tp_size if pstate is not None else 1
    cfg = TransformerConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=dtype,
        sequence_parallel=tp > 1,
    )
    model = GPTModel(cfg, vocab_size=VOCAB, max_sequence_length=SEQ, pstate=pstate)
    model.initialize(1234)
    return model


def global_batch(step: int) -> torch.Tensor:
    """Token ids [GLOBAL_BATCH, SEQ + 1] of step `step` (same on every rank)."""
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=gen)


def run_step(ddp, pstate, step: int, micro_batches: int) -> float:
    """Forward/backward of this DP rank's share of global batch `step`; returns the DP-mean
    loss."""
    rows = global_batch(step).chunk(pstate.dp_size)[pstate.dp_rank]
    total = torch.zeros(1)
    for i, mb in enumerate(rows.chunk(micro_batches)):
        ids, labels = mb[:, :-1], mb[:, 1:]
        pos = torch.arange(SEQ).expand_as(ids)
        last = i == micro_batches - 1
        with contextlib.nullcontext() if last else ddp.no_sync():
            loss = ddp(ids, pos, None, labels=labels).float().mean() / micro_batches
            loss.backward()
        total += loss.detach()
    finalize_model_grads([ddp], pstate)
    if pstate.dp_group is not None:
        torch.distributed.all_reduce(total, group=pstate.dp_group)
    return float(total) / pstate.dp_size


def train(
    pstate, ddp_cfg, opt_cfg, steps, micro_batches, first_step=0, state=None, dtype=torch.float32
):
    """Train the tiny GPT; returns (losses, grad norms, params, ddp, optimizer).

    `state`: optional (model state dict, optimizer state dict) to resume from."""
    ddp = DistributedDataParallel(tiny_gpt(dtype), ddp_cfg, pstate.dp_group)
    opt = get_megatron_optimizer(opt_cfg, [ddp], pstate)
    if state is not None:
        ddp.load_state_dict(state[0])
        opt.load_state_dict(state[1])
    losses, norms = [], []
    for step in range(first_step, first_step + steps):
        opt.zero_grad()
        losses.append(run_step(ddp, pstate, step, micro_batches))
        ok, norm, _ = opt.step()
        assert ok
        norms.append(norm)
    params = {n: p.detach().clone() for n, p in ddp.module.named_parameters()}
    return losses, norms, params, ddp, opt


# SGD is linear in the gradients, so weights differ as little as the gradients do (reduction
# order). Adam divides by sqrt(v) + eps and amplifies last-bit differences of gradients far below
# eps; it is compared where the DP=1 reference splits the batch exactly like the two ranks
# (identical per-micro-batch gradients, and a + b is the same sum in either process).
SGD = OptimizerConfig(optimizer="sgd", lr=0.2, sgd_momentum=0.9, weight_decay=0.1, clip_grad=0.5)
ADAM = OptimizerConfig(lr=3e-3, weight_decay=0.1, clip_grad=0.05)
OVERLAP = DDPConfig(overlap_grad_reduce=True, bucket_size=SMALL_BUCKET)
SCENARIOS = {
    # name: (DDPConfig, optimizer, micro-batches per DP=2 rank, micro-batches of DP=1)
    "overlap": (OVERLAP, SGD, 1, 1),
    "no_overlap": (DDPConfig(overlap_grad_reduce=False, bucket_size=SMALL_BUCKET), SGD, 1, 1),
    "one_bucket": (DDPConfig(overlap_grad_reduce=True, bucket_size=None), SGD, 1, 1),
    "accumulation": (OVERLAP, SGD, 2, 4),
    "adam": (OVERLAP, ADAM, 1, 2),
}


class _Reuse(torch.nn.Module):
    """`b` is used in one or two recomputed regions (one or two gradient arrivals per backward,
    from inner backward passes); `unused` never receives a gradient."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.a = torch.nn.Parameter(torch.randn(8, 8, generator=gen) * 0.3)
        self.b = torch.nn.Parameter(torch.randn(8, 8, generator=gen) * 0.3)
        self.unused = torch.nn.Parameter(torch.randn(8, generator=gen))
        self.reuse = False

    def forward(self, x):
        def f(h):
            return torch.tanh(h @ self.b)

        h = checkpoint(f, None, x @ self.a)
        if self.reuse:
            h = checkpoint(f, None, h)
        return h.pow(2).mean()


def _reuse_job(rank, pstate):
    """Grads of _Reuse with rank 1 reusing `b` at step 1 only (late gradients there)."""
    ddp = DistributedDataParallel(_Reuse(), DDPConfig(bucket_size=1), pstate.dp_group)
    ref = _Reuse()
    out = []
    for step in range(3):
        ddp.zero_grad_buffer()
        ref.zero_grad()
        ddp.module.reuse = ref.reuse = step == 1 and rank == 1
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(10 * step + rank))
        ddp(x).backward()
        ref(x).backward()
        ddp.finish_grad_sync()
        local = {
            n: (p.grad if p.grad is not None else torch.zeros_like(p))
            for n, p in ref.named_parameters()
        }
        reduced = {n: p.main_grad.clone() for n, p in ddp.module.named_parameters()}
        out.append((local, reduced))
    return out


def _dp2_job(rank, world_size):
    pstate = ParallelState.initialize()
    results = {}
    for name, (ddp_cfg, opt_cfg, mb, _) in SCENARIOS.items():
        losses, norms, params, ddp, _ = train(pstate, ddp_cfg, opt_cfg, 3, mb)
        results[name] = {
            "losses": losses,
            "norms": norms,
            "params": params,
            "buckets": len(ddp.buckets),
        }
    # Buckets launched during backward once readiness counts are known (step >= 2).
    ddp = DistributedDataParallel(tiny_gpt(), SCENARIOS["overlap"][0], pstate.dp_group)
    launched = []
    for step in range(2):
        ddp.zero_grad_buffer()
        ids = global_batch(step)[:, :-1]
        ddp(ids, torch.arange(SEQ).expand_as(ids), None, labels=ids).mean().backward()
        launched.append(ddp.buckets_launched)
        ddp.finish_grad_sync()
    results["launched_in_backward"] = launched
    results["reuse"] = _reuse_job(rank, pstate)
    return results


@pytest.fixture(scope="module")
def dp2():
    return run_distributed(_dp2_job, 2, timeout=240)


@contextlib.contextmanager
def one_thread():
    """Match the ranks' single intra-op thread: CPU LayerNorm backward reduces in a
    thread-count dependent order."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dp1():
    pstate = ParallelState.single()
    out = {}
    with one_thread():
        for name, (ddp_cfg, opt_cfg, _, mb) in SCENARIOS.items():
            losses, norms, params, _, _ = train(pstate, ddp_cfg, opt_cfg, 3, mb)
            out[name] = {"losses": losses, "norms": norms, "params": params}
    return out


def assert_same_training(a, b, rtol=1e-6, atol=1e-7):
    torch.testing.assert_close(
        torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=rtol, atol=0
    )
    if a["norms"][0] is not None:
        torch.testing.assert_close(
            torch.tensor(a["norms"]), torch.tensor(b["norms"]), rtol=rtol, atol=0
        )
    assert a["params"].keys() == b["params"].keys()
    for n in a["params"]:
        torch.testing.assert_close(a["params"][n], b["params"][n], rtol=rtol, atol=atol, msg=n)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_dp2_matches_dp1(dp2, dp1, scenario):
    for rank in range(2):
        assert_same_training(dp2[rank][scenario], dp1[scenario])
    # The run changed the weights (the comparison is not vacuous).
    init = dict(tiny_gpt().named_parameters())
    moved = max((dp1[scenario]["params"][n] - init[n]).abs().max().item() for n in init)
    assert moved > 1e-3


def test_adam_with_the_same_split_is_bitwise_equal(dp2, dp1):
    for n, p in dp1["adam"]["params"].items():
        assert torch.equal(dp2[0]["adam"]["params"][n], p), n


def test_several_buckets(dp2):
    assert dp2[0]["overlap"]["buckets"] >= 5
    assert dp2[0]["one_bucket"]["buckets"] == 1


def test_overlap_launches_during_backward(dp2):
    for rank in range(2):
        first, second = dp2[rank]["launched_in_backward"]
        assert first == 0  # readiness counts unknown in the first step
        assert second == dp2[rank]["overlap"]["buckets"]  # all launched before finish


def test_repeated_and_late_gradients_and_unused_params(dp2):
    for step in range(3):
        locals_ = [dp2[r]["reuse"][step][0] for r in range(2)]
        for rank in range(2):
            reduced = dp2[rank]["reuse"][step][1]
            for n in reduced:
                expected = (locals_[0][n] + locals_[1][n]) / 2
                torch.testing.assert_close(
                    reduced[n], expected, rtol=1e-6, atol=1e-8, msg=f"{step} {n}"
                )
            assert torch.count_nonzero(reduced["unused"]) == 0
            assert torch.count_nonzero(reduced["b"]) > 0
    # Step 1: rank 1 used `b` twice, so its gradient differs from a single use.
    assert not torch.allclose(dp2[1]["reuse"][1][0]["b"], dp2[0]["reuse"][1][0]["b"])


# ---- model parallelism: finalize_model_grads and the clipping norm ------------------------------


def _train_tp(pstate, steps=2):
    ddp = DistributedDataParallel(tiny_gpt(pstate=pstate), OVERLAP, pstate.dp_group)
    opt = get_megatron_optimizer(SGD, [ddp], pstate)
    norms = []
    for step in range(steps):
        opt.zero_grad()
        run_step(ddp, pstate, step, 1)
        norms.append(opt.step()[1])
    return ddp.module, norms


def _shared_embedding_job(rank):
    """PP=2 layout: a tied copy on each stage (summed, counted once) and a per-stage param."""
    pstate = ParallelState.initialize(pipeline_model_parallel_size=2)
    module = torch.nn.Module()
    module.tied = torch.nn.Parameter(torch.zeros(3))
    module.tied.shared_embedding = True
    module.local = torch.nn.Parameter(torch.zeros(2))
    module.tied.grad = torch.full((3,), float(rank + 1))
    module.local.grad = torch.full((2,), float(rank + 3))
    finalize_model_grads([module], pstate)
    params = [module.tied, module.local]
    norm = clip_grad_norm(params, [p.grad for p in params], 1e9, pstate)
    return module.tied.grad.clone(), module.local.grad.clone(), norm


def _model_parallel_job(rank, world_size):
    pstate = ParallelState.initialize(tensor_model_parallel_size=2)
    model, norms = _train_tp(pstate)
    shards = {
        n: (p.detach().clone(), getattr(p, "tensor_model_parallel", False))
        for n, p in model.named_parameters()
    }
    return {"norms": norms, "shards": shards, "shared": _shared_embedding_job(rank)}


@pytest.fixture(scope="module")
def mp2():
    return run_distributed(_model_parallel_job, 2, timeout=240)


def test_tensor_and_sequence_parallel_match_one_rank(mp2):
    with one_thread():
        full, norms = _train_tp(ParallelState.single())
    for rank in range(2):
        torch.testing.assert_close(
            torch.tensor(mp2[rank]["norms"]), torch.tensor(norms), rtol=1e-6, atol=0
        )
    n_sharded = 0
    for (name, p), rank in itertools.product(full.named_parameters(), range(2)):
        shard, sharded = mp2[rank]["shards"][name]
        n_sharded += sharded
        # The TP=1 parameter carries the same partition_dim / stride attributes.
        expected = shard_of(p.detach(), p, rank, 2) if sharded else p.detach()
        torch.testing.assert_close(shard, expected, rtol=1e-6, atol=1e-7, msg=name)
    assert n_sharded > 0


def test_shared_embedding_grads_summed_and_counted_once(mp2):
    for rank in range(2):
        tied, local, norm = mp2[rank]["shared"]
        assert torch.equal(tied, torch.full((3,), 3.0))  # 1 + 2 over the embedding group
        assert torch.equal(local, torch.full((2,), float(rank + 3)))  # untouched
        # tied (3 x 3^2) once + local of stage 0 (2 x 3^2) + local of stage 1 (2 x 4^2)
        assert norm == pytest.approx((27 + 18 + 32) ** 0.5, rel=1e-6)
