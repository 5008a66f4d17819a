"""GPT checkpoints written by Megatron-LM, read into a `MergedCheckpoint` of this framework.

Two of Megatron-LM's `--ckpt-format torch` layouts are read (same folders as ours:
`iter_XXXXXXX/mp_rank_TT[_PPP]/model_optim_rng.pt`, `args` an `argparse.Namespace`):

- the legacy models (`model.language_model.{embedding, encoder | transformer, output_layer}`,
  layers `self_attention.query_key_value`, `mlp.dense_h_to_4h`, ...; the last pipeline stage's
  tied copy under `model.word_embeddings_for_head`);
- megatron-core models (`decoder.layers.N.self_attention.linear_qkv`, ...), with the local or
  the Transformer-Engine layer spec (`linear_qkv.layer_norm_weight` for the fused norms).

Both number the layers of each model chunk from 0; ours are numbered globally, so each chunk's
layers are shifted by its offset. The QKV rows are per head [q | k | v] and SwiGLU's fc1 rows
[gate | up] per tensor-parallel rank in all three, so tensors are renamed, not reordered. The
arguments are translated to this framework's flags and parsed by its own parser, so a model it
cannot build (e.g. grouped-query attention) fails with the flag's own error. Optimizer and RNG
state are not imported: continued pretraining starts a fresh optimizer.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import re
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import checkpoint_convert as cc
from . import checkpointing as ckpt

logger = logging.getLogger(__name__)

# Namespace attribute -> our flag, copied when present (None values are skipped).
_VALUE_FLAGS = {
    "num_layers": "--num-layers",
    "hidden_size": "--hidden-size",
    "ffn_hidden_size": "--ffn-hidden-size",
    "num_attention_heads": "--num-attention-heads",
    "kv_channels": "--kv-channels",
    "seq_length": "--seq-length",
    "max_position_embeddings": "--max-position-embeddings",
    "make_vocab_size_divisible_by": "--make-vocab-size-divisible-by",
    "normalization": "--normalization",
    "layernorm_epsilon": "--layernorm-epsilon",
    "norm_epsilon": "--layernorm-epsilon",
    "position_embedding_type": "--position-embedding-type",
    "rotary_percent": "--rotary-percent",
    "rotary_base": "--rotary-base",
    "init_method_std": "--init-method-std",
    "tokenizer_type": "--tokenizer-type",
    "vocab_file": "--vocab-file",
    "merge_file": "--merge-file",
    "tokenizer_model": "--tokenizer-model",
    "vocab_size": "--vocab-size",
    "lr": "--lr",
    "min_lr": "--min-lr",
    "micro_batch_size": "--micro-batch-size",
    "global_batch_size": "--global-batch-size",
    "tensor_model_parallel_size": "--tensor-model-parallel-size",
    "pipeline_model_parallel_size": "--pipeline-model-parallel-size",
    "num_layers_per_virtual_pipeline_stage": "--num-layers-per-virtual-pipeline-stage",
}
_TRUE_FLAGS = {
    "swiglu": "--swiglu",
    "untie_embeddings_and_output_weights": "--untie-embeddings-and-output-weights",
    "fp16": "--fp16",
    "bf16": "--bf16",
}
# Options of the source that change the model in a way this framework does not build.
_UNSUPPORTED = {
    "apply_residual_connection_post_layernorm": "residual connections after the norm",
    "openai_gelu": "OpenAI's GeLU approximation",
    "squared_relu": "squared ReLU",
    "group_query_attention": "grouped-query attention (--group-query-attention)",
    "num_experts": "mixture of experts (--num-experts)",
    "qk_layernorm": "QK layer norm",
}


def megatron_flags(ns: argparse.Namespace) -> List[str]:
    """Our command-line flags for the model, tokenizer and layout a Megatron-LM Namespace holds.

    Raises ValueError naming the option when the source model has something we do not build.
    """
    for name, what in _UNSUPPORTED.items():
        if getattr(ns, name, None):
            raise ValueError(f"the checkpoint's model uses {what} ({name}); it cannot be imported")
    argv: List[str] = []
    for name, flag in _VALUE_FLAGS.items():
        value = getattr(ns, name, None)
        if value is not None and flag not in argv:
            argv += [flag, str(value)]
    for name, flag in _TRUE_FLAGS.items():
        if getattr(ns, name, False):
            argv.append(flag)
    if getattr(ns, "add_bias_linear", True) is False:
        argv.append("--disable-bias-linear")
    if (
        getattr(ns, "use_rotary_position_embeddings", False)
        and "--position-embedding-type" not in argv
    ):
        argv += ["--position-embedding-type", "rope"]
    return argv


def args_from_namespace(ns: argparse.Namespace) -> Dict[str, Any]:
    """Our stored-arguments dict (`RunConfig.to_plain_dict()`) for a Megatron-LM Namespace."""
    from .arguments import parse_args

    argv = megatron_flags(ns) + ["--mock-data", "--train-iters", "1", "--lr-warmup-iters", "0"]
    if "--lr" not in argv:  # the run that loads the import gives its own
        argv += ["--lr", "1e-4"]
    tp = getattr(ns, "tensor_model_parallel_size", 1) or 1
    pp = getattr(ns, "pipeline_model_parallel_size", 1) or 1
    try:
        run = parse_args(argv, world_size=tp * pp, check_data_files=False)
    except SystemExit as exc:
        raise ValueError(
            f"the checkpoint's arguments translate to flags this framework rejects: {argv} "
            "(the message above says which)"
        ) from exc
    args = run.to_plain_dict()
    args["data"]["mock_data"] = False
    return args


def _load_foreign(path: str, allow_pickle: bool) -> Dict[str, Any]:
    """One file of a Megatron-LM checkpoint; its Namespace `args` (and Transformer Engine's
    BytesIO extra states) are allowed under weights_only=True, anything else only with
    allow_pickle (files one trusts)."""
    if allow_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        # Transformer Engine keeps its `_extra_state` as io.BytesIO
        with torch.serialization.safe_globals([argparse.Namespace, io.BytesIO, bytes]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: holds Python objects beyond tensors and the argument Namespace ({exc}); "
            "if you trust the file, pass --allow-pickle to load it with weights_only=False"
        ) from None


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif torch.is_tensor(value):
            out[prefix + key] = value
    return out


_LEGACY_LAYER = (  # legacy module path inside a layer -> megatron-core's
    (r"(self_attention|attention)\.query_key_value\.", "self_attention.linear_qkv."),
    (r"(self_attention|attention)\.dense\.", "self_attention.linear_proj."),
    (r"post_attention_layernorm\.", "pre_mlp_layernorm."),
    (r"mlp\.dense_h_to_4h\.", "mlp.linear_fc1."),
    (r"mlp\.dense_4h_to_h\.", "mlp.linear_fc2."),
)
_MCORE_FUSED_NORMS = (
    (r"self_attention\.linear_qkv\.layer_norm_(weight|bias)$", r"input_layernorm.\1"),
    (r"mlp\.linear_fc1\.layer_norm_(weight|bias)$", r"pre_mlp_layernorm.\1"),
)
_STACK = r"^language_model\.(encoder|transformer)\."


def _layer_name(rest: str, rules) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, rest, count=1)
        if n:
            return new
    return rest


def rename_chunk(flat: Dict[str, torch.Tensor], offset: int) -> Dict[str, torch.Tensor]:
    """One model chunk's tensors under our global names (layers shifted by `offset`)."""
    out = {}
    for name, t in flat.items():
        if name.endswith("_extra_state") or name.endswith("inv_freq"):
            continue
        new = re.sub(r"^language_model\.embedding\.", "embedding.", name)
        new = re.sub(_STACK + r"final_layernorm\.", "decoder.final_layernorm.", new)
        new = re.sub(_STACK + r"layers\.", "decoder.layers.", new)
        new = re.sub(
            r"^(language_model\.output_layer|word_embeddings_for_head)\.", "output_layer.", new
        )
        m = re.match(r"^decoder\.layers\.(\d+)\.(.*)$", new)
        if m:
            rules = _LEGACY_LAYER if name.startswith("language_model.") else _MCORE_FUSED_NORMS
            new = f"decoder.layers.{int(m.group(1)) + offset}.{_layer_name(m.group(2), rules)}"
        out[new] = t
    return out


