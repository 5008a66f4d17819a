"""Typed configuration shared by the GPT, BERT and blended datasets and their builder.

The training application fills these from the command line; library code only ever sees them.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

Blend = Tuple[List[str], Optional[List[float]]]
"""A dataset blend: path prefixes and their weights (None means equal weights)."""


@dataclasses.dataclass
class DatasetConfig:
    """Fields every Megatron-format dataset needs."""

    random_seed: int
    """Seed of every shuffle (documents, samples, blending); --seed."""

    sequence_length: int
    """Tokens per sample seen by the model (a GPT sample holds sequence_length + 1);
    --seq-length."""

    blend: Optional[Blend] = None
    """Prefixes and weights split into train/valid/test by `split`; --data-path."""

    blend_per_split: Optional[List[Optional[Blend]]] = None
    """[train, valid, test] blends used instead of `blend` + `split`;
    --train/valid/test-data-path."""

    split: str = "969,30,1"
    """Relative train,valid,test weights over documents (e.g. "969,30,1" or "98,2,0"); --split."""

    path_to_cache: Optional[str] = None
    """Folder for the cached index files; defaults to a `cache/` folder beside the first data file;
    --data-cache-path."""

    mmap_bin_files: bool = True
    """Memory-map the .bin files instead of reading them into memory."""

    return_data_index: bool = False
    """Each sample carries its index in the dataset under key "index"; --return-data-index."""

    train_data_exact_num_epochs: Optional[int] = None
    """Build the train split from exactly this many epochs of its documents (its length is then
    whatever those epochs yield); --train-data-exact-num-epochs."""

    legacy_split_and_blend: bool = False
    """False (the default): megatron-core 0.16's rules, so that the same flags give the same
    samples as megatron-core: `split` becomes document ranges [round(a * n), round(b * n)) for
    the cumulative fractions a, b; blend members get ceil(ceil(weight * N) * 1.005) samples and
    are interleaved by the largest error (`helpers.build_blending_indices_largest_error`); a
    blend without weights weighs each member by its one-epoch length. True: this project's
    earlier rules (Megatron-LM's legacy split rounding, `split_documents_legacy`; members of
    ceil(weight * N * 1.005) samples interleaved by the earliest deadline,
    `helpers.build_blending_indices`; equal weights without weights), for runs and caches made
    before megatron-core's rules became the default; --legacy-split-and-blend."""

    vocab_size: Optional[int] = None
    """The model's vocabulary (the tokenizer's vocab_size, unpadded). When set, the token ids of
    every data file are checked against it as the file opens (from its .token_counts.npy, else a
    scan of the .bin): an id outside [0, vocab_size) is an error naming the file. None: no
    check."""

    def __post_init__(self) -> None:
        if self.sequence_length <= 0:
            raise ValueError(f"--seq-length must be positive, got {self.sequence_length}")
        if self.blend is not None and self.blend_per_split is not None:
            raise ValueError(
                "give either --data-path (split by --split) or --train-data-path / "
                "--valid-data-path / --test-data-path, not both"
            )
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {self.vocab_size}")
        if self.train_data_exact_num_epochs is not None and self.train_data_exact_num_epochs <= 0:
            raise ValueError(
                "--train-data-exact-num-epochs must be positive, got "
                f"{self.train_data_exact_num_epochs}"
            )
