"""A local HF transformers GPT-2 or Llama folder as our checkpoint, in any TP / PP layout.

The inverse of `hf_export`: the HF weights are renamed and regrouped into our serial tensors
(GPT-2's Conv1D [in, out] weights transposed, its c_attn [q | k | v] over all heads regrouped
into linear_qkv's per-head [q | k | v]; Llama's q/k/v_proj fused the same way and gate_proj /
up_proj into linear_fc1's [gate | up]), then split and written by `checkpoint_convert` like a
layout conversion. The stored arguments are those `pretrain_gpt.py` builds from the flags
`import_flags` returns, so `pretrain_gpt.py --load <save>` with those flags (or
--use-checkpoint-args) continues pretraining from iteration 0. The checkpoint is a `release`
folder without optimizer state. Nothing is downloaded: `hf_dir` must be a local folder.

The tokenizer files of `hf_dir` are copied into `<save>/tokenizer`: tokenizer.json as
--tokenizer-type HuggingFaceTokenizer, vocab.json + merges.txt as GPT2BPETokenizer; without
either, the checkpoint stores a NullTokenizer of the model's vocabulary.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Dict, List, Optional

import torch

from megatron.core.models.common import WORD_EMBEDDINGS

from . import checkpoint_convert as cc
from .hf_export import GPT2, LLAMA

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# ---- architecture -----------------------------------------------------------------------------
def _gpt2_flags(config) -> List[str]:
    act = config.activation_function
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        logger.warning(
            "WARNING: %s uses the tanh approximation of GeLU (%s); our MLP uses the exact GeLU, "
            "so logits differ slightly (~1e-3) from the HF model's",
            config.name_or_path or "the model",
            act,
        )
    elif act != "gelu":
        raise ValueError(f"activation_function {act!r} in config.json: only GeLU is supported")
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
        raise ValueError(
            "config.json: scale_attn_weights must be true and scale_attn_by_inverse_layer_idx "
            "false (our attention scales by 1 / sqrt(head size) only)"
        )
    if getattr(config, "add_cross_attention", False):
        raise ValueError("config.json: add_cross_attention is not supported")
    return [
        *("--num-layers", str(config.n_layer), "--hidden-size", str(config.n_embd)),
        *("--num-attention-heads", str(config.n_head)),
        *("--ffn-hidden-size", str(config.n_inner or 4 * config.n_embd)),
        *("--layernorm-epsilon", repr(config.layer_norm_epsilon)),
        *("--max-position-embeddings", str(config.n_positions)),
    ]


def _rope_theta(config) -> int:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(
            f"config.json: rope type {kind!r} (rope scaling) is not supported; only the default "
            "rotary embeddings are"
        )
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if float(theta) != int(theta):
        raise ValueError(f"config.json: rope_theta {theta} must be a whole number (--rotary-base)")
    return int(theta)


def _llama_flags(config) -> List[str]:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if kv_heads != heads:
        raise ValueError(
            f"config.json: num_key_value_heads {kv_heads} != num_attention_heads {heads}: grouped-"
            "query attention is not supported by this framework's attention"
        )
    if config.hidden_act != "silu":
        raise ValueError(f"config.json: hidden_act {config.hidden_act!r}: only silu (SwiGLU)")
    attn_bias, mlp_bias = config.attention_bias, getattr(config, "mlp_bias", False)
    if attn_bias != mlp_bias:
        raise ValueError(
            f"config.json: attention_bias {attn_bias} but mlp_bias {mlp_bias}: our linear "
            "layers have biases everywhere or nowhere (--disable-bias-linear)"
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    flags = [
        *("--num-layers", str(config.num_hidden_layers), "--hidden-size", str(config.hidden_size)),
        *("--num-attention-heads", str(heads), "--kv-channels", str(head_dim)),
        *("--ffn-hidden-size", str(config.intermediate_size), "--swiglu"),
        *("--normalization", "RMSNorm", "--layernorm-epsilon", repr(config.rms_norm_eps)),
        *("--position-embedding-type", "rope", "--rotary-base", str(_rope_theta(config))),
        *("--max-position-embeddings", str(config.max_position_embeddings)),
    ]
    return flags + ([] if attn_bias else ["--disable-bias-linear"])


def import_family(config) -> str:
    """GPT2 or LLAMA for a transformers config (ValueError for other model types)."""
    kind = config.model_type
    if kind == "gpt2":
        return GPT2
    if kind == "llama" or (kind == "mistral" and getattr(config, "sliding_window", None) is None):
        return LLAMA
    raise ValueError(
        f"config.json: model_type {kind!r} is not supported; the importer reads GPT-2 (gpt2) and "
        "Llama-family (llama, mistral without sliding window) folders"
    )


def import_flags(config) -> List[str]:
    """The architecture flags of pretrain_gpt.py that build the HF model's architecture."""
    family = import_family(config)
    flags = _gpt2_flags(config) if family == GPT2 else _llama_flags(config)
    if not getattr(config, "tie_word_embeddings", True):
        flags.append("--untie-embeddings-and-output-weights")
    return flags


