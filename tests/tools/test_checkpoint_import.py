"""tools/checkpoint_util.py --loader megatron-lm: Megatron-LM GPT checkpoints (legacy and
megatron-core names, `--ckpt-format torch`, TP 2 x PP 2) and Megatron-DeepSpeed's
DeepSpeed-engine checkpoints (`global_stepN/`, with and without pipeline layer files) come in as
the same model.

The source checkpoints are written by the test in Megatron-LM's layout from one of ours: nested
`language_model` dicts (or megatron-core names with Transformer-Engine's fused norms and
`_extra_state` entries), layers numbered from 0 in every pipeline stage, the last stage's tied
copy as `word_embeddings_for_head`, and `args` an argparse.Namespace with Megatron-LM's names.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import types

import pytest
import torch

from megatron.training import checkpointing as ckpt
from megatron.training.serial_model import load_serial_model
from tests.integration.test_checkpoint_reshard import GPT, train
from tools import checkpoint_util

_TO_LEGACY_LAYER = (
    ("self_attention.linear_qkv.", "self_attention.query_key_value."),
    ("self_attention.linear_proj.", "self_attention.dense."),
    ("pre_mlp_layernorm.", "post_attention_layernorm."),
    ("mlp.linear_fc1.", "mlp.dense_h_to_4h."),
    ("mlp.linear_fc2.", "mlp.dense_4h_to_h."),
)


def _namespace(args, tp, pp) -> argparse.Namespace:
    t, m, k = args["transformer"], args["model"], args["tokenizer"]
    return argparse.Namespace(
        num_layers=t["num_layers"], hidden_size=t["hidden_size"],
        ffn_hidden_size=t["ffn_hidden_size"], num_attention_heads=t["num_attention_heads"],
        kv_channels=t["kv_channels"], swiglu=t["swiglu"], add_bias_linear=t["add_bias_linear"],
        normalization=t["normalization"], layernorm_epsilon=t["layernorm_epsilon"],
        position_embedding_type=t["position_embedding_type"],
        seq_length=m["seq_length"], max_position_embeddings=m["max_position_embeddings"],
        make_vocab_size_divisible_by=m["make_vocab_size_divisible_by"],
        untie_embeddings_and_output_weights=m["untie_embeddings_and_output_weights"],
        tokenizer_type=k["tokenizer_type"], vocab_size=k["vocab_size"],
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        micro_batch_size=2, global_batch_size=8, fp16=False, bf16=False,
        apply_residual_connection_post_layernorm=False, consumed_train_samples=24,
        iteration=3, padded_vocab_size=64,
    )  # fmt: skip


def _local(name: str, offset: int, legacy: bool):
    """Our global name -> Megatron-LM's name inside one stage (layers numbered from 0)."""
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)$", name)
    if m:
        rest = m.group(2)
        if legacy:
            for new, old in _TO_LEGACY_LAYER:
                rest = rest.replace(new, old)
            return f"language_model.encoder.layers.{int(m.group(1)) - offset}.{rest}"
        rest = rest.replace("input_layernorm.", "self_attention.linear_qkv.layer_norm_")
        rest = rest.replace("pre_mlp_layernorm.", "mlp.linear_fc1.layer_norm_")
        return f"decoder.layers.{int(m.group(1)) - offset}.{rest}"
    if not legacy:
        return name
    if name.startswith("embedding."):
        return "language_model." + name
    if name.startswith("decoder.final_layernorm."):
        return name.replace("decoder.", "language_model.encoder.", 1)
    if name == "output_layer.weight":
        return "word_embeddings_for_head.weight"  # the tied copy of a last stage
    raise AssertionError(name)


def _nest(flat):
    root = {}
    for name, t in flat.items():
        parts = name.split(".")
        node = root
        for p in parts[:-2]:
            node = node.setdefault(p, {})
        if parts[0] in ("language_model", "word_embeddings_for_head"):
            node.setdefault(parts[-2], {})[parts[-1]] = t
        else:
            node[".".join(parts[-2:])] = t
    return root


