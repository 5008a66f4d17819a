"""GPT: embeddings, causal transformer stack, (tied) output layer and vocab-parallel loss."""

from __future__ import annotations

from typing import Optional

import torch

from ..parallel_state import ParallelState
from ..tensor_parallel.layers import parallel_lm_logits
from ..transformer.block import TransformerBlock
from ..transformer.config import TransformerConfig
from ..transformer.rotary import RotaryEmbedding
from .common import LanguageModelChunk, LanguageModelEmbedding


class GPTModel(LanguageModelChunk):
    """One pipeline chunk of a GPT model.

    Args:
        config: transformer configuration.
        vocab_size: padded vocabulary size.
        max_sequence_length: --max-position-embeddings (rows of the learned position table).
        pstate: process groups of this rank.
        rng_tracker: dropout RNG streams (None: dropout uses the default stream only).
        pre_process: this chunk holds the embeddings (first stage).
        post_process: this chunk holds the output layer (last stage).
        share_embeddings_and_output_weights: tied input/output embeddings (GPT-3 default;
            --untie-embeddings-and-output-weights turns it off).
        vp_rank: which of this rank's model chunks this is (interleaved schedule; None without
            virtual pipeline stages).
        true_vocab_size: the tokenizer's vocabulary; the ids from it up to `vocab_size` are
            padding: left out of the softmax, the loss and the returned logits, and their rows
            start (and, without gradient, stay) at zero. None: no padding.

    Raises:
        ValueError: when the configuration does not fit the layout of `pstate` (heads or MLP
            columns over TP, layers over the model chunks), vp_rank is not one of its chunks or
            true_vocab_size is not in [1, vocab_size].
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
        share_embeddings_and_output_weights: bool = True,
        vp_rank: Optional[int] = None,
        true_vocab_size: Optional[int] = None,
    ):
        super().__init__()
        pstate = pstate or ParallelState.single()
        offset, num_layers = self._place(config, pstate, pre_process, post_process, vp_rank)
        self._set_vocab(vocab_size, true_vocab_size)
        self.share_embeddings_and_output_weights = share_embeddings_and_output_weights
        tp_group = pstate.tp_group
        rope = config.position_embedding_type == "rope"
        if pre_process:
            self.embedding = LanguageModelEmbedding(
                config,
                vocab_size,
                0 if rope else max_sequence_length,
                0,
                tp_group,
                rng_tracker,
                self.true_vocab_size,
            )
        self.rotary = (
            RotaryEmbedding(config.kv_channels, config.rotary_percent, config.rotary_base)
            if rope
            else None
        )
        self.decoder = TransformerBlock(
            config, offset, num_layers, True, post_process, tp_group, rng_tracker
        )
        self._build_output_layer(
            vocab_size, share_embeddings_and_output_weights, config.sequence_parallel
        )
        self._input_tensor: Optional[torch.Tensor] = None

    def forward(
        self,
        input_ids: Optional[torch.Tensor],
        position_ids: Optional[torch.Tensor],
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        hidden_input: Optional[torch.Tensor] = None,
        random_ltd=None,
    ) -> torch.Tensor:
        """Run this chunk.

        Args:
            input_ids: [b, s] token ids (first stage).
            position_ids: [b, s] positions (learned embeddings and rotary tables).
            attention_mask: None (plain causal) or bool [b, 1, s, s], True = masked out.
            labels: [b, s] next-token targets (last stage); when given the result is the
                per-token loss.
            random_ltd: RandomLTDState of this micro-batch (training with random-LTD) or None.
            hidden_input: [s, b, h] activations from the previous stage (not first stage;
                default: the tensor given to set_input_tensor).

        Returns:
            [s, b, h] hidden states (not the last stage), else per-token loss [b, s] (fp32) when
            labels are given, else logits [b, s, true_vocab_size] gathered over the TP group.
        """
        if self.pre_process:
            hidden = self.embedding(input_ids, position_ids)
        else:
            hidden = hidden_input if hidden_input is not None else self._input_tensor
            if hidden is None:
                raise ValueError(
                    "this GPT chunk is not the first pipeline stage: pass hidden_input or call "
                    "set_input_tensor with the previous stage's activations first"
                )
        rotary = self.rotary(position_ids) if self.rotary is not None else None
        hidden = self.decoder(hidden, attention_mask, rotary, random_ltd)
        if not self.post_process:
            return hidden
        logits = parallel_lm_logits(
            hidden, self.output_weight(), self.pstate.tp_group, self.config.sequence_parallel
        )  # [s, b, v/tp]
        return self._loss_or_logits(logits, labels)
