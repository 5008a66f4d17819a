"""Forced train index files (Megatron-DeepSpeed's --train-doc-idx-path ... / --train-idx-path):
written under its names, read back exactly, refused with the flag that fixes them when they do
not fit the training split."""

import numpy as np
import pytest

from megatron.core.datasets.builder import build_train_valid_test_datasets
from megatron.core.datasets.forced_index import (
    epochs_in_name,
    force_gpt_index,
    gpt_index_paths,
    save_train_index,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.training.config import DataConfig


@pytest.fixture
def prefix(tmp_path):
    path = str(tmp_path / "corpus_text_document")
    rs = np.random.RandomState(0)
    with IndexedDatasetBuilder(path + ".bin", np.uint16) as b:
        for _ in range(60):
            b.add_item(rs.randint(0, 50, size=rs.randint(5, 40)))
            b.end_document()
        b.finalize(path + ".idx")
    return path


def train_split(prefix, epochs=1, seed=1234, split="90,10,0"):
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=8,
        blend=([prefix], None),
        split=split,
        create_attention_mask=False,
        train_data_exact_num_epochs=epochs,
    )
    return build_train_valid_test_datasets(GPTDataset, [None, 0, 0], config)[0]


def test_written_under_megatron_deepspeed_names_and_read_back(prefix):
    ds = train_split(prefix, epochs=2)
    paths = save_train_index(ds, 2)
    assert list(paths.values()) == list(gpt_index_paths(prefix, 2, 8, 1234))
    assert paths["doc_idx"].endswith("_train_indexmap_exact2ep_8sl_1234s_doc_idx.npy")
    assert epochs_in_name(paths["doc_idx"]) == 2
    other = train_split(prefix, epochs=2, seed=7)  # same split, another order
    assert other[0]["text"].tolist() != ds[0]["text"].tolist()
    force_gpt_index(other, *paths.values())
    assert [other[i]["text"].tolist() for i in range(len(ds))] == [
        ds[i]["text"].tolist() for i in range(len(ds))
    ]
    assert "forced_index" in other.unique_description


def test_an_index_of_another_split_or_epoch_count_is_refused(prefix):
    paths = save_train_index(train_split(prefix, split="50,50,0"), 1)
    with pytest.raises(ValueError, match="another --data-path or --split|another --split"):
        force_gpt_index(train_split(prefix), *paths.values())
    paths = save_train_index(train_split(prefix, epochs=3), 3)
    with pytest.raises(ValueError, match="pass --train-data-exact-num-epochs 3"):
        force_gpt_index(train_split(prefix, epochs=1), *paths.values())
    doc, sample, shuffle = paths.values()
    with pytest.raises(ValueError, match="--train-sample-idx-path .*no such file"):
        force_gpt_index(train_split(prefix, epochs=3), doc, sample + ".gone", shuffle)


def test_the_flags_come_as_a_set_and_their_names_set_the_epochs():
    doc = "/d/p_train_indexmap_exact3ep_8sl_1234s_doc_idx.npy"
    sample, shuffle = doc.replace("doc_idx", "sample_idx"), doc.replace("doc_idx", "shuffle_idx")
    cfg = DataConfig(
        train_doc_idx_path=doc, train_sample_idx_path=sample, train_shuffle_idx_path=shuffle
    )
    assert cfg.train_data_exact_num_epochs == 3 and cfg.forced_train_index
    with pytest.raises(ValueError, match="also need --train-shuffle-idx-path"):
        DataConfig(train_doc_idx_path=doc, train_sample_idx_path=sample)
    with pytest.raises(ValueError, match="--train-data-exact-num-epochs is 2"):
        DataConfig(
            train_doc_idx_path=doc,
            train_sample_idx_path=sample,
            train_shuffle_idx_path=shuffle,
            train_data_exact_num_epochs=2,
        )
    with pytest.raises(ValueError, match="pass --train-data-exact-num-epochs E"):
        DataConfig(train_idx_path="/d/mapping.npy")
    bert = DataConfig(train_idx_path="/d/p_train_indexmap_exact5ep_509msl_0.10ssp_1234s.npy")
    assert bert.train_data_exact_num_epochs == 5
