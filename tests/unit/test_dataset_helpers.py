"""Parity of the C++ index helpers with their numpy references, and the dispatching fallback."""

import logging

import numpy as np
import pytest

from megatron.core import kernels
from megatron.core.datasets import helpers
from tests.kernel_parity import assert_parity, extension_hidden, needs_kernel

needs_cpp = needs_kernel(kernels.DATASET_HELPERS)


def walk_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch, drop_last, extra):
    """Literal statement of the documented walk, a third opinion for small cases."""
    total = num_epochs * tokens_per_epoch - extra
    num_samples = total // seq_length if drop_last else -(-total // seq_length)
    rows, pos, offset = [(0, 0)], 0, 0
    for _ in range(num_samples):
        remaining = seq_length + extra
        while remaining != 0:
            length = int(sizes[doc_idx[pos]]) - offset
            remaining -= length
            if remaining <= 0:
                offset += remaining + length - extra
                remaining = 0
            elif pos == len(doc_idx) - 1:
                offset = int(sizes[doc_idx[pos]]) - extra
                break
            else:
                pos, offset = pos + 1, 0
        rows.append((pos, offset))
    return np.array(rows, dtype=np.int64)


def random_case(rng):
    n = int(rng.integers(1, 25))
    max_len = int(rng.choice([1, 3, 10, 200]))
    sizes = rng.integers(0, max_len + 1, n).astype(np.int32)  # includes empty documents
    sizes[rng.integers(0, n)] = max(int(sizes.max()), 2)
    epochs = int(rng.integers(1, 4))
    doc_idx = np.tile(np.arange(n, dtype=np.int32), epochs)
    rng.shuffle(doc_idx)
    seq_length = int(rng.choice([1, 2, 5, 16, 300]))
    return sizes, doc_idx, seq_length, epochs, int(sizes.sum())


@needs_cpp
@pytest.mark.parametrize("extra", [1, 0, 2])
@pytest.mark.parametrize("drop_last", [True, False])
def test_sample_idx_parity_random(extra, drop_last):
    rng = np.random.default_rng(1000 * extra + drop_last)
    for _ in range(150):
        sizes, doc_idx, s, epochs, tokens = random_case(rng)
        args = (sizes, doc_idx, s, epochs, tokens, drop_last, extra)
        ref = assert_parity(helpers.build_sample_idx, *args)
        assert ref.dtype == np.int32
        np.testing.assert_array_equal(ref, walk_sample_idx(*args))
        usable = epochs * tokens - extra
        expected = usable // s if drop_last else -(-usable // s)
        assert ref.shape == (expected + 1, 2)


@needs_cpp
def test_sample_idx_edge_cases():
    cases = [
        (np.array([50], np.int32), np.array([0], np.int32), 7, 1, 50),  # a single document
        (np.array([50], np.int32), np.array([0, 0, 0], np.int32), 1, 3, 50),  # seq_length 1
        (np.array([0, 0, 9, 0], np.int32), np.array([3, 0, 2, 1], np.int32), 2, 1, 9),
        (np.array([1000, 1, 1], np.int32), np.array([1, 0, 2], np.int32), 10, 1, 1002),
        (np.array([2], np.int32), np.array([0], np.int32), 5, 1, 2),  # no full sample
    ]
    for sizes, doc_idx, s, epochs, tokens in cases:
        ref = assert_parity(helpers.build_sample_idx, sizes, doc_idx, s, epochs, tokens)
        walk = walk_sample_idx(sizes, doc_idx, s, epochs, tokens, True, 1)
        np.testing.assert_array_equal(ref, walk)


@needs_cpp
def test_sample_idx_int64_doc_idx_and_forced_int64():
    rng = np.random.default_rng(7)
    sizes, doc_idx, s, epochs, tokens = random_case(rng)
    narrow = helpers.build_sample_idx(sizes, doc_idx, s, epochs, tokens, backend="kernel")
    for backend in ("kernel", "reference"):
        wide = helpers.build_sample_idx(
            sizes, doc_idx.astype(np.int64), s, epochs, tokens, backend=backend, force_int64=True
        )
        assert wide.dtype == np.int64
        np.testing.assert_array_equal(wide, narrow)


@needs_cpp
def test_sample_idx_huge_token_counts():
    """8.6e9 tokens (> int32) in 4 documents: int64 arithmetic, int32 result, exact offsets."""
    sizes = np.full(4, np.iinfo(np.int32).max, dtype=np.int32)
    doc_idx = np.array([2, 0, 3, 1], dtype=np.int32)
    tokens = int(sizes.astype(np.int64).sum())
    s = 1 << 20
    ref = assert_parity(helpers.build_sample_idx, sizes, doc_idx, s, 1, tokens)
    assert ref.shape[0] == (tokens - 1) // s + 1
    starts = ref[:, 0].astype(np.int64) * int(sizes[0]) + ref[:, 1]  # global start positions
    np.testing.assert_array_equal(starts, np.arange(ref.shape[0], dtype=np.int64) * s)


