"""Curriculum metrics: token-piece kernels (C++ vs numpy vs per-sample loops), the metric
definitions, the registry and user-callable contract, and token-frequency sources."""

import math
import sys
import types

import numpy as np
import pytest

from megatron.core import kernels
from megatron.core.curriculum import metrics as M
from megatron.core.curriculum import metrics_kernels as K
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.core.datasets.token_counts import save_token_counts, token_counts_path
from megatron.core.datasets.token_pieces import TokenPieces
from tests.kernel_parity import assert_parity, needs_kernel

needs_cpp = needs_kernel(kernels.DATASET_HELPERS)
TOKEN_DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64]


def random_pieces(rng, dtype, num_samples=300, vocab=120, literal_ids=(1, 2)):
    """Pieces over a random token array: ranges (some empty), literals, empty samples."""
    tokens = rng.integers(0, min(vocab, np.iinfo(dtype).max), size=5000).astype(dtype)
    counts = rng.integers(0, 6, size=num_samples)
    starts, lens = [], []
    for _ in range(int(counts.sum())):
        if rng.random() < 0.25:
            starts.append(-(int(rng.choice(literal_ids)) + 1))
            lens.append(int(rng.integers(0, 3)))
        else:
            n = int(rng.integers(0, 80))
            starts.append(int(rng.integers(0, tokens.size - n + 1)))
            lens.append(n)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    return TokenPieces(tokens, ptr, np.array(starts, np.int64), np.array(lens, np.int64))


def loop_sum(ids, table):
    """Sequential float64 sum, the definition of token_table_sums."""
    total = 0.0
    for t in ids:
        total += float(table[t])
    return total


@pytest.mark.parametrize("dtype", TOKEN_DTYPES)
def test_kernels_match_reference_and_loops(dtype):
    rng = np.random.default_rng(np.dtype(dtype).itemsize)
    pieces = random_pieces(rng, dtype)
    table = rng.random(128) * 17.0
    samples = pieces.materialize()
    expected = np.array([loop_sum(s, table) for s in samples])
    ref = K.token_table_sums(pieces, table, backend="reference")
    assert np.array_equal(ref, expected)  # bit-identical: same order of additions
    counts = np.bincount(np.concatenate(samples), minlength=128)
    assert np.array_equal(K.token_bincount(pieces, 128, backend="reference"), counts)
    if kernels.available(kernels.DATASET_HELPERS):
        assert_parity(K.token_table_sums, pieces, table)
        assert_parity(K.token_bincount, pieces, 128)


@pytest.mark.parametrize("backend", ["reference", pytest.param("kernel", marks=needs_cpp)])
def test_kernels_reject_bad_ids_and_pieces(backend):
    tokens = np.array([1, 2, 300, 4], dtype=np.int32)
    pieces = TokenPieces(tokens, [0, 1, 2], [0, 1], [2, 3])  # sample 1 reaches id 300
    with pytest.raises(ValueError, match="300"):
        K.token_table_sums(pieces, np.ones(10), backend=backend)
    with pytest.raises(ValueError, match="300"):
        K.token_bincount(pieces, 10, backend=backend)
    negative = TokenPieces(np.array([-5], np.int64), [0, 1], [0], [1])
    with pytest.raises(ValueError, match="-5"):
        K.token_table_sums(negative, np.ones(10), backend=backend)
    outside = TokenPieces(tokens, [0, 1], [3], [2])  # runs past the token array
    with pytest.raises(ValueError):
        K.token_table_sums(outside, np.ones(500), backend=backend)
    literal = TokenPieces(tokens, [0, 1], [-(12 + 1)], [1])  # literal id 12 >= 10
    with pytest.raises(ValueError):
        K.token_bincount(literal, 10, backend=backend)


def test_token_pieces_round_trip_and_select():
    samples = [np.array([3, 1, 4]), np.array([], np.int64), np.array([1, 5, 9, 2, 6])]
    pieces = TokenPieces.from_samples(samples)
    assert pieces.num_samples == 3
    assert pieces.lengths().tolist() == [3, 0, 5]
    assert [s.tolist() for s in pieces.materialize()] == [[3, 1, 4], [], [1, 5, 9, 2, 6]]
    picked = pieces.select(np.array([2, 0]))
    assert [s.tolist() for s in picked.materialize()] == [[1, 5, 9, 2, 6], [3, 1, 4]]
    with pytest.raises(ValueError, match="integer"):
        TokenPieces.from_samples([np.array([0.5])])


