"""Dataset builder: --data-path / --split parsing, document splits, blends and rank ordering."""

import dataclasses
import math

import numpy as np
import pytest

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.builder import (
    build_train_valid_test_datasets,
    parse_data_path,
    parse_split,
    split_documents,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder


def write_dataset(prefix, seed, num_docs):
    rng = np.random.default_rng(seed)
    with IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16) as builder:
        for _ in range(num_docs):
            builder.add_item(rng.integers(1, 300, int(rng.integers(5, 40))))
            builder.end_document()
        builder.finalize(str(prefix) + ".idx")
    return str(prefix)


def config(tmp_path, **kw):
    kw.setdefault("random_seed", 3)
    kw.setdefault("sequence_length", 8)
    return GPTDatasetConfig(path_to_cache=str(tmp_path / "cache"), **kw)


def test_parse_data_path_forms():
    assert parse_data_path(["/d/a"]) == (["/d/a"], None)
    assert parse_data_path(["/d/a", "/d/b"]) == (["/d/a", "/d/b"], None)
    assert parse_data_path(["0.3", "/d/a", "0.7", "/d/b"]) == (["/d/a", "/d/b"], [0.3, 0.7])
    assert parse_data_path(["0.3 /d/a 0.7 /d/b"]) == (["/d/a", "/d/b"], [0.3, 0.7])
    assert parse_data_path(["1", "/d/a"]) == (["/d/a"], [1.0])


@pytest.mark.parametrize(
    "tokens, message",
    [
        ([], "empty"),
        (["0.3", "/d/a", "0.7"], "'0.7' has no prefix"),
        (["0.3", "/d/a", "/d/b", "/d/c"], "'/d/b' should be a weight"),
        (["0.3", "0.5", "0.7", "/d/b"], "'0.5' should be a dataset prefix"),
        (["/d/a", "0.5", "/d/b"], "number '0.5'"),
        (["-1", "/d/a"], "'-1' of /d/a must be >= 0"),
        (["0", "/d/a", "0", "/d/b"], "all 0"),
    ],
)
def test_parse_data_path_errors(tokens, message):
    with pytest.raises(ValueError, match=message):
        parse_data_path(tokens)


def test_parse_split_forms():
    assert parse_split("969,30,1") == pytest.approx([0.969, 0.030, 0.001])
    assert parse_split("98,2,0") == pytest.approx([0.98, 0.02, 0.0])
    assert parse_split("90/5/5") == pytest.approx([0.9, 0.05, 0.05])
    assert parse_split("100") == [1.0, 0.0, 0.0]
    assert parse_split("3,1") == [0.75, 0.25, 0.0]


@pytest.mark.parametrize("text", ["", "a,b,c", "1,-1,0", "0,0,0", "1,2,3,4", "1,,2"])
def test_parse_split_errors(text):
    with pytest.raises(ValueError, match="--split"):
        parse_split(text)


def test_split_documents_matches_megatron_core_rounding():
    assert split_documents(10, parse_split("969,30,1")) == [(0, 10), (10, 10), (10, 10)]
    assert split_documents(100, parse_split("98,2,0")) == [(0, 98), (98, 100), (100, 100)]
    # round(c * n) of the cumulative fractions 1/3, 2/3: 3.33 -> 3, 6.67 -> 7
    assert split_documents(10, parse_split("1,1,1")) == [(0, 3), (3, 7), (7, 10)]
    assert split_documents(1000, parse_split("969,30,1")) == [(0, 969), (969, 999), (999, 1000)]
    assert split_documents(0, parse_split("1,1,1")) == [(0, 0), (0, 0), (0, 0)]
    # the issue's example: megatron-core 0.16's train is [0, 255), the legacy rule's [0, 256)
    assert split_documents(269, parse_split("949,50,1"))[0] == (0, 255)
    assert split_documents(269, parse_split("949,50,1"), legacy=True)[0] == (0, 256)
    # the legacy rule: 10/3 rounds to 3 per split; the missing document shifts every boundary
    assert split_documents(10, parse_split("1,1,1"), legacy=True) == [(0, 4), (4, 7), (7, 10)]
    for n in range(0, 60):
        for text in ("969,30,1", "1,1,1", "90/5/5", "7,2,1"):
            for legacy in (False, True):
                ranges = split_documents(n, parse_split(text), legacy=legacy)
                assert ranges[0][0] == 0 and ranges[-1][1] == n
                assert all(a <= b for a, b in ranges)
                assert all(ranges[i][1] == ranges[i + 1][0] for i in range(2))


def test_single_prefix_is_split_by_documents(tmp_path):
    prefix = write_dataset(tmp_path / "a", 0, 100)
    cfg = config(tmp_path, blend=([prefix], None), split="90,8,2")
    train, valid, test = build_train_valid_test_datasets(GPTDataset, [50, 10, 3], cfg)
    assert train.indices.tolist() == list(range(0, 90))
    assert valid.indices.tolist() == list(range(90, 98))
    assert test.indices.tolist() == list(range(98, 100))
    assert len(train) >= 50 and len(valid) >= 10 and len(test) >= 3
    assert (train.index_split, valid.index_split, test.index_split) == ("train", "valid", "test")
    assert build_train_valid_test_datasets(GPTDataset, [50, 0, 0], cfg)[1:] == (None, None)


