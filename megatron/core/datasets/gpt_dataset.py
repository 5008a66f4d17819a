"""GPT dataset: fixed-length samples cut from the shuffled concatenation of a split's documents.

For GPT a "document" is one sequence of the indexed dataset (Megatron splits GPT data by
sequence; data preprocessed without --split-sentences has one sequence per document).

Three index arrays (Megatron semantics, so the same seed gives the same samples as megatron-core):

- document_index int32 [E * D]: the split's D document ids repeated for the E epochs needed and
  shuffled; when the last epoch is used less than 80% it is shuffled on its own and appended.
- sample_index [S + 1, 2]: (position in document_index, token offset) where each sample starts
  (`helpers.build_sample_idx`); a sample is sequence_length + 1 tokens and shares its last token
  with the next sample's first.
- shuffle_index [S]: the order samples are served in; with a separate final epoch the samples of
  the first E - 1 epochs and those of the final epoch are shuffled separately.

The indices are cached on disk (see utils.IndexCache) and reused by later runs and other ranks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np

from megatron.core.datasets import helpers
from megatron.core.datasets.config import DatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.sample_source import GPTSampleSource
from megatron.core.datasets.utils import (
    IndexCache,
    Split,
    dataset_fingerprint,
    default_cache_dir,
    load_or_build,
    md5_of_array,
    md5_of_json,
    split_name,
)

logger = logging.getLogger(__name__)

SEPARATE_FINAL_EPOCH_THRESHOLD = 0.80
"""A final epoch used for less than this fraction of its samples is shuffled on its own."""


@dataclasses.dataclass
class GPTDatasetConfig(DatasetConfig):
    """Configuration of `GPTDataset` (adds the GPT masking options to `DatasetConfig`)."""

    reset_position_ids: bool = False
    """Restart position ids at 0 after every end-of-document token; --reset-position-ids."""

    reset_attention_mask: bool = False
    """Tokens attend only within their own document (block-diagonal causal mask, documents
    delimited by end-of-document tokens); --reset-attention-mask."""

    eod_mask_loss: bool = False
    """No loss where the input token is the end-of-document token (the prediction of the next
    document's first token); --eod-mask-loss."""

    eod_token: Optional[int] = None
    """Id of the end-of-document token (the tokenizer's eod); needed by the three options above."""

    create_attention_mask: bool = True
    """Return a boolean [1, s, s] "attention_mask" (True = masked out) with each sample; turn it off
    when the attention kernel builds its own causal mask."""

    def __post_init__(self) -> None:
        super().__post_init__()
        used = [
            flag
            for flag, on in (
                ("--reset-position-ids", self.reset_position_ids),
                ("--reset-attention-mask", self.reset_attention_mask),
                ("--eod-mask-loss", self.eod_mask_loss),
            )
            if on
        ]
        if used and self.eod_token is None:
            raise ValueError(
                f"{', '.join(used)} need the end-of-document token id: set "
                "GPTDatasetConfig.eod_token (the tokenizer's eod)"
            )
        if not 0 <= self.random_seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.random_seed}")


def get_ltor_masks_and_position_ids(
    tokens: np.ndarray,
    eod_token: Optional[int],
    reset_position_ids: bool,
    reset_attention_mask: bool,
    eod_mask_loss: bool,
    create_attention_mask: bool = True,
) -> Dict[str, np.ndarray]:
    """Left-to-right masks and position ids of one sample's input tokens (Megatron semantics).

    Args:
        tokens: int [s] input tokens (a sample's text without its last token).
        eod_token: end-of-document id (needed by the three options).
        reset_position_ids: positions restart at 0 after every eod token.
        reset_attention_mask: attention stays within each eod-delimited document.
        eod_mask_loss: loss_mask is 0 where the input token is eod.
        create_attention_mask: also return "attention_mask".

    Returns:
        {"position_ids": int64 [s], "loss_mask": float32 [s]} and, when create_attention_mask,
        "attention_mask": bool [1, s, s] with True where query q may NOT attend to key k.
    """
    s = tokens.shape[0]
    is_eod = tokens == eod_token if eod_token is not None else np.zeros(s, dtype=bool)
    loss_mask = np.ones(s, dtype=np.float32)
    if eod_mask_loss:
        loss_mask[is_eod] = 0.0
    positions = np.arange(s, dtype=np.int64)
    if reset_position_ids:
        # Each token's document starts right after the last eod before it.
        starts = np.zeros(s, dtype=np.int64)
        after_eod = np.flatnonzero(is_eod[:-1]) + 1
        starts[after_eod] = after_eod
        positions = positions - np.maximum.accumulate(starts)
    out = {"position_ids": positions, "loss_mask": loss_mask}
    if create_attention_mask:
        allowed = np.tri(s, dtype=bool)  # [s, s] causal: key k <= query q
        if reset_attention_mask:
            doc_of = np.concatenate(([0], np.cumsum(is_eod[:-1])))  # [s] eods strictly before
            allowed &= doc_of[:, None] == doc_of[None, :]
        out["attention_mask"] = ~allowed[None]  # [1, s, s]
    return out