def test_vocab_rarity_table_is_deepspeeds_formula():
    counts = np.array([0, 1, 3, 0, 6])  # zeros become 1 before the total: total = 12
    table = M.vocab_rarity_table(counts)
    expected = [-math.log(c / 12) for c in (1, 1, 3, 1, 6)]
    np.testing.assert_allclose(table, expected, rtol=1e-15)
    assert counts.tolist() == [0, 1, 3, 0, 6]  # the caller's array is untouched
    with pytest.raises(ValueError):
        M.vocab_rarity_table(np.array([-1, 3]))


def test_seqlen_coefficient_makes_seqlen_dominate():
    table = np.array([0.5, 10.2])
    assert M.seqlen_coefficient(512, table) == 10**5  # 512 * 10.2 = 5222 -> 10 ** (4 + 1)
    assert M.seqlen_coefficient(1000, np.array([1.0])) == 10**4  # log(1000, 10) rounds up to 3
    assert M.seqlen_coefficient(4, np.array([0.0])) == 10  # degenerate table: still an int


def _context(vocab=50, counts=None):
    counts = np.arange(vocab) % 7 if counts is None else counts
    return M.MetricContext(max_sample_tokens=20, vocab_size=vocab, token_counts=counts)


def test_builtin_metrics_against_per_sample_loops():
    rng = np.random.default_rng(5)
    samples = [rng.integers(0, 50, size=int(n)) for n in rng.integers(1, 20, size=40)]
    ctx = _context()
    table = M.vocab_rarity_table(ctx.token_counts)
    built = {s: M.build_metric(s, ctx) for s in M.BUILTIN_METRICS}
    assert built["total_vocab_freq"].metric_type == M.ACCUMULATE
    rarity = [int(loop_sum(s, table)) for s in samples]
    coefficient = built["seqlen_vocab_rarity"].coefficient
    assert coefficient == 10 ** (math.ceil(math.log(20 * table.max(), 10)) + 1)
    expected = {
        "seqlen": [len(s) for s in samples],
        "vocab_rarity": rarity,
        "seqlen_vocab_rarity": [len(s) * coefficient + r for s, r in zip(samples, rarity)],
        "total_vocab_freq": np.bincount(np.concatenate(samples), minlength=50).tolist(),
    }
    for name, metric in built.items():
        got = metric.compute(samples)
        assert got.dtype == np.int64
        assert got.tolist() == expected[name], name
        pieces = TokenPieces.from_samples(samples)
        assert metric.compute_pieces(pieces).tolist() == expected[name], name


def test_parse_metric_spec():
    assert M.parse_metric_spec("vocab_rarity") == M.MetricSpec("vocab_rarity")
    spec = M.parse_metric_spec("hard=my.mod:score")
    assert (spec.name, spec.target, spec.metric_type) == ("hard", "my.mod:score", None)
    spec = M.parse_metric_spec("my.mod:score:accumulate")
    assert (spec.name, spec.metric_type) == ("score", M.ACCUMULATE)
    with pytest.raises(ValueError, match="did you mean 'vocab_rarity'"):
        M.parse_metric_spec("vocab_rarty")
    for bad in ("a=b", "x=:f", "n=m:f:sometimes", "bad name=m:f"):
        with pytest.raises(ValueError):
            M.parse_metric_spec(bad)


