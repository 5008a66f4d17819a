"""A checkpoint of any layout as a HF transformers folder (no custom code needed to load it).

The checkpoint is merged into full tensors with serial names (`checkpoint_convert.load_merged`),
then mapped onto the HF class that computes the same function:

- learned absolute positions, LayerNorm, GeLU (the GPT-3 architecture) -> GPT2LMHeadModel. GPT-2
  keeps its linear weights as Conv1D ([in, out]) and its fused c_attn as [q | k | v] over all
  heads, where our linear_qkv holds [q | k | v] per head: the rows are regrouped. Without biases
  (--disable-bias-linear) the GPT-2 biases are zeros, which is the same function.
- rotary positions, RMSNorm, SwiGLU -> LlamaForCausalLM. Both rotate the two halves of each head
  ("rotate half"), so q / k need no permutation; linear_fc1's [gate | up] becomes gate_proj and
  up_proj.
- BERT (learned positions, LayerNorm, GeLU; pre-norm layers with a final norm) ->
  MegatronBertForPreTraining (MegatronBertForMaskedLM without the binary head).

Any other combination raises `UnsupportedArchitecture` naming the option with no HF equivalent.
The padded vocabulary rows are cut back to the tokenizer's size. `hf_config` and
`hf_state_dict` take the stored arguments (`merged.args`), so they also serve the inverse
mapping's tests.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Optional

import torch

from .checkpoint_convert import MergedCheckpoint, load_merged, tokenizer_vocab_size

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Values of --dtype."""

GPT2, LLAMA, BERT = "gpt2", "llama", "megatron-bert"


class UnsupportedArchitecture(ValueError):
    """The checkpoint's architecture has no HF transformers class that computes it."""


# ---- which HF class ---------------------------------------------------------------------------
def _flags(tr: Dict[str, Any], model: Dict[str, Any]) -> Dict[str, str]:
    """The checkpoint's architecture options, spelled as the flags that set them."""
    rope = tr["position_embedding_type"] == "rope"
    return {
        "position": "--position-embedding-type rope" if rope else "learned absolute positions",
        "norm": f"--normalization {tr['normalization']}",
        "mlp": "--swiglu" if tr["swiglu"] else "GeLU MLP (no --swiglu)",
    }


def hf_architecture(args: Dict[str, Any], model_type: str = "GPT") -> str:
    """GPT2, LLAMA or BERT: the HF family that computes the stored architecture.

    Raises UnsupportedArchitecture naming the option that has no HF equivalent.
    """
    tr, model = args["transformer"], args["model"]
    flags = _flags(tr, model)
    rope, rms, swiglu = (
        tr["position_embedding_type"] == "rope",
        tr["normalization"] == "RMSNorm",
        tr["swiglu"],
    )
    if model_type == "BERT":
        family, wanted = BERT, (False, False, False)
    elif rope:
        family, wanted = LLAMA, (True, True, True)
    else:
        family, wanted = GPT2, (False, False, False)
    found = (rope, rms, swiglu)
    if found != wanted:
        odd = [flag for flag, f, w in zip(flags.values(), found, wanted) if f != w]
        cls = {
            GPT2: "GPT2LMHeadModel",
            LLAMA: "LlamaForCausalLM",
            BERT: "MegatronBertForPreTraining",
        }
        raise UnsupportedArchitecture(
            f"no HF transformers class computes this {model_type} architecture "
            f"({', '.join(flags.values())}): the closest, {cls[family]}, differs in "
            f"{', '.join(odd)}. Supported: learned positions + LayerNorm + GeLU (GPT-2, BERT) or "
            "--position-embedding-type rope + --normalization RMSNorm + --swiglu (Llama)"
        )
    _check_heads(tr, family)
    if family == LLAMA and tr.get("rotary_percent", 1.0) != 1.0:
        raise UnsupportedArchitecture(
            f"--rotary-percent {tr['rotary_percent']}: LlamaForCausalLM rotates every channel of "
            "a head; only --rotary-percent 1.0 checkpoints can be exported"
        )
    if family == BERT and not tr["add_bias_linear"]:
        raise UnsupportedArchitecture(
            "--disable-bias-linear: MegatronBertForPreTraining always has linear biases; only BERT "
            "checkpoints trained with biases can be exported"
        )
    return family


