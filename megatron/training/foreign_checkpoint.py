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
    "rotary_position_embeddings_theta": "--rotary-base",
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
    "apply_layernorm_1p": "zero-centred norm weights (--apply-layernorm-1p)",
}
_NORMS = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}  # Megatron-DeepSpeed spells them so


def megatron_flags(ns: argparse.Namespace) -> List[str]:
    """Our command-line flags for the model, tokenizer and layout a Megatron-LM Namespace holds.

    Raises ValueError naming the option when the source model has something we do not build.
    """
    for name, what in _UNSUPPORTED.items():
        if getattr(ns, name, None):
            raise ValueError(f"the checkpoint's model uses {what} ({name}); it cannot be imported")
    heads = getattr(ns, "num_attention_heads", None)
    for groups in ("num_query_groups", "num_key_value_heads"):
        value = getattr(ns, groups, None)
        if value is not None and value != heads:
            raise ValueError(
                f"the checkpoint's model uses grouped-query attention ({groups}={value}, "
                f"{heads} heads); it cannot be imported"
            )
    argv: List[str] = []
    for name, flag in _VALUE_FLAGS.items():
        value = getattr(ns, name, None)
        if name == "normalization":
            value = _NORMS.get(str(value).lower(), value) if value is not None else None
        if value is not None and not isinstance(value, (int, float, str)):
            raise ValueError(f"the checkpoint's {name} is {value!r}, not a number or a name")
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


class _Missing:
    """Stands for an object of a class the source's code had and this process cannot import
    (e.g. an enum in Megatron-LM's arguments); keeps what it was built from."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            logger.info("%s.%s is not importable here; its objects are left opaque", module, name)
            return type(name, (_Missing,), {"__module__": module})


class _TolerantPickle:
    """A `pickle_module` for torch.load whose Unpickler tolerates missing classes."""

    Unpickler = _TolerantUnpickler
    load = staticmethod(pickle.load)
    __name__ = "pickle"


def _load_foreign(path: str, allow_pickle: bool) -> Dict[str, Any]:
    """One file of a Megatron-LM checkpoint; its Namespace `args` (and Transformer Engine's
    BytesIO extra states) are allowed under weights_only=True, anything else only with
    allow_pickle (files one trusts)."""
    if allow_pickle:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_TolerantPickle
        )
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
        new = new.replace("position_embeddings.local_embeddings.", "position_embeddings.")
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


def _refuse_other_formats(folder: str) -> None:
    if os.path.isdir(folder) and os.path.isfile(os.path.join(folder, ".metadata")):
        raise ValueError(
            f"{folder}: megatron-core's torch_dist format; save it in the torch format first "
            "(Megatron-LM: --ckpt-convert-format torch --ckpt-convert-save DIR), then import that"
        )


def _first_file(root: str, iteration: int, release: bool, allow_pickle: bool):
    folder = ckpt.checkpoint_dir(root, iteration, release)
    _refuse_other_formats(folder)
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


def _merge(ns, files, it: int, release: bool, source: str):
    """MergedCheckpoint of {(tp, pp): {model key: flat Megatron-LM tensors}} files."""
    args = args_from_namespace(ns)
    layout = cc.layout_of(args)
    first = files[(0, 0)][cc._model_key(layout, 0)]
    word = [k for k in first if k.endswith("word_embeddings.weight")]
    if not word:
        raise ValueError(f"{source}: no word embeddings in the first shard; not a GPT checkpoint")
    vocab = first[word[0]].shape[0] * layout.tp
    specs = cc.chunk_specs(args, "GPT", layout, vocab)
    offsets = _chunk_offsets(specs)
    ours = {
        key: {k: rename_chunk(flat, offsets[(key[1], int(k[5:] or 0))]) for k, flat in sd.items()}
        for key, sd in files.items()
    }
    logger.info("read %s iteration %d (%s)", source, it, layout)
    return cc.MergedCheckpoint(
        args=args,
        iteration=it,
        release=release,
        model_type="GPT",
        layout=layout,
        padded_vocab_size=vocab,
        model=cc._merge_model(ours, specs, layout),
        optimizer=None,
        common=_counters(ns, it),
        rng_state={},
    )


def _namespace_of(sd: Dict[str, Any], root: str) -> argparse.Namespace:
    ns = sd.get("args")
    if not isinstance(ns, argparse.Namespace):
        raise ValueError(
            f"{root}: its args are a {type(ns).__name__}, not Megatron-LM's Namespace; a "
            "checkpoint of this framework converts with tools/checkpoint_util.py"
        )
    return ns


def read_megatron_lm(
    root: str, iteration: Optional[int] = None, allow_pickle: bool = False
) -> cc.MergedCheckpoint:
    """Read a GPT checkpoint of Megatron-LM (legacy or megatron-core names, `--ckpt-format
    torch`, any TP / PP / virtual-PP layout) or of Megatron-DeepSpeed's DeepSpeed engine
    (`global_stepN/`, see `read_deepspeed_engine`) as a MergedCheckpoint with our names and
    arguments."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such checkpoint folder")
    if os.path.isfile(os.path.join(root, "latest")) or any(
        d.startswith("global_step") for d in os.listdir(root)
    ):
        return read_deepspeed_engine(root, iteration, allow_pickle)
    it, release = cc._iteration(root, iteration)
    first = _first_file(root, it, release, allow_pickle)
    ns = _namespace_of(first, root)
    layout = cc.layout_of(args_from_namespace(ns))
    files: Dict[Tuple[int, int], Dict[str, Any]] = {}
    for t in range(layout.tp):
        for p in range(layout.pp):
            path = ckpt.checkpoint_file(root, it, t, p, layout.pp, release)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: missing; the arguments say {layout}")
            sd = first if (t, p) == (0, 0) else _load_foreign(path, allow_pickle)
            keys = [cc._model_key(layout, vp) for vp in range(layout.vpp)]
            files[(t, p)] = {k: _flatten(sd[k]) for k in keys}
    return _merge(ns, files, it, release, f"Megatron-LM checkpoint {root}")