def _chunk_offsets(specs) -> Dict[Tuple[int, int], int]:
    """{(pp rank, vp rank): global index of the chunk's first layer}."""
    out = {}
    for pp_rank, stage in enumerate(specs):
        for vp, chunk in enumerate(stage):
            layers = [
                int(m.group(1))
                for s in chunk
                for m in [re.match(r"decoder\.layers\.(\d+)\.", s.name)]
                if m
            ]
            out[(pp_rank, vp)] = min(layers) if layers else 0
    return out


def _refuse_other_formats(root: str, folder: str) -> None:
    if os.path.isfile(os.path.join(root, "latest")) or any(
        d.startswith("global_step") for d in os.listdir(root)
    ):
        raise ValueError(
            f"{root}: a DeepSpeed-engine checkpoint (global_stepN/); convert it to Megatron's "
            "layout first with Megatron-DeepSpeed's tools/convert_checkpoint/"
            "deepspeed_to_megatron.py, then import that"
        )
    if os.path.isdir(folder) and os.path.isfile(os.path.join(folder, ".metadata")):
        raise ValueError(
            f"{folder}: megatron-core's torch_dist format; save it in the torch format first "
            "(Megatron-LM: --ckpt-convert-format torch --ckpt-convert-save DIR), then import that"
        )


