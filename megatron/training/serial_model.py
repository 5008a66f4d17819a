"""A checkpoint of any TP / PP / virtual-PP layout as one serial model on one process.

Tools that use a trained model rather than train it (evaluation, generation, export to other
libraries) read the checkpoint with `checkpoint_convert.load_merged`, which merges every shard
into full tensors, and build the GPT or BERT model of the stored arguments at TP 1 / PP 1
around them. The padded vocabulary rows stay in the embedding; pass the tokenizer's size as
`true_vocab_size` to keep them out of the logits.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Tuple

import torch

from megatron.core.models import BertModel, GPTModel
from megatron.core.transformer.config import TransformerConfig

from .checkpoint_convert import Layout, MergedCheckpoint, load_merged, transformer_config

logger = logging.getLogger(__name__)

_SERIAL = dict(
    sequence_parallel=False,
    recompute_granularity=None,
    recompute_method=None,
    recompute_num_layers=None,
    num_layers_per_virtual_pipeline_stage=None,
)


def serial_config(merged: MergedCheckpoint, dtype: torch.dtype = torch.float32):
    """The stored TransformerConfig at TP 1 / PP 1, no recomputation, parameters in `dtype`."""
    config = transformer_config(merged.args, Layout(1, 1))
    fields = {f.name for f in dataclasses.fields(TransformerConfig) if f.init}
    values = {f: getattr(config, f) for f in fields}
    values.update({k: v for k, v in _SERIAL.items() if k in fields}, params_dtype=dtype)
    return TransformerConfig(**values)


def build_serial_model(
    merged: MergedCheckpoint,
    true_vocab_size: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The GPT / BERT model of a merged checkpoint, its weights loaded, in eval mode."""
    config, model_args = serial_config(merged, dtype), merged.args["model"]
    vocab, max_len = merged.padded_vocab_size, model_args["max_position_embeddings"]
    if merged.model_type == "BERT":
        model = BertModel(
            config,
            vocab,
            max_len,
            add_binary_head=not model_args.get("bert_no_binary_head", False),
            true_vocab_size=true_vocab_size,
        )
    else:
        model = GPTModel(
            config,
            vocab,
            max_len,
            share_embeddings_and_output_weights=not model_args.get(
                "untie_embeddings_and_output_weights", False
            ),
            true_vocab_size=true_vocab_size,
        )
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(merged.model))
    unexpected = sorted(set(merged.model) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the {merged.model_type} model of its own arguments: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(merged.model[name].to(p.dtype))
    return model.eval()


def load_serial_model(
    load_dir: str,
    iteration: Optional[int] = None,
    true_vocab_size: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> Tuple[torch.nn.Module, MergedCheckpoint]:
    """Read the checkpoint in `load_dir` (any layout; default: its latest iteration) and return
    its model on one process with the merged checkpoint (arguments, iteration, model type)."""
    merged = load_merged(load_dir, iteration, verify=verify)
    logger.info(
        "loaded %s iteration %d of %s (TP %d, PP %d, %d virtual stages) as one model",
        merged.model_type,
        merged.iteration,
        load_dir,
        merged.layout.tp,
        merged.layout.pp,
        merged.layout.vpp,
    )
    return build_serial_model(merged, true_vocab_size, dtype), merged
