"""BlendedDataset: weights, items, caching and errors."""

import numpy as np
import pytest

from megatron.core.datasets.blended_dataset import BlendedDataset, normalize_weights
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


def write_dataset(prefix, seed, num_docs=30, vocab=500):
    rng = np.random.default_rng(seed)
    with IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16) as builder:
        for _ in range(num_docs):
            builder.add_item(rng.integers(1, vocab, int(rng.integers(1, 40))))
            builder.end_document()
        builder.finalize(str(prefix) + ".idx")
    return IndexedDataset(str(prefix))


@pytest.fixture
def members(tmp_path):
    cfg = GPTDatasetConfig(
        random_seed=5,
        sequence_length=8,
        path_to_cache=str(tmp_path / "cache"),
        return_data_index=True,
    )
    out = []
    for k, n in enumerate([60, 90, 30]):
        indexed = write_dataset(tmp_path / f"d{k}", seed=k)
        docs = np.arange(len(indexed), dtype=np.int32)
        out.append(GPTDataset(indexed, indexed.path_prefix, docs, n, "train", cfg))
    return out, cfg


def test_items_come_from_the_members_in_weighted_shares(members):
    datasets, cfg = members
    weights = [2.0, 3.0, 1.0]  # normalised to 1/3, 1/2, 1/6
    blend = BlendedDataset(datasets, weights, 150, cfg)
    assert len(blend) == 150
    assert blend.weights == pytest.approx([1 / 3, 1 / 2, 1 / 6])
    counts = np.bincount(blend.dataset_index, minlength=3)
    assert np.all(np.abs(counts / 150 - np.array(blend.weights)) < 1.0 / 150)
    seen = {0: [], 1: [], 2: []}
    for i in range(len(blend)):
        item = blend[i]
        d, j = int(blend.dataset_index[i]), int(blend.dataset_sample_index[i])
        assert item["dataset_id"] == d
        member = datasets[d][j]
        np.testing.assert_array_equal(item["text"], member["text"])
        assert item["index"] == j  # the member's own index is kept
        seen[d].append(j)
    for d in seen:  # each member is read in its own order, without repeats
        assert seen[d] == list(range(len(seen[d])))


def test_dataset_id_only_with_return_data_index(members, tmp_path):
    datasets, _ = members
    cfg = GPTDatasetConfig(random_seed=5, sequence_length=8, path_to_cache=str(tmp_path / "c2"))
    blend = BlendedDataset(datasets, [1, 1, 1], 30, cfg)
    assert "dataset_id" not in blend[0]


def test_blend_is_cached(members, monkeypatch):
    datasets, cfg = members
    first = BlendedDataset(datasets, [0.2, 0.5, 0.3], 100, cfg)
    monkeypatch.setattr(BlendedDataset, "_build_indices", lambda self: 1 / 0)
    second = BlendedDataset(datasets, [0.2, 0.5, 0.3], 100, cfg)
    np.testing.assert_array_equal(first.dataset_index, second.dataset_index)
    np.testing.assert_array_equal(first.dataset_sample_index, second.dataset_sample_index)
    with pytest.raises(ZeroDivisionError):  # other weights: a different cache entry
        BlendedDataset(datasets, [0.3, 0.5, 0.2], 100, cfg)


def test_member_too_small_and_bad_weights(members):
    datasets, cfg = members
    with pytest.raises(ValueError, match="holds only"):
        BlendedDataset(datasets, [0.1, 0.1, 0.8], 200, cfg)
    with pytest.raises(ValueError, match="2 weights given for 3 datasets"):
        BlendedDataset(datasets, [0.5, 0.5], 10, cfg)
    with pytest.raises(ValueError, match="must not all be 0"):
        normalize_weights([0, 0], 2)
    with pytest.raises(ValueError, match=">= 0"):
        normalize_weights([1, -1], 2)
    with pytest.raises(IndexError):
        BlendedDataset(datasets, [1, 1, 1], 10, cfg)[10]


@pytest.mark.parametrize(
    "weights", [[0.5, 0.5], [0.9, 0.1], [0.3, 0.7], [0.01, 0.99], [0.2, 0.3, 0.5], [0.25] * 4]
)
@pytest.mark.parametrize("size", [1, 7, 100, 1013])
def test_achieved_shares(weights, size, tmp_path):
    """Blend of index-only stand-ins: shares within 1/N of the weights."""

    class Stub:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"i": i}

    cfg = GPTDatasetConfig(random_seed=1, sequence_length=4, path_to_cache=str(tmp_path))
    stubs = [Stub(size) for _ in weights]
    blend = BlendedDataset(stubs, weights, size, cfg)
    counts = np.bincount(blend.dataset_index, minlength=len(weights))
    assert np.all(np.abs(counts / size - np.array(weights)) < 1.0 / size)