# ---- tensors ----------------------------------------------------------------------------------
def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Our linear_qkv weight [heads * 3 * d, h] (or bias) from q, k, v [heads * d, ...]."""
    rest = tuple(q.shape[1:])
    stacked = torch.stack([t.reshape(heads, -1, *rest) for t in (q, k, v)], dim=1)
    return stacked.reshape(-1, *rest)  # [heads, 3, d, (h)] -> [heads * 3 * d, (h)]


def _put(out: Dict, ours: str, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    out[ours + ".weight"] = weight.contiguous()
    if bias is not None:
        out[ours + ".bias"] = bias.contiguous()


def _gpt2_layer(sd: Dict, p: str, o: str, heads: int, bias: bool) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    b = (lambda name: sd[p + name]) if bias else (lambda name: None)
    _put(out, o + "input_layernorm", sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
    q, k, v = sd[p + "attn.c_attn.weight"].t().chunk(3, dim=0)  # Conv1D [h, 3h] -> 3 x [h, h]
    qb, kb, vb = sd[p + "attn.c_attn.bias"].chunk(3)
    qkv_b = fuse_qkv(qb, kb, vb, heads) if bias else None
    _put(out, o + "self_attention.linear_qkv", fuse_qkv(q, k, v, heads), qkv_b)
    proj = o + "self_attention.linear_proj"
    _put(out, proj, sd[p + "attn.c_proj.weight"].t(), b("attn.c_proj.bias"))
    _put(out, o + "pre_mlp_layernorm", sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
    _put(out, o + "mlp.linear_fc1", sd[p + "mlp.c_fc.weight"].t(), b("mlp.c_fc.bias"))
    _put(out, o + "mlp.linear_fc2", sd[p + "mlp.c_proj.weight"].t(), b("mlp.c_proj.bias"))
    return out


def _llama_layer(sd: Dict, p: str, o: str, heads: int, bias: bool) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    b = (lambda name: sd[p + name + ".bias"]) if bias else (lambda name: None)
    w = lambda name: sd[p + name + ".weight"]  # noqa: E731
    out[o + "input_layernorm.weight"] = w("input_layernorm")
    out[o + "pre_mlp_layernorm.weight"] = w("post_attention_layernorm")
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    qkv_b = fuse_qkv(*(b(n) for n in names), heads) if bias else None
    _put(out, o + "self_attention.linear_qkv", fuse_qkv(*(w(n) for n in names), heads), qkv_b)
    _put(out, o + "self_attention.linear_proj", w("self_attn.o_proj"), b("self_attn.o_proj"))
    gate_up = torch.cat([w("mlp.gate_proj"), w("mlp.up_proj")], dim=0)  # [gate | up]
    gate_up_b = torch.cat([b("mlp.gate_proj"), b("mlp.up_proj")]) if bias else None
    _put(out, o + "mlp.linear_fc1", gate_up, gate_up_b)
    _put(out, o + "mlp.linear_fc2", w("mlp.down_proj"), b("mlp.down_proj"))
    return out


def our_state_dict(
    sd: Dict[str, torch.Tensor], family: str, tr: Dict[str, Any], tied: bool
) -> Dict[str, torch.Tensor]:
    """Our serial tensors ({global name: full tensor}) of a HF GPT-2 / Llama state dict."""
    heads, bias = tr["num_attention_heads"], tr["add_bias_linear"]
    layer_fn, prefix, head = {
        GPT2: (_gpt2_layer, "transformer.h.{}.", "transformer."),
        LLAMA: (_llama_layer, "model.layers.{}.", "model."),
    }[family]
    out: Dict[str, torch.Tensor] = {}
    for i in range(tr["num_layers"]):
        out.update(layer_fn(sd, prefix.format(i), f"decoder.layers.{i}.", heads, bias))
    if family == GPT2:
        out[WORD_EMBEDDINGS] = sd["transformer.wte.weight"]
        out["embedding.position_embeddings.weight"] = sd["transformer.wpe.weight"]
        _put(out, "decoder.final_layernorm", sd["transformer.ln_f.weight"], sd[head + "ln_f.bias"])
    else:
        out[WORD_EMBEDDINGS] = sd["model.embed_tokens.weight"]
        out["decoder.final_layernorm.weight"] = sd["model.norm.weight"]
    if not tied:
        out["output_layer.weight"] = sd["lm_head.weight"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


# ---- tokenizer and arguments ------------------------------------------------------------------
def copy_tokenizer(hf_dir: str, save_dir: str, vocab_size: int) -> List[str]:
    """Copy the tokenizer files of `hf_dir` into `<save_dir>/tokenizer`; returns the
    --tokenizer-* flags that read them (a NullTokenizer of `vocab_size` ids without any)."""
    found = [n for n in _TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, n))]
    gpt2 = [n for n in ("vocab.json", "merges.txt") if os.path.isfile(os.path.join(hf_dir, n))]
    if "tokenizer.json" not in found and len(gpt2) < 2:
        logger.info(
            "%s has no tokenizer.json (nor vocab.json + merges.txt): the checkpoint stores a "
            "NullTokenizer of %d ids; pass your tokenizer's flags when training on",
            hf_dir,
            vocab_size,
        )
        return ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(vocab_size - 1)]
    folder = os.path.abspath(os.path.join(save_dir, "tokenizer"))
    os.makedirs(folder, exist_ok=True)
    for name in found if "tokenizer.json" in found else gpt2:
        shutil.copyfile(os.path.join(hf_dir, name), os.path.join(folder, name))
    if "tokenizer.json" in found:
        return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", folder]
    vocab, merges = (os.path.join(folder, n) for n in gpt2)
    return ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges]


def stored_args(flags: List[str], layout: cc.Layout) -> Dict[str, Any]:
    """The `args` a pretrain_gpt.py run with `flags` at `layout` stores in its checkpoints."""
    from .arguments import parse_args

    argv = flags + [
        *("--tensor-model-parallel-size", str(layout.tp)),
        *("--pipeline-model-parallel-size", str(layout.pp)),
        *("--micro-batch-size", "1", "--train-iters", "1", "--lr", "1e-4", "--mock-data"),
    ]
    if layout.virtual:
        per_chunk = int(flags[flags.index("--num-layers") + 1]) // (layout.pp * layout.vpp)
        argv += ["--num-layers-per-virtual-pipeline-stage", str(per_chunk)]
    try:
        run = parse_args(argv, world_size=layout.tp * layout.pp, check_data_files=False)
    except SystemExit:  # parse_args printed the flag it refused
        raise ValueError(f"pretrain_gpt.py refuses the imported model's flags {argv}") from None
    return run.to_plain_dict()


_COMMON = dict(
    checkpoint_version=3.0,
    iteration=0,
    consumed_train_samples=0,
    consumed_valid_samples=0,
    consumed_train_tokens=0,
    opt_param_scheduler=None,
    data_efficiency=None,
    train_state={},
)
"""The entries besides model, optimizer and RNG state of a checkpoint that has not trained."""


# ---- the whole import -------------------------------------------------------------------------
def read_hf_folder(hf_dir: str):
    """(config, {name: tensor}) of a local transformers causal-LM folder (nothing downloaded)."""
    import transformers

    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise FileNotFoundError(
            f"--hf-dir {hf_dir}: no config.json; pass a local folder written by save_pretrained "
            "(nothing is downloaded)"
        )
    config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    import_family(config)  # refuse other model types before reading the weights
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True)
    return config, model.state_dict()


def _check_vocab(args: Dict[str, Any], rows: int) -> None:
    tokens = cc.tokenizer_vocab_size(args)
    if tokens is not None and tokens > rows:
        raise ValueError(
            f"the tokenizer has {tokens} ids but the model only {rows} embedding rows; the "
            "folder's tokenizer does not belong to its model"
        )
    if tokens is not None and tokens < rows:
        logger.warning(
            "WARNING: the model has %d embedding rows, the tokenizer %d ids: the rows beyond "
            "the tokenizer's ids become padding (left out of the softmax)",
            rows,
            tokens,
        )


def import_from_hf(
    hf_dir: str,
    save_dir: str,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    layers_per_virtual_stage: Optional[int] = None,
    make_vocab_size_divisible_by: int = 128,
    seq_length: Optional[int] = None,
) -> str:
    """Write the HF GPT-2 / Llama model of `hf_dir` as our checkpoint in `save_dir` (release
    folder, the given layout, checksums); returns the release folder."""
    from . import checkpointing as ckpt

    release = ckpt.checkpoint_dir(save_dir, 0, release=True)
    if os.path.exists(release):
        raise FileExistsError(f"{release} exists; choose another --save or remove it first")
    config, sd = read_hf_folder(hf_dir)
    flags = import_flags(config)
    num_layers = int(flags[flags.index("--num-layers") + 1])
    target = cc.target_layout(
        {"transformer": {"num_layers": num_layers}},
        tensor_parallel_size,
        pipeline_parallel_size,
        layers_per_virtual_stage,
    )
    max_pos = int(flags[flags.index("--max-position-embeddings") + 1])
    flags += ["--seq-length", str(seq_length or max_pos)]
    flags += ["--make-vocab-size-divisible-by", str(make_vocab_size_divisible_by)]
    rows = int(config.vocab_size)
    flags += copy_tokenizer(hf_dir, save_dir, rows)
    args = stored_args(flags, target)
    _check_vocab(args, rows)
    tied = not args["model"]["untie_embeddings_and_output_weights"]
    model = our_state_dict(sd, import_family(config), args["transformer"], tied)
    merged = cc.MergedCheckpoint(
        args=args,
        iteration=0,
        release=True,
        model_type="GPT",
        layout=target,
        padded_vocab_size=model[WORD_EMBEDDINGS].shape[0],
        model=model,
        optimizer=None,
        common=dict(_COMMON),
        rng_state={},
    )
    merged.padded_vocab_size = cc.target_vocab_size(merged, target)  # padded once, silently
    files = cc.split_merged(merged, target, keep_optimizer=False)
    folder = cc.save_files(files, save_dir, 0, True, target.pp)
    logger.info("imported %s (%s) as %s in %s", hf_dir, config.model_type, target, folder)
    return folder
