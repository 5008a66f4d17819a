"""Single-process tests of DDP gradient buffers and the Megatron optimizer (fp32, bf16, fp16)."""

from __future__ import annotations

import io
import math
import types

import pytest
import torch

from megatron.core.distributed import DDPConfig, DistributedDataParallel, finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import (
    NonFiniteGradError,
    OptimizerConfig,
    clip_grad_norm,
    counts_toward_norm,
    get_grad_norm_fp32,
    get_megatron_optimizer,
)
from megatron.core.parallel_state import ParallelState
from megatron.core.transformer.config import TransformerConfig

SINGLE = ParallelState.single()
SEQ, VOCAB = 16, 64


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt(dtype=torch.float32, seed=3) -> GPTModel:
    cfg = TransformerConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=dtype,
    )
    model = GPTModel(cfg, vocab_size=VOCAB, max_sequence_length=SEQ)
    model.initialize(seed)
    return model


def batch(step: int, rows: int = 4):
    tokens = torch.randint(0, VOCAB, (rows, SEQ + 1), generator=torch.Generator().manual_seed(step))
    return tokens[:, :-1], torch.arange(SEQ).expand(rows, SEQ), tokens[:, 1:]


def backward(model, step: int, opt=None) -> None:
    ids, pos, labels = batch(step)
    loss = model(ids, pos, None, labels=labels).float().mean()
    (opt.scale_loss(loss) if opt is not None else loss).backward()


def wrap(model, **ddp_kwargs) -> DistributedDataParallel:
    return DistributedDataParallel(model, DDPConfig(**ddp_kwargs), None)


def torch_adamw(params_by_name, lr, wd, **kwargs):
    decay = [p for n, p in params_by_name if p.dim() >= 2]
    no_decay = [p for n, p in params_by_name if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, **kwargs)


def one_step(ddp, opt, step):
    opt.zero_grad()
    backward(ddp, step, opt)
    finalize_model_grads([ddp], SINGLE)
    return opt.step()


# ---- fp32 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_fp32_adam_is_bitwise_torch_adamw(fused):
    ddp = wrap(tiny_gpt(), bucket_size=3000)
    ref = tiny_gpt()
    cfg = OptimizerConfig(lr=2e-3, weight_decay=0.1, clip_grad=0.0, use_fused_adam=fused)
    opt = get_megatron_optimizer(cfg, [ddp], SINGLE)
    ref_opt = torch_adamw(
        list(ref.named_parameters()), 2e-3, 0.1, **({"fused": True} if fused else {})
    )
    for step in range(3):
        assert one_step(ddp, opt, step) == (True, None, None)
        ref_opt.zero_grad()
        backward(ref, step)
        ref_opt.step()
    for (n, a), b in zip(ddp.module.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), n
        assert a.grad is None  # no stale .grad that autograd would accumulate into


def test_plain_module_without_ddp_uses_grad():
    model, ref = tiny_gpt(), tiny_gpt()
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-3, clip_grad=0.0), [model], SINGLE)
    ref_opt = torch_adamw(list(ref.named_parameters()), 1e-3, 0.01, fused=True)
    for step in range(2):
        opt.zero_grad()
        backward(model, step)
        opt.step()
        ref_opt.zero_grad()
        backward(ref, step)
        ref_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_no_weight_decay_on_biases_and_norms():
    ddp = wrap(tiny_gpt())
    opt = get_megatron_optimizer(
        OptimizerConfig(lr=0.1, weight_decay=0.5, clip_grad=0.0), [ddp], SINGLE
    )
    before = {n: p.detach().clone() for n, p in ddp.module.named_parameters()}
    opt.zero_grad()  # all-zero gradients: only weight decay moves anything
    opt.step()
    decayed = {n for n, p in ddp.module.named_parameters() if not torch.equal(p, before[n])}
    assert decayed == {n for n, p in ddp.module.named_parameters() if p.dim() >= 2}
    w = "decoder.layers.0.mlp.linear_fc1.weight"
    torch.testing.assert_close(dict(ddp.module.named_parameters())[w], before[w] * (1 - 0.1 * 0.5))
    assert [g["wd_mult"] for g in opt.param_groups] == [1.0, 0.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert any("layernorm.bias" in n for n in before) and any(
        "layernorm.weight" in n for n in before
    )


def test_param_groups_drive_the_learning_rate():
    ddp = wrap(tiny_gpt())
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="sgd", lr=1.0, sgd_momentum=0.0, weight_decay=0.0, clip_grad=0.0),
        [ddp],
        SINGLE,
    )
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = [p.detach().clone() for p in ddp.module.parameters()]
    one_step(ddp, opt, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, ddp.module.parameters()))


