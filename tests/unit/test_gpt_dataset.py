"""GPTDataset: index semantics, Megatron's epoch rules, caching, masks and options."""

import json
import logging
import os

import numpy as np
import pytest

from megatron.core.datasets import gpt_dataset as gd
from megatron.core.datasets.gpt_dataset import (
    GPTDataset,
    GPTDatasetConfig,
    get_ltor_masks_and_position_ids,
)
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

EOD = 0


def write_dataset(prefix, docs, dtype=np.uint16):
    with IndexedDatasetBuilder(str(prefix) + ".bin", dtype=dtype) as builder:
        for doc in docs:
            builder.add_item(np.asarray(doc))
            builder.end_document()
        builder.finalize(str(prefix) + ".idx")
    return IndexedDataset(str(prefix))


def random_docs(seed, num_docs=40, max_len=60, vocab=1000):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, int(rng.integers(1, max_len + 1))) for _ in range(num_docs)]


@pytest.fixture
def corpus(tmp_path):
    docs = random_docs(0)
    return write_dataset(tmp_path / "corpus", docs), docs


def make(indexed, indices=None, num_samples=None, split="train", cache=None, **config):
    config.setdefault("random_seed", 1234)
    config.setdefault("sequence_length", 16)
    cfg = GPTDatasetConfig(path_to_cache=None if cache is None else str(cache), **config)
    if indices is None:
        indices = np.arange(len(indexed), dtype=np.int32)
    return GPTDataset(indexed, indexed.path_prefix, indices, num_samples, split, cfg)


def stream_of(ds, docs):
    """The split's tokens in document_index order (what samples are cut from)."""
    return np.concatenate([docs[d] for d in ds.document_index]).astype(np.int64)


@pytest.mark.parametrize("num_samples", [None, 5, 60, 200])
def test_samples_are_windows_of_the_document_stream(corpus, tmp_path, num_samples):
    indexed, docs = corpus
    ds = make(indexed, num_samples=num_samples, cache=tmp_path / "c")
    s = ds.config.sequence_length
    stream = stream_of(ds, docs)
    num = ds.sample_index.shape[0] - 1
    assert len(ds) == num >= (num_samples or 0)
    for j in range(num):  # unshuffled sample j is stream[j*s : j*s + s + 1]
        np.testing.assert_array_equal(ds.sample_tokens(j), stream[j * s : j * s + s + 1])
    assert sorted(ds.shuffle_index.tolist()) == list(range(num))
    for i in range(len(ds)):
        item = ds[i]
        assert item["text"].dtype == np.int64 and item["text"].shape == (s + 1,)
        np.testing.assert_array_equal(item["text"], ds.sample_tokens(int(ds.shuffle_index[i])))


def test_one_epoch_covers_every_token_once(corpus, tmp_path):
    indexed, docs = corpus
    ds = make(indexed, indices=np.arange(5, 35), cache=tmp_path / "c")
    s = ds.config.sequence_length
    tokens = sum(len(docs[d]) for d in range(5, 35))
    num = len(ds)
    assert num == (tokens - 1) // s  # only the partial tail (< s tokens) is left out
    assert sorted(ds.document_index.tolist()) == list(range(5, 35))
    stream = stream_of(ds, docs)
    covered = np.concatenate([ds.sample_tokens(j)[:-1] for j in range(num)] + [stream[num * s :]])
    np.testing.assert_array_equal(covered, stream)  # tiles exactly; only overlaps repeat


