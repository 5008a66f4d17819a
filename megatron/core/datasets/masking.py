"""BERT masked-language-model input corruption (Megatron / original BERT semantics).

`create_masked_lm_predictions` picks the positions the model must predict and corrupts them:

* Candidates are every token except [CLS] and [SEP]. A candidate *unit* is one token, or with
  whole-word masking a word: a token followed by the "##" continuation pieces directly after it
  (`is_continuation[id]` is True for those ids). A continuation piece never joins a unit across a
  special token.
* The number of positions to predict is `min(max_predictions_per_seq,
  max(1, round(len(tokens) * masked_lm_prob)))` (Python's `round`; `len(tokens)` counts the special
  tokens, as Megatron does).
* Spans are n-grams of consecutive units, n in 1..max_ngram with probability proportional to 1/n
  (reversed with `favor_longer_ngram`; or n ~ Geometric(0.2) capped at max_ngram with
  `geometric_dist`). The units are visited in a random order; each visited unit starts a span
  whose n is drawn from the lengths that fit before the last unit (probabilities renormalised).
  A span that would overshoot the budget is shortened one unit at a time; a span that still does
  not fit, or overlaps positions already chosen, is skipped. Selection stops at the budget.
* Each chosen position is replaced by [MASK] with probability 0.8, left unchanged with 0.1, and
  replaced by a uniform random id in [0, vocab_size) with 0.1 (any id, special ones included,
  as Megatron draws from the whole vocabulary).
* With `do_permutation`, a second, disjoint set of spans is chosen the same way and the tokens at
  those positions are permuted among themselves; they are predicted too (labels = originals).

All randomness comes from the `numpy.random.RandomState` passed in, so a sample is a pure function
of its seed. Draws are vectorised per sequence (one permutation, one array of n-gram lengths, one
array each for the 80/10/10 decision and the random ids).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import numpy as np

MASK_PROB = 0.8
"""Probability that a chosen position becomes [MASK]."""

RANDOM_PROB = 0.1
"""Probability that a chosen position becomes a random vocabulary id (the rest stay unchanged)."""

GEOMETRIC_P = 0.2
"""Success probability of the geometric n-gram length distribution (SpanBERT's value)."""


def _unit_bounds(tokens, cls_id, sep_id, is_continuation, do_whole_word_mask):
    """Candidate positions and unit boundaries: unit u is positions[bounds[u]:bounds[u + 1]]."""
    positions = np.flatnonzero((tokens != cls_id) & (tokens != sep_id))
    if not do_whole_word_mask or positions.size == 0:
        return positions, np.arange(positions.size + 1)
    starts = np.ones(positions.size, dtype=bool)
    follows_previous = positions[1:] == positions[:-1] + 1
    starts[1:] = ~(follows_previous & is_continuation[tokens[positions[1:]]])
    bounds = np.append(np.flatnonzero(starts), positions.size)
    return positions, bounds


@functools.lru_cache(maxsize=32)
def _ngram_cdf(max_ngram: int, favor_longer_ngram: bool) -> np.ndarray:
    """[max_ngram, max_ngram]: row k - 1 is the CDF over span lengths 1..k (renormalised),
    padded with 2.0 beyond k so that `(u >= row).sum()` is the drawn length minus one."""
    pvals = 1.0 / np.arange(1, max_ngram + 1)
    if favor_longer_ngram:
        pvals = pvals[::-1]
    cdf = np.full((max_ngram, max_ngram), 2.0)
    for k in range(1, max_ngram + 1):
        cdf[k - 1, :k] = np.cumsum(pvals[:k]) / pvals[:k].sum()
        cdf[k - 1, k - 1] = 1.0
    cdf.flags.writeable = False
    return cdf


def _ngram_lengths(rng, num_units, max_ngram, favor_longer_ngram, geometric_dist):
    """Drawn span length (in units) for a span starting at each unit; int64 [num_units]."""
    fits = np.minimum(max_ngram, num_units - np.arange(num_units))  # lengths that fit
    if geometric_dist:
        return np.minimum(rng.geometric(GEOMETRIC_P, size=num_units), fits)
    cdf = _ngram_cdf(max_ngram, favor_longer_ngram)
    u = rng.random_sample(num_units)
    return 1 + (u[:, None] >= cdf[fits - 1]).sum(axis=1)  # [num_units]


def _select_spans(rng, positions, bounds, budget, covered: bytearray, options) -> List[int]:
    """Greedy span selection over units in random order; marks `covered`; returns positions."""
    num_units = bounds.size - 1
    order = rng.permutation(num_units).tolist()
    lengths = _ngram_lengths(rng, num_units, *options).tolist()
    bounds, positions = bounds.tolist(), positions.tolist()  # Python ints: faster in this loop
    chosen: List[int] = []
    for start in order:
        if len(chosen) >= budget:
            break
        n = lengths[start]
        while n > 0 and len(chosen) + bounds[start + n] - bounds[start] > budget:
            n -= 1
        if n == 0:
            continue
        span = positions[bounds[start] : bounds[start + n]]
        if any(covered[p] for p in span):
            continue
        for p in span:
            covered[p] = 1
        chosen.extend(span)
    return chosen


def create_masked_lm_predictions(
    tokens: np.ndarray,
    *,
    vocab_size: int,
    cls_id: int,
    sep_id: int,
    mask_id: int,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    rng: np.random.RandomState,
    max_ngram: int = 3,
    is_continuation: Optional[np.ndarray] = None,
    do_whole_word_mask: bool = False,
    favor_longer_ngram: bool = False,
    geometric_dist: bool = False,
    do_permutation: bool = False,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose and corrupt the positions a BERT model predicts (semantics in the module docstring).

    Args:
        tokens: int [L]: the sample with its special tokens ([CLS] A [SEP] B [SEP]), unpadded.
        vocab_size: random replacements are drawn uniformly from [0, vocab_size).
        cls_id, sep_id: ids never chosen.
        mask_id: the [MASK] id.
        masked_lm_prob: fraction of tokens to predict (--mask-prob).
        max_predictions_per_seq: upper bound on predicted positions.
        rng: the sample's random state.
        max_ngram: longest span in units.
        is_continuation: bool [vocab_size], True for "##" pieces; needed for whole-word masking.
        do_whole_word_mask: spans are made of whole words instead of single tokens.
        favor_longer_ngram: n-gram probabilities proportional to 1/(max_ngram + 1 - n).
        geometric_dist: n ~ Geometric(0.2) capped at max_ngram instead of 1/n weights.
        do_permutation: also permute a second disjoint set of spans (see module docstring).

    Returns:
        (output_tokens int64 [L], masked_positions int64 [P] ascending, masked_labels int64 [P]:
        the original ids at those positions).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if max_ngram < 1:
        raise ValueError(f"max_ngram must be >= 1, got {max_ngram}")
    if do_whole_word_mask and is_continuation is None:
        raise ValueError(
            "whole-word masking needs is_continuation (bool per vocabulary id, True for '##' "
            "pieces); pass it or a tokenizer with inv_vocab in BertDatasetConfig"
        )
    output = tokens.copy()
    empty = np.zeros(0, dtype=np.int64)
    positions, bounds = _unit_bounds(tokens, cls_id, sep_id, is_continuation, do_whole_word_mask)
    budget = min(max_predictions_per_seq, max(1, int(round(tokens.size * masked_lm_prob))))
    if masked_lm_prob <= 0 or positions.size == 0 or budget <= 0:
        return output, empty, empty
    options = (max_ngram, favor_longer_ngram, geometric_dist)
    covered = bytearray(tokens.size)
    masked = np.sort(
        np.array(_select_spans(rng, positions, bounds, budget, covered, options), dtype=np.int64)
    )
    decision = rng.random_sample(masked.size)
    random_ids = rng.randint(0, vocab_size, size=masked.size)
    to_mask = decision < MASK_PROB
    to_random = decision >= 1.0 - RANDOM_PROB
    output[masked[to_mask]] = mask_id
    output[masked[to_random]] = random_ids[to_random]
    predicted = masked
    if do_permutation:
        permuted = _select_spans(rng, positions, bounds, budget, covered, options)
        if permuted:
            permuted = np.sort(np.array(permuted, dtype=np.int64))
            output[permuted] = tokens[rng.permutation(permuted)]
            predicted = np.sort(np.concatenate([masked, permuted]))
    return output, predicted, tokens[predicted]
