"""Sample sources: the samples of a dataset, by dataset index, as the metrics see them.

A source scores the samples at given dataset indices (the indices passed to `__getitem__`, i.e.
the order training reads them) with a list of metrics. The GPT and BERT sources describe each
sample as `TokenPieces` over the memory-mapped `.bin`, so built-in metrics run in the C++ kernels
without materialising token streams:

- GPT: sample `shuffle_index[i]` spans documents `document_index[p0..p1]` from token offset o0 of
  the first to offset o1 (inclusive, the shared extra token) of the last (`sample_index` rows
  p0, o0 and p1, o1).
- BERT: the mapping row (first sentence, end sentence, target length) and the per-sample random
  draws of `BertDataset.__getitem__` (numpy's legacy RandomState seeded with seed + i) are
  replayed without reading tokens: the split point of segments A / B, the sentence-order swap
  and the truncation give each segment as one token run, and the sample is [CLS] A [SEP]
  (B [SEP]). The replay runs in C++ (`bert_segment_replay`, which re-implements those numpy draws:
  MT19937 seeding, randint, random_sample, binomial) with `_replay_py` as its reference (numpy
  itself and the dataset's `truncate_seq_pair`); every batch is also checked against
  `__getitem__` on one sample (masked positions restored from the labels), so a change of the
  dataset cannot go unnoticed. Lengths (seqlen) need no replay: truncation keeps
  min(tokens, target). NSP samples (a random other document as B) use `__getitem__` itself.

Blends score each member's samples with that member's source. Any other sequence of token arrays
(or dicts with "text" and optionally "padding_mask") works through `SequenceSampleSource`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from megatron.core.data_efficiency import metrics_kernels
from megatron.core.data_efficiency.metrics import ACCUMULATE, Metric
from megatron.core.data_efficiency.metrics_kernels import TokenPieces
from megatron.core.datasets.indexed_dataset import IndexedDataset, data_file_path

logger = logging.getLogger(__name__)


class SampleSource:
    """Samples of one dataset, addressed by dataset index.

    Attributes:
        num_samples: len(dataset).
        max_sample_tokens: most tokens one sample can hold.
        vocab_size: number of token ids when the dataset knows it (BERT), else None.
        corpus_prefixes: dataset prefixes whose token frequencies describe the corpus.
    """

    num_samples: int = 0
    max_sample_tokens: int = 0
    vocab_size: Optional[int] = None
    corpus_prefixes: List[str] = []

    def pieces_at(self, indices: np.ndarray) -> TokenPieces:
        """The samples at dataset indices `indices`, in that order."""
        raise NotImplementedError

    def lengths_at(self, indices: np.ndarray) -> Optional[np.ndarray]:
        """int64 tokens of the samples at `indices` when known without their pieces, else None."""
        return None

    def storage_order(self, indices: np.ndarray) -> np.ndarray:
        """A permutation of positions in `indices` visiting the samples in file order (shuffled
        samples read in that order touch each page of the memory-mapped data once)."""
        return np.arange(np.asarray(indices).size)

    def samples(self, indices: np.ndarray) -> List[np.ndarray]:
        """The samples at `indices` as int64 token arrays (no padding)."""
        return self.pieces_at(np.asarray(indices, dtype=np.int64)).materialize()

    def evaluate(
        self, metrics: Sequence[Metric], indices: np.ndarray, batch_size: int = 1024
    ) -> Dict[str, np.ndarray]:
        """Each metric's values at `indices` ([len(indices)]) or its sum over them (accumulate).

        User metrics get batches of at most `batch_size` samples.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise IndexError(
                f"sample indices in [{indices.min()}, {indices.max()}] out of range for a dataset "
                f"of {self.num_samples} samples"
            )
        out: Dict[str, np.ndarray] = {}
        lengths = None
        if any(m.lengths_only for m in metrics):
            lengths = self.lengths_at(indices)
        for metric in metrics:
            if metric.lengths_only and lengths is not None:
                out[metric.name] = metric.compute_lengths(lengths)
        pending = [m for m in metrics if m.name not in out]
        if not pending:
            return out
        pieces = self.pieces_at(indices)
        for metric in pending:
            if type(metric).compute_pieces is not Metric.compute_pieces:  # a vectorised built-in
                out[metric.name] = metric.compute_pieces(pieces)
                continue
            parts = []
            for begin in range(0, indices.size, batch_size):
                batch = pieces.select(np.arange(begin, min(indices.size, begin + batch_size)))
                parts.append(metric.compute(batch.materialize()))
            out[metric.name] = _combine(metric, parts)
        return out

    def description(self) -> Dict[str, Any]:
        """JSON description identifying the samples (fingerprints of analysis outputs)."""
        return {"class": type(self).__name__, "num_samples": self.num_samples}