def _check_heads(tr: Dict[str, Any], family: str) -> None:
    heads, hidden = tr["num_attention_heads"], tr["hidden_size"]
    kv = tr.get("kv_channels") or hidden // heads
    if family != LLAMA and kv * heads != hidden:
        raise UnsupportedArchitecture(
            f"--kv-channels {kv} x --num-attention-heads {heads} != --hidden-size {hidden}: "
            f"the HF class of this architecture ({family}) derives the head size from the hidden "
            "size; only checkpoints with kv_channels = hidden_size / heads can be exported"
        )


# ---- HF config --------------------------------------------------------------------------------
def hf_config(args: Dict[str, Any], family: str, vocab_size: int, special: Dict[str, int]):
    """The transformers config of the stored arguments (`special`: bos / eos / pad token ids)."""
    import transformers

    tr, model = args["transformer"], args["model"]
    tied = not model.get("untie_embeddings_and_output_weights", False)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=tr["hidden_size"],
        num_hidden_layers=tr["num_layers"],
        num_attention_heads=tr["num_attention_heads"],
        max_position_embeddings=model["max_position_embeddings"],
    )
    if family == GPT2:
        return transformers.GPT2Config(
            n_embd=common.pop("hidden_size"),
            n_layer=common.pop("num_hidden_layers"),
            n_head=common.pop("num_attention_heads"),
            n_positions=common.pop("max_position_embeddings"),
            n_inner=tr["ffn_hidden_size"],
            activation_function="gelu",  # exact erf GeLU, as our MLP
            layer_norm_epsilon=tr["layernorm_epsilon"],
            resid_pdrop=tr["hidden_dropout"],
            embd_pdrop=tr["hidden_dropout"],
            attn_pdrop=tr["attention_dropout"],
            tie_word_embeddings=tied,
            bos_token_id=special.get("bos", special.get("eos")),
            eos_token_id=special.get("eos"),
            **common,
        )
    if family == LLAMA:
        return transformers.LlamaConfig(
            intermediate_size=tr["ffn_hidden_size"],
            num_key_value_heads=tr["num_attention_heads"],
            head_dim=tr["kv_channels"],
            hidden_act="silu",
            rms_norm_eps=tr["layernorm_epsilon"],
            rope_theta=float(tr["rotary_base"]),
            attention_bias=tr["add_bias_linear"],
            mlp_bias=tr["add_bias_linear"],
            attention_dropout=tr["attention_dropout"],
            tie_word_embeddings=tied,
            bos_token_id=special.get("bos"),
            eos_token_id=special.get("eos"),
            pad_token_id=special.get("pad"),
            **common,
        )
    return transformers.MegatronBertConfig(
        intermediate_size=tr["ffn_hidden_size"],
        hidden_act="gelu",
        hidden_dropout_prob=tr["hidden_dropout"],
        attention_probs_dropout_prob=tr["attention_dropout"],
        type_vocab_size=2,
        layer_norm_eps=tr["layernorm_epsilon"],
        pad_token_id=special.get("pad", 0),
        tie_word_embeddings=True,
        **common,
    )


def hf_model_class(family: str, args: Dict[str, Any]):
    """The transformers model class that the exported folder is saved as."""
    import transformers

    if family == GPT2:
        return transformers.GPT2LMHeadModel
    if family == LLAMA:
        return transformers.LlamaForCausalLM
    if args["model"].get("bert_no_binary_head", False):
        return transformers.MegatronBertForMaskedLM
    return transformers.MegatronBertForPreTraining