def write_megatron_lm(ours, dst, tp, pp, legacy: bool) -> None:
    """Rewrite our TP x PP checkpoint (iteration 3) as Megatron-LM would have saved it."""
    layers_per_stage = GPT_LAYERS // pp
    for t in range(tp):
        for p in range(pp):
            src = ckpt.checkpoint_file(str(ours), 3, t, p, pp)
            sd = torch.load(src, map_location="cpu", weights_only=True)
            offset = p * layers_per_stage
            flat = {_local(n, offset, legacy): v for n, v in sd["model"].items()}
            if legacy:
                model = _nest(flat)
            else:
                model = dict(flat)
                for n in list(flat):
                    if n.endswith("linear_proj.weight"):
                        model[n.replace(".weight", "._extra_state")] = io.BytesIO(b"te")
            out = {"args": _namespace(sd["args"], tp, pp), "iteration": 3, "model": model,
                   "checkpoint_version": 3.0, "optimizer": None}  # fmt: skip
            path = ckpt.checkpoint_file(str(dst), 3, t, p, pp)
            os.makedirs(os.path.dirname(path))
            torch.save(out, path)
    (dst / ckpt.TRACKER_FILENAME).write_text("3")


def import_argv(src, dst, tp: int, pp: int):
    """tools/checkpoint_util.py's command line importing `src` into `dst` at TP x PP."""
    layout = ["--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp)]
    return ["--loader", "megatron-lm", "--load-dir", str(src), "--save-dir", str(dst), *layout]


GPT_LAYERS = 4


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    root = tmp_path_factory.mktemp("ours")
    train("gpt", GPT, 2, 2, None, 1, ["--exit-interval", "3", "--save", str(root / "A")])
    return root / "A"


def _logits(load_dir):
    model, merged = load_serial_model(str(load_dir), true_vocab_size=61)
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(ids, torch.arange(16).expand(2, 16)), merged


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "megatron-core"])
def test_imported_megatron_lm_checkpoint_is_the_same_model(ours, tmp_path, legacy):
    write_megatron_lm(ours, tmp_path / "mlm", 2, 2, legacy)
    argv = import_argv(tmp_path / "mlm", tmp_path / "imported", 1, 2)
    assert checkpoint_util.main(argv) == 0
    got, merged = _logits(tmp_path / "imported")
    expect, _ = _logits(ours)
    assert (merged.layout.tp, merged.layout.pp, merged.iteration) == (1, 2, 3)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
    sd = torch.load(ckpt.checkpoint_file(str(tmp_path / "imported"), 3, 0, 0, 2), weights_only=True)
    assert sd["train_state"]["consumed_train_samples"] == 24
    assert sd["optimizer"] is None


def test_imported_checkpoint_trains_on(ours, tmp_path):
    write_megatron_lm(ours, tmp_path / "mlm", 2, 2, legacy=True)
    argv = import_argv(tmp_path / "mlm", tmp_path / "imported", 2, 2)
    assert checkpoint_util.main(argv) == 0
    history = train("gpt", GPT, 2, 2, None, 1, ["--load", str(tmp_path / "imported")])
    assert [h["iteration"] for h in history] == [4, 5, 6]
    assert all(torch.isfinite(torch.tensor(h["lm loss"])) for h in history)


def test_unsupported_models_and_formats_name_the_cause(ours, tmp_path, capsys):
    write_megatron_lm(ours, tmp_path / "mlm", 2, 2, legacy=True)
    path = ckpt.checkpoint_file(str(tmp_path / "mlm"), 3, 0, 0, 2)
    sd = torch.load(path, weights_only=False)
    sd["args"].group_query_attention = True
    torch.save(sd, path)
    assert checkpoint_util.main(import_argv(tmp_path / "mlm", tmp_path / "out", 1, 1)) == 2
    assert "grouped-query attention" in capsys.readouterr().err
    dist = tmp_path / "dist"
    (dist / "iter_0000003").mkdir(parents=True)
    (dist / "iter_0000003" / ".metadata").write_bytes(b"")
    (dist / ckpt.TRACKER_FILENAME).write_text("3")
    assert checkpoint_util.main(import_argv(dist, tmp_path / "out", 1, 1)) == 2
    assert "--ckpt-convert-format torch" in capsys.readouterr().err
    assert checkpoint_util.main(import_argv(ours, tmp_path / "out", 1, 1)) == 2
    assert "not Megatron-LM's Namespace" in capsys.readouterr().err