# ---- gradient clipping ----------------------------------------------------------------------


def test_clip_matches_torch_clip_grad_norm():
    ddp = wrap(tiny_gpt())
    cfg = OptimizerConfig(
        optimizer="sgd", lr=1.0, sgd_momentum=0.0, weight_decay=0.0, clip_grad=0.05
    )
    opt = get_megatron_optimizer(cfg, [ddp], SINGLE)
    opt.zero_grad()
    backward(ddp, 0)
    grads = [p.main_grad.clone() for p in ddp.module.parameters()]
    before = [p.detach().clone() for p in ddp.module.parameters()]
    ok, norm, _ = opt.step()
    ref = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for r, g in zip(ref, grads):
        r.grad = g.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 0.05)
    assert ok and ref_norm > 0.05  # clipping was active
    assert norm == pytest.approx(float(ref_norm), rel=1e-6)
    for b, p, r in zip(before, ddp.module.parameters(), ref):
        torch.testing.assert_close(p, b - r.grad, rtol=1e-6, atol=1e-9)


def test_grad_norm_inf_and_l2():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    flat = torch.cat([g.reshape(-1) for g in grads])
    assert get_grad_norm_fp32(grads) == pytest.approx(float(flat.norm()), rel=1e-6)
    assert get_grad_norm_fp32(grads, norm_type=math.inf) == float(flat.abs().max())
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    scaled = [g.clone() for g in grads]
    assert clip_grad_norm(params, scaled, 1e9, SINGLE) == pytest.approx(
        float(flat.norm()), rel=1e-6
    )
    assert all(torch.equal(a, b) for a, b in zip(scaled, grads))  # below max: untouched


def test_norm_counts_each_gradient_once_per_model_replica():
    shard, replicated, shared = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    shard.tensor_model_parallel = True
    shared.shared_embedding, shared.tensor_model_parallel = True, True

    def where(tp, pp):
        return types.SimpleNamespace(tp_rank=tp, pp_rank=pp)

    assert counts_toward_norm(shard, where(1, 0)) and counts_toward_norm(replicated, where(0, 1))
    assert not counts_toward_norm(replicated, where(1, 0))
    assert counts_toward_norm(shared, where(1, 0)) and not counts_toward_norm(shared, where(0, 1))


# ---- mixed precision --------------------------------------------------------------------------


def test_bf16_fp32_master_step_equals_fp32_adamw():
    ddp = wrap(tiny_gpt(torch.bfloat16), grad_reduce_in_fp32=True, bucket_size=5000)
    cfg = OptimizerConfig(lr=1e-2, weight_decay=0.1, clip_grad=0.0, bf16=True)
    opt = get_megatron_optimizer(cfg, [ddp], SINGLE)
    masters = [p.detach().float().clone().requires_grad_() for p in ddp.module.parameters()]
    names = [n for n, _ in ddp.module.named_parameters()]
    ref_opt = torch_adamw(list(zip(names, masters)), 1e-2, 0.1, fused=True)
    for step in range(2):
        opt.zero_grad()
        backward(ddp, step)
        for m, p in zip(masters, ddp.module.parameters()):
            assert p.main_grad.dtype == torch.float32 and p.dtype == torch.bfloat16
            m.grad = p.main_grad.clone()
        assert opt.step()[0]
        ref_opt.step()
    state = opt.state_dict()["params"]
    for m, p, e in zip(masters, ddp.module.parameters(), state):
        assert e["master"].dtype == torch.float32
        assert torch.equal(e["master"], m.detach())
        assert torch.equal(p, m.detach().to(torch.bfloat16))


def _fp16_setup(**cfg_kwargs):
    ddp = wrap(tiny_gpt(torch.float16))
    cfg = OptimizerConfig(lr=1e-3, fp16=True, clip_grad=1.0, **cfg_kwargs)
    return ddp, get_megatron_optimizer(cfg, [ddp], SINGLE)


def test_fp16_unscales_before_clipping_and_update():
    ddp, opt = _fp16_setup(initial_loss_scale=2.0**12)
    model_params = list(ddp.module.parameters())
    masters = [p.detach().float().clone().requires_grad_() for p in model_params]
    names = [n for n, _ in ddp.module.named_parameters()]
    ref_opt = torch_adamw(list(zip(names, masters)), 1e-3, 0.01, fused=True)
    opt.zero_grad()
    backward(ddp, 0, opt)  # scaled loss
    grads = [p.main_grad.float() / 2.0**12 for p in model_params]
    ok, norm, _ = opt.step()
    for m, g in zip(masters, grads):
        m.grad = g
    expected_norm = torch.nn.utils.clip_grad_norm_(masters, 1.0)
    ref_opt.step()
    assert ok and norm == pytest.approx(float(expected_norm), rel=1e-5)
    for e, m in zip(opt.state_dict()["params"], masters):
        torch.testing.assert_close(e["master"], m.detach(), rtol=1e-6, atol=1e-9)


