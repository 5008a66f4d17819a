"""The samples of a `BertDataset` as a `SampleSource`: [CLS] A [SEP] (B [SEP]) before masking.

The mapping row (first sentence, end sentence, target length) and the per-sample random draws of
`BertDataset.__getitem__` (numpy's legacy RandomState seeded with seed + i) are replayed without
reading tokens: the split point of segments A / B, the sentence-order swap and the truncation give
each segment as one token run. The replay runs in C++ (`bert_segment_replay` of
`megatron.core.datasets.helpers_cpp`, which re-implements those numpy draws: MT19937 seeding,
randint, random_sample, binomial) with `_replay_reference` as its reference (numpy itself and
`truncate_seq_pair`), chosen by `megatron.core.kernels` like every kernel; every batch is also
checked against `__getitem__` on one sample (masked positions restored from the labels), so a
change of the dataset cannot go unnoticed. Lengths need no replay: truncation keeps
min(tokens, target). NSP samples (a random other document as B) use `__getitem__` itself.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from megatron.core import kernels
from megatron.core.datasets.bert_helpers_ref import truncate_seq_pair
from megatron.core.datasets.sample_source import (
    SampleSource,
    config_prefixes,
    flat_tokens,
    sequence_starts,
)
from megatron.core.datasets.token_pieces import TokenPieces


class BertSampleSource(SampleSource):
    """Samples of a `BertDataset`: [CLS] A [SEP] (B [SEP]) before masking, without padding."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        config = dataset.config
        indexed = dataset.indexed_dataset
        self.tokens = flat_tokens(indexed)
        self.starts = sequence_starts(indexed)
        self.head = bool(config.classification_head)
        self.replay = not (self.head and config.binary_head_type == "nsp")
        sizes = np.asarray(dataset._sizes, dtype=np.int64)  # sentence sizes in split space
        self.cumulative = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.sentence_ids = dataset._sentence_ids
        self.num_samples = len(dataset)
        self.max_sample_tokens = int(config.sequence_length)
        self.vocab_size = int(config.vocab_size)
        self.corpus_prefixes = config_prefixes(config, dataset.index_split, dataset.dataset_path)

    def unmasked(self, idx: int) -> np.ndarray:
        """Sample `idx` from `__getitem__`, masked positions restored, padding removed."""
        item = self.dataset[int(idx)]
        n = int(np.sum(item["padding_mask"]))
        text = np.where(item["loss_mask"] == 1, item["labels"], item["text"])
        return text[:n].astype(np.int64)

    def _flat_start(self, sentences: np.ndarray) -> np.ndarray:
        """Flat token position of the first token of split-space sentences."""
        sids = sentences if self.sentence_ids is None else self.sentence_ids[sentences]
        return self.starts[np.asarray(sids, dtype=np.int64)]

    def _replay(self, indices: np.ndarray, backend: Optional[str] = None) -> np.ndarray:
        """int64 [n, 6]: (first sentence, front cut, kept tokens) of segments A and B per sample,
        from the same random draws as `BertDataset.__getitem__`. `backend` as in
        `megatron.core.kernels` ("auto": C++ when built; None reads $MEGATRON_KERNEL_BACKEND)."""
        module = kernels.resolve(kernels.DATASET_HELPERS, backend)
        if module is None:
            return self._replay_reference(indices)
        rows = np.ascontiguousarray(self.dataset.mapping[indices], dtype=np.int64)  # [n, 3]
        seed = int(self.dataset.config.random_seed)
        return module.bert_segment_replay(rows, indices, self.cumulative, seed, self.head)

    def _replay_reference(self, indices: np.ndarray) -> np.ndarray:
        """Reference of `_replay`: numpy's RandomState and the dataset's truncate_seq_pair."""
        rows = np.asarray(self.dataset.mapping[indices], dtype=np.int64)  # [n, 3]
        cum = self.cumulative
        begin_tokens, end_tokens = cum[rows[:, 0]].tolist(), cum[rows[:, 1]].tolist()
        out = np.zeros((indices.size, 6), dtype=np.int64)
        longest = int(max((e - b for b, e in zip(begin_tokens, end_tokens)), default=0))
        arange = np.arange(longest, dtype=np.int64)
        rng = np.random.RandomState(0)  # reseeded per sample: RandomState(seed) is far slower
        seed, head = int(self.dataset.config.random_seed), self.head
        for i, (idx, (start, end, target)) in enumerate(zip(indices.tolist(), rows.tolist())):
            rng.seed((seed + idx) % 2**32)
            first_a, first_b = start, end
            split_tokens = end_tokens[i]
            if head:
                first_b = start + rng.randint(1, end - start)  # same draws as __getitem__
                split_tokens = int(cum[first_b])
            la, lb = split_tokens - begin_tokens[i], end_tokens[i] - split_tokens
            if head and rng.random_sample() < 0.5:  # sentence-order prediction: swapped
                first_a, first_b, la, lb = first_b, first_a, lb, la
            kept_a, kept_b, _ = truncate_seq_pair(arange[:la], arange[:lb], target, rng)
            out[i] = (
                first_a,
                kept_a[0] if kept_a.size else 0,
                kept_a.size,
                first_b,
                kept_b[0] if kept_b.size else 0,
                kept_b.size,
            )
        return out

    def storage_order(self, indices):
        return np.argsort(self.dataset.mapping[np.asarray(indices), 0], kind="stable")

    def lengths_at(self, indices):
        """Without a random other document, truncation keeps min(tokens, target) whatever the
        split point and the swap: lengths need no replay."""
        if not self.replay:
            return None
        rows = np.asarray(self.dataset.mapping[np.asarray(indices, dtype=np.int64)], dtype=np.int64)
        tokens = self.cumulative[rows[:, 1]] - self.cumulative[rows[:, 0]]  # [n]
        return np.minimum(tokens, rows[:, 2]) + (3 if self.head else 2)

    def pieces_at(self, indices: np.ndarray) -> TokenPieces:
        indices = np.asarray(indices, dtype=np.int64)
        if not self.replay:
            return TokenPieces.from_samples([self.unmasked(i) for i in indices])
        replay = self._replay(indices)  # [n, 6]
        # an empty segment may name the split's end as its first sentence: clamp before lookup
        first = np.minimum(replay[:, [0, 3]], self.cumulative.size - 2)  # [n, 2]
        a_start = (self._flat_start(first[:, 0]) + replay[:, 1]) * (replay[:, 2] > 0)
        b_start = (self._flat_start(first[:, 1]) + replay[:, 4]) * (replay[:, 5] > 0)
        segments = np.stack([a_start, replay[:, 2], b_start, replay[:, 5]], axis=1)  # [n, 4]
        c = self.dataset.config
        cls, sep = -(int(c.cls_id) + 1), -(int(c.sep_id) + 1)
        ones = np.ones(indices.size, dtype=np.int64)
        if self.head:
            starts = [cls * ones, segments[:, 0], sep * ones, segments[:, 2], sep * ones]
            lens = [ones, segments[:, 1], ones, segments[:, 3], ones]
        else:
            starts, lens = [cls * ones, segments[:, 0], sep * ones], [ones, segments[:, 1], ones]
        width = len(starts)
        pieces = TokenPieces(
            self.tokens,
            np.arange(indices.size + 1, dtype=np.int64) * width,
            np.stack(starts, axis=1).reshape(-1),  # [n * width]
            np.stack(lens, axis=1).reshape(-1),
        )
        if indices.size:
            self._check_replay(pieces, indices)
        return pieces

    def _check_replay(self, pieces: TokenPieces, indices: np.ndarray) -> None:
        expected = self.unmasked(int(indices[0]))
        got = pieces.select(np.array([0])).token_ids()
        if not np.array_equal(got, expected):
            raise RuntimeError(
                f"BERT sample {int(indices[0])}: the metric replay gives {got.size} tokens that "
                f"differ from BertDataset.__getitem__ ({expected.size} tokens); "
                "megatron/core/datasets/bert_sample_source.py must follow the dataset's "
                "sampling code"
            )

    @property
    def cache_location(self):
        mapping_path, _ = self.dataset.cache_paths()
        return os.path.dirname(mapping_path), os.path.basename(mapping_path)[: -len("-mapping.npy")]

    def description(self):
        c = self.dataset.config  # what the tokens depend on besides the mapping
        content = {"binary_head_type": c.binary_head_type, "cls_id": c.cls_id, "sep_id": c.sep_id}
        return {**super().description(), "dataset": self.dataset.description(), **content}
