"""BERT: embeddings with token types, bidirectional transformer, MLM head and binary head."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..parallel_state import ParallelState
from ..tensor_parallel.layers import (
    mark_tensor_parallel,
    mark_vocab_padding,
    parallel_lm_logits,
    set_init,
)
from ..tensor_parallel.mappings import gather_from_sequence_parallel_region, group_size
from ..transformer.block import TransformerBlock
from ..transformer.config import TransformerConfig
from ..transformer.norm import build_norm
from .common import LanguageModelChunk, LanguageModelEmbedding


def _linear(in_f: int, out_f: int, config: TransformerConfig) -> torch.nn.Linear:
    lin = torch.nn.Linear(in_f, out_f, dtype=config.params_dtype)
    set_init(lin.weight, "normal", config.init_method_std)
    set_init(lin.bias, "zeros")
    return lin


class BertLMHead(torch.nn.Module):
    """dense -> GeLU -> norm; the model then takes logits against the (tied) word embeddings
    plus the vocab-parallel `output_layer.bias`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.dense = _linear(config.hidden_size, config.hidden_size, config)
        self.layer_norm = build_norm(config, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[s, b, h] -> transformed [s, b, h] (logits are taken by the model)."""
        return self.layer_norm(F.gelu(self.dense(hidden)))


class BertPooler(torch.nn.Module):
    """tanh(dense(h)) of the first ([CLS]) position."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.dense = _linear(config.hidden_size, config.hidden_size, config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[s, b, h] -> pooled [b, h]."""
        return torch.tanh(self.dense(hidden[0]))


class _OutputBias(torch.nn.Module):
    """The output layer of a BERT chunk whose MLM head reuses the word embeddings of the same
    chunk: only the bias (megatron-core's `output_layer.bias`)."""

    weight = None


def _add_output_bias(layer: torch.nn.Module, per_rank: int, config, true_vocab_size) -> None:
    """Give `layer` the vocab-parallel MLM bias (zeros; padding ids marked)."""
    layer.bias = torch.nn.Parameter(torch.empty(per_rank, dtype=config.params_dtype))
    set_init(layer.bias, "zeros")
    mark_tensor_parallel(layer.bias, 0)
    mark_vocab_padding(layer.bias, true_vocab_size)


class BertModel(LanguageModelChunk):
    """One pipeline chunk of a BERT model.

    Parameter names are megatron-core's: `embedding.*`, `encoder.layers.N.*`,
    `encoder.final_layernorm`, `lm_head.dense`, `lm_head.layer_norm`, `output_layer.bias` (the
    MLM bias; plus `output_layer.weight`, the last stage's copy of the word embeddings, when
    they are on another stage), `pooler.dense`, `binary_head`.

    Args:
        config: transformer configuration.
        vocab_size: padded vocabulary size.
        max_sequence_length: --max-position-embeddings.
        pstate / rng_tracker / pre_process / post_process / vp_rank: as for GPTModel.
        add_binary_head: NSP/SOP classifier on the pooled [CLS] state (off with
            --bert-no-binary-head).
        num_tokentypes: token-type embeddings (2 for sentence pairs).
        true_vocab_size: the tokenizer's vocabulary; the ids from it up to `vocab_size` are
            padding (see GPTModel). None: no padding.
    """

    def __init__(
        self,
        config: TransformerConfig,
        vocab_size: int,
        max_sequence_length: int,
        pstate: Optional[ParallelState] = None,
        rng_tracker=None,
        pre_process: bool = True,
        post_process: bool = True,
        add_binary_head: bool = True,
        num_tokentypes: int = 2,
        vp_rank: Optional[int] = None,
        true_vocab_size: Optional[int] = None,
    ):
        super().__init__()
        self.block_name = "encoder"
        pstate = pstate or ParallelState.single()
        offset, num_layers = self._place(config, pstate, pre_process, post_process, vp_rank)
        self._set_vocab(vocab_size, true_vocab_size)
        self.add_binary_head = add_binary_head
        tp_group = pstate.tp_group
        if pre_process:
            self.embedding = LanguageModelEmbedding(
                config,
                vocab_size,
                max_sequence_length,
                num_tokentypes,
                tp_group,
                rng_tracker,
                self.true_vocab_size,
            )
        self.encoder = TransformerBlock(
            config, offset, num_layers, False, post_process, tp_group, rng_tracker
        )
        if post_process:
            self.lm_head = BertLMHead(config)
        # The MLM head always uses the word embeddings; the heads see the gathered sequence.
        self._build_output_layer(vocab_size, tied=True, sequence_parallel=False)
        if post_process:
            if self.output_layer is None:
                self.output_layer = _OutputBias()
            per_rank = vocab_size // group_size(tp_group)
            _add_output_bias(self.output_layer, per_rank, config, self.true_vocab_size)
        if post_process and add_binary_head:
            self.pooler = BertPooler(config)
            self.binary_head = _linear(config.hidden_size, 2, config)
        self._input_tensor: Optional[torch.Tensor] = None

    def forward(
        self,
        input_ids: Optional[torch.Tensor],
        padding_mask: torch.Tensor,
        tokentype_ids: Optional[torch.Tensor] = None,
        lm_labels: Optional[torch.Tensor] = None,
        hidden_input: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        random_ltd=None,
    ):
        """Run this chunk.

        Args:
            input_ids: [b, s] (first stage); padding_mask: [b, s], 1 for real tokens.
            tokentype_ids: [b, s] segment ids; lm_labels: [b, s] MLM targets (any value where
                not predicted; the caller masks the loss).
            hidden_input: [s, b, h] from the previous stage (default: the tensor given to
                set_input_tensor).
            position_ids: [b, s]; default 0..s-1.
            random_ltd: RandomLTDState of this micro-batch (training with random-LTD) or None.

        Returns:
            hidden [s, b, h] on non-last stages; else (lm_loss [b, s] or logits
            [b, s, true_vocab_size], binary logits [b, 2] or None).
        """
        b, s = padding_mask.shape
        # Mask padded keys only; padded query rows still attend (their outputs are not used),
        # which keeps every softmax row non-empty.
        attention_mask = (padding_mask == 0).view(b, 1, 1, s)
        if self.pre_process:
            if position_ids is None:
                position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)
            hidden = self.embedding(input_ids, position_ids, tokentype_ids)
        else:
            hidden = hidden_input if hidden_input is not None else self._input_tensor
            if hidden is None:
                raise ValueError(
                    "this BERT chunk is not the first pipeline stage: pass hidden_input or call "
                    "set_input_tensor with the previous stage's activations first"
                )
        hidden = self.encoder(hidden, attention_mask, None, random_ltd)
        if not self.post_process:
            return hidden
        return self._heads(hidden, lm_labels)

    def _heads(self, hidden: torch.Tensor, lm_labels: Optional[torch.Tensor]):
        tp_group = self.pstate.tp_group
        if self.config.sequence_parallel:
            # Heads run replicated on every TP rank: gather the sequence once.
            hidden = gather_from_sequence_parallel_region(hidden, tp_group, grad_is_partial=False)
        binary_logits = None
        if self.add_binary_head:
            pooled = self.pooler(hidden)  # [CLS] state, [b, h]
            binary_logits = self.binary_head(pooled)  # [b, 2]
        transformed = self.lm_head(hidden)  # [s, b, h]
        logits = parallel_lm_logits(
            transformed, self.output_weight(), tp_group, False, self.output_layer.bias
        )
        return self._loss_or_logits(logits, lm_labels), binary_logits
