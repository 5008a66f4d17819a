"""Tensor parallelism: collectives as autograd pairs, sharded layers, vocab-parallel cross
entropy, RNG streams and layout-independent initialisation."""

from .cross_entropy import vocab_parallel_cross_entropy
from .init import initialize_parameters
from .layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    parallel_lm_logits,
    set_init,
)
from .random import MODEL_PARALLEL_RNG, RNGStatesTracker, checkpoint, model_parallel_seed

__all__ = [
    "MODEL_PARALLEL_RNG",
    "ColumnParallelLinear",
    "RNGStatesTracker",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "checkpoint",
    "initialize_parameters",
    "model_parallel_seed",
    "parallel_lm_logits",
    "set_init",
    "vocab_parallel_cross_entropy",
]