def _build_document_index(
    documents: np.ndarray, num_epochs: int, rs: np.random.RandomState, separate_final: bool
) -> np.ndarray:
    """Documents repeated num_epochs times and shuffled (the final epoch apart if separate)."""
    if separate_final and num_epochs > 1:
        first = _build_document_index(documents, num_epochs - 1, rs, False)
        last = _build_document_index(documents, 1, rs, False)
        return np.concatenate((first, last))
    document_index = np.tile(documents.astype(np.int32), num_epochs)  # [E * D]
    rs.shuffle(document_index)
    return document_index


def _build_shuffle_index(num_samples: int, total: int, rs: np.random.RandomState) -> np.ndarray:
    """Shuffled arange(num_samples), then a separately shuffled arange(num_samples, total)."""
    dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    rs.shuffle(first)
    if num_samples == total:
        return first
    last = np.arange(num_samples, total, dtype=dtype)
    rs.shuffle(last)
    return np.concatenate((first, last))


class GPTDataset:
    """Fixed-length GPT samples from a split of an indexed dataset.

    Args:
        indexed_dataset: the tokenized corpus.
        dataset_path: its path prefix (for cache names and messages; defaults to the dataset's).
        indexed_indices: int [D] ids of the documents (sequences) of this split.
        num_samples: samples requested; None means one epoch. The dataset holds every sample of
            the epochs needed to provide them, so its length is >= num_samples (megatron-core).
        index_split: "train", "valid" or "test" (or a `Split`).
        config: the dataset configuration.
        is_built_on_rank: returns True on the rank(s) that build and cache the indices (e.g.
            global rank 0); the others wait in `synchronize()` and then read the cache. None: every
            process loads or builds the indices itself (safe: cache files are written atomically).
        synchronize: a barrier across ranks, called once on every rank when is_built_on_rank is
            given (also when the build fails, so no rank hangs).

    Length: len(shuffle_index) = all samples of the epochs built. With
    config.train_data_exact_num_epochs (train split only) exactly that many epochs are built,
    never with a separate final epoch, and num_samples may not exceed what they hold.

    Items: a dict of numpy arrays: "text" int64 [s + 1] (inputs are text[:-1], labels text[1:],
    Megatron-DeepSpeed's layout), "position_ids" int64 [s], "loss_mask" float32 [s],
    "attention_mask" bool [1, s, s] (True = masked out; only with config.create_attention_mask),
    and "index" (int64, the item's position in this dataset) with config.return_data_index.
    """

    ADD_EXTRA_TOKEN = 1
    """Tokens each sample shares with the next (text has sequence_length + 1 tokens)."""

    INDEX_NAMES = ("document_index", "sample_index", "shuffle_index")

    def __init__(
        self,
        indexed_dataset: IndexedDataset,
        dataset_path: Optional[str],
        indexed_indices: np.ndarray,
        num_samples: Optional[int],
        index_split: Union[Split, str],
        config: GPTDatasetConfig,
        *,
        is_built_on_rank: Optional[Callable[[], bool]] = None,
        synchronize: Optional[Callable[[], None]] = None,
    ) -> None:
        self.dataset = indexed_dataset
        self.dataset_path = dataset_path or getattr(indexed_dataset, "path_prefix", None)
        self.indices = np.asarray(indexed_indices)
        self.num_samples = None if num_samples is None else int(num_samples)
        self.index_split = split_name(index_split)
        self.config = config
        self._check_arguments()
        self.unique_description = self._describe()
        self.unique_description_hash = md5_of_json(self.unique_description)
        folder = config.path_to_cache or default_cache_dir(self.dataset_path, type(self).__name__)
        cache = IndexCache(folder, type(self).__name__, self.index_split, self.unique_description)
        what = f"{type(self).__name__} {self.index_split} ({self.dataset_path})"
        arrays = load_or_build(
            cache,
            self.INDEX_NAMES,
            self._build_indices,
            what,
            is_built_on_rank,
            synchronize,
            validate=self._check_cached_indices,
        )
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]
        self.index_cache = cache
        self._causal_masks: Optional[Dict[str, np.ndarray]] = None

    def sample_source(self) -> GPTSampleSource:
        """The samples as token pieces of the `.bin`, for per-sample analyses (see
        `megatron.core.datasets.sample_source`)."""
        return GPTSampleSource(self)

    @staticmethod
    def numel_low_level_dataset(indexed_dataset: IndexedDataset) -> int:
        """Units the builder splits into train/valid/test: sequences, for GPT."""
        return len(indexed_dataset)

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: DatasetConfig) -> IndexedDataset:
        """Open the indexed dataset of a path prefix."""
        return IndexedDataset(dataset_path, mmap=config.mmap_bin_files)

    def _check_arguments(self) -> None:
        n = len(self.dataset)
        if self.indices.ndim != 1 or (self.indices.size and self.indices.dtype.kind not in "iu"):
            raise ValueError(
                f"indexed_indices must be a 1-D integer array of document ids, got "
                f"{self.indices.dtype}{list(self.indices.shape)}"
            )
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise ValueError(
                f"indexed_indices of the {self.index_split} split range over "
                f"[{self.indices.min()}, {self.indices.max()}] but {self.dataset_path} has "
                f"{n} sequences"
            )
        if self.num_samples is not None and self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0 or None, got {self.num_samples}")

    def _exact_num_epochs(self) -> Optional[int]:
        if self.index_split == Split.train.name:
            return self.config.train_data_exact_num_epochs
        return None

    def _describe(self) -> dict:
        """Everything the index arrays depend on (the cache key)."""
        prefix = self.dataset_path
        return {
            "class": type(self).__name__,
            "dataset_path": os.path.abspath(prefix) if prefix else None,
            "data": dataset_fingerprint(prefix) if prefix else None,
            "split": self.index_split,
            "num_documents": int(self.indices.size),
            "documents_md5": md5_of_array(self.indices),
            "num_samples": self.num_samples,
            "sequence_length": self.config.sequence_length,
            "random_seed": self.config.random_seed,
            "train_data_exact_num_epochs": self._exact_num_epochs(),
            "add_extra_token": self.ADD_EXTRA_TOKEN,
        }

    def _check_cached_indices(self, arrays: Dict[str, np.ndarray]) -> None:
        """Raise ValueError when cached arrays cannot belong to this split: a document id outside
        the split's range, a sample start that goes backwards or past a document's end, a
        shuffled sample id past the last sample."""
        doc, sample, shuffle = (arrays[name] for name in self.INDEX_NAMES)
        if doc.ndim != 1 or sample.ndim != 2 or sample.shape[1] != 2 or shuffle.ndim != 1:
            raise ValueError(
                f"shapes {doc.shape}, {sample.shape}, {shuffle.shape} are not [E*D], [S+1, 2], [S]"
            )
        if len(shuffle) != len(sample) - 1:
            raise ValueError(f"{len(shuffle)} shuffled samples but {len(sample) - 1} samples")
        if doc.size and self.indices.size:
            low, high = int(self.indices.min()), int(self.indices.max())
            if int(doc.min()) < low or int(doc.max()) > high:
                raise ValueError(f"document_index leaves the split's documents [{low}, {high}]")
        positions, offsets = sample[:, 0], sample[:, 1]
        longest = int(self.dataset.sequence_lengths.max()) if len(self.dataset) else 0
        if positions.size and (
            int(positions.min()) < 0
            or int(positions.max()) >= max(doc.size, 1)
            or bool(np.any(positions[1:] < positions[:-1]))
            or int(offsets.min()) < 0
            or int(offsets.max()) > longest
        ):
            raise ValueError(
                "sample_index holds positions outside document_index, positions that go back, "
                f"or offsets outside [0, {longest}] (the longest sequence)"
            )
        if shuffle.size and (int(shuffle.min()) < 0 or int(shuffle.max()) >= len(shuffle)):
            raise ValueError(f"shuffle_index holds sample ids outside [0, {len(shuffle)})")

    def _plan_epochs(self, tokens_per_epoch: int) -> Tuple[int, bool, int]:
        """(epochs, separate final epoch?, samples shuffled together first) per Megatron's rule."""
        s, extra, n = self.config.sequence_length, self.ADD_EXTRA_TOKEN, self.num_samples
        exact = self._exact_num_epochs()
        if exact is not None:
            available = (exact * tokens_per_epoch - extra) // s
            if n is not None and n > available:
                raise ValueError(
                    f"--train-data-exact-num-epochs {exact} yields {available} samples of "
                    f"{s} tokens from the {self.index_split} split of {self.dataset_path} "
                    f"({tokens_per_epoch} tokens per epoch), but {n} were requested; raise the "
                    "epochs or lower --train-samples / --train-iters"
                )
            return exact, False, 0
        if n is None:
            return 1, False, 0
        num_epochs = max(1, -(-(n * s + extra) // tokens_per_epoch))  # smallest E: E*T >= n*s+1
        if num_epochs == 1:
            return 1, False, 0
        sans_final = ((num_epochs - 1) * tokens_per_epoch - extra) // s
        from_final = n - sans_final
        per_epoch = (tokens_per_epoch - extra) // s
        separate = from_final < int(SEPARATE_FINAL_EPOCH_THRESHOLD * per_epoch)
        logger.debug(
            "%s: %d epochs, %d samples from the final one of %d per epoch, separate: %s",
            self.index_split,
            num_epochs,
            from_final,
            per_epoch,
            separate,
        )
        return num_epochs, separate, sans_final

    def _build_indices(self) -> Dict[str, np.ndarray]:
        sizes = self.dataset.sequence_lengths
        tokens_per_epoch = int(np.sum(sizes[self.indices], dtype=np.int64))
        if tokens_per_epoch == 0:
            raise ValueError(
                f"the {self.index_split} split of {self.dataset_path} has {self.indices.size} "
                "documents but no tokens; check --split and the preprocessed data"
            )
        num_epochs, separate_final, sans_final = self._plan_epochs(tokens_per_epoch)
        rs = np.random.RandomState(self.config.random_seed)
        document_index = _build_document_index(self.indices, num_epochs, rs, separate_final)
        sample_index = helpers.build_sample_idx(
            np.ascontiguousarray(sizes, dtype=np.int32),
            document_index,
            self.config.sequence_length,
            num_epochs,
            tokens_per_epoch,
            True,
            self.ADD_EXTRA_TOKEN,
        )
        total = sample_index.shape[0] - 1
        shuffle_index = _build_shuffle_index(sans_final if separate_final else total, total, rs)
        if total == 0:
            logger.warning(
                "the %s split of %s has %d tokens, fewer than one sample of %d + 1: it is empty",
                self.index_split,
                self.dataset_path,
                tokens_per_epoch,
                self.config.sequence_length,
            )
        logger.info(
            "%s %s: %d samples from %d epochs of %d documents (%d tokens each)",
            type(self).__name__,
            self.index_split,
            total,
            num_epochs,
            self.indices.size,
            tokens_per_epoch,
        )
        return {
            "document_index": document_index,
            "sample_index": sample_index,
            "shuffle_index": shuffle_index,
        }

    def __len__(self) -> int:
        return int(self.shuffle_index.shape[0])

    def __getitem__(self, idx: int) -> Dict[str, np.ndarray]:
        idx = int(idx)
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for a dataset of {len(self)} samples")
        text = self.sample_tokens(int(self.shuffle_index[idx]))
        sample = {"text": text}
        sample.update(self._masks_and_position_ids(text[:-1]))
        if self.config.return_data_index:
            sample["index"] = np.int64(idx)
        return sample

    def sample_tokens(self, sample: int) -> np.ndarray:
        """int64 [s + 1] tokens of sample `sample` in sample_index order (before shuffling)."""
        beg_pos, beg_off = (int(v) for v in self.sample_index[sample])
        end_pos, end_off = (int(v) for v in self.sample_index[sample + 1])
        doc, extra = self.document_index, self.ADD_EXTRA_TOKEN
        if beg_pos == end_pos:
            parts = [self.dataset.get(int(doc[beg_pos]), beg_off, end_off - beg_off + extra)]
        else:
            parts = [self.dataset.get(int(doc[beg_pos]), beg_off)]
            parts += [self.dataset.get(int(doc[p])) for p in range(beg_pos + 1, end_pos)]
            parts.append(self.dataset.get(int(doc[end_pos]), 0, end_off + extra))
        text = np.concatenate(parts).astype(np.int64, copy=False)
        if text.shape[0] != self.config.sequence_length + extra:
            raise RuntimeError(
                f"sample {sample} has {text.shape[0]} tokens, expected "
                f"{self.config.sequence_length + extra}: the cached index does not match "
                f"{self.dataset_path}; delete the cache folder and rebuild"
            )
        return text

    def _masks_and_position_ids(self, tokens: np.ndarray) -> Dict[str, np.ndarray]:
        cfg = self.config
        if not (cfg.reset_position_ids or cfg.reset_attention_mask or cfg.eod_mask_loss):
            # The same for every sample: compute once, hand out copies.
            if self._causal_masks is None:
                self._causal_masks = get_ltor_masks_and_position_ids(
                    tokens, None, False, False, False, cfg.create_attention_mask
                )
            return {k: v.copy() for k, v in self._causal_masks.items()}
        return get_ltor_masks_and_position_ids(
            tokens,
            cfg.eod_token,
            cfg.reset_position_ids,
            cfg.reset_attention_mask,
            cfg.eod_mask_loss,
            cfg.create_attention_mask,
        )
