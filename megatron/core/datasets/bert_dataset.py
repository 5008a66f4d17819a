"""BERT pretraining dataset over a sentence-split indexed dataset.

Data layout: the corpus is preprocessed with `--split-sentences`, so each sequence of the
`IndexedDataset` is one sentence and `document_indices` groups sentences into documents. A split
(train/valid/test) is a set of document ids (`indexed_indices`).

The sample mapping ([N, 3] rows of first sentence, end sentence, target length; see
`bert_helpers_ref`) is built once by `helpers.build_mapping` (the C++ helper, or its pure-Python
reference when the extension is not built) and cached as a `.npy` file named by the md5 of
everything that affects it (`utils.IndexCache`: the data enters by its content fingerprint, and a
cached mapping whose bytes or values do not fit is rebuilt).

`dataset[i]` is a pure function of (config, mapping, i): its random state is seeded from
`config.random_seed + i`, so any number of workers or any access order yields the same samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from megatron.core.datasets import bert_helpers_ref, helpers
from megatron.core.datasets.bert_helpers_ref import truncate_seq_pair
from megatron.core.datasets.bert_sample_source import BertSampleSource
from megatron.core.datasets.config import DatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.masking import create_masked_lm_predictions
from megatron.core.datasets.utils import IndexCache, dataset_fingerprint

logger = logging.getLogger(__name__)

MAPPING_FORMAT_VERSION = 2
"""Bump when the mapping algorithm changes so that old cache files are not reused."""

_SPLITS = ("train", "valid", "test")
_INT32_MAX = np.iinfo(np.int32).max
_INT64_MAX = np.iinfo(np.int64).max


@dataclasses.dataclass
class BertDatasetConfig(DatasetConfig):
    """Configuration of `BertDataset`: masking, sentence grouping and the special token ids.

    The special ids come either from the explicit fields or from `tokenizer` (any object with
    `.cls .sep .mask .pad .vocab_size` and, for whole-word masking, `.inv_vocab`); explicit fields
    win. After construction `cls_id`, `sep_id`, `mask_id`, `pad_id` and `vocab_size` are set.
    """

    masking_probability: float = 0.15
    """Fraction of tokens the model predicts; --mask-prob."""

    short_sequence_probability: float = 0.1
    """Probability that a sample gets a random shorter target length; --short-seq-prob."""

    masking_max_ngram: int = 3
    """Longest masked span, in tokens (or words with whole-word masking)."""

    masking_do_full_word: bool = False
    """Whole-word masking: a masked word has all its "##" pieces masked (needs `is_continuation`
    or a tokenizer with `inv_vocab`)."""

    masking_do_permutation: bool = False
    """Also permute the tokens of a second disjoint set of spans and predict them."""

    masking_use_longer_ngrams: bool = False
    """Span length n drawn with probability proportional to 1/(max_ngram + 1 - n) instead of 1/n."""

    masking_use_geometric_distribution: bool = False
    """Span length drawn from Geometric(0.2), capped at `masking_max_ngram` (SpanBERT)."""

    classification_head: bool = True
    """Samples carry two segments and a binary label; False with --bert-no-binary-head."""

    binary_head_type: str = "sop"
    """"sop": segments A and B are swapped with probability 0.5 (sentence order prediction, what
    Megatron's BERT does); "nsp": B is replaced by sentences of a random other document with
    probability 0.5 (next sentence prediction). The label `is_random` is 1 in those cases."""

    tokenizer: Optional[Any] = None
    """Optional source of the special ids: an object with .cls .sep .mask .pad .vocab_size
    (.inv_vocab for whole-word masking), e.g. megatron.tokenizer's MegatronTokenizer."""

    cls_id: Optional[int] = None
    """Id of [CLS] (from `tokenizer.cls` when unset)."""

    sep_id: Optional[int] = None
    """Id of [SEP] (from `tokenizer.sep` when unset)."""

    mask_id: Optional[int] = None
    """Id of [MASK] (from `tokenizer.mask` when unset)."""

    pad_id: Optional[int] = None
    """Id used to pad samples to `sequence_length` (from `tokenizer.pad` when unset)."""

    vocab_size: Optional[int] = None
    """Random replacement ids are drawn from [0, vocab_size) (from `tokenizer.vocab_size`); the
    data files' ids are checked against it (see DatasetConfig.vocab_size)."""

    is_continuation: Optional[np.ndarray] = None
    """bool [vocab_size]: True for "##" continuation pieces; derived from `tokenizer.inv_vocab`
    when unset and whole-word masking is on."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._fill_from_tokenizer()
        self._validate_masking()
        if self.binary_head_type not in ("sop", "nsp"):
            raise ValueError(
                f"binary_head_type must be 'sop' or 'nsp', got {self.binary_head_type!r}"
            )
        specials = 3 if self.classification_head else 2
        if self.sequence_length < specials + 2:
            raise ValueError(
                f"--seq-length {self.sequence_length} is too short for BERT: it must leave at "
                f"least 2 tokens besides the {specials} special tokens; use --seq-length >= "
                f"{specials + 2}"
            )

    def _fill_from_tokenizer(self) -> None:
        tok = self.tokenizer
        for field, attr in (
            ("cls_id", "cls"),
            ("sep_id", "sep"),
            ("mask_id", "mask"),
            ("pad_id", "pad"),
            ("vocab_size", "vocab_size"),
        ):
            if getattr(self, field) is None and tok is not None:
                setattr(self, field, int(getattr(tok, attr)))
            if getattr(self, field) is None:
                raise ValueError(
                    f"BertDatasetConfig.{field} is not set; pass it or a tokenizer with .{attr} "
                    "(a BERT WordPiece tokenizer: --tokenizer-type BertWordPieceLowerCase)"
                )
        if self.is_continuation is None and self.masking_do_full_word and tok is not None:
            inv_vocab = tok.inv_vocab  # id -> token string (a dict or a list)
            lookup = inv_vocab.get if hasattr(inv_vocab, "get") else inv_vocab.__getitem__
            self.is_continuation = np.array(
                [str(lookup(i) or "").startswith("##") for i in range(self.vocab_size)],
                dtype=bool,
            )

    def _validate_masking(self) -> None:
        for name in ("masking_probability", "short_sequence_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                flag = "--mask-prob" if name == "masking_probability" else "--short-seq-prob"
                raise ValueError(f"{flag} must be in [0, 1], got {value}")
        if self.masking_max_ngram < 1:
            raise ValueError(f"masking_max_ngram must be >= 1, got {self.masking_max_ngram}")
        if self.masking_do_full_word:
            if self.is_continuation is None:
                raise ValueError(
                    "whole-word masking needs is_continuation (bool per vocabulary id) or a "
                    "tokenizer with inv_vocab in BertDatasetConfig"
                )
            self.is_continuation = np.asarray(self.is_continuation, dtype=bool)
            if self.is_continuation.shape != (self.vocab_size,):
                raise ValueError(
                    f"is_continuation has shape {self.is_continuation.shape}, expected "
                    f"({self.vocab_size},) (one flag per vocabulary id)"
                )


def _split_sentences(
    indexed_dataset: IndexedDataset, indexed_indices: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Sentence boundaries and sizes of the split's documents in one sentence space.

    Returns (docs int64 [k + 1], sizes int32, sentence_ids or None). When the documents are a
    contiguous range (what the builder makes) the space is the dataset's own sentence ids and no
    copy is made; otherwise the split's sentences are laid out in document order and
    `sentence_ids[j]` is the dataset sentence at position j.
    """
    all_docs = indexed_dataset.document_indices
    if indexed_indices.size and (
        indexed_indices.min() < 0 or indexed_indices.max() >= indexed_dataset.num_documents
    ):
        raise ValueError(
            f"indexed_indices hold document ids in [{indexed_indices.min()}, "
            f"{indexed_indices.max()}] but {indexed_dataset.path_prefix} has "
            f"{indexed_dataset.num_documents} documents"
        )
    if indexed_indices.size == 0:
        return np.zeros(1, dtype=np.int64), indexed_dataset.sequence_lengths, None
    first = int(indexed_indices[0])
    if np.array_equal(indexed_indices, np.arange(first, first + indexed_indices.size)):
        docs = np.array(all_docs[first : first + indexed_indices.size + 1], dtype=np.int64)
        return docs, indexed_dataset.sequence_lengths, None
    starts, ends = all_docs[indexed_indices], all_docs[indexed_indices + 1]
    counts = ends - starts
    docs = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # sentence_ids[j] = starts[doc of j] + (j - docs[doc of j])
    doc_of = np.repeat(np.arange(indexed_indices.size), counts)
    sentence_ids = starts[doc_of] + (np.arange(docs[-1]) - docs[:-1][doc_of])
    return docs, indexed_dataset.sequence_lengths[sentence_ids], sentence_ids


class BertDataset:
    """Masked-LM (+ optional SOP/NSP) samples from a sentence-split `IndexedDataset`.

    Args:
        indexed_dataset: the sentence-level dataset (one sequence per sentence).
        dataset_path: its path prefix (names the cache and the default cache folder); None:
            `indexed_dataset.path_prefix`.
        indexed_indices: int [k]: document ids of this split.
        num_samples: samples wanted; whole epochs are added until at least this many exist
            (None: one epoch; the train split with `train_data_exact_num_epochs` uses that many).
        index_split: "train", "valid" or "test" (or a `Split` member / its position 0-2).
        config: `BertDatasetConfig`.
        is_built_on_rank: returns True on the process that builds and caches the mapping (e.g.
            rank 0 of each node); the others wait for `synchronize` and then read the cache. By
            default every process builds or loads it itself.
        synchronize: called after the building process is done (e.g. a barrier).

    `len(dataset)` is the number of rows of the mapping. `dataset[i]` returns a dict of numpy
    arrays: text, types, labels (-1 where not predicted), loss_mask, padding_mask (int64
    [sequence_length]), is_random, truncated (int64 scalars) and index when
    `config.return_data_index`.
    """

    def __init__(
        self,
        indexed_dataset: IndexedDataset,
        dataset_path: Optional[str],
        indexed_indices: np.ndarray,
        num_samples: Optional[int],
        index_split: str,
        config: BertDatasetConfig,
        *,
        is_built_on_rank: Optional[Callable[[], bool]] = None,
        synchronize: Optional[Callable[[], None]] = None,
    ):
        if isinstance(index_split, (int, np.integer)) and 0 <= index_split < len(_SPLITS):
            index_split = _SPLITS[int(index_split)]
        index_split = str(getattr(index_split, "name", index_split))
        if index_split not in _SPLITS:
            raise ValueError(f"index_split must be one of {_SPLITS}, got {index_split!r}")
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"num_samples must be >= 0 or None, got {num_samples}")
        self.indexed_dataset = indexed_dataset
        self.dataset_path = dataset_path or indexed_dataset.path_prefix
        self.indexed_indices = np.asarray(indexed_indices, dtype=np.int64)
        self.num_samples = num_samples
        self.index_split = index_split
        self.config = config
        self.num_special_tokens = 3 if config.classification_head else 2
        self.max_seq_length = config.sequence_length - self.num_special_tokens
        self._docs, self._sizes, self._sentence_ids = _split_sentences(
            indexed_dataset, self.indexed_indices
        )
        self._nonempty_docs = np.flatnonzero(np.diff(self._docs) > 0)
        self.unique_description = self.description()
        self.unique_description_hash = hashlib.md5(
            json.dumps(self.unique_description, sort_keys=True).encode()
        ).hexdigest()
        folder = self.config.path_to_cache or os.path.join(
            os.path.dirname(os.path.abspath(self.dataset_path)), "cache", "BertDataset_indices"
        )
        self._cache = IndexCache(folder, type(self).__name__, index_split, self.unique_description)
        self.mapping = self._load_or_build_mapping(is_built_on_rank, synchronize)

    def __len__(self) -> int:
        return int(self.mapping.shape[0])

    def sample_source(self) -> BertSampleSource:
        """The samples before masking as token pieces of the `.bin`, for per-sample analyses
        (see `megatron.core.datasets.bert_sample_source`)."""
        return BertSampleSource(self)

    # ----------------------------------------------------------------------------------- mapping

    def _epochs_and_max_samples(self) -> Tuple[int, int]:
        exact = self.config.train_data_exact_num_epochs
        if self.index_split == "train" and exact is not None:
            return exact, int(_INT64_MAX)
        if self.num_samples is None:
            return 1, int(_INT64_MAX)
        return int(_INT32_MAX) - 1, int(self.num_samples)

    def description(self) -> Dict[str, Any]:
        """Everything that determines the mapping (its md5, `unique_description_hash`, names the
        cache file and identifies this dataset in a blend)."""
        c = self.config
        num_epochs, max_num_samples = self._epochs_and_max_samples()
        return {
            "class": type(self).__name__,
            "format_version": MAPPING_FORMAT_VERSION,
            "dataset_path": self.dataset_path,
            "index_split": self.index_split,
            "indexed_indices_md5": hashlib.md5(self.indexed_indices.tobytes()).hexdigest(),
            "num_samples": self.num_samples,
            "num_epochs": num_epochs,
            "max_num_samples": max_num_samples,
            "sequence_length": c.sequence_length,
            "short_sequence_probability": c.short_sequence_probability,
            "random_seed": c.random_seed,
            "classification_head": c.classification_head,
            "long_sentence_length": bert_helpers_ref.LONG_SENTENCE_LEN,
            "data": dataset_fingerprint(self.dataset_path),
        }

    def cache_paths(self) -> Tuple[str, str]:
        """(mapping .npy path, description .json path) of this dataset's cache entry."""
        return self._cache.path("mapping"), self._cache.path("description")

    def _build_mapping(self) -> np.ndarray:
        num_epochs, max_num_samples = self._epochs_and_max_samples()
        mapping, stats = helpers.build_mapping(
            self._docs,
            self._sizes,
            num_epochs=num_epochs,
            max_num_samples=max_num_samples,
            max_seq_length=self.max_seq_length,
            short_seq_prob=self.config.short_sequence_probability,
            seed=self.config.random_seed,
            min_num_sent=2 if self.config.classification_head else 1,
            long_sentence_len=bert_helpers_ref.LONG_SENTENCE_LEN,
        )
        logger.info(
            "%s %s split: %d samples from %d documents in %d epoch(s); skipped %d empty, %d with "
            "too few sentences, %d with a sentence over %d tokens",
            self.dataset_path,
            self.index_split,
            mapping.shape[0],
            self._docs.size - 1,
            stats["epochs"],
            stats["empty_docs"],
            stats["short_docs"],
            stats["long_sentence_docs"],
            bert_helpers_ref.LONG_SENTENCE_LEN,
        )
        if mapping.shape[0] == 0 and self.num_samples:
            raise ValueError(
                f"{self.dataset_path} ({self.index_split} split, {self._docs.size - 1} documents): "
                f"no document yields a BERT sample but {self.num_samples} were requested; each "
                "document needs >= 2 sentences with a binary head (preprocess with "
                "--split-sentences, or use --bert-no-binary-head) and no sentence over "
                f"{bert_helpers_ref.LONG_SENTENCE_LEN} tokens"
            )
        return mapping

    def _mapping_is_valid(self, mapping: np.ndarray) -> bool:
        if mapping.ndim != 2 or mapping.shape[1] != 3 or mapping.dtype != np.int64:
            return False
        if mapping.shape[0] == 0:
            return True
        starts, ends, targets = mapping[:, 0], mapping[:, 1], mapping[:, 2]
        return bool(
            starts.min() >= self._docs[0]
            and ends.max() <= self._docs[-1]
            and np.all(starts < ends)
            and targets.min() >= 2
            and targets.max() <= self.max_seq_length
        )

    def _check_cached_mapping(self, arrays: Dict[str, np.ndarray]) -> None:
        mapping = arrays["mapping"]
        if not self._mapping_is_valid(mapping):
            raise ValueError(
                f"corrupt BERT sample mapping: {mapping.dtype}{list(mapping.shape)} with sentence "
                "ids outside the split or target lengths outside [2, "
                f"{self.max_seq_length}]"
            )

    def _load_or_build_mapping(self, is_built_on_rank, synchronize) -> np.ndarray:
        cache = self._cache
        builds_here = True if is_built_on_rank is None else bool(is_built_on_rank())
        mapping = None
        if builds_here:
            cache.remove_stale_temporaries()
            loaded = cache.load(["mapping"], self._check_cached_mapping)
            if loaded is None:
                mapping = self._build_mapping()
                cache.save({"mapping": mapping})
            else:
                mapping = loaded["mapping"]
        if synchronize is not None:
            synchronize()
        if mapping is None:
            loaded = cache.load(["mapping"], self._check_cached_mapping)
            if loaded is None:
                raise RuntimeError(
                    f"{cache.path('mapping')}: BERT sample mapping missing after the building "
                    "process finished; --data-cache-path must be a folder every process can read"
                )
            mapping = loaded["mapping"]
        return mapping

    # ------------------------------------------------------------------------------------ sample

    def _sentence(self, j: int) -> np.ndarray:
        sid = j if self._sentence_ids is None else int(self._sentence_ids[j])
        return self.indexed_dataset.get(sid)

    def _concat(self, first: int, end: int) -> np.ndarray:
        pieces = [self._sentence(j) for j in range(first, end)]
        return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64)

    def _random_segment(self, own_start: int, target_b: int, rng) -> Optional[np.ndarray]:
        """Sentences of a random other non-empty document, from a random sentence on, until
        `target_b` tokens; None when the split has no other document."""
        nonempty = self._nonempty_docs
        if nonempty.size < 2:
            return None
        own = int(np.searchsorted(self._docs, own_start, side="right")) - 1
        k = rng.randint(0, nonempty.size - 1)
        if k >= int(np.searchsorted(nonempty, own)):
            k += 1  # skip the sample's own document
        first, last = int(self._docs[nonempty[k]]), int(self._docs[nonempty[k] + 1])
        j = first + rng.randint(0, last - first)
        pieces, length = [], 0
        while j < last and length < target_b:
            pieces.append(self._sentence(j))
            length += pieces[-1].size
            j += 1
        return np.concatenate(pieces).astype(np.int64)

    def _segments(
        self, start: int, end: int, target: int, rng
    ) -> Tuple[np.ndarray, np.ndarray, bool]:
        """Segments A and B of a binary-head sample and its is_random label."""
        if end - start < 2:
            raise ValueError(
                f"sample with sentences [{start}, {end}) has fewer than 2 sentences; the cached "
                "mapping does not match a binary-head dataset (delete the cache and rebuild)"
            )
        a_end = start + rng.randint(1, end - start)  # A gets >= 1 sentence, B the rest (>= 1)
        a, b = self._concat(start, a_end), self._concat(a_end, end)
        is_random = bool(rng.random_sample() < 0.5)
        if self.config.binary_head_type == "sop":
            if is_random:
                a, b = b, a
        elif is_random:
            other = self._random_segment(start, max(1, target - a.size), rng)
            if other is None:
                is_random = False  # a single-document split has no "other" document
            else:
                b = other
        return a, b, is_random

    def __getitem__(self, idx: int) -> Dict[str, np.ndarray]:
        idx = int(idx)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for a BertDataset of {len(self)} samples")
        c = self.config
        start, end, target = (int(v) for v in self.mapping[idx])
        rng = np.random.RandomState((c.random_seed + idx) % 2**32)
        if c.classification_head:
            a, b, is_random = self._segments(start, end, target, rng)
        else:
            a, b, is_random = self._concat(start, end), np.zeros(0, np.int64), False
        a, b, truncated = truncate_seq_pair(a, b, target, rng)
        cls, sep = np.array([c.cls_id]), np.array([c.sep_id])
        parts = [cls, a, sep] + ([b, sep] if c.classification_head else [])
        tokens = np.concatenate(parts).astype(np.int64)
        types = np.zeros(tokens.size, dtype=np.int64)
        types[a.size + 2 :] = 1  # B and its [SEP]
        masked, positions, labels = create_masked_lm_predictions(
            tokens,
            vocab_size=c.vocab_size,
            cls_id=c.cls_id,
            sep_id=c.sep_id,
            mask_id=c.mask_id,
            masked_lm_prob=c.masking_probability,
            max_predictions_per_seq=max(1, int(round(c.masking_probability * target))),
            rng=rng,
            max_ngram=c.masking_max_ngram,
            is_continuation=c.is_continuation,
            do_whole_word_mask=c.masking_do_full_word,
            favor_longer_ngram=c.masking_use_longer_ngrams,
            geometric_dist=c.masking_use_geometric_distribution,
            do_permutation=c.masking_do_permutation,
        )
        return self._pad(masked, types, positions, labels, is_random, truncated, idx)

    def _pad(self, tokens, types, positions, labels, is_random, truncated, idx) -> Dict[str, Any]:
        s, n = self.config.sequence_length, tokens.size
        sample = {
            "text": np.full(s, self.config.pad_id, dtype=np.int64),
            "types": np.zeros(s, dtype=np.int64),
            "labels": np.full(s, -1, dtype=np.int64),
            "is_random": np.int64(is_random),
            "loss_mask": np.zeros(s, dtype=np.int64),
            "padding_mask": np.zeros(s, dtype=np.int64),
            "truncated": np.int64(truncated),
        }
        sample["text"][:n] = tokens
        sample["types"][:n] = types
        sample["labels"][positions] = labels
        sample["loss_mask"][positions] = 1
        sample["padding_mask"][:n] = 1
        if self.config.return_data_index:
            sample["index"] = np.int64(idx)
        return sample
