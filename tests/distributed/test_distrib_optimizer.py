"""Distributed optimizer on 2 gloo ranks: equal to the plain optimizer on one process, DP-size
independent checkpoints in both directions, fp16 overflow skipping across shards, bf16 masters.

The DP=1 references split the global batch into the same micro-batches as the two ranks, so
their gradients are bit-identical and Adam (which amplifies last-bit differences of gradients
far below eps) can be compared at rtol 1e-6.
"""

from __future__ import annotations

import io

import pytest
import torch

from megatron.core.distributed import DDPConfig
from megatron.core.optimizer import DistributedOptimizer, MegatronOptimizer, OptimizerConfig
from megatron.core.parallel_state import ParallelState
from tests.distributed.launcher import run_distributed
from tests.distributed.test_ddp import (
    SMALL_BUCKET,
    assert_same_training,
    one_thread,
    run_step,
    train,
)

ADAM = OptimizerConfig(lr=3e-3, weight_decay=0.1, clip_grad=0.05)
ADAM_DIST = OptimizerConfig(
    lr=3e-3, weight_decay=0.1, clip_grad=0.05, use_distributed_optimizer=True
)
# Gradient accumulation sums micro-batches in a different association than one process can
# reproduce, so it is compared with SGD (momentum state sharded instead of Adam moments).
SGD = OptimizerConfig(optimizer="sgd", lr=0.2, sgd_momentum=0.9, weight_decay=0.1, clip_grad=0.5)
SGD_DIST = OptimizerConfig(
    optimizer="sgd",
    lr=0.2,
    sgd_momentum=0.9,
    weight_decay=0.1,
    clip_grad=0.5,
    use_distributed_optimizer=True,
)
DDP_DIST = DDPConfig(bucket_size=SMALL_BUCKET, use_distributed_optimizer=True)
DDP_PLAIN = DDPConfig(bucket_size=SMALL_BUCKET)


def _to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def _summary(losses, norms, params):
    return {"losses": losses, "norms": norms, "params": params}


def _fp16_overflow(pstate):
    """fp16 model, inf injected on rank 1 only: both ranks must skip the step."""
    cfg = OptimizerConfig(
        lr=1e-3, fp16=True, initial_loss_scale=1024.0, hysteresis=1, use_distributed_optimizer=True
    )
    _, _, _, ddp, opt = train(pstate, DDP_DIST, cfg, 1, 1, dtype=torch.float16)
    before = {n: p.detach().clone() for n, p in ddp.module.named_parameters()}
    state_before = _to_bytes(opt.state_dict()["params"])

    opt.zero_grad()
    if pstate.dp_rank == 1:
        # Before backward: the reduction launched during backward must carry the inf.
        ddp.module.decoder.layers[0].mlp.linear_fc1.weight.main_grad[0, 0] = float("inf")
    run_step(ddp, pstate, 1, 1)
    ok, norm, _ = opt.step()
    unchanged = all(torch.equal(before[n], p) for n, p in ddp.module.named_parameters())
    return {
        "ok": ok,
        "norm": norm,
        "params_unchanged": unchanged,
        "state_unchanged": state_before == _to_bytes(opt.state_dict()["params"]),
        "scale": float(opt.get_loss_scale()),
        "skipped": opt.skipped_steps,
    }


def _dp2_job(rank, world_size, dp1_state_bytes):
    pstate = ParallelState.initialize()
    out = {}
    # Distributed optimizer, 3 steps: Adam with 1 micro-batch, SGD with 2 per rank.
    for mb, cfg in ((1, ADAM_DIST), (2, SGD_DIST)):
        losses, norms, params, ddp, opt = train(pstate, DDP_DIST, cfg, 3, mb)
        out[f"dist_mb{mb}"] = _summary(losses, norms, params)
        out["is_dist"] = isinstance(opt, DistributedOptimizer)
        out["shard_numel"] = sum(s.main.numel() for s in opt.shards)
        out["total_numel"] = sum(p.numel() for p in ddp.module.parameters())
    # Checkpoint after 2 steps at DP=2, then the uninterrupted third step.
    _, _, _, ddp, opt = train(pstate, DDP_DIST, ADAM_DIST, 2, 1)
    out["ckpt"] = _to_bytes((ddp.state_dict(), opt.state_dict()))
    opt.zero_grad()
    losses = [run_step(ddp, pstate, 2, 1)]
    ok, norm, _ = opt.step()
    out["continued"] = _summary(
        losses, [norm], {n: p.detach().clone() for n, p in ddp.module.named_parameters()}
    )
    # Resume a DP=1 checkpoint with the distributed optimizer at DP=2.
    losses, norms, params, _, _ = train(
        pstate, DDP_DIST, ADAM_DIST, 1, 1, first_step=2, state=_from_bytes(dp1_state_bytes)
    )
    out["resumed_from_dp1"] = _summary(losses, norms, params)
    # bf16 model: fp32 master weights sharded.
    cfg = OptimizerConfig(
        lr=3e-3, weight_decay=0.1, clip_grad=0.05, bf16=True, use_distributed_optimizer=True
    )
    ddp_cfg = DDPConfig(
        bucket_size=SMALL_BUCKET, use_distributed_optimizer=True, grad_reduce_in_fp32=True
    )
    _, _, _, _, opt = train(pstate, ddp_cfg, cfg, 3, 1, dtype=torch.bfloat16)
    out["bf16_masters"] = [e["master"] for e in opt.state_dict()["params"]]
    out["fp16_overflow"] = _fp16_overflow(pstate)
    return out


