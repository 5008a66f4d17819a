"""Legacy BERT checkpoint names (`decoder.*`, `lm_head.layernorm`, `lm_head.bias`, `pooler.*`)
are upgraded to megatron-core's on load, model tensors and optimizer state alike."""

from __future__ import annotations

import copy

import pytest
import torch

from megatron.core.distributed import DDPConfig, DistributedDataParallel, finalize_model_grads
from megatron.core.models import BertModel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.parallel_state import ParallelState
from megatron.core.transformer import TransformerConfig
from megatron.training.checkpoint_names import is_legacy_bert, upgrade_bert_names

SINGLE = ParallelState.single()
V, S, B = 64, 12, 3

# today's name -> the name earlier versions wrote (the inverse of the upgrade, test-local)
_TO_LEGACY = (
    ("encoder.", "decoder."),
    ("lm_head.layer_norm.", "lm_head.layernorm."),
    ("output_layer.bias", "lm_head.bias"),
    ("pooler.dense.", "pooler."),
)


def _legacy_name(name: str) -> str:
    chunk = ""
    if name.startswith("chunk"):
        chunk, name = name.split(".", 1)
        chunk += "."
    for new, old in _TO_LEGACY:
        if name == new or (new.endswith(".") and name.startswith(new)):
            return chunk + old + name[len(new) :]
    return chunk + name


def _legacy_position(names):
    """Old module order: the MLM bias sat right behind `lm_head.layernorm.*` of its chunk."""
    order = list(range(len(names)))
    for i, name in enumerate(names):
        if not name.endswith("lm_head.bias"):
            continue
        prefix = name[: -len("lm_head.bias")]
        order.remove(i)
        norms = [
            p for p, j in enumerate(order) if names[j].startswith(prefix + "lm_head.layernorm.")
        ]
        order.insert(norms[-1] + 1, i)
    return order


def to_legacy(sd):
    """A checkpoint dict as an earlier version wrote it."""
    sd = copy.deepcopy(sd)
    for key in [k for k in sd if k == "model" or (k.startswith("model") and k[5:].isdigit())]:
        sd[key] = {_legacy_name(k): v for k, v in sd[key].items()}
    opt = sd.get("optimizer")
    if opt:
        for e in opt["params"]:
            e["name"] = _legacy_name(e["name"])
        order = _legacy_position([e["name"] for e in opt["params"]])
        opt["params"] = [opt["params"][i] for i in order]
        new_index = {old: new for new, old in enumerate(order)}
        for g in opt["param_groups"]:
            g["params"] = sorted(new_index[i] for i in g["params"])
    return sd


pytestmark = pytest.mark.usefixtures("one_thread")


def _bert(seed=5):
    cfg = TransformerConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = BertModel(cfg, V, S)
    model.initialize(seed)
    ddp = DistributedDataParallel(model, DDPConfig(), None)
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-3, weight_decay=0.1), [ddp], SINGLE)
    return model, ddp, opt


def _step(ddp, opt, step):
    g = torch.Generator().manual_seed(step)
    ids, labels = torch.randint(0, V, (B, S), generator=g), torch.randint(0, V, (B, S), generator=g)
    types, padding = torch.zeros(B, S, dtype=torch.long), torch.ones(B, S, dtype=torch.long)
    opt.zero_grad()
    lm, binary = ddp(ids, padding, types, lm_labels=labels)
    (lm.float().mean() + binary.float().sum() * 0.01).backward()
    finalize_model_grads([ddp], SINGLE)
    opt.step()
    return lm.float().mean().item()


def test_names_are_megatron_cores():
    model, _, _ = _bert()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("encoder.layers.0.") for n in names)
    for expected in ("lm_head.layer_norm.weight", "output_layer.bias", "pooler.dense.weight"):
        assert expected in names
    assert not any(n.startswith("decoder.") for n in names)


def test_legacy_checkpoint_resumes_exactly_like_todays():
    model, ddp, opt = _bert()
    for step in range(2):
        _step(ddp, opt, step)
    sd = copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict()})
    expected = _step(ddp, opt, 2)

    legacy = to_legacy(sd)
    assert is_legacy_bert(legacy)
    bias_at = [e["name"] for e in legacy["optimizer"]["params"]].index("lm_head.bias")
    assert legacy["optimizer"]["params"][bias_at - 1]["name"].startswith("lm_head.layernorm.")
    assert upgrade_bert_names(legacy, "legacy.pt")
    assert list(legacy["model"]) == list(sd["model"])
    assert [e["name"] for e in legacy["optimizer"]["params"]] == [
        e["name"] for e in sd["optimizer"]["params"]
    ]
    assert legacy["optimizer"]["param_groups"] == sd["optimizer"]["param_groups"]

    fresh, fresh_ddp, fresh_opt = _bert(seed=99)
    fresh.load_state_dict(legacy["model"])
    fresh_opt.load_state_dict(legacy["optimizer"])
    assert _step(fresh_ddp, fresh_opt, 2) == expected
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), n


def test_todays_names_are_left_alone():
    model, _, opt = _bert()
    sd = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    before = copy.deepcopy(sd)
    assert not is_legacy_bert(sd)
    assert not upgrade_bert_names(sd)
    assert list(sd["model"]) == list(before["model"])
    assert sd["optimizer"]["params"] == before["optimizer"]["params"]


def test_pipeline_chunks_and_untied_output_weight():
    """A last stage with two virtual chunks and its own copy of the output weight."""
    names = []
    for c in (0, 1):
        names += [
            f"chunk{c}.decoder.layers.0.mlp.linear_fc1.weight",
            f"chunk{c}.lm_head.dense.weight",
            f"chunk{c}.lm_head.layernorm.weight",
            f"chunk{c}.lm_head.bias",
            f"chunk{c}.output_layer.weight",
            f"chunk{c}.pooler.weight",
            f"chunk{c}.binary_head.weight",
        ]
    sd = {
        f"model{c}": {
            n.split(".", 1)[1]: torch.zeros(1) for n in names if n.startswith(f"chunk{c}.")
        }
        for c in (0, 1)
    }
    sd.update(
        {
            "optimizer": {
                "params": [{"name": n, "shape": [i]} for i, n in enumerate(names)],
                "param_groups": [
                    {"params": [3, 10]},
                    {"params": [i for i in range(14) if i not in (3, 10)]},
                ],
            },
        }
    )
    assert upgrade_bert_names(sd)
    got = [e["name"] for e in sd["optimizer"]["params"]]
    want = []
    for c in (0, 1):
        want += [
            f"chunk{c}.encoder.layers.0.mlp.linear_fc1.weight",
            f"chunk{c}.lm_head.dense.weight",
            f"chunk{c}.lm_head.layer_norm.weight",
            f"chunk{c}.output_layer.weight",
            f"chunk{c}.output_layer.bias",
            f"chunk{c}.pooler.dense.weight",
            f"chunk{c}.binary_head.weight",
        ]
    assert got == want
    for c in (0, 1):
        assert set(sd[f"model{c}"]) == {
            n.split(".", 1)[1] for n in want if n.startswith(f"chunk{c}.")
        }
    # the biases (old indices 3 and 10) are now at 4 and 11; their group follows them
    assert sd["optimizer"]["params"][4]["shape"] == [3]
    assert sd["optimizer"]["params"][11]["shape"] == [10]
    assert sd["optimizer"]["param_groups"][0]["params"] == [4, 11]
