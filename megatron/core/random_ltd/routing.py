"""Which tokens a random-LTD layer keeps, and how the layer runs on them.

Random-LTD (random layerwise token dropping): selected middle layers process only K of the S tokens
of each sequence; the other tokens skip the layer unchanged. The kept positions are drawn uniformly
without replacement and sorted ascending (so causal attention stays causal among them).

`RandomLTDState` is created per micro-batch and carried with it through the model. The kept
indices of a row in layer l are a pure function of (seed, step, the row's position in the step's
global batch, l): identical on every tensor- and pipeline-parallel rank, the same for every
data-parallel size and micro-batch count (so a global batch computes the same whatever the layout,
and a resume at another DP size continues the same run), different from row to row, and cached
in the state so activation recomputation reuses exactly the same tokens. No mutable state is
shared between layers or micro-batches.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Tuple

import numpy as np
import torch

from megatron.core.counter_rng import stream_key, uniform_u64

from .token_ops import (
    gather_attention_mask,
    gather_rotary_table,
    token_gather,
    token_scatter,
)


def default_layer_ids(num_layers: int) -> Tuple[int, ...]:
    """All layers but the first and the last (0-based layer ids), DeepSpeed's default."""
    return tuple(range(1, num_layers - 1))


_TAG_KEPT = 0x524C5444
"""Separates the kept-token streams from other users of the counter-based random numbers."""


@dataclasses.dataclass
class RandomLTDState:
    """Random-LTD inputs of one micro-batch.

    Attributes:
        seed: the run's --seed.
        step: the global step (1-based, the step this micro-batch belongs to).
        first_row: position in the step's global batch of this micro-batch's first row: rows are
            numbered micro-batch after micro-batch, DP rank after DP rank within one, so that
            micro-batch m of DP rank r with b rows starts at (m * dp_size + r) * b; a row keeps
            the same number whatever the data-parallel size and micro-batch count.
        keep: tokens kept per sequence (K) at this step.
        layer_ids: global 0-based ids of the layers that drop tokens.
    """

    seed: int
    step: int
    first_row: int
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
            idx = kept_indices(
                self.seed, self.step, self.first_row, layer_id, batch, seq_length, self.keep
            )
            self._cache[key] = idx.to(device)
        return self._cache[key]


def kept_indices(
    seed: int, step: int, first_row: int, layer_id: int, batch: int, seq_length: int, keep: int
) -> torch.Tensor:
    """Sorted kept positions [batch, K] (int64) of rows first_row .. first_row + batch - 1.

    Row r keeps the positions of the K smallest of S counter-based random words of the stream
    (seed, step, r, layer): a uniform random K-subset of [0, S), a pure function of those four
    numbers (and K, S), so a row keeps the same tokens in every layout. The low bits of each
    word are replaced by its position, which makes the words distinct and the subset unique.
    """
    if not 0 < keep <= seq_length:
        raise ValueError(
            f"random-LTD keeps {keep} tokens of a sequence of {seq_length}; need 0 < K <= S"
        )
    rows = range(int(first_row), int(first_row) + int(batch))
    keys = np.array([stream_key(seed, _TAG_KEPT, step, layer_id, r) for r in rows], np.uint64)
    words = uniform_u64(keys, seq_length) if batch else np.zeros((0, seq_length), np.uint64)
    bits = np.uint64(max(1, (seq_length - 1).bit_length()))
    words = ((words >> bits) << bits) | np.arange(seq_length, dtype=np.uint64)  # [b, S]
    if keep < seq_length:
        picked = np.argpartition(words, keep - 1, axis=1)[:, :keep]  # [b, K], unordered
    else:
        picked = np.broadcast_to(np.arange(seq_length), words.shape)
    return torch.from_numpy(np.sort(picked, axis=1).astype(np.int64))


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
    if not ids:
        raise ValueError(
            f"random-LTD would drop tokens in no layer (random_ltd_layer_id {list(ids)}, "
            f"{num_layers} layers); list the layers that drop tokens or turn random-LTD off"
        )
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
