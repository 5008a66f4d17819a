"""Pure-Python reference of the BERT sample mapping builder in csrc/data_helpers/bert_helpers.cpp,
and `truncate_seq_pair`, the segment truncation shared by `BertDataset` and the replay of its
random draws (`bert_sample_source`).

`build_mapping_reference` here and `megatron.core.datasets.helpers_cpp.build_mapping` return
bit-identical results for the same inputs; the C++ version is ~100x faster. Callers use the
dispatching `megatron.core.datasets.helpers.build_mapping`, which runs the C++ version when it is
built (see `megatron.core.kernels`) and this reference otherwise.

Algorithm (the specification both implementations follow):

1. For each epoch (at most `num_epochs`; stop before starting an epoch once at least
   `max_num_samples` rows exist, so only whole epochs are emitted), walk the documents in order.
   Document `d` holds sentences `[docs[d], docs[d + 1])`.
2. A document is skipped when it has fewer than `min_num_sent` sentences (counted as `empty_docs`
   when it has none, else `short_docs`) or when any of its sentences is longer than
   `long_sentence_len` tokens (`long_sentence_docs`). Counted once per document, not per epoch.
3. An eligible document is cut into consecutive chunks. Each chunk draws a target length when it
   starts (see `_target_length`: `max_seq_length`, or with probability `short_seq_prob` a uniform
   length in `[2, max_seq_length]`). Sentences are added to the chunk one by one; after adding
   sentence `s` the chunk is emitted as a row when
   - `s` is the last sentence of the document, or
   - its length is >= the target, it has >= `min_num_sent` sentences, and more than one sentence
     of the document remains after `s`.
   The last rule means the final chunk of a document never consists of one lone sentence unless
   the document has only one, so with `min_num_sent = 2` every row has >= 2 sentences and can be
   split into non-empty segments A and B. A row's length may exceed its target (the dataset
   truncates) and the last chunk may be shorter.
4. Each row is `(first sentence, end sentence (exclusive), target length)`.
5. The rows are shuffled with a Fisher-Yates shuffle (`i` from N-1 down to 1, swap with
   `j = uniform_int(i + 1)`).

Random numbers come from splitmix64 (`SplitMix64`): the chunking stream is seeded with `seed`, the
shuffle stream with `seed + 1` (both modulo 2^64). These are this project's own numbers; they do
not reproduce Megatron-LM's mt19937-based mapping, only its semantics.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

LONG_SENTENCE_LEN = 512
"""Documents with a sentence longer than this many tokens are skipped (Megatron's value)."""

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


class SplitMix64:
    """splitmix64 generator with the exact integer/double routines of the C++ builder.

    Args:
        seed: any Python int; taken modulo 2^64 (so -1 and 2^64 - 1 are the same seed).
    """

    def __init__(self, seed: int):
        self.state = seed & _MASK64

    def next_u64(self) -> int:
        """Next raw 64-bit output."""
        self.state = (self.state + _GAMMA) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform_double(self) -> float:
        """Uniform float in [0, 1): the top 53 bits of one output times 2^-53 (exact)."""
        return (self.next_u64() >> 11) * (1.0 / 9007199254740992.0)

    def uniform_int(self, n: int) -> int:
        """Uniform int in [0, n) by multiply-high: (output * n) >> 64."""
        return (self.next_u64() * n) >> 64


def _target_length(rng: SplitMix64, max_seq_length: int, short_seq_prob: float) -> int:
    # One double per chunk always, then one int only for a short chunk.
    if rng.uniform_double() < short_seq_prob:
        return 2 + rng.uniform_int(max_seq_length - 1)
    return max_seq_length


def _chunk_document(sizes, first, last, max_seq_length, short_seq_prob, min_num_sent, rng, rows):
    start, seq_len, num_sent, target = first, 0, 0, 0
    for s in range(first, last):
        if num_sent == 0:
            target = _target_length(rng, max_seq_length, short_seq_prob)
        seq_len += sizes[s]
        num_sent += 1
        remaining = last - s - 1
        if remaining == 0 or (seq_len >= target and num_sent >= min_num_sent and remaining > 1):
            rows.append((start, s + 1, target))
            start = s + 1
            seq_len = num_sent = 0


def _check_arguments(
    docs,
    sizes,
    num_epochs,
    max_num_samples,
    max_seq_length,
    short_seq_prob,
    min_num_sent,
    long_sentence_len,
) -> None:
    if docs.ndim != 1 or sizes.ndim != 1:
        raise ValueError("build_mapping: docs and sizes must be 1-D arrays")
    if docs.size < 1:
        raise ValueError(
            "build_mapping: docs must hold at least one boundary (documents + 1 entries)"
        )
    bad = (docs < 0) | (docs > sizes.size)
    bad[1:] |= docs[1:] < docs[:-1]
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"build_mapping: docs[{i}] = {docs[i]} is out of order or outside [0, {sizes.size}] "
            "(the number of sentences in sizes)"
        )
    if num_epochs < 1:
        raise ValueError(f"build_mapping: num_epochs must be >= 1, got {num_epochs}")
    if max_num_samples < 0:
        raise ValueError(f"build_mapping: max_num_samples must be >= 0, got {max_num_samples}")
    if max_seq_length < 2:
        raise ValueError(
            "build_mapping: max_seq_length must be >= 2 (increase --seq-length), got "
            f"{max_seq_length}"
        )
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(
            "build_mapping: short_seq_prob must be in [0, 1] (--short-seq-prob), got "
            f"{short_seq_prob}"
        )
    if min_num_sent < 1:
        raise ValueError(f"build_mapping: min_num_sent must be >= 1, got {min_num_sent}")
    if long_sentence_len < 1:
        raise ValueError(f"build_mapping: long_sentence_len must be >= 1, got {long_sentence_len}")