@pytest.fixture
def user_module(monkeypatch):
    mod = types.ModuleType("user_metrics_for_tests")
    mod.mean_id = lambda samples: [float(np.mean(s)) for s in samples]
    mod.wrong_length = lambda samples: [1]
    mod.nan = lambda samples: [float("nan")] * len(samples)
    mod.strings = lambda samples: ["a"] * len(samples)
    mod.boom = lambda samples: 1 / 0
    mod.not_callable = 3

    def histogram(samples):
        return np.bincount(np.concatenate(samples) % 4, minlength=4)

    histogram.metric_type = M.ACCUMULATE
    mod.histogram = histogram
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def test_user_metrics_contract(user_module):
    ctx = _context()
    samples = [np.array([1, 2, 3]), np.array([10])]
    mean = M.build_metric(f"mean={user_module}:mean_id", ctx)
    got = mean.compute(samples)
    assert got.dtype == np.float64 and got.tolist() == [2.0, 10.0]
    hist = M.build_metric(f"{user_module}:histogram", ctx)  # type from the attribute
    assert hist.name == "histogram" and hist.metric_type == M.ACCUMULATE
    assert hist.compute(samples).tolist() == [0, 1, 2, 1]
    for name, error in (
        ("wrong_length", "one value per sample"),
        ("nan", "NaN"),
        ("strings", "ints or floats"),
        ("boom", "ZeroDivisionError"),
    ):
        metric = M.build_metric(f"{user_module}:{name}", ctx)
        with pytest.raises((ValueError, RuntimeError), match=error):
            metric.compute(samples)
    with pytest.raises(ValueError, match="not callable"):
        M.build_metric(f"{user_module}:not_callable", ctx)
    with pytest.raises(ValueError, match="no attribute"):
        M.build_metric(f"{user_module}:missing", ctx)
    with pytest.raises(ValueError, match="cannot import"):
        M.build_metric("no_such_module_xyz:f", ctx)


def test_rarity_metrics_need_frequencies():
    with pytest.raises(ValueError, match="token frequencies"):
        M.build_metric("vocab_rarity", M.MetricContext(max_sample_tokens=8, vocab_size=10))
    with pytest.raises(ValueError, match="vocabulary size"):
        M.build_metric("total_vocab_freq", M.MetricContext(max_sample_tokens=8))


def test_config_validation():
    assert M.CurriculumMetricsConfig.coerce(None) is None
    assert M.CurriculumMetricsConfig.coerce("seqlen").metrics == ["seqlen"]
    with pytest.raises(ValueError, match="more than once"):
        M.CurriculumMetricsConfig(["seqlen", "seqlen"])
    with pytest.raises(ValueError, match="empty"):
        M.CurriculumMetricsConfig([])
    with pytest.raises(ValueError, match="unknown curriculum metric"):
        M.CurriculumMetricsConfig(["sequence_length"])


def _write(prefix, docs, dtype=np.uint16):
    with IndexedDatasetBuilder(prefix + ".bin", dtype=dtype) as b:
        for d in docs:
            b.add_item(np.asarray(d))
            b.end_document()
        b.finalize(prefix + ".idx")


def test_corpus_token_counts_file_or_recount(tmp_path, caplog):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write(a, [[1, 2, 2], [5]])
    _write(b, [[2, 3]])
    counts, source = M.corpus_token_counts([a], 8)  # no file: counted from the .bin
    assert counts.tolist() == [0, 1, 2, 0, 0, 1, 0, 0] and "counted" in source
    save_token_counts(token_counts_path(a), np.array([0, 9, 9, 0, 0, 9, 0, 0]))
    counts, source = M.corpus_token_counts([a, b], 8)  # a's file, b counted; summed
    assert counts.tolist() == [0, 9, 10, 1, 0, 9, 0, 0]
    assert token_counts_path(a) in source
    counts, _ = M.corpus_token_counts([a], 6)  # the file has another vocabulary size
    assert counts.tolist() == [0, 1, 2, 0, 0, 1] and "recomputing" in caplog.text
    with pytest.raises(ValueError, match="outside"):
        M.corpus_token_counts([a], 4)  # id 5 does not fit a 4-id vocabulary


def test_load_frequency_file(tmp_path):
    np.save(tmp_path / "f.npy", np.array([1, 0, 4]))
    assert M.load_frequency_file(str(tmp_path / "f.npy")).tolist() == [1, 0, 4]
    with pytest.raises(ValueError, match="vocabulary has 5"):
        M.load_frequency_file(str(tmp_path / "f.npy"), 5)
    _write(str(tmp_path / "mv"), [[7, 0, 2]], dtype=np.int64)  # an MMIDIDX metric_value file
    assert M.load_frequency_file(str(tmp_path / "mv")).tolist() == [7, 0, 2]