class AttnBackend:  # stands for an enum of the source's code, not importable here
    def __init__(self, value):
        self.value = value


AttnBackend.__module__ = "megatron.core.transformer.enums"


@contextlib.contextmanager
def _source_code_importable():
    """While saving, Megatron-LM's `megatron.core.transformer.enums` exists; not when loading."""
    name = "megatron.core.transformer.enums"
    enums = types.ModuleType(name)
    enums.AttnBackend = AttnBackend
    saved = {name: sys.modules.get(name)}
    sys.modules[name] = enums
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _global(sd, name, t, pp):
    """Our global name -> (layer file index of GPTModelPipe, name in that file)."""
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)$", name)
    if m:
        rest = m.group(2)
        for new, old in _TO_LEGACY_LAYER:
            rest = rest.replace(new, old)
        return int(m.group(1)) + 2, rest
    if name.startswith("embedding."):
        return 1, name[len("embedding.") :]
    if name.startswith("decoder.final_layernorm."):
        return GPT_LAYERS + 2, name[len("decoder.final_layernorm.") :]
    return None, None  # the last stage's tied copy: written as the head file below


def write_deepspeed_engine(ours, dst, tp, pp, pipeline: bool) -> None:
    """Rewrite our TP x PP checkpoint as Megatron-DeepSpeed's DeepSpeed engine saves it."""
    folder = dst / "global_step3"
    folder.mkdir(parents=True)
    for t in range(tp):
        layers, flat = {}, {}
        for p in range(pp):
            sd = torch.load(ckpt.checkpoint_file(str(ours), 3, t, p, pp), weights_only=True)
            for name, v in sd["model"].items():
                idx, local = _global(sd, name, t, pp)
                if idx is not None:
                    layers.setdefault(idx, {})[local] = v
                    flat[_local(name, 0, legacy=True)] = v
        ns = _namespace(sd["args"], tp, 1 if not pipeline else pp)
        ns.normalization = "layernorm"  # Megatron-DeepSpeed's spelling
        ns.attention_backend = AttnBackend(5)  # an object only pickle restores
        state = {"module": None if pipeline else flat, "args": ns, "iteration": 3,
                 "checkpoint_version": 3.0, "global_steps": 3, "ds_version": "0.14.0",
                 "buffer_names": [], "dp_world_size": 1, "mp_world_size": tp}  # fmt: skip
        with _source_code_importable():
            torch.save(state, folder / f"mp_rank_{t:02d}_model_states.pt")
        if pipeline:
            head = dict(layers[1])  # the tied head: a copy of the embedding
            layers[GPT_LAYERS + 3] = head
            for idx, tensors in layers.items():
                torch.save(tensors, folder / f"layer_{idx:02d}-model_{t:02d}-model_states.pt")
    (dst / "latest").write_text("global_step3")


@pytest.mark.parametrize("pipeline", [True, False], ids=["layer-files", "module"])
def test_imported_deepspeed_engine_checkpoint_is_the_same_model(ours, tmp_path, pipeline, capsys):
    write_deepspeed_engine(ours, tmp_path / "ds", 2, 2, pipeline)
    argv = import_argv(tmp_path / "ds", tmp_path / "imported", 2, 1)
    assert checkpoint_util.main(argv) == 2  # the enum in its arguments needs pickle
    assert "--allow-pickle" in capsys.readouterr().err
    assert checkpoint_util.main(argv + ["--allow-pickle"]) == 0
    got, merged = _logits(tmp_path / "imported")
    expect, _ = _logits(ours)
    assert (merged.layout.tp, merged.layout.pp, merged.iteration) == (2, 1, 3)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