def test_empty_split_with_samples_requested_names_split_and_documents(tmp_path):
    prefix = write_dataset(tmp_path / "a", 0, 10)
    cfg = config(tmp_path, blend=([prefix], None), split="969,30,1")
    with pytest.raises(ValueError, match=r"valid split .*--split 969,30,1 over its 10 documents"):
        build_train_valid_test_datasets(GPTDataset, [5, 2, 0], cfg)
    train, valid, test = build_train_valid_test_datasets(GPTDataset, [5, None, 0], cfg)
    assert train is not None and valid is None and test is None


def test_weighted_blend_oversamples_members(tmp_path):
    a = write_dataset(tmp_path / "a", 0, 60)
    b = write_dataset(tmp_path / "b", 1, 80)
    cfg = config(tmp_path, blend=([a, b], [1.0, 3.0]), split="80,20,0")
    train, valid, test = build_train_valid_test_datasets(GPTDataset, [200, 40, 0], cfg)
    assert test is None
    for blend, n, (start_a, start_b) in ((train, 200, (0, 0)), (valid, 40, (48, 64))):
        assert isinstance(blend, BlendedDataset) and len(blend) == n
        members = blend.datasets
        assert [m.dataset_path for m in members] == [a, b]
        assert [m.num_samples for m in members] == [
            math.ceil(0.25 * n * 1.005),
            math.ceil(0.75 * n * 1.005),
        ]
        assert members[0].indices[0] == start_a and members[1].indices[0] == start_b
        counts = np.bincount(blend.dataset_index, minlength=2)
        assert abs(counts[0] - 0.25 * n) <= 1
    item = train[0]
    assert item["text"].shape == (9,)


def test_unweighted_prefixes_weigh_their_one_epoch_lengths(tmp_path):
    a = write_dataset(tmp_path / "a", 0, 40)
    b = write_dataset(tmp_path / "b", 1, 40)
    cfg = config(tmp_path, blend=([a, b], None), split="1")
    train, valid, test = build_train_valid_test_datasets(GPTDataset, [30, 0, 0], cfg)
    lengths = [len(m) for m in train.datasets]
    assert [m.num_samples for m in train.datasets] == [None, None]  # one epoch each
    assert train.weights == [n / sum(lengths) for n in lengths] and len(train) == 30
    assert valid is None and test is None
    cfg = config(tmp_path, blend=([a, b], None), split="1", legacy_split_and_blend=True)
    train, _, _ = build_train_valid_test_datasets(GPTDataset, [30, 0, 0], cfg)
    assert train.weights == [0.5, 0.5]  # the legacy rule: equal weights


def test_blend_per_split_uses_whole_datasets(tmp_path):
    a = write_dataset(tmp_path / "a", 0, 30)
    b = write_dataset(tmp_path / "b", 1, 20)
    c = write_dataset(tmp_path / "c", 2, 10)
    cfg = config(tmp_path, blend_per_split=[([a], None), ([b, c], [0.5, 0.5]), None])
    train, valid, test = build_train_valid_test_datasets(GPTDataset, [10, 10, 0], cfg)
    assert isinstance(train, GPTDataset) and train.indices.tolist() == list(range(30))
    assert isinstance(valid, BlendedDataset)
    assert [m.indices.size for m in valid.datasets] == [20, 10]
    assert test is None
    # Test samples requested without --test-data-path: no test dataset (Megatron skips the test).
    assert build_train_valid_test_datasets(GPTDataset, [10, 10, 5], cfg)[2] is None
    no_train = dataclasses.replace(cfg, blend_per_split=[None] + cfg.blend_per_split[1:])
    with pytest.raises(ValueError, match="no --train-data-path"):
        build_train_valid_test_datasets(GPTDataset, [10, 10, 5], no_train)


def test_rank_ordering(tmp_path, monkeypatch):
    prefix = write_dataset(tmp_path / "a", 0, 50)
    cfg = config(tmp_path, blend=([prefix], None), split="8,2,0")
    events = []
    sync = lambda: events.append("sync")  # noqa: E731
    first = build_train_valid_test_datasets(GPTDataset, [20, 5, 0], cfg, lambda: True, sync)
    assert events == ["sync"]
    monkeypatch.setattr(GPTDataset, "_build_indices", lambda self: 1 / 0)  # must load
    other = build_train_valid_test_datasets(GPTDataset, [20, 5, 0], cfg, lambda: False, sync)
    assert events == ["sync", "sync"]
    np.testing.assert_array_equal(first[0].shuffle_index, other[0].shuffle_index)
    with pytest.raises(ZeroDivisionError):
        build_train_valid_test_datasets(GPTDataset, [21, 5, 0], cfg, lambda: True, sync)
    assert events == ["sync"] * 3  # released even though the build failed
    with pytest.raises(ValueError, match="synchronize"):
        build_train_valid_test_datasets(GPTDataset, [20, 5, 0], cfg, lambda: True)


def test_no_data_configured(tmp_path):
    with pytest.raises(ValueError, match="--data-path"):
        build_train_valid_test_datasets(GPTDataset, [1, 0, 0], config(tmp_path))