# ---- tensors ----------------------------------------------------------------------------------
def split_qkv(t: torch.Tensor, heads: int, head_dim: int):
    """(q, k, v) of our fused linear_qkv weight [heads * 3 * d, h] or bias [heads * 3 * d]; each
    [heads * d, ...] in head order (the per-head [q | k | v] blocks regrouped)."""
    rest = tuple(t.shape[1:])
    per_head = t.reshape(heads, 3, head_dim, *rest)  # [heads, 3, d, (h)]
    return tuple(per_head[:, i].reshape(heads * head_dim, *rest) for i in range(3))


def _layers(model: Dict[str, torch.Tensor], block: str, i: int) -> Callable:
    """Reader of layer i's tensors by their name inside the layer (None for a missing bias)."""
    prefix = f"{block}.layers.{i}."
    return lambda name: model.get(prefix + name)


def _linear(out: Dict, hf: str, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    out[hf + ".weight"] = weight
    if bias is not None:
        out[hf + ".bias"] = bias


def _gpt2_layer(get: Callable, tr: Dict[str, Any], p: str) -> Dict[str, torch.Tensor]:
    heads, d, h = tr["num_attention_heads"], tr["kv_channels"], tr["hidden_size"]

    def bias(name: str, size: int) -> torch.Tensor:  # GPT-2 always has biases: zeros = none
        b = get(name)
        return b if b is not None else torch.zeros(size, dtype=get(name[:-4] + "weight").dtype)

    qkv_w = split_qkv(get("self_attention.linear_qkv.weight"), heads, d)
    qkv_b = split_qkv(bias("self_attention.linear_qkv.bias", 3 * heads * d), heads, d)
    out = {
        p + "ln_1.weight": get("input_layernorm.weight"),
        p + "ln_1.bias": get("input_layernorm.bias"),
        p + "attn.c_attn.weight": torch.cat(qkv_w, dim=0).t(),  # Conv1D: [h, 3h]
        p + "attn.c_attn.bias": torch.cat(qkv_b, dim=0),
        p + "attn.c_proj.weight": get("self_attention.linear_proj.weight").t(),
        p + "attn.c_proj.bias": bias("self_attention.linear_proj.bias", h),
        p + "ln_2.weight": get("pre_mlp_layernorm.weight"),
        p + "ln_2.bias": get("pre_mlp_layernorm.bias"),
        p + "mlp.c_fc.weight": get("mlp.linear_fc1.weight").t(),  # [h, ffn]
        p + "mlp.c_fc.bias": bias("mlp.linear_fc1.bias", tr["ffn_hidden_size"]),
        p + "mlp.c_proj.weight": get("mlp.linear_fc2.weight").t(),  # [ffn, h]
        p + "mlp.c_proj.bias": bias("mlp.linear_fc2.bias", h),
    }
    return out


def _llama_layer(get: Callable, tr: Dict[str, Any], p: str) -> Dict[str, torch.Tensor]:
    heads, d, ffn = tr["num_attention_heads"], tr["kv_channels"], tr["ffn_hidden_size"]
    out = {
        p + "input_layernorm.weight": get("input_layernorm.weight"),
        p + "post_attention_layernorm.weight": get("pre_mlp_layernorm.weight"),
    }
    qkv_w = split_qkv(get("self_attention.linear_qkv.weight"), heads, d)
    qkv_b = get("self_attention.linear_qkv.bias")
    qkv_b = split_qkv(qkv_b, heads, d) if qkv_b is not None else (None,) * 3
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), qkv_w, qkv_b):
        _linear(out, p + "self_attn." + name, w, b)
    _linear(
        out,
        p + "self_attn.o_proj",
        get("self_attention.linear_proj.weight"),
        get("self_attention.linear_proj.bias"),
    )
    fc1_w, fc1_b = get("mlp.linear_fc1.weight"), get("mlp.linear_fc1.bias")  # [gate | up]
    _linear(out, p + "mlp.gate_proj", fc1_w[:ffn], None if fc1_b is None else fc1_b[:ffn])
    _linear(out, p + "mlp.up_proj", fc1_w[ffn:], None if fc1_b is None else fc1_b[ffn:])
    _linear(out, p + "mlp.down_proj", get("mlp.linear_fc2.weight"), get("mlp.linear_fc2.bias"))
    return out


