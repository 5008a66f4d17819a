"""From the run's data options to the library's dataset configs and datasets."""

from __future__ import annotations

import logging
from typing import Any, Dict, Sequence

import numpy as np
import torch.distributed as dist

from megatron.core.datasets.builder import build_train_valid_test_datasets, parse_data_path

from .run_config import RunConfig

logger = logging.getLogger(__name__)


def core_dataset_kwargs(run: RunConfig) -> Dict[str, Any]:
    """Fields of `megatron.core.datasets.config.DatasetConfig` taken from the command line."""
    d = run.data
    blend, per_split = None, None
    if d.data_path:
        blend = parse_data_path(d.data_path)
    else:
        per_split = [
            parse_data_path(p) if p else None
            for p in (d.train_data_path, d.valid_data_path, d.test_data_path)
        ]
    return dict(
        random_seed=run.training.seed,
        sequence_length=run.model.seq_length,
        blend=blend,
        blend_per_split=per_split,
        split=d.split,
        path_to_cache=d.data_cache_path,
        return_data_index=d.return_data_index,
        train_data_exact_num_epochs=d.train_data_exact_num_epochs,
        legacy_split_and_blend=d.legacy_split_and_blend,
    )


def rank_zero_first() -> Dict[str, Any]:
    """`is_built_on_rank` / `synchronize` arguments that make global rank 0 build and cache first
    while the other ranks wait and then load (no arguments in a single process)."""
    if not dist.is_initialized():
        return {}
    return {"is_built_on_rank": lambda: dist.get_rank() == 0, "synchronize": dist.barrier}


def build_datasets(dataset_cls, config, num_samples: Sequence[int]):
    """(train, valid, test): global rank 0 builds and caches the indices, the others load them."""
    return build_train_valid_test_datasets(dataset_cls, num_samples, config, **rank_zero_first())


def force_train_index(run: RunConfig, train_dataset):
    """The training dataset reading the index files of --train-doc-idx-path ... (GPT) or
    --train-idx-path (BERT), checked against it; unchanged without those flags."""
    from megatron.core.datasets.forced_index import force_bert_index, force_gpt_index

    d = run.data
    if train_dataset is None or not d.forced_train_index:
        return train_dataset
    is_bert = hasattr(train_dataset, "mapping")
    is_gpt = hasattr(train_dataset, "shuffle_index")
    if d.train_doc_idx_path and not is_gpt or d.train_idx_path and not is_bert:
        flag = "--train-doc-idx-path" if d.train_doc_idx_path else "--train-idx-path"
        raise ValueError(
            f"{flag} does not fit a training split of {type(train_dataset).__name__} (GPT takes "
            "--train-doc-idx-path / --train-sample-idx-path / --train-shuffle-idx-path, BERT "
            "--train-idx-path, each for a single --data-path prefix)"
        )
    if is_gpt:
        force_gpt_index(
            train_dataset, d.train_doc_idx_path, d.train_sample_idx_path, d.train_shuffle_idx_path
        )
    else:
        force_bert_index(train_dataset, d.train_idx_path)
    return train_dataset


class MockGPTDataset:
    """Random tokens for --mock-data (sample i is the same on every rank and every run)."""

    def __init__(self, num_samples: int, seq_length: int, vocab_size: int, seed: int):
        self.num_samples, self.seq_length, self.vocab_size, self.seed = (
            num_samples,
            seq_length,
            vocab_size,
            seed,
        )

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> Dict[str, np.ndarray]:
        rs = np.random.RandomState((self.seed * 1_000_003 + idx) % (2**32))
        text = rs.randint(0, self.vocab_size, size=self.seq_length + 1).astype(np.int64)
        return {
            "text": text,
            "position_ids": np.arange(self.seq_length, dtype=np.int64),
            "loss_mask": np.ones(self.seq_length, dtype=np.float32),
        }
