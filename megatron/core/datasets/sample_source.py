"""Sample sources: the samples of a dataset, by dataset index, as per-sample analyses see them.

A dataset that can be analysed (curriculum metrics, quality scores) returns a `SampleSource` from
its `sample_source()` method. The source addresses samples by dataset index (the indices passed
to `__getitem__`, i.e. the order training reads them) and describes each sample as `TokenPieces`
over the memory-mapped `.bin`, so vectorised kernels score samples without materialising token
streams:

- GPT (`GPTSampleSource`): sample `shuffle_index[i]` spans documents `document_index[p0..p1]`
  from token offset o0 of the first to offset o1 (inclusive, the shared extra token) of the last
  (`sample_index` rows p0, o0 and p1, o1).
- BERT (`bert_sample_source.BertSampleSource`): the sentence pair of `__getitem__` replayed from
  its random draws.
- Blends (`BlendedSampleSource`): a composite; each member's samples come from that member's
  source (`members`, `locate`).

Any other sequence of token arrays (or dicts with "text" and optionally "padding_mask") works
through `SequenceSampleSource`. Nothing here knows what the samples are analysed for.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets.indexed_dataset import IndexedDataset, data_file_path
from megatron.core.datasets.token_pieces import TokenPieces


class SampleSource:
    """Samples of one dataset, addressed by dataset index.

    Attributes:
        num_samples: len(dataset).
        max_sample_tokens: most tokens one sample can hold.
        vocab_size: number of token ids when the dataset knows it (BERT), else None.
        corpus_prefixes: dataset prefixes whose token frequencies describe the corpus.
        members: the sources of the datasets a composite (blended) dataset draws from; empty for
            a dataset whose samples live in one token file.
    """

    num_samples: int = 0
    max_sample_tokens: int = 0
    vocab_size: Optional[int] = None
    corpus_prefixes: List[str] = []
    members: Sequence["SampleSource"] = ()

    @property
    def cache_location(self) -> Optional[Tuple[Optional[str], str]]:
        """(folder, file-name base) of the dataset's index cache, beside which per-sample arrays
        derived from these samples may be cached (`<folder>/<base>-<suffix>`); None when the
        dataset has no index cache."""
        return None

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

    def locate(self, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(member, index within that member's dataset) of each of `indices`; composite sources
        only."""
        raise NotImplementedError(f"{type(self).__name__} is not a composite source")

    def samples(self, indices: np.ndarray) -> List[np.ndarray]:
        """The samples at `indices` as int64 token arrays (no padding)."""
        return self.pieces_at(np.asarray(indices, dtype=np.int64)).materialize()

    def check_indices(self, indices: np.ndarray) -> np.ndarray:
        """`indices` as int64, or IndexError when one is outside [0, num_samples)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise IndexError(
                f"sample indices in [{indices.min()}, {indices.max()}] out of range for a dataset "
                f"of {self.num_samples} samples"
            )
        return indices

    def description(self) -> Dict[str, Any]:
        """JSON description identifying the samples (fingerprints of analysis outputs)."""
        return {"class": type(self).__name__, "num_samples": self.num_samples}


def flat_tokens(indexed: IndexedDataset) -> np.ndarray:
    """The whole `.bin` as one 1-D token array (a read-only memory map)."""
    path = data_file_path(indexed.path_prefix)
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=indexed.dtype)
    return np.memmap(path, dtype=indexed.dtype, mode="r")


def sequence_starts(indexed: IndexedDataset) -> np.ndarray:
    """int64 [N]: index of each sequence's first token in the flat token array."""
    return np.asarray(indexed.sequence_pointers, dtype=np.int64) // indexed.dtype.itemsize


def config_prefixes(config: Any, split: Optional[str], own: Optional[str]) -> List[str]:
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
        self.tokens = flat_tokens(indexed)
        self.starts = sequence_starts(indexed)
        self.sizes = np.asarray(indexed.sequence_lengths, dtype=np.int64)
        self.num_samples = len(dataset)
        self.max_sample_tokens = dataset.config.sequence_length + dataset.ADD_EXTRA_TOKEN
        self.corpus_prefixes = config_prefixes(
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

    @property
    def cache_location(self):
        cache = self.dataset.index_cache
        return cache.folder, cache.base

    def description(self):
        return {**super().description(), "dataset": self.dataset.unique_description}


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
        raise NotImplementedError("a blend spans several token files; score its members")

    def locate(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        member_of = np.asarray(self.dataset.dataset_index[indices], dtype=np.int64)
        return member_of, np.asarray(self.dataset.dataset_sample_index[indices], dtype=np.int64)

    def samples(self, indices):
        member_of, member_index = self.locate(indices)
        return [
            self.members[d].samples(np.array([i]))[0]
            for d, i in zip(member_of.tolist(), member_index.tolist())
        ]

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
