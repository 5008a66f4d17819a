"""Pieces shared by the GPT and BERT models: embeddings, vocabulary padding, global names."""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from ..parallel_state import ParallelState
from ..tensor_parallel import vocab_parallel_cross_entropy
from ..tensor_parallel.init import initialize_parameters
from ..tensor_parallel.layers import (
    ColumnParallelLinear,
    VocabParallelEmbedding,
    mark_vocab_padding,
    set_init,
)
from ..tensor_parallel.mappings import (
    gather_from_tensor_parallel_region,
    scatter_to_sequence_parallel_region,
)
from ..transformer.config import TransformerConfig

WORD_EMBEDDINGS = "embedding.word_embeddings.weight"


def pad_vocab_size(vocab_size: int, divisible_by: int, tp_size: int) -> int:
    """Round the vocabulary up to a multiple of divisible_by * tp
    (--make-vocab-size-divisible-by).

    The padding rows are no token: the models leave them out of the softmax, the loss and the
    logits they return (`true_vocab_size`), so the padded size, which grows with TP, does not
    change the model.
    """
    multiple = divisible_by * tp_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


class LanguageModelEmbedding(torch.nn.Module):
    """Word (+ learned position) (+ token type) embeddings, then dropout; output [s, b, h].

    Args:
        config: transformer config (hidden size, dropout, init std, sequence parallel).
        vocab_size: padded vocabulary size.
        max_sequence_length: rows of the learned position table (--max-position-embeddings);
            0 disables learned positions (rotary models).
        num_tokentypes: rows of the token-type table (BERT: 2), 0 for none.
        true_vocab_size: the real vocabulary (the tokenizer's); the rows beyond it are padding,
            initialised to zero (None: no padding).
    """

    def __init__(
        self,
        config: TransformerConfig,
        vocab_size: int,
        max_sequence_length: int,
        num_tokentypes: int = 0,
        tp_group=None,
        rng_tracker=None,
        true_vocab_size: Optional[int] = None,
    ):
        super().__init__()
        self.config, self.tp_group, self.rng_tracker = config, tp_group, rng_tracker
        self.word_embeddings = VocabParallelEmbedding(
            vocab_size,
            config.hidden_size,
            tp_group=tp_group,
            init_std=config.init_method_std,
            params_dtype=config.params_dtype,
        )
        mark_vocab_padding(self.word_embeddings.weight, true_vocab_size)
        self.position_embeddings = None
        if max_sequence_length > 0:
            self.position_embeddings = torch.nn.Embedding(
                max_sequence_length, config.hidden_size, dtype=config.params_dtype
            )
            set_init(self.position_embeddings.weight, "normal", config.init_method_std)
        self.tokentype_embeddings = None
        if num_tokentypes > 0:
            self.tokentype_embeddings = torch.nn.Embedding(
                num_tokentypes, config.hidden_size, dtype=config.params_dtype
            )
            set_init(self.tokentype_embeddings.weight, "normal", config.init_method_std)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        tokentype_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """input_ids [b, s] -> [s, b, h] (or [s/tp, b, h] under sequence parallelism)."""
        emb = self.word_embeddings(input_ids)  # [s, b, h]
        if self.position_embeddings is not None:
            if position_ids is None:
                raise ValueError("learned position embeddings need position_ids")
            if position_ids.max() >= self.position_embeddings.num_embeddings:
                raise ValueError(
                    f"position {int(position_ids.max())} >= --max-position-embeddings "
                    f"{self.position_embeddings.num_embeddings}"
                )
            emb = emb + self.position_embeddings(position_ids.t())
        if self.tokentype_embeddings is not None and tokentype_ids is not None:
            emb = emb + self.tokentype_embeddings(tokentype_ids.t())
        if self.config.sequence_parallel:
            emb = scatter_to_sequence_parallel_region(emb, self.tp_group)
            fork = (
                self.rng_tracker.fork()
                if self.rng_tracker is not None
                else contextlib.nullcontext()
            )
        else:
            fork = contextlib.nullcontext()
        p = self.config.hidden_dropout if self.training else 0.0
        with fork:
            return F.dropout(emb, p=p, training=p > 0)


_LAYER_RE = re.compile(r"^(decoder|encoder)\.layers\.(\d+)\.")


def global_named_parameters(model: torch.nn.Module) -> Iterator[Tuple[str, torch.nn.Parameter]]:
    """(name, param) with pipeline-local layer indices replaced by global ones.

    The names are the same for a layer wherever the pipeline layout puts it, so they key both
    initialisation and checkpoints.
    """
    layers = model.transformer_block.layers
    for name, p in model.named_parameters():
        m = _LAYER_RE.match(name)
        if m:
            global_idx = layers[int(m.group(2))].layer_id
            name = f"{m.group(1)}.layers.{global_idx}." + name[m.end() :]
        yield name, p