def test_fp16_overflow_skips_and_scale_follows_hysteresis_and_window():
    ddp, opt = _fp16_setup(initial_loss_scale=1024.0, hysteresis=2, loss_scale_window=3)
    assert one_step(ddp, opt, 0)[0]
    before = {n: p.detach().clone() for n, p in ddp.module.named_parameters()}
    saved = io.BytesIO()
    torch.save(opt.state_dict()["params"], saved)
    for attempt in range(2):
        opt.zero_grad()
        backward(ddp, 1, opt)
        ddp.module.decoder.layers[1].self_attention.linear_qkv.weight.main_grad[0, 0] = float("nan")
        assert opt.step() == (False, None, None)
        assert float(opt.get_loss_scale()) == (1024.0 if attempt == 0 else 512.0)
    assert opt.skipped_steps == 2 and opt.num_steps == 1
    assert all(torch.equal(before[n], p) for n, p in ddp.module.named_parameters())
    after = io.BytesIO()
    torch.save(opt.state_dict()["params"], after)
    assert saved.getvalue() == after.getvalue()
    for step in range(3):
        assert one_step(ddp, opt, 2 + step)[0]
    assert float(opt.get_loss_scale()) == 1024.0  # doubled after the 3-step window
    assert opt.state_dict()["grad_scaler"] == {
        "scale": 1024.0,
        "growth_tracker": 0,
        "hysteresis_tracker": 2,
    }


@pytest.mark.parametrize(
    "dtype,cfg",
    [
        (torch.float32, dict(clip_grad=1.0)),
        (torch.float32, dict(clip_grad=0.0)),  # the norm is computed for the check alone
        (torch.bfloat16, dict(clip_grad=1.0, bf16=True)),
    ],
)
def test_check_finite_refuses_a_non_finite_gradient(dtype, cfg):
    ddp = wrap(tiny_gpt(dtype))
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-3, **cfg), [ddp], SINGLE)
    assert one_step(ddp, opt, 0)[0]
    before = {n: p.detach().clone() for n, p in ddp.module.named_parameters()}
    opt.zero_grad()
    backward(ddp, 1, opt)
    ddp.module.decoder.layers[1].mlp.linear_fc1.weight.main_grad[0, 0] = float("inf")
    with pytest.raises(NonFiniteGradError, match="the gradient norm is inf") as exc:
        opt.step(check_finite=True)
    assert math.isinf(exc.value.grad_norm) and opt.num_steps == 1
    assert all(torch.equal(before[n], p) for n, p in ddp.module.named_parameters())
    assert one_step(ddp, opt, 2)[0]  # the next, finite step updates as usual
    assert opt.num_steps == 2


def test_check_finite_leaves_fp16_overflow_skips_alone():
    ddp, opt = _fp16_setup(initial_loss_scale=1024.0)
    opt.zero_grad()
    backward(ddp, 1, opt)
    ddp.module.decoder.layers[1].mlp.linear_fc1.weight.main_grad[0, 0] = float("nan")
    assert opt.step(check_finite=True) == (False, None, None)
    assert opt.skipped_steps == 1


def test_loss_scale_only_for_fp16():
    ddp = wrap(tiny_gpt())
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-3), [ddp], SINGLE)
    loss = torch.tensor(2.0)
    assert float(opt.get_loss_scale()) == 1.0 and opt.scale_loss(loss) is loss
    _, opt16 = _fp16_setup(initial_loss_scale=8.0)
    scaled = opt16.scale_loss(loss)
    assert float(scaled) == 16.0 and scaled.shape == loss.shape


# ---- state dict -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,cfg",
    [
        (torch.bfloat16, OptimizerConfig(lr=1e-2, bf16=True)),
        (torch.float32, OptimizerConfig(optimizer="sgd", lr=0.1, sgd_momentum=0.9)),
        (torch.float16, OptimizerConfig(lr=1e-3, fp16=True, initial_loss_scale=256.0)),
    ],
)
def test_state_dict_weights_only_round_trip(dtype, cfg):
    ddp = wrap(tiny_gpt(dtype), grad_reduce_in_fp32=True)
    opt = get_megatron_optimizer(cfg, [ddp], SINGLE)
    for step in range(2):
        one_step(ddp, opt, step)
    buf = io.BytesIO()
    torch.save((ddp.state_dict(), opt.state_dict()), buf)
    model_sd, opt_sd = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert opt_sd["num_steps"] == 2 and len(opt_sd["params"]) == len(list(ddp.module.parameters()))
    assert ("master" in opt_sd["params"][0]) == (dtype != torch.float32)
    ddp2 = wrap(tiny_gpt(dtype, seed=99), grad_reduce_in_fp32=True)
    opt2 = get_megatron_optimizer(cfg, [ddp2], SINGLE)
    ddp2.load_state_dict(model_sd)
    opt2.load_state_dict(opt_sd)
    one_step(ddp, opt, 2)
    one_step(ddp2, opt2, 2)
    for (n, a), b in zip(ddp.module.named_parameters(), ddp2.module.parameters()):
        assert torch.equal(a, b), n


