"""Activation recomputation gives the same gradients as storing activations (dropout included)."""

import pytest
import torch

from megatron.core.models import GPTModel
from megatron.core.models.common import global_named_parameters
from megatron.core.tensor_parallel import MODEL_PARALLEL_RNG, RNGStatesTracker
from megatron.core.transformer import TransformerConfig


def _grads(recompute: dict):
    cfg = TransformerConfig(
        num_layers=4,
        hidden_size=32,
        num_attention_heads=4,
        hidden_dropout=0.2,
        attention_dropout=0.2,
        **recompute,
    )
    tracker = RNGStatesTracker("cpu")
    tracker.add(MODEL_PARALLEL_RNG, 99)
    model = GPTModel(cfg, 64, 16, rng_tracker=tracker)
    model.initialize(3)
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 16))
    loss = model(ids, torch.arange(16).expand(2, 16), labels=torch.roll(ids, -1, 1)).mean()
    loss.backward()
    return (
        loss.detach(),
        {n: p.grad.clone() for n, p in global_named_parameters(model)},
        torch.get_rng_state(),
    )


@pytest.mark.parametrize(
    "recompute",
    [
        dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
        dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=3),
        dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=2),
        dict(recompute_granularity="selective"),
    ],
)
def test_recompute_gradients_identical(recompute):
    ref_loss, ref, ref_rng = _grads({})
    loss, grads, rng = _grads(recompute)
    assert torch.equal(loss, ref_loss)
    for name in ref:
        assert torch.equal(grads[name], ref[name]), name
    # The recomputation rewinds and restores the RNG: the stream after the step is unchanged.
    assert torch.equal(rng, ref_rng)
