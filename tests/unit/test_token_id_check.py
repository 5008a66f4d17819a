"""Token ids outside the model's vocabulary are an error naming the file when the dataset opens
(`token_counts.check_token_ids`, called by the dataset builder with `DatasetConfig.vocab_size`),
instead of an IndexError deep in the embedding (or, for ids that land in the padding, silence)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from megatron.core.datasets import token_counts
from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig
from megatron.core.datasets.builder import build_train_valid_test_datasets
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron.core.datasets.token_counts import check_token_ids, save_token_counts

BAD_ID, VOCAB = 149, 100
# The bad id is token 5 of sentence 1 of document 2 (two sentences per document): sequence 5.
BAD_AT = (2, 5, 5)


def write_corpus(prefix: str, bad: bool = True, counts: str = "matching", dtype=np.uint16):
    """6 documents of two 10-token sentences, ids 4..99, and optionally BAD_ID at BAD_AT."""
    rng = np.random.default_rng(0)
    docs = [[rng.integers(4, VOCAB, 10) for _ in range(2)] for _ in range(6)]
    if bad:
        docs[BAD_AT[0]][1][BAD_AT[2]] = BAD_ID
    with IndexedDatasetBuilder(prefix + ".bin", dtype=dtype) as builder:
        for doc in docs:
            for sentence in doc:
                builder.add_item(sentence)
            builder.end_document()
        builder.finalize(prefix + ".idx")
    flat = np.concatenate([s for d in docs for s in d])
    if counts == "matching":  # what tools/preprocess_data.py writes (tokenizer of 150 ids)
        save_token_counts(token_counts.token_counts_path(prefix), np.bincount(flat, minlength=150))
    elif counts == "stale":  # counts of other data: all ids < VOCAB, another token total
        save_token_counts(token_counts.token_counts_path(prefix), np.ones(VOCAB, np.int64))
    return flat


@pytest.mark.parametrize("counts", ["matching", "stale", None])
@pytest.mark.parametrize("chunk", [1 << 24, 7])
def test_an_id_outside_the_vocabulary_names_the_file_the_place_and_both_sizes(
    tmp_path, monkeypatch, caplog, counts, chunk
):
    monkeypatch.setattr(token_counts, "SCAN_CHUNK_TOKENS", chunk)  # 7: scan in many pieces
    prefix = str(tmp_path / "corpus")
    write_corpus(prefix, counts=counts)
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError) as err:
        check_token_ids(IndexedDataset(prefix), VOCAB)
    message = str(err.value)
    assert message.startswith(f"{prefix}.bin: token id {BAD_ID} at document 2, sequence 5, token 5")
    assert f"outside the model's vocabulary of {VOCAB} ids" in message
    assert f"span 4..{BAD_ID}" in message
    source = "corpus.token_counts.npy" if counts == "matching" else "a scan of the file"
    assert f"read from {source}" in message
    assert "re-run tools/preprocess_data.py with the training tokenizer" in message
    assert ("counts are stale" in caplog.text) == (counts == "stale")


@pytest.mark.parametrize("counts", ["matching", None])
def test_ids_inside_the_vocabulary_pass(tmp_path, caplog, counts):
    prefix = str(tmp_path / "corpus")
    flat = write_corpus(prefix, counts=counts)
    with caplog.at_level(logging.WARNING):
        assert check_token_ids(IndexedDataset(prefix), 150) == BAD_ID == flat.max()
    assert not caplog.text
    write_corpus(prefix, bad=False, counts=counts)
    assert check_token_ids(IndexedDataset(prefix), VOCAB) == flat[flat < VOCAB].max()


def test_counts_of_another_vocabulary_size_are_reported(tmp_path, caplog):
    """Ids that fit but counts made for 150 ids: probably another tokenizer, said so."""
    prefix = str(tmp_path / "corpus")
    write_corpus(prefix, bad=False)
    with caplog.at_level(logging.WARNING):
        check_token_ids(IndexedDataset(prefix), VOCAB)
    assert f"counts for 150 token ids but the model's vocabulary has {VOCAB}" in caplog.text


def test_negative_ids_are_an_error(tmp_path):
    prefix = str(tmp_path / "corpus")
    write_corpus(prefix, bad=False, counts=None, dtype=np.int32)
    data = np.memmap(prefix + ".bin", dtype=np.int32, mode="r+")
    data[3] = -2  # a corrupt id
    data.flush()
    del data
    with pytest.raises(ValueError, match="token id -2 at document 0, sequence 0, token 3"):
        check_token_ids(IndexedDataset(prefix), VOCAB)


def _gpt_config(tmp_path, prefix, **kw):
    return GPTDatasetConfig(
        random_seed=1,
        sequence_length=8,
        blend=([prefix], None),
        split="100,0,0",
        path_to_cache=str(tmp_path / "cache"),
        **kw,
    )


def test_the_builder_checks_each_prefix_when_the_vocabulary_is_given(tmp_path):
    good, bad = str(tmp_path / "good"), str(tmp_path / "bad")
    write_corpus(good, bad=False)
    write_corpus(bad)
    config = _gpt_config(tmp_path, good, vocab_size=VOCAB)
    config.blend = ([good, bad], None)
    with pytest.raises(ValueError, match=f"^{bad}.bin: token id {BAD_ID} at document 2"):
        build_train_valid_test_datasets(GPTDataset, [10, 0, 0], config)
    assert not (tmp_path / "cache").exists()  # nothing built from data that cannot train
    train, _, _ = build_train_valid_test_datasets(
        GPTDataset, [10, 0, 0], _gpt_config(tmp_path, bad)
    )  # no vocabulary given: no check (tools that only read the data)
    assert len(train) >= 10


def test_bert_data_and_special_ids_pass_and_bad_ids_do_not(tmp_path):
    prefix = str(tmp_path / "corpus")
    write_corpus(prefix, bad=False)
    special = dict(cls_id=1, sep_id=2, mask_id=3, pad_id=0)
    config = BertDatasetConfig(
        random_seed=1,
        sequence_length=16,
        blend=([prefix], None),
        split="100,0,0",
        path_to_cache=str(tmp_path / "cache"),
        vocab_size=VOCAB,
        **special,
    )
    train, _, _ = build_train_valid_test_datasets(BertDataset, [5, 0, 0], config)
    assert max(int(train[i]["text"].max()) for i in range(5)) < VOCAB
    write_corpus(prefix)
    with pytest.raises(ValueError, match=f"vocabulary of {VOCAB} ids"):
        build_train_valid_test_datasets(BertDataset, [5, 0, 0], config)
