"""Which tokens a random-LTD layer keeps, and how the layer runs on them.

Random-LTD (random layerwise token dropping): selected middle layers process only K of the S tokens
of each sequence; the other tokens skip the layer unchanged. The kept positions are drawn uniformly
without replacement and sorted ascending (so causal attention stays causal among them).

`RandomLTDState` is created per micro-batch and carried with it through the model. The kept
indices of layer l are a pure function of (seed, step, micro-batch, l, data-parallel rank):
identical on every tensor-parallel rank of a group, different across data-parallel ranks, and
cached in the state so activation recomputation reuses exactly the same tokens. No mutable state
is shared between layers or micro-batches.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Tuple

import torch

from megatron.core.utils import stable_seed

from .token_ops import (
    gather_attention_mask,
    gather_rotary_table,
    token_gather,
    token_scatter,
    token_sort,
)


def default_layer_ids(num_layers: int) -> Tuple[int, ...]:
    """All layers but the first and the last (0-based layer ids), DeepSpeed's default."""
    return tuple(range(1, num_layers - 1))


@dataclasses.dataclass
class RandomLTDState:
    """Random-LTD inputs of one micro-batch.

    Attributes:
        seed: the run's --seed.
        step: the global step (1-based, the step this micro-batch belongs to).
        microbatch: index of the micro-batch within the step.
        dp_rank: data-parallel rank (kept tokens differ across DP ranks).
        keep: tokens kept per sequence (K) at this step.
        layer_ids: global 0-based ids of the layers that drop tokens.
    """

    seed: int
    step: int
    microbatch: int
    dp_rank: int
    keep: int
    layer_ids: FrozenSet[int]
    _cache: Dict[Tuple[int, int, int], torch.Tensor] = dataclasses.field(
        default_factory=dict, repr=False
    )

    def applies(self, layer_id: int, seq_length: int) -> bool:
        """Whether layer `layer_id` (0-based, global) drops tokens for this sequence length."""
        return layer_id in self.layer_ids and self.keep < seq_length

    def indices(self, layer_id: int, batch: int, seq_length: int, device) -> torch.Tensor:
        """Sorted kept positions [b, K] (int64) of one layer; the same tensor on every call."""
        key = (layer_id, batch, seq_length)
        if key not in self._cache:
            self._cache[key] = kept_indices(
                self.seed,
                self.step,
                self.microbatch,
                layer_id,
                self.dp_rank,
                batch,
                seq_length,
                self.keep,
            ).to(device)
        return self._cache[key]


def kept_indices(
    seed, step, microbatch, layer_id, dp_rank, batch, seq_length, keep
) -> torch.Tensor:
    """K positions per row drawn uniformly without replacement from [0, S), sorted: [b, K]."""
    if not 0 < keep <= seq_length:
        raise ValueError(
            f"random-LTD keeps {keep} tokens of a sequence of {seq_length}; need 0 < K <= S"
        )
    gen = torch.Generator()
    gen.manual_seed(stable_seed(seed, f"random-ltd:{step}:{microbatch}:{layer_id}:{dp_rank}"))
    keys = torch.rand(batch, seq_length, generator=gen)
    picked = keys.argsort(dim=1)[:, :keep]  # a uniform random K-subset of each row
    return token_sort(picked)


def _gather_padding_mask(mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Key-only masks [b or 1, 1, 1, s] -> [b, 1, 1, k]."""
    b = idx.shape[0]
    full = mask.expand(b, *mask.shape[1:])
    cols = idx.view(b, 1, 1, -1).expand(b, full.shape[1], 1, idx.shape[1])
    return full.gather(-1, cols)


def run_on_kept_tokens(layer_fn, hidden, attention_mask, rotary, idx):
    """Gather the kept tokens, run `layer_fn(hidden, mask, rotary)` on them, scatter back.

    Args:
        layer_fn: the dense layer computation.
        hidden: [s, b, h] layer input; dropped tokens pass through unchanged.
        attention_mask: None (causal or no mask), [b or 1, 1, s, s] or key-only [b or 1, 1, 1, s]
            (True = masked); rows and columns are gathered per sample.
        rotary: None or (cos, sin) tables [s, b or 1, 1, d], gathered per sample.
        idx: sorted kept positions [b, k].
    """
    kept = token_gather(hidden, idx)  # [k, b, h]
    mask = None
    if attention_mask is not None:
        if attention_mask.shape[-2] == 1:
            mask = _gather_padding_mask(attention_mask, idx)
        else:
            mask = gather_attention_mask(attention_mask, idx)
    rot = None
    if rotary is not None:
        rot = (gather_rotary_table(rotary[0], idx), gather_rotary_table(rotary[1], idx))
    out = layer_fn(kept, mask, rot)  # [k, b, h]
    return token_scatter(hidden, out, idx)


def check_random_ltd_config(num_layers: int, layer_ids, sequence_parallel: bool) -> Tuple[int, ...]:
    """Validated, sorted layer ids (default: all but first and last)."""
    ids = tuple(sorted(set(layer_ids))) if layer_ids is not None else default_layer_ids(num_layers)
    bad = [i for i in ids if not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"random_ltd_layer_id {bad} outside the model's layers 0..{num_layers - 1}; list "
            "global "
            "0-based layer ids"
        )
    if sequence_parallel:
        raise ValueError(
            "random-LTD does not support --sequence-parallel (each TP rank holds only a slice of "
            "the "
            "sequence, but tokens are dropped per whole sequence); turn one of them off"
        )
    return ids
