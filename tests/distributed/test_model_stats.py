"""--log-params-norm at TP 2 equals the serial model's; --log-num-zeros-in-grad counts each
parameter's gradient once (gloo)."""

from __future__ import annotations

import torch

from megatron.core.models.common import global_named_parameters
from megatron.core.parallel_state import ParallelState
from megatron.core.pipeline_parallel import forward_backward_no_pipelining
from megatron.training.model_stats import num_zeros_in_grad, params_norm
from tests.distributed.launcher import run_distributed
from tests.distributed.test_tp_model import (
    KINDS,
    build_chunks,
    gather_full_grads,
    make_config,
)


def _body(rank, world_size):
    pstate = ParallelState.initialize(tensor_model_parallel_size=2)
    make_batches, forward_step = KINDS["gpt"][1:]
    batches = make_batches(2, 8, 2, seed=1)
    (chunk,) = build_chunks("gpt", make_config(), pstate)
    forward_backward_no_pipelining(
        forward_step_func=forward_step,
        data_iterator=iter(batches),
        model=chunk,
        num_microbatches=2,
        pstate=pstate,
        config=make_config(),
    )
    serial = build_chunks("gpt", make_config(), ParallelState.single())[0]
    weights = [p.detach().double() for _, p in global_named_parameters(serial)]
    expect_norm = float(torch.stack([w.pow(2).sum() for w in weights]).sum().sqrt())
    # this run's gradients gathered into full tensors: each parameter once
    expect_zeros = sum(int((g == 0).sum()) for g in gather_full_grads([chunk], pstate).values())
    return (
        params_norm([chunk], pstate),
        expect_norm,
        num_zeros_in_grad([chunk], pstate),
        expect_zeros,
    )


def test_params_norm_and_num_zeros_count_each_parameter_once():
    for got_norm, norm, got_zeros, zeros in run_distributed(_body, 2, timeout=180):
        assert abs(got_norm - norm) <= 1e-5 * norm
        assert zeros > 0 and got_zeros == zeros