def _first_file(root: str, iteration: int, release: bool, allow_pickle: bool):
    folder = ckpt.checkpoint_dir(root, iteration, release)
    _refuse_other_formats(root, folder)
    for shard in ("mp_rank_00", "mp_rank_00_000"):
        path = os.path.join(folder, shard, "model_optim_rng.pt")
        if os.path.isfile(path):
            return _load_foreign(path, allow_pickle)
    raise FileNotFoundError(f"{folder}: no mp_rank_00[_000]/model_optim_rng.pt")


def _counters(ns: argparse.Namespace, iteration: int) -> Dict[str, Any]:
    state = {"iteration": iteration}
    for name in ("consumed_train_samples", "consumed_valid_samples", "consumed_train_tokens"):
        if isinstance(getattr(ns, name, None), int):
            state[name] = getattr(ns, name)
    return {"checkpoint_version": 3.0, "iteration": iteration, "train_state": state, **{
        k: v for k, v in state.items() if k != "iteration"}}  # fmt: skip


def read_megatron_lm(
    root: str, iteration: Optional[int] = None, allow_pickle: bool = False
) -> cc.MergedCheckpoint:
    """Read a Megatron-LM GPT checkpoint (legacy or megatron-core names, `--ckpt-format torch`,
    any TP / PP / virtual-PP layout) as a MergedCheckpoint with our names and arguments."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such checkpoint folder")
    _refuse_other_formats(root, root)
    it, release = cc._iteration(root, iteration)
    first = _first_file(root, it, release, allow_pickle)
    ns = first.get("args")
    if not isinstance(ns, argparse.Namespace):
        raise ValueError(
            f"{root}: its args are a {type(ns).__name__}, not Megatron-LM's Namespace; a "
            "checkpoint of this framework converts with tools/checkpoint_util.py"
        )
    args = args_from_namespace(ns)
    layout = cc.layout_of(args)
    files: Dict[Tuple[int, int], Dict[str, Any]] = {}
    for t in range(layout.tp):
        for p in range(layout.pp):
            path = ckpt.checkpoint_file(root, it, t, p, layout.pp, release)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: missing; the arguments say {layout}")
            files[(t, p)] = first if (t, p) == (0, 0) else _load_foreign(path, allow_pickle)
    first_chunk = _flatten(first[cc._model_key(layout, 0)])
    word = [k for k in first_chunk if k.endswith("word_embeddings.weight")]
    vocab = first_chunk[word[0]].shape[0] * layout.tp
    specs = cc.chunk_specs(args, "GPT", layout, vocab)
    offsets = _chunk_offsets(specs)
    ours = {
        key: {
            cc._model_key(layout, vp): rename_chunk(
                _flatten(sd[cc._model_key(layout, vp)]), offsets[(key[1], vp)]
            )
            for vp in range(layout.vpp)
        }
        for key, sd in files.items()
    }
    model = cc._merge_model(ours, specs, layout)
    logger.info("read Megatron-LM checkpoint %s iteration %d (%s)", root, it, layout)
    return cc.MergedCheckpoint(
        args=args,
        iteration=it,
        release=release,
        model_type="GPT",
        layout=layout,
        padded_vocab_size=vocab,
        model=model,
        optimizer=None,
        common=_counters(ns, it),
        rng_state={},
    )