def _combine(metric: Metric, parts: List[np.ndarray]) -> np.ndarray:
    if metric.metric_type == ACCUMULATE:
        total = None
        for part in parts:
            total = part.copy() if total is None else total + part
        return total if total is not None else np.zeros(0, dtype=np.int64)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts)


def _flat_tokens(indexed: IndexedDataset) -> np.ndarray:
    """The whole `.bin` as one 1-D token array (a read-only memory map)."""
    path = data_file_path(indexed.path_prefix)
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=indexed.dtype)
    return np.memmap(path, dtype=indexed.dtype, mode="r")


def _sequence_starts(indexed: IndexedDataset) -> np.ndarray:
    """int64 [N]: index of each sequence's first token in the flat token array."""
    return np.asarray(indexed.sequence_pointers, dtype=np.int64) // indexed.dtype.itemsize


def _config_prefixes(config: Any, split: Optional[str], own: Optional[str]) -> List[str]:
    """Prefixes of the blend a dataset belongs to (its token statistics), else its own."""
    blend = getattr(config, "blend", None)
    per_split = getattr(config, "blend_per_split", None)
    if per_split is not None and split in ("train", "valid", "test"):
        blend = per_split[("train", "valid", "test").index(split)]
    if blend is not None and blend[0]:
        return list(blend[0])
    return [own] if own else []


class GPTSampleSource(SampleSource):
    """Samples of a `GPTDataset` (text of sequence_length + 1 tokens)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        indexed = dataset.dataset
        self.tokens = _flat_tokens(indexed)
        self.starts = _sequence_starts(indexed)
        self.sizes = np.asarray(indexed.sequence_lengths, dtype=np.int64)
        self.num_samples = len(dataset)
        self.max_sample_tokens = dataset.config.sequence_length + dataset.ADD_EXTRA_TOKEN
        self.corpus_prefixes = _config_prefixes(
            dataset.config, dataset.index_split, dataset.dataset_path
        )

    def pieces_at(self, indices: np.ndarray) -> TokenPieces:
        ds = self.dataset
        samples = np.asarray(ds.shuffle_index[indices], dtype=np.int64)
        first = np.asarray(ds.sample_index[samples], dtype=np.int64)  # [n, 2] (position, offset)
        last = np.asarray(ds.sample_index[samples + 1], dtype=np.int64)  # [n, 2]
        counts = last[:, 0] - first[:, 0] + 1
        ptr = np.zeros(samples.size + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        positions = np.repeat(first[:, 0] - ptr[:-1], counts) + np.arange(ptr[-1])
        docs = np.asarray(ds.document_index[positions], dtype=np.int64)
        begin = np.zeros(positions.size, dtype=np.int64)
        end = self.sizes[docs]
        if samples.size:
            begin[ptr[:-1]] = first[:, 1]
            end[ptr[1:] - 1] = last[:, 1] + ds.ADD_EXTRA_TOKEN
        return TokenPieces(self.tokens, ptr, self.starts[docs] + begin, end - begin)

    def lengths_at(self, indices):
        return np.full(np.asarray(indices).size, self.max_sample_tokens, dtype=np.int64)

    def storage_order(self, indices):
        return np.argsort(self.dataset.shuffle_index[indices], kind="stable")

    def description(self):
        return {**super().description(), "dataset": self.dataset.unique_description}


class BertSampleSource(SampleSource):
    """Samples of a `BertDataset`: [CLS] A [SEP] (B [SEP]) before masking, without padding."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        config = dataset.config
        indexed = dataset.indexed_dataset
        self.tokens = _flat_tokens(indexed)
        self.starts = _sequence_starts(indexed)
        self.head = bool(config.classification_head)
        self.replay = not (self.head and config.binary_head_type == "nsp")
        sizes = np.asarray(dataset._sizes, dtype=np.int64)  # sentence sizes in split space
        self.cumulative = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.sentence_ids = dataset._sentence_ids
        self.num_samples = len(dataset)
        self.max_sample_tokens = int(config.sequence_length)
        self.vocab_size = int(config.vocab_size)
        self.corpus_prefixes = _config_prefixes(config, dataset.index_split, dataset.dataset_path)

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

    def _replay(self, indices: np.ndarray) -> np.ndarray:
        """int64 [n, 6]: (first sentence, front cut, kept tokens) of segments A and B per sample,
        from the same random draws as `BertDataset.__getitem__` (C++ when built)."""
        module = metrics_kernels._cpp_module()
        if module is None or not hasattr(module, "bert_segment_replay"):
            return self._replay_py(indices)
        rows = np.ascontiguousarray(self.dataset.mapping[indices], dtype=np.int64)  # [n, 3]
        seed = int(self.dataset.config.random_seed)
        return module.bert_segment_replay(rows, indices, self.cumulative, seed, self.head)

    def _replay_py(self, indices: np.ndarray) -> np.ndarray:
        """Reference of `_replay`: numpy's RandomState and the dataset's truncate_seq_pair."""
        from megatron.core.datasets.bert_dataset import truncate_seq_pair

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
                "megatron/core/data_efficiency/analysis_sources.py must follow the dataset's "
                "sampling code"
            )

    def description(self):
        c = self.dataset.config  # what the tokens depend on besides the mapping
        content = {"binary_head_type": c.binary_head_type, "cls_id": c.cls_id, "sep_id": c.sep_id}
        return {**super().description(), "dataset": self.dataset.description(), **content}