@pytest.fixture(scope="module")
def runs():
    """(DP=2 results per rank, DP=1 results)."""
    single = ParallelState.single()
    dp1 = {}
    with one_thread():
        for mb, cfg in ((2, ADAM), (4, SGD)):
            losses, norms, params, _, _ = train(single, DDP_PLAIN, cfg, 3, mb)
            dp1[f"mb{mb}"] = _summary(losses, norms, params)
        _, _, _, ddp, opt = train(single, DDP_PLAIN, ADAM, 2, 2)
        dp1["ckpt"] = _to_bytes((ddp.state_dict(), opt.state_dict()))
        bf16 = OptimizerConfig(lr=3e-3, weight_decay=0.1, clip_grad=0.05, bf16=True)
        _, _, _, _, opt = train(
            single,
            DDPConfig(bucket_size=SMALL_BUCKET, grad_reduce_in_fp32=True),
            bf16,
            3,
            2,
            dtype=torch.bfloat16,
        )
        dp1["bf16_masters"] = [e["master"] for e in opt.state_dict()["params"]]
    dp2 = run_distributed(_dp2_job, 2, dp1["ckpt"], timeout=240)
    return dp2, dp1


def test_shards_partition_the_model(runs):
    dp2, _ = runs
    assert dp2[0]["is_dist"]
    owned = dp2[0]["shard_numel"] + dp2[1]["shard_numel"]
    assert owned == dp2[0]["total_numel"]
    assert 0 < dp2[0]["shard_numel"] < dp2[0]["total_numel"]


@pytest.mark.parametrize("mb", [1, 2])
def test_distributed_equals_plain_optimizer(runs, mb):
    dp2, dp1 = runs
    for rank in range(2):
        assert_same_training(dp2[rank][f"dist_mb{mb}"], dp1[f"mb{2 * mb}"])


def test_checkpoint_dp2_to_dp1(runs):
    dp2, _ = runs
    state = _from_bytes(dp2[0]["ckpt"])  # weights_only=True
    assert _from_bytes(dp2[1]["ckpt"])[1]["params"][3]["exp_avg"].equal(
        state[1]["params"][3]["exp_avg"]
    )
    with one_thread():
        losses, norms, params, _, opt = train(
            ParallelState.single(), DDP_PLAIN, ADAM, 1, 2, first_step=2, state=state
        )
    assert type(opt) is MegatronOptimizer and opt.num_steps == 3
    assert_same_training(_summary(losses, norms, params), dp2[0]["continued"])


def test_checkpoint_dp1_to_dp2(runs):
    dp2, _ = runs
    with one_thread():
        losses, norms, params, _, _ = train(ParallelState.single(), DDP_PLAIN, ADAM, 3, 2)
    uninterrupted = _summary(losses[2:], norms[2:], params)
    for rank in range(2):
        assert_same_training(dp2[rank]["resumed_from_dp1"], uninterrupted)


def test_bf16_master_weights_sharded(runs):
    dp2, dp1 = runs
    for got, want in zip(dp2[0]["bf16_masters"], dp1["bf16_masters"]):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_fp16_overflow_on_one_rank_skips_everywhere(runs):
    dp2, _ = runs
    for rank in range(2):
        r = dp2[rank]["fp16_overflow"]
        assert r["ok"] is False and r["norm"] is None
        assert r["params_unchanged"] and r["state_unchanged"]
        assert r["scale"] == 512.0  # hysteresis 1: halved at the first overflow
        assert r["skipped"] == 1