@pytest.mark.parametrize("backend", [pytest.param("kernel", marks=needs_cpp), "reference"])
def test_sample_idx_errors(backend):
    sizes = np.array([5, 5], np.int32)
    with pytest.raises(ValueError, match="doc_idx\\[1\\] = 2"):
        helpers.build_sample_idx(sizes, np.array([0, 2], np.int32), 2, 1, 10, backend=backend)
    with pytest.raises(ValueError, match="spans only 10 tokens"):
        helpers.build_sample_idx(sizes, np.array([0, 1], np.int32), 2, 2, 10, backend=backend)
    with pytest.raises(ValueError, match="seq_length >= 1"):
        helpers.build_sample_idx(sizes, np.array([0, 1], np.int32), 0, 1, 10, backend=backend)


def blend_cases():
    rng = np.random.default_rng(3)
    cases = [([1.0], 10), ([0.5, 0.5], 101), ([0.3, 0.7], 1000), ([0.0, 1.0, 0.0], 50)]
    cases += [([1 / 3] * 3, 999), ([0.25, 0.25, 0.5], 0), ([0.1, 0.2, 0.3, 0.4], 1)]
    for _ in range(30):
        w = rng.random(int(rng.integers(1, 9))) ** 2
        cases.append(((w / w.sum()).tolist(), int(rng.integers(0, 2000))))
    return cases


@needs_cpp
def test_blending_parity():
    for weights, size in blend_cases():
        ref = assert_parity(helpers.build_blending_indices, np.array(weights), size)
        assert ref[0].dtype == np.int16 and ref[1].dtype == np.int64


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_blending_semantics(backend):
    for weights, size in blend_cases():
        w = np.array(weights)
        index, sample_index = helpers.build_blending_indices(w, size, backend=backend)
        counts = np.bincount(index, minlength=len(w))
        # Every prefix of n samples holds within 1 - 1/(2(D-1)) < 1 sample of w * n.
        wn = w / w.sum()
        bound = 1.0 - 1.0 / (2 * (len(w) - 1)) if len(w) > 1 else 0.0
        prefix = np.zeros((size, len(w)))
        prefix[np.arange(size), index] = 1
        drift = np.abs(np.cumsum(prefix, axis=0) - np.outer(np.arange(1, size + 1), wn))
        assert drift.max(initial=0) <= bound + 1e-9, (weights, size, drift.max())
        for d in range(len(w)):  # each dataset is read in order 0, 1, 2, ...
            np.testing.assert_array_equal(sample_index[index == d], np.arange(counts[d]))


def test_blending_first_due_wins_and_errors():
    index, _ = helpers.build_blending_indices_reference(np.array([0.5, 0.5]), 4)
    assert index.tolist() == [0, 1, 0, 1]
    index, _ = helpers.build_blending_indices_reference(
        np.array([2.0, 1.0]), 6
    )  # normalised weights
    assert index.tolist() == [0, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="sum to 0"):
        helpers.build_blending_indices_reference(np.array([0.0, 0.0]), 4)
    with pytest.raises(ValueError, match="weights\\[1\\]"):
        helpers.build_blending_indices_reference(np.array([0.5, -0.5]), 4)
    with pytest.raises(ValueError, match="size must be >= 0"):
        helpers.build_blending_indices_reference(np.array([1.0]), -1)
    with pytest.raises(ValueError, match="backend"):
        helpers.build_blending_indices(np.array([1.0]), 1, backend="cuda")


@pytest.fixture
def without_cpp(monkeypatch):
    """The helpers as if never built, and backend=None meaning "auto" whatever the environment."""
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    with extension_hidden(kernels.DATASET_HELPERS):
        yield


def test_fallback_warns_once_and_matches(without_cpp, caplog):
    sizes = np.array([4, 9, 3], np.int32)
    doc_idx = np.array([2, 0, 1], np.int32)
    with caplog.at_level(logging.WARNING, logger="megatron.core.kernels"):
        a = helpers.build_sample_idx(sizes, doc_idx, 3, 1, 16)
        b = helpers.build_blending_indices(np.array([0.2, 0.8]), 20)
    warnings = [r for r in caplog.records if "not importable" in r.getMessage()]
    assert len(warnings) == 1
    np.testing.assert_array_equal(a, walk_sample_idx(sizes, doc_idx, 3, 1, 16, True, 1))
    assert len(b[0]) == 20
    with pytest.raises(ImportError, match="build_ext"):
        helpers.build_sample_idx(sizes, doc_idx, 3, 1, 16, backend="kernel")


@needs_cpp
def test_largest_error_blending_parity():
    for weights, size in blend_cases():
        ref = assert_parity(helpers.build_blending_indices_largest_error, np.array(weights), size)
        assert ref[0].dtype == np.int16 and ref[1].dtype == np.int64


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_largest_error_blending_is_megatron_cores_rule(backend):
    # 0.3 / 0.7: sample 0 and 1 both see max(i, 1) = 1 -> errors 0.3, 0.7 -> dataset 1, then
    # 0.3 vs -0.3 -> dataset 0; each member is read in order
    index, sample_index = helpers.build_blending_indices_largest_error(
        np.array([0.3, 0.7]), 6, backend=backend
    )
    assert index.tolist() == [1, 0, 1, 1, 0, 1]
    assert sample_index.tolist() == [0, 0, 1, 2, 1, 3]
    index, _ = helpers.build_blending_indices_largest_error(
        np.array([0.5, 0.5]), 4, backend=backend
    )
    assert index.tolist() == [0, 1, 0, 1]  # ties go to the first dataset
    with pytest.raises(ValueError, match="weights"):
        helpers.build_blending_indices_largest_error(np.array([0.5, -0.5]), 4, backend=backend)