class BlendedSampleSource(SampleSource):
    """Samples of a `BlendedDataset`: each member's samples come from that member's source."""

    def __init__(self, dataset: Any, members: Sequence[SampleSource]):
        self.dataset, self.members = dataset, list(members)
        self.num_samples = len(dataset)
        self.max_sample_tokens = max(m.max_sample_tokens for m in self.members)
        sizes = {m.vocab_size for m in self.members if m.vocab_size is not None}
        self.vocab_size = sizes.pop() if len(sizes) == 1 else None
        self.corpus_prefixes = sorted({p for m in self.members for p in m.corpus_prefixes})

    def pieces_at(self, indices):
        raise NotImplementedError("a blend spans several token files; use evaluate()")

    def samples(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        ds = self.dataset
        return [
            self.members[int(ds.dataset_index[i])].samples(np.array([ds.dataset_sample_index[i]]))[
                0
            ]
            for i in indices
        ]

    def evaluate(self, metrics, indices, batch_size=1024):
        indices = np.asarray(indices, dtype=np.int64)
        member_of = np.asarray(self.dataset.dataset_index[indices], dtype=np.int64)
        member_sample = np.asarray(self.dataset.dataset_sample_index[indices], dtype=np.int64)
        out: Dict[str, np.ndarray] = {}
        for d, member in enumerate(self.members):
            chosen = np.flatnonzero(member_of == d)
            if chosen.size == 0:
                continue
            values = member.evaluate(metrics, member_sample[chosen], batch_size)
            for metric in metrics:
                v = values[metric.name]
                if metric.metric_type == ACCUMULATE:
                    out[metric.name] = v if metric.name not in out else out[metric.name] + v
                    continue
                if metric.name not in out:
                    out[metric.name] = np.zeros(indices.size, dtype=v.dtype)
                elif v.dtype.kind == "f" and out[metric.name].dtype.kind != "f":
                    out[metric.name] = out[metric.name].astype(np.float64)
                out[metric.name][chosen] = v
        for metric in metrics:
            if metric.name not in out:
                out[metric.name] = np.zeros(
                    0 if metric.metric_type == ACCUMULATE else indices.size, np.int64
                )
        return out

    def description(self):
        return {**super().description(), "dataset": self.dataset.unique_description}


class SequenceSampleSource(SampleSource):
    """Any indexable dataset whose items are token arrays, or dicts with "text" (padding removed
    with "padding_mask" when present, else with `pad_id`).

    Args:
        dataset: the sequence (`len()` and integer indexing).
        max_sample_tokens: most tokens per sample (default: the first item's length).
        vocab_size: number of token ids, when known.
        pad_id: id removed from items that carry no padding_mask.
    """

    def __init__(self, dataset, max_sample_tokens=None, vocab_size=None, pad_id=None):
        self.dataset, self.pad_id = dataset, pad_id
        self.num_samples = len(dataset)
        if max_sample_tokens is None:
            max_sample_tokens = self._tokens(0).size if self.num_samples else 0
        self.max_sample_tokens = int(max_sample_tokens)
        self.vocab_size = vocab_size
        self.corpus_prefixes = []

    def _tokens(self, idx: int) -> np.ndarray:
        item = self.dataset[int(idx)]
        if isinstance(item, dict):
            text = np.asarray(item["text"]).reshape(-1)
            if "padding_mask" in item:
                return text[np.asarray(item["padding_mask"]).reshape(-1) != 0].astype(np.int64)
            item = text
        tokens = np.asarray(item).reshape(-1).astype(np.int64)
        return tokens if self.pad_id is None else tokens[tokens != self.pad_id]

    def pieces_at(self, indices):
        return TokenPieces.from_samples([self._tokens(i) for i in np.asarray(indices)])


def make_sample_source(dataset: Any) -> SampleSource:
    """The source of a GPTDataset, BertDataset, BlendedDataset or token-array sequence."""
    from megatron.core.datasets.bert_dataset import BertDataset
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.gpt_dataset import GPTDataset

    if isinstance(dataset, SampleSource):
        return dataset
    if isinstance(dataset, GPTDataset):
        return GPTSampleSource(dataset)
    if isinstance(dataset, BertDataset):
        return BertSampleSource(dataset)
    if isinstance(dataset, BlendedDataset):
        return BlendedSampleSource(dataset, [make_sample_source(d) for d in dataset.datasets])
    return SequenceSampleSource(dataset)