def _bert_layer(get: Callable, tr: Dict[str, Any], p: str) -> Dict[str, torch.Tensor]:
    heads, d = tr["num_attention_heads"], tr["kv_channels"]
    out: Dict[str, torch.Tensor] = {}
    _linear(out, p + "attention.ln", get("input_layernorm.weight"), get("input_layernorm.bias"))
    qkv_w = split_qkv(get("self_attention.linear_qkv.weight"), heads, d)
    qkv_b = split_qkv(get("self_attention.linear_qkv.bias"), heads, d)
    for name, w, b in zip(("query", "key", "value"), qkv_w, qkv_b):
        _linear(out, p + "attention.self." + name, w, b)
    for ours, hf in (
        ("self_attention.linear_proj", "attention.output.dense"),
        ("pre_mlp_layernorm", "ln"),
        ("mlp.linear_fc1", "intermediate.dense"),
        ("mlp.linear_fc2", "output.dense"),
    ):
        _linear(out, p + hf, get(ours + ".weight"), get(ours + ".bias"))
    return out


def _norm(out: Dict, hf: str, model: Dict[str, torch.Tensor], ours: str) -> None:
    _linear(out, hf, model[ours + ".weight"], model.get(ours + ".bias"))


def hf_state_dict(
    model: Dict[str, torch.Tensor], args: Dict[str, Any], family: str, vocab_size: int
) -> Dict[str, torch.Tensor]:
    """{HF parameter name: tensor} of our merged serial tensors, the vocabulary cut to
    `vocab_size` rows (tied output weights included under both names)."""
    tr = dict(args["transformer"])
    tr["kv_channels"] = tr.get("kv_channels") or tr["hidden_size"] // tr["num_attention_heads"]
    words = model["embedding.word_embeddings.weight"][:vocab_size]
    block = "encoder" if family == BERT else "decoder"
    layer_fn, prefix = {
        GPT2: (_gpt2_layer, "transformer.h.{}."),
        LLAMA: (_llama_layer, "model.layers.{}."),
        BERT: (_bert_layer, "bert.encoder.layer.{}."),
    }[family]
    out: Dict[str, torch.Tensor] = {}
    for i in range(tr["num_layers"]):
        out.update(layer_fn(_layers(model, block, i), tr, prefix.format(i)))
    output = model.get("output_layer.weight")
    head = words if output is None else output[:vocab_size]
    if family == GPT2:
        out["transformer.wte.weight"] = words
        out["transformer.wpe.weight"] = model["embedding.position_embeddings.weight"]
        _norm(out, "transformer.ln_f", model, "decoder.final_layernorm")
        out["lm_head.weight"] = head
    elif family == LLAMA:
        out["model.embed_tokens.weight"] = words
        _norm(out, "model.norm", model, "decoder.final_layernorm")
        out["lm_head.weight"] = head
    else:
        _bert_heads(out, model, words, vocab_size)
    return out


def _bert_heads(out: Dict, model: Dict[str, torch.Tensor], words, vocab_size: int) -> None:
    out["bert.embeddings.word_embeddings.weight"] = words
    out["bert.embeddings.position_embeddings.weight"] = model[
        "embedding.position_embeddings.weight"
    ]
    out["bert.embeddings.token_type_embeddings.weight"] = model[
        "embedding.tokentype_embeddings.weight"
    ]
    _norm(out, "bert.encoder.ln", model, "encoder.final_layernorm")
    _norm(out, "cls.predictions.transform.dense", model, "lm_head.dense")
    _norm(out, "cls.predictions.transform.LayerNorm", model, "lm_head.layer_norm")
    bias = model["output_layer.bias"][:vocab_size]
    out["cls.predictions.bias"] = bias
    out["cls.predictions.decoder.weight"] = words  # tied to the word embeddings
    out["cls.predictions.decoder.bias"] = bias
    if "binary_head.weight" in model:
        _norm(out, "bert.pooler.dense", model, "pooler.dense")
        _norm(out, "cls.seq_relationship", model, "binary_head")