def test_load_rejects_other_models_and_optimizers():
    ddp = wrap(tiny_gpt())
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-3), [ddp], SINGLE)
    one_step(ddp, opt, 0)
    sd = opt.state_dict()
    sgd = get_megatron_optimizer(
        OptimizerConfig(optimizer="sgd", lr=1e-3), [wrap(tiny_gpt())], SINGLE
    )
    with pytest.raises(ValueError, match="--optimizer"):
        sgd.load_state_dict(sd)
    cfg = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4)
    other = wrap(GPTModel(cfg, vocab_size=VOCAB, max_sequence_length=SEQ))
    with pytest.raises(ValueError, match="shape"):
        get_megatron_optimizer(OptimizerConfig(lr=1e-3), [other], SINGLE).load_state_dict(sd)
    with pytest.raises(ValueError, match="format"):
        opt.load_state_dict({"state": {}, "param_groups": []})


def test_config_and_setup_errors():
    with pytest.raises(ValueError, match="mutually exclusive"):
        OptimizerConfig(lr=1.0, fp16=True, bf16=True)
    with pytest.raises(ValueError, match="--lr"):
        get_megatron_optimizer(OptimizerConfig(), [tiny_gpt()], SINGLE)
    with pytest.raises(ValueError, match="--fp16"):
        get_megatron_optimizer(OptimizerConfig(lr=1.0, fp16=True), [tiny_gpt()], SINGLE)
    with pytest.raises(ValueError, match="--bf16"):
        get_megatron_optimizer(OptimizerConfig(lr=1.0), [tiny_gpt(torch.bfloat16)], SINGLE)
    with pytest.raises(ValueError, match="use_distributed_optimizer=True"):
        get_megatron_optimizer(
            OptimizerConfig(lr=1.0, use_distributed_optimizer=True), [wrap(tiny_gpt())], SINGLE
        )
    with pytest.raises(ValueError, match="bucket_size"):
        DDPConfig(bucket_size=0)


# ---- DDP buffers ------------------------------------------------------------------------------


def test_ddp_buffers_views_and_accumulation():
    ddp = wrap(tiny_gpt(), bucket_size=3000)
    params = list(ddp.module.parameters())
    buf = ddp.grad_buffers[0]
    assert len(ddp.buckets) > 3
    # Reverse model order: the last parameter starts the buffer.
    assert buf.param_ranges[params[-1]][0] == 0 and ddp.buckets[0].params[0] is params[-1]
    assert all(
        p.main_grad.data_ptr() == buf.grad_data[buf.param_ranges[p][0] :].data_ptr() for p in params
    )
    ref = tiny_gpt()
    with ddp.no_sync():
        backward(ddp, 0)
    backward(ddp, 1)
    ddp.finish_grad_sync()
    backward(ref, 0)
    backward(ref, 1)
    for p, r in zip(params, ref.parameters()):
        assert p.grad is None
        torch.testing.assert_close(p.main_grad, r.grad, rtol=1e-6, atol=1e-9)
    ddp.zero_grad_buffer()
    assert torch.count_nonzero(buf.grad_data) == 0


def test_distributed_optimizer_layout_single_rank():
    ddp = wrap(tiny_gpt(), bucket_size=3000, use_distributed_optimizer=True)
    buf = ddp.grad_buffers[0]
    for p in ddp.module.parameters():
        start, _ = buf.param_ranges[p]
        assert p.data_ptr() == buf.param_data[start:].data_ptr()  # params live in the buffer
    assert all(b.numel % 64 == 0 for b in ddp.buckets)
    opt = get_megatron_optimizer(
        OptimizerConfig(lr=1e-3, use_distributed_optimizer=True), [ddp], SINGLE
    )
    ref = wrap(tiny_gpt(), bucket_size=3000)
    ref_opt = get_megatron_optimizer(OptimizerConfig(lr=1e-3), [ref], SINGLE)
    for step in range(2):
        one_step(ddp, opt, step)
        one_step(ref, ref_opt, step)
    for a, b in zip(ddp.module.parameters(), ref.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