def _eligible_documents(docs, sizes, min_num_sent, long_sentence_len):
    """Boolean [num_docs] eligibility and the skip counts (vectorised)."""
    counts = np.diff(docs)
    num_docs = counts.size
    has_long = np.zeros(num_docs, dtype=bool)
    if sizes.size:
        is_long = (sizes > long_sentence_len).astype(np.int64)
        long_before = np.concatenate([[0], np.cumsum(is_long)])  # long sentences before index i
        has_long = (long_before[docs[1:]] - long_before[docs[:-1]]) > 0
    too_short = counts < min_num_sent
    stats = {
        "empty_docs": int(np.count_nonzero(counts == 0)),
        "short_docs": int(np.count_nonzero(too_short & (counts > 0))),
        "long_sentence_docs": int(np.count_nonzero(has_long & ~too_short)),
    }
    return ~too_short & ~has_long, stats


def build_mapping_reference(
    docs: np.ndarray,
    sizes: np.ndarray,
    num_epochs: int,
    max_num_samples: int,
    max_seq_length: int,
    short_seq_prob: float,
    seed: int,
    min_num_sent: int,
    long_sentence_len: int = LONG_SENTENCE_LEN,
) -> Tuple[np.ndarray, Dict[str, int]]:
    """Group the sentences of each document into BERT samples (see the module docstring).

    Args:
        docs: int64 [D]: sentence boundaries of the documents (document d is sentences
            `[docs[d], docs[d + 1])`), non-decreasing, within `[0, len(sizes)]`.
        sizes: int32 [S]: tokens per sentence.
        num_epochs: most passes over the documents.
        max_num_samples: stop starting new epochs once this many rows exist.
        max_seq_length: target tokens per sample, excluding special tokens (>= 2).
        short_seq_prob: probability that a chunk gets a random shorter target.
        seed: seed of the chunking (`seed`) and shuffle (`seed + 1`) streams.
        min_num_sent: fewest sentences per sample (2 with a binary head, else 1).
        long_sentence_len: documents with a longer sentence are skipped.

    Returns:
        (mapping, stats): int64 [N, 3] rows `(first sentence, end sentence, target length)` and a
        dict with `empty_docs`, `short_docs`, `long_sentence_docs` (counts of skipped
        documents) and `epochs` (passes made).
    """
    docs = np.ascontiguousarray(docs, dtype=np.int64)
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    _check_arguments(
        docs,
        sizes,
        num_epochs,
        max_num_samples,
        max_seq_length,
        short_seq_prob,
        min_num_sent,
        long_sentence_len,
    )
    eligible, stats = _eligible_documents(docs, sizes, min_num_sent, long_sentence_len)
    firsts, lasts = docs[:-1][eligible].tolist(), docs[1:][eligible].tolist()
    sizes_list = sizes.tolist()
    rng = SplitMix64(seed)
    rows: list = []
    stats["epochs"] = 0
    for epoch in range(num_epochs):
        if len(rows) >= max_num_samples:
            break
        for first, last in zip(firsts, lasts):
            _chunk_document(
                sizes_list, first, last, max_seq_length, short_seq_prob, min_num_sent, rng, rows
            )
        stats["epochs"] = epoch + 1
        if not rows:
            break  # no eligible document: further epochs would add nothing
    shuffle_rng = SplitMix64(seed + 1)
    for i in range(len(rows) - 1, 0, -1):
        j = shuffle_rng.uniform_int(i + 1)
        rows[i], rows[j] = rows[j], rows[i]
    mapping = np.array(rows, dtype=np.int64).reshape(-1, 3)  # [N, 3]
    return mapping, stats


def truncate_seq_pair(
    a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.RandomState
) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Shorten segments A and B to `max_tokens` tokens in total, as BERT's truncate_seq_pair.

    BERT removes one token at a time from the longer segment (B on ties), from its front or its
    back with probability 0.5 each. This computes the same end lengths in closed form and draws
    the number of front removals of each segment as Binomial(removed, 0.5).

    Returns (a, b, truncated).
    """
    la, lb = a.size, b.size
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b, False
    if la > lb:
        cut_a, cut_b = min(excess, la - lb), 0
    else:
        cut_a, cut_b = 0, min(excess, lb - la)
    rest = excess - cut_a - cut_b  # lengths are now equal: B, A, B, ... lose one token each
    cut_b += (rest + 1) // 2
    cut_a += rest // 2
    front_a = int(rng.binomial(cut_a, 0.5)) if cut_a else 0
    front_b = int(rng.binomial(cut_b, 0.5)) if cut_b else 0
    return a[front_a : la - cut_a + front_a], b[front_b : lb - cut_b + front_b], True