class LanguageModelChunk(torch.nn.Module):
    """What GPT and BERT chunks share: their place in the layout, pipeline input, initialisation,
    the (tied) output weight.

    Subclasses call `_place` and `_set_vocab` first, set `embedding` (first stage), then call
    `_build_output_layer` (a separate output projection, or None when the last stage reuses the
    word embeddings).

    The transformer stack is the attribute named by `block_name`: `decoder` (GPT) or `encoder`
    (BERT), as in megatron-core, so parameter names match megatron-core's.
    """

    block_name = "decoder"

    @property
    def transformer_block(self) -> torch.nn.Module:
        """This chunk's TransformerBlock (`decoder` or `encoder`, see `block_name`)."""
        return getattr(self, self.block_name)

    def _place(
        self,
        config: TransformerConfig,
        pstate: ParallelState,
        pre_process: bool,
        post_process: bool,
        vp_rank: Optional[int],
    ) -> Tuple[int, int]:
        """Check that `config` fits the layout of `pstate` and that `vp_rank` is one of its model
        chunks; keep them; return (global index of this chunk's first layer, its layers)."""
        config.check_layout(pstate.layout)
        chunks = pstate.vpp_size or 1
        if not (vp_rank in range(chunks) or (vp_rank is None and chunks == 1)):
            raise ValueError(
                f"vp_rank {vp_rank} is not a model chunk of this rank: the layout has {chunks} "
                f"per pipeline rank; pass vp_rank 0 .. {chunks - 1}"
            )
        self.config, self.pstate = config, pstate
        self.pre_process, self.post_process, self.vp_rank = pre_process, post_process, vp_rank
        offset = config.layer_offset(pstate.layout, pstate.pp_rank, vp_rank)
        return offset, config.num_layers_per_chunk(pstate.layout)

    def _set_vocab(self, vocab_size: int, true_vocab_size: Optional[int]) -> None:
        """Keep the padded vocabulary (rows of the embedding tables) and the real one (ids the
        tokenizer makes; None: the same); the ids in between are padding."""
        true_vocab_size = vocab_size if true_vocab_size is None else true_vocab_size
        if not 0 < true_vocab_size <= vocab_size:
            raise ValueError(
                f"true_vocab_size {true_vocab_size} must be in [1, vocab_size {vocab_size}] (the "
                "tokenizer's vocabulary and its size padded by --make-vocab-size-divisible-by)"
            )
        self.vocab_size, self.true_vocab_size = vocab_size, true_vocab_size

    def _loss_or_logits(self, logits: torch.Tensor, labels: Optional[torch.Tensor]):
        """From this rank's logits shard [s, b, v/tp]: the per-token loss [b, s] (fp32) of labels
        [b, s], or without labels the logits [b, s, true_vocab_size] gathered over the TP group.

        Padding ids are in neither: they take no part in the softmax and are never returned, so
        neither the loss, nor the gradients, nor what is sampled depend on the padding.
        """
        tp_group = self.pstate.tp_group
        if labels is None:
            full = gather_from_tensor_parallel_region(logits, tp_group)  # [s, b, v]
            return full.transpose(0, 1)[..., : self.true_vocab_size]
        loss = vocab_parallel_cross_entropy(logits, labels.t(), tp_group, self.true_vocab_size)
        return loss.t()

    def _build_output_layer(self, vocab_size: int, tied: bool, sequence_parallel: bool) -> None:
        """The projection to vocabulary logits of the last stage.

        Untied: its own weight. Tied on a single stage: None (`output_weight` returns the word
        embeddings). Tied across stages: the last stage's copy of the word embeddings, with their
        init key, marked `shared_embedding` like the first stage's embeddings so their gradients
        are summed over the embedding group.
        """
        self.output_layer = None
        config = self.config
        if self.post_process and not (tied and self.pre_process):
            self.output_layer = ColumnParallelLinear(
                config.hidden_size,
                vocab_size,
                tp_group=self.pstate.tp_group,
                bias=False,
                init_std=config.init_method_std,
                sequence_parallel=sequence_parallel,
                params_dtype=config.params_dtype,
            )
            mark_vocab_padding(self.output_layer.weight, self.true_vocab_size)
            if tied:
                w = self.output_layer.weight
                w.init_key, w.shared_embedding = WORD_EMBEDDINGS, True
        if tied and self.pre_process and not self.post_process:
            self.embedding.word_embeddings.weight.shared_embedding = True

    def set_input_tensor(self, input_tensor) -> None:
        """Activations [s, b, h] from the previous pipeline stage for the next forward.

        The pipeline schedules call this before each forward of a chunk that is not the first
        stage; forward uses it when no `hidden_input` is passed. None clears it. A one-element
        list (Megatron's calling convention) is accepted.
        """
        if isinstance(input_tensor, (list, tuple)):
            (input_tensor,) = input_tensor
        self._input_tensor = input_tensor

    def initialize(self, seed: int, generator_device: str = "cpu") -> None:
        """Layout-independent init of every parameter (see tensor_parallel.init)."""
        initialize_parameters(
            global_named_parameters(self),
            seed,
            self.pstate.tp_rank,
            self.pstate.tp_size,
            generator_device,
        )

    def output_weight(self) -> torch.Tensor:
        """The weight that maps hidden states to this rank's vocabulary shard of logits."""
        weight = getattr(self.output_layer, "weight", None)
        if weight is not None:
            return weight
        return self.embedding.word_embeddings.weight