def expected_indices(docs_of_split, tokens, s, num_samples, seed, separate):
    """Megatron's RNG consumption order, restated: doc index(es), then shuffle index(es)."""
    rs = np.random.RandomState(seed)
    epochs = max(1, -(-(num_samples * s + 1) // tokens))
    if separate:
        first = np.tile(docs_of_split.astype(np.int32), epochs - 1)
        rs.shuffle(first)
        last = docs_of_split.astype(np.int32).copy()
        rs.shuffle(last)
        doc_index = np.concatenate([first, last])
    else:
        doc_index = np.tile(docs_of_split.astype(np.int32), epochs)
        rs.shuffle(doc_index)
    total = (epochs * tokens - 1) // s
    sans = ((epochs - 1) * tokens - 1) // s if separate else total
    shuffle = np.arange(sans, dtype=np.uint32)
    rs.shuffle(shuffle)
    if sans < total:
        tail = np.arange(sans, total, dtype=np.uint32)
        rs.shuffle(tail)
        shuffle = np.concatenate([shuffle, tail])
    return epochs, doc_index, shuffle


@pytest.mark.parametrize("side", ["below", "at"])
def test_separate_final_epoch_threshold(corpus, tmp_path, side):
    indexed, docs = corpus
    s = 16
    tokens = int(indexed.sequence_lengths.sum())
    per_epoch = (tokens - 1) // s
    sans = (2 * tokens - 1) // s  # samples of the first two epochs
    threshold = int(0.8 * per_epoch)
    from_final = threshold - 1 if side == "below" else threshold
    n = sans + from_final
    ds = make(indexed, num_samples=n, cache=tmp_path / "c", sequence_length=s)
    separate = side == "below"
    epochs, doc_index, shuffle = expected_indices(np.arange(40), tokens, s, n, 1234, separate)
    assert epochs == 3
    np.testing.assert_array_equal(ds.document_index, doc_index)
    np.testing.assert_array_equal(ds.shuffle_index, shuffle)
    assert ds.shuffle_index.dtype == np.uint32
    first = np.asarray(ds.shuffle_index[:sans])
    assert (first.max() < sans) == separate  # separate: first epochs' samples shuffled apart
    last_epoch = np.sort(np.asarray(ds.document_index[-40:]))
    assert np.array_equal(last_epoch, np.arange(40)) or not separate


def test_reproducible_and_seed_dependent(corpus, tmp_path):
    indexed, _ = corpus
    a = make(indexed, num_samples=70, cache=tmp_path / "a")
    b = make(indexed, num_samples=70, cache=tmp_path / "b")
    c = make(indexed, num_samples=70, cache=tmp_path / "c", random_seed=99)
    for name in GPTDataset.INDEX_NAMES:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.document_index, c.document_index)
    assert not np.array_equal(a.shuffle_index, c.shuffle_index)


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    indexed = write_dataset(tmp_path / "d", random_docs(1))
    cache = tmp_path / "cache"
    first = make(indexed, num_samples=30, cache=cache)
    files = sorted(os.listdir(cache))
    assert len(files) == 4 and any(f.endswith("description.json") for f in files)
    description = json.loads((cache / [f for f in files if f.endswith(".json")][0]).read_text())
    assert description["description"]["sequence_length"] == 16

    def no_build(self):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(GPTDataset, "_build_indices", no_build)
    second = make(indexed, num_samples=30, cache=cache)
    np.testing.assert_array_equal(first.shuffle_index, second.shuffle_index)
    assert isinstance(second.sample_index, np.memmap)
    with pytest.raises(AssertionError, match="from the cache"):
        make(indexed, num_samples=30, cache=cache, sequence_length=8)
    indexed2 = write_dataset(tmp_path / "d", random_docs(2))  # re-preprocessed in place
    with pytest.raises(AssertionError, match="from the cache"):
        make(indexed2, num_samples=30, cache=cache)


def test_default_cache_folder_beside_the_data(tmp_path):
    indexed = write_dataset(tmp_path / "data", random_docs(3))
    make(indexed, num_samples=10)
    assert len(os.listdir(tmp_path / "cache" / "GPTDataset_indices")) == 4


@pytest.mark.parametrize("damage", ["truncate", "garbage_json", "delete_array"])
def test_damaged_cache_is_rebuilt(tmp_path, caplog, damage):
    indexed = write_dataset(tmp_path / "d", random_docs(4))
    cache = tmp_path / "cache"
    good = make(indexed, num_samples=25, cache=cache)
    sample_file = next(cache.glob("*sample_index.npy"))
    if damage == "truncate":
        sample_file.write_bytes(sample_file.read_bytes()[:-8])
    elif damage == "garbage_json":
        next(cache.glob("*.json")).write_text('{"description": ')
    else:
        sample_file.unlink()
    with caplog.at_level(logging.WARNING):
        rebuilt = make(indexed, num_samples=25, cache=cache)
    assert any("damaged index cache" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(rebuilt.sample_index, good.sample_index)
    again = make(indexed, num_samples=25, cache=cache)  # the repaired entry now loads
    np.testing.assert_array_equal(again.sample_index, good.sample_index)


def test_rank_zero_builds_then_others_load(tmp_path, monkeypatch):
    indexed = write_dataset(tmp_path / "d", random_docs(5))
    cfg = GPTDatasetConfig(random_seed=1, sequence_length=8, path_to_cache=str(tmp_path / "c"))
    calls = []
    idx = np.arange(len(indexed))
    kw = dict(is_built_on_rank=lambda: True, synchronize=lambda: calls.append("sync"))
    rank0 = GPTDataset(indexed, indexed.path_prefix, idx, 20, "train", cfg, **kw)
    assert calls == ["sync"]
    monkeypatch.setattr(GPTDataset, "_build_indices", lambda self: 1 / 0)
    kw["is_built_on_rank"] = lambda: False
    rank1 = GPTDataset(indexed, indexed.path_prefix, idx, 20, "train", cfg, **kw)
    assert calls == ["sync", "sync"]
    np.testing.assert_array_equal(rank0.shuffle_index, rank1.shuffle_index)
    kw["is_built_on_rank"] = lambda: True
    with pytest.raises(ZeroDivisionError):  # a failed build still releases the other ranks
        GPTDataset(indexed, indexed.path_prefix, idx, 21, "train", cfg, **kw)
    assert calls == ["sync"] * 3


def test_masks_and_position_ids_hand_made():
    tokens = np.array([5, 6, EOD, 7, EOD, EOD, 8, 9])
    out = get_ltor_masks_and_position_ids(tokens, EOD, True, True, True)
    assert out["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 0, 1]
    assert out["loss_mask"].tolist() == [1, 1, 0, 1, 0, 0, 1, 1]
    allowed = ~out["attention_mask"][0]
    doc = [0, 0, 0, 1, 1, 2, 3, 3]
    for q in range(8):
        for k in range(8):
            assert allowed[q, k] == (k <= q and doc[k] == doc[q]), (q, k)
    plain = get_ltor_masks_and_position_ids(tokens, EOD, False, False, False)
    assert plain["position_ids"].tolist() == list(range(8))
    assert plain["loss_mask"].tolist() == [1] * 8
    np.testing.assert_array_equal(plain["attention_mask"][0], ~np.tri(8, dtype=bool))
    only_pos = get_ltor_masks_and_position_ids(tokens, EOD, True, False, False, False)
    assert "attention_mask" not in only_pos
    assert only_pos["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 0, 1]


def test_dataset_items_with_options(tmp_path):
    rng = np.random.default_rng(6)
    docs = [np.append(rng.integers(1, 50, int(rng.integers(1, 12))), EOD) for _ in range(30)]
    indexed = write_dataset(tmp_path / "d", docs)
    opts = dict(reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)
    ds = make(indexed, cache=tmp_path / "c", eod_token=EOD, return_data_index=True, **opts)
    saw_eod = False
    for i in range(len(ds)):
        item = ds[i]
        tokens = item["text"][:-1]
        ref = get_ltor_masks_and_position_ids(tokens, EOD, True, True, True)
        for key in ("position_ids", "loss_mask", "attention_mask"):
            np.testing.assert_array_equal(item[key], ref[key])
        assert item["attention_mask"].shape == (1, 16, 16) and item["attention_mask"].dtype == bool
        assert item["index"] == i
        saw_eod |= bool((tokens == EOD).any())
    assert saw_eod
    plain = make(indexed, cache=tmp_path / "c", create_attention_mask=False)
    item = plain[0]
    assert set(item) == {"text", "position_ids", "loss_mask"}
    item["position_ids"][0] = 99  # items do not share buffers
    assert plain[1]["position_ids"][0] == 0


def test_exact_num_epochs(corpus, tmp_path):
    indexed, _ = corpus
    tokens = int(indexed.sequence_lengths.sum())
    ds = make(indexed, num_samples=10, cache=tmp_path / "c", train_data_exact_num_epochs=3)
    assert len(ds) == (3 * tokens - 1) // 16
    assert np.array_equal(np.bincount(ds.document_index), np.full(40, 3))
    exact = dict(cache=tmp_path / "c", train_data_exact_num_epochs=3)
    with pytest.raises(ValueError, match="--train-data-exact-num-epochs 3 yields"):
        make(indexed, num_samples=len(ds) + 1, **exact)
    valid = make(indexed, num_samples=10, split="valid", **exact)
    assert len(valid) == (tokens - 1) // 16  # only the train split is affected


def test_argument_errors(corpus, tmp_path):
    indexed, _ = corpus
    with pytest.raises(ValueError, match="has 40 sequences"):
        make(indexed, indices=np.array([0, 40]), cache=tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        make(indexed, split="dev", cache=tmp_path)
    with pytest.raises(ValueError, match="eod_token"):
        GPTDatasetConfig(random_seed=1, sequence_length=8, eod_mask_loss=True)
    empty = write_dataset(tmp_path / "e", [np.array([], np.int64)] * 3)
    with pytest.raises(ValueError, match="3 documents but no tokens"):
        make(empty, cache=tmp_path)
    with pytest.raises(IndexError):
        make(indexed, cache=tmp_path)[10**6]


def test_split_shorter_than_one_sample_is_empty(tmp_path):
    indexed = write_dataset(tmp_path / "d", [np.arange(1, 6), np.arange(1, 4)])
    ds = make(indexed, cache=tmp_path / "c", sequence_length=16)
    assert len(ds) == 0 and ds.sample_index.shape == (1, 2)
    assert len(make(indexed, cache=tmp_path / "c", sequence_length=16)) == 0  # from the cache
    assert len(make(indexed, num_samples=3, cache=tmp_path / "c", sequence_length=16)) == 3


def test_shuffle_index_dtype_switch():
    rs = np.random.RandomState(0)
    assert gd._build_shuffle_index(5, 9, rs).dtype == np.uint32
    assert sorted(gd._build_shuffle_index(5, 9, rs)[5:].tolist()) == [5, 6, 7, 8]