_DS_LAYER = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")


def _ds_tag(root: str, iteration: Optional[int]) -> Tuple[str, int]:
    if iteration is not None:
        return f"global_step{iteration}", iteration
    latest = os.path.join(root, "latest")
    if not os.path.isfile(latest):
        raise FileNotFoundError(f"{root}: no `latest` file naming the tag; pass --iteration")
    tag = open(latest).read().strip()
    m = re.fullmatch(r"global_step(\d+)", tag)
    if not m:
        raise ValueError(f"{latest}: tag {tag!r} is not global_stepN; pass --iteration N")
    return tag, int(m.group(1))


def _ds_layers(folder: str, tp_rank: int, num_layers: int, allow_pickle: bool):
    """The pipeline layer files of one TP rank as one flat dict of legacy Megatron-LM names."""
    found = {}
    for name in os.listdir(folder):
        m = _DS_LAYER.match(name)
        if m and int(m.group(2)) == tp_rank:
            found[int(m.group(1))] = os.path.join(folder, name)
    expected = set(range(1, num_layers + 4))
    if set(found) != expected:
        raise ValueError(
            f"{folder}: the layer files of TP rank {tp_rank} are {sorted(found)}; GPTModelPipe "
            f"with {num_layers} layers saves {sorted(expected)} (a MoE or other model?)"
        )
    out: Dict[str, torch.Tensor] = {}
    for idx, path in sorted(found.items()):
        sd = _flatten(_load_foreign(path, allow_pickle))
        if idx == num_layers + 3:  # the output head: LMHeadPipe, or a copy of the embedding
            if "lm_head.weight" in sd:
                out["language_model.output_layer.weight"] = sd["lm_head.weight"]
            continue
        if idx == 1:
            prefix = "language_model.embedding."
        elif idx == num_layers + 2:
            prefix = "language_model.encoder.final_layernorm."
        else:
            prefix = f"language_model.encoder.layers.{idx - 2}."
        out.update({prefix + k: v for k, v in sd.items()})
    return out


def read_deepspeed_engine(
    root: str, iteration: Optional[int] = None, allow_pickle: bool = False
) -> cc.MergedCheckpoint:
    """A GPT checkpoint of Megatron-DeepSpeed's DeepSpeed engine.

    `global_stepN/mp_rank_TT_model_states.pt` holds the arguments and, without pipeline
    parallelism, the whole TP shard under `module` (legacy names). With it, each TP rank's
    layers are files `layer_II-model_TT-model_states.pt` numbered as GPTModelPipe's layers:
    0 the fp16 cast (no file), 1 the embedding, 2..L+1 the transformer layers, L+2 the final
    norm, L+3 the output head. The pipeline split is not part of these files, so the result
    has PP 1 (any target layout can then be written).
    """
    tag, it = _ds_tag(root, iteration)
    folder = os.path.join(root, tag)
    first_path = os.path.join(folder, "mp_rank_00_model_states.pt")
    if not os.path.isfile(first_path):
        raise FileNotFoundError(f"{first_path}: missing; not a DeepSpeed-engine checkpoint")
    first = _load_foreign(first_path, allow_pickle)
    ns = argparse.Namespace(**vars(_namespace_of(first, root)))
    ns.pipeline_model_parallel_size, ns.num_layers_per_virtual_pipeline_stage = 1, None
    files = {}
    for t in range(getattr(ns, "tensor_model_parallel_size", 1) or 1):
        if first.get("module") is not None:
            path = os.path.join(folder, f"mp_rank_{t:02d}_model_states.pt")
            sd = first if t == 0 else _load_foreign(path, allow_pickle)
            files[(t, 0)] = {"model": _flatten(sd["module"])}
        else:
            files[(t, 0)] = {"model": _ds_layers(folder, t, ns.num_layers, allow_pickle)}
    return _merge(ns, files, it, False, f"DeepSpeed-engine checkpoint {folder}")