# ---- the whole export -------------------------------------------------------------------------
def export_vocab_size(merged: MergedCheckpoint, true_vocab_size: Optional[int] = None) -> int:
    """Rows the HF model keeps: the tokenizer's vocabulary (the padding is cut off)."""
    vocab = true_vocab_size or tokenizer_vocab_size(merged.args)
    if vocab is None:
        raise ValueError(
            "the checkpoint's tokenizer cannot be read here, so its vocabulary size is unknown; "
            "pass --true-vocab-size (the tokenizer's number of ids)"
        )
    if not 0 < vocab <= merged.padded_vocab_size:
        raise ValueError(
            f"--true-vocab-size {vocab} must be in [1, {merged.padded_vocab_size}] (the "
            "checkpoint's padded vocabulary)"
        )
    return vocab


def build_hf_model(
    merged: MergedCheckpoint,
    vocab_size: int,
    special: Optional[Dict[str, int]] = None,
    dtype: torch.dtype = torch.float32,
):
    """The transformers model of a merged checkpoint (its weights loaded, eval mode, `dtype`)."""
    family = hf_architecture(merged.args, merged.model_type)
    config = hf_config(merged.args, family, vocab_size, special or {})
    model = hf_model_class(family, merged.args)(config)
    tensors = hf_state_dict(merged.model, merged.args, family, vocab_size)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:  # a mapping bug, or a checkpoint of an unknown version
        raise ValueError(
            f"the checkpoint does not map onto {type(model).__name__}: {err}"
        ) from None
    return model.to(dtype).eval()


def _special_ids(args: Dict[str, Any]) -> Dict[str, int]:
    from megatron.tokenizer import build_stored_tokenizer

    from .hf_tokenizer import special_ids

    try:
        return (
            special_ids(build_stored_tokenizer(args["tokenizer"])) if args.get("tokenizer") else {}
        )
    except (OSError, ValueError) as err:
        logger.warning("WARNING: no special token ids in the HF config (%s)", err)
        return {}


def export_to_hf(
    load_dir: str,
    save_dir: str,
    iteration: Optional[int] = None,
    dtype: str = "fp32",
    true_vocab_size: Optional[int] = None,
    save_tokenizer: bool = True,
    verify: bool = True,
) -> str:
    """Write the checkpoint in `load_dir` (any layout) as a transformers folder `save_dir`
    (config.json, weights, tokenizer files); returns `save_dir`.

    The folder is written under a temporary name and renamed when complete; an existing
    `save_dir` is refused.
    """
    from megatron.core.files import temporary_path

    from .hf_tokenizer import save_hf_tokenizer

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if os.path.exists(save_dir):
        raise FileExistsError(f"--save-dir {save_dir} exists; choose another or remove it first")
    merged = load_merged(load_dir, iteration, verify=verify)
    vocab = export_vocab_size(merged, true_vocab_size)
    model = build_hf_model(merged, vocab, _special_ids(merged.args), DTYPES[dtype])
    tmp = temporary_path(save_dir.rstrip("/"))
    try:
        model.save_pretrained(tmp)
        if save_tokenizer:
            size = save_hf_tokenizer(merged.args.get("tokenizer"), tmp)
            if size is not None and size != vocab:
                raise ValueError(f"the tokenizer has {size} ids but the model keeps {vocab} rows")
        os.rename(tmp, save_dir)
    finally:
        if os.path.exists(tmp):
            import shutil

            shutil.rmtree(tmp)
    logger.info(
        "exported %s iteration %d (%s) as %s (%d-token vocabulary, %s) to %s",
        merged.model_type,
        merged.iteration,
        merged.layout,
        type(model).__name__,
        vocab,
        dtype,
        save_dir,
    )
    return save_dir
