"""Curriculum analysis: values built into GPT / BERT / blended datasets against per-sample loops,
their cache, the map/reduce outputs in DeepSpeed's layout against a brute-force reference, and
worker restarts."""

import collections
import json
import os
import sys
import types

import numpy as np
import pytest

from megatron.core import kernels
from megatron.core.curriculum import analysis as A
from megatron.core.curriculum import analysis_output as O
from megatron.core.curriculum.metrics import CurriculumMetricsConfig, vocab_rarity_table
from megatron.core.curriculum.scoring import make_sample_source
from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig
from megatron.core.datasets.bert_sample_source import BertSampleSource
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron.core.files import host_name
from tests.kernel_parity import assert_parity, needs_kernel

VOCAB = 300
BUILTINS = ["seqlen", "vocab_rarity", "seqlen_vocab_rarity", "total_vocab_freq"]
CLS, SEP, MASK, PAD = 1, 2, 3, 0


def write_corpus(prefix, seed, num_docs, sentences=(1, 2), length=(1, 120)):
    rng = np.random.default_rng(seed)
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16) as builder:
        for _ in range(num_docs):
            for _ in range(int(rng.integers(*sentences))):
                n = int(rng.integers(*length))
                builder.add_item(10 + (rng.zipf(1.3, size=n) % (VOCAB - 10)))
            builder.end_document()
        builder.finalize(prefix + ".idx")
    return IndexedDataset(prefix)


# ------------------------------------------------------------------- brute-force reference


def corpus_counts(prefixes):
    counts = collections.Counter()
    for prefix in prefixes:
        ds = IndexedDataset(prefix)
        for i in range(len(ds)):
            counts.update(int(t) for t in ds[i])
    return np.array([counts.get(i, 0) for i in range(VOCAB)], dtype=np.int64)


def unmasked_bert_sample(dataset, i):
    item = dataset[i]
    n = int(item["padding_mask"].sum())
    return np.where(item["loss_mask"] == 1, item["labels"], item["text"])[:n]


def brute_force_values(samples, counts, max_tokens):
    """{metric: per-sample list (or the bincount)} with plain Python loops."""
    table = vocab_rarity_table(counts)
    rarity = []
    for s in samples:
        total = 0.0
        for t in s:
            total += float(table[int(t)])
        rarity.append(int(total))
    coefficient = 10
    while coefficient <= max_tokens * float(table.max()) * 10:  # 10 ** (ceil(log10(x)) + 1)
        coefficient *= 10
    freq = [0] * VOCAB
    for s in samples:
        for t in s:
            freq[int(t)] += 1
    return {
        "seqlen": [len(s) for s in samples],
        "vocab_rarity": rarity,
        "seqlen_vocab_rarity": [len(s) * coefficient + r for s, r in zip(samples, rarity)],
        "total_vocab_freq": freq,
    }


def brute_force_rows(values):
    """(index_to_sample rows, index_to_metric, percentile-merged rows) with dicts and loops."""
    by_value = {}
    for sample, value in enumerate(values):
        by_value.setdefault(value, []).append(sample)
    keys = sorted(by_value)
    rows = [by_value[k] for k in keys]
    step = max(1, len(keys) // 100)
    merged = [sum(rows[i : i + step], []) for i in range(0, len(rows), step)]
    return rows, keys, merged


def assert_outputs_match(save, name, values):
    """The four single-value files of `name` in `save` hold the brute-force rows and layout."""
    rows, keys, merged = brute_force_rows(list(values))
    n, v = len(values), len(keys)

    def read(kind):
        flat, ptr, doc = O.read_rows(O.metric_prefix(save, name, kind))
        return [flat[ptr[i] : ptr[i + 1]].tolist() for i in range(ptr.size - 1)], doc.tolist()

    got, doc = read(O.SAMPLE_TO_METRIC)
    assert got == [[x] for x in values] and doc == [0, n, n]
    got, doc = read(O.INDEX_TO_SAMPLE)
    assert got == rows and doc == [0, v, v]
    got, doc = read(O.INDEX_TO_METRIC)
    assert got == [[k] for k in keys] and doc == [0, v, v]
    got, doc = read(O.PERCENTILE_MERGED)
    assert got == merged and doc == [0, len(merged)]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def gpt_corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpt")
    write_corpus(str(tmp / "a"), 1, 120)
    write_corpus(str(tmp / "b"), 2, 80)
    return tmp


def gpt(tmp, prefix="a", metrics=None, num_samples=600, cache="cache", blend=None, **kw):
    config = GPTDatasetConfig(
        random_seed=9,
        sequence_length=40,
        path_to_cache=str(tmp / cache),
        blend=blend,
    )
    indexed = IndexedDataset(str(tmp / prefix))
    docs = np.arange(len(indexed))
    dataset = GPTDataset(indexed, str(tmp / prefix), docs, num_samples, "train", config, **kw)
    A.attach_metrics(dataset, metrics, **kw)
    return dataset


def bert(tmp, metrics=None, head=True, head_type="sop", seed=5):
    config = BertDatasetConfig(
        random_seed=seed,
        sequence_length=48,
        path_to_cache=str(tmp / "cache"),
        cls_id=CLS,
        sep_id=SEP,
        mask_id=MASK,
        pad_id=PAD,
        vocab_size=VOCAB,
        classification_head=head,
        binary_head_type=head_type,
    )
    indexed = IndexedDataset(str(tmp / "sent"))
    dataset = BertDataset(
        indexed, str(tmp / "sent"), np.arange(indexed.num_documents), 700, "train", config
    )
    A.attach_metrics(dataset, metrics)
    return dataset


@pytest.fixture(scope="module")
def bert_corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    write_corpus(str(tmp / "sent"), 3, 150, sentences=(1, 9), length=(1, 25))
    return tmp


# --------------------------------------------------------------------------- built in datasets


def test_gpt_values_match_per_sample_loops(gpt_corpus):
    config = CurriculumMetricsConfig(BUILTINS, vocab_size=VOCAB)
    ds = gpt(gpt_corpus, metrics=config)
    samples = [ds[i]["text"] for i in range(len(ds))]
    expected = brute_force_values(samples, corpus_counts([str(gpt_corpus / "a")]), 41)
    assert set(ds.curriculum_metric_values) == set(BUILTINS)
    for name in BUILTINS:
        assert ds.curriculum_metric_values[name].tolist() == expected[name], name
    assert len(set(expected["vocab_rarity"])) > 20  # not a degenerate test


@pytest.mark.parametrize("head, head_type", [(True, "sop"), (False, "sop"), (True, "nsp")])
def test_bert_values_match_per_sample_loops(bert_corpus, head, head_type):
    config = CurriculumMetricsConfig(BUILTINS)  # vocab size from BertDatasetConfig
    ds = bert(bert_corpus, config, head, head_type)
    samples = [unmasked_bert_sample(ds, i) for i in range(len(ds))]
    expected = brute_force_values(samples, corpus_counts([str(bert_corpus / "sent")]), 48)
    for name in BUILTINS:
        assert ds.curriculum_metric_values[name].tolist() == expected[name], name
    assert len(set(expected["seqlen"])) > 5


@needs_kernel(kernels.DATASET_HELPERS)
@pytest.mark.parametrize("head", [True, False])
def test_bert_replay_cpp_matches_numpy(tmp_path, head):
    """C++ replay of numpy's draws == numpy's, including long cuts (binomial BTPE, n > 60)."""
    write_corpus(str(tmp_path / "sent"), 8, 120, sentences=(2, 7), length=(1, 160))
    config = BertDatasetConfig(
        random_seed=2**32 - 40,
        sequence_length=24,
        cls_id=CLS,
        sep_id=SEP,
        mask_id=MASK,
        pad_id=PAD,
        vocab_size=VOCAB,
        short_sequence_probability=0.5,
        classification_head=head,
        path_to_cache=str(tmp_path / "cache"),
    )
    indexed = IndexedDataset(str(tmp_path / "sent"))
    ds = BertDataset(indexed, str(tmp_path / "sent"), np.arange(120), 3000, "train", config)
    source = BertSampleSource(ds)
    indices = np.arange(len(ds))
    ref = assert_parity(source._replay, indices)
    cuts = (ref[:, 2] + ref[:, 5]).astype(np.int64)
    assert (ds.mapping[:, 2] < cuts).sum() == 0 and ref[:, 1].max() > 30  # long front cuts seen


def test_bert_replay_mismatch_is_detected(bert_corpus, monkeypatch):
    source = make_sample_source(bert(bert_corpus))
    assert isinstance(source, BertSampleSource)
    real = BertSampleSource._replay

    def off_by_one(self, indices):
        out = real(self, indices)
        out[:, 1] += 1  # a front cut the dataset did not make
        return out

    monkeypatch.setattr(BertSampleSource, "_replay", off_by_one)
    with pytest.raises(RuntimeError, match="must follow the dataset"):
        source.pieces_at(np.arange(5))


def test_blended_values(gpt_corpus):
    config = CurriculumMetricsConfig(["vocab_rarity"], vocab_size=VOCAB)
    blend = ([str(gpt_corpus / "a"), str(gpt_corpus / "b")], [0.3, 0.7])
    members = [gpt(gpt_corpus, p, config, n, blend=blend) for p, n in (("a", 200), ("b", 400))]
    blended = BlendedDataset(members, [0.3, 0.7], 500, members[0].config)
    values = A.blended_metric_values(blended, "vocab_rarity")
    # frequencies of the whole blend, one table for both members
    counts = corpus_counts([str(gpt_corpus / "a"), str(gpt_corpus / "b")])
    samples = [blended[i]["text"] for i in range(len(blended))]
    assert values.tolist() == brute_force_values(samples, counts, 41)["vocab_rarity"]
    source = make_sample_source(blended)
    metrics = A.build_metrics(source, config)
    assert A.compute_metric_values(source, metrics)["vocab_rarity"].tolist() == values.tolist()
    assert A.attach_metrics(blended, config)["vocab_rarity"].tolist() == values.tolist()
    with pytest.raises(KeyError, match="seqlen"):
        A.blended_metric_values(blended, "seqlen")


def test_cache_reuse_invalidation_and_damage(gpt_corpus, monkeypatch, caplog):
    config = CurriculumMetricsConfig(["vocab_rarity"], vocab_size=VOCAB)
    first = gpt(gpt_corpus, metrics=config, cache="c2").curriculum_metric_values["vocab_rarity"]
    files = sorted(os.listdir(gpt_corpus / "c2"))
    index_hash = files[0].split("-")[0]
    assert f"{index_hash}-GPTDataset-train-metric-vocab_rarity-values.npy" in files
    assert f"{index_hash}-GPTDataset-train-metric-vocab_rarity-description.json" in files

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    with monkeypatch.context() as m:
        m.setattr(A, "compute_metric_values", fail)
        again = gpt(gpt_corpus, metrics=config, cache="c2").curriculum_metric_values
        assert np.array_equal(again["vocab_rarity"], first)
    counts = np.ones(VOCAB, dtype=np.int64)  # other frequencies: other values, recomputed
    np.save(gpt_corpus / "flat.npy", counts)
    other = CurriculumMetricsConfig(["vocab_rarity"], VOCAB, str(gpt_corpus / "flat.npy"))
    flat = gpt(gpt_corpus, metrics=other, cache="c2").curriculum_metric_values["vocab_rarity"]
    assert flat.tolist() == [int(41 * np.log(VOCAB))] * flat.size
    values_file = (
        gpt_corpus / "c2" / f"{index_hash}-GPTDataset-train-metric-vocab_rarity-values.npy"
    )
    values_file.write_bytes(b"garbage")
    assert np.array_equal(
        gpt(gpt_corpus, metrics=config, cache="c2").curriculum_metric_values["vocab_rarity"], first
    )
    assert "damaged" in caplog.text


def test_rank_zero_computes_then_others_load(gpt_corpus, monkeypatch):
    config = CurriculumMetricsConfig(["seqlen"])
    calls = []
    values = gpt(
        gpt_corpus,
        metrics=config,
        cache="c3",
        is_built_on_rank=lambda: True,
        synchronize=lambda: calls.append("barrier"),
    ).curriculum_metric_values
    assert calls == ["barrier", "barrier"]  # one for the index, one for the metrics
    monkeypatch.setattr(A, "compute_metric_values", lambda *a, **k: pytest.fail("recomputed"))
    other = gpt(
        gpt_corpus,
        metrics=config,
        cache="c3",
        is_built_on_rank=lambda: False,
        synchronize=lambda: calls.append("barrier"),
    ).curriculum_metric_values
    assert np.array_equal(other["seqlen"], values["seqlen"]) and len(calls) == 4


def test_no_metrics_no_files(gpt_corpus):
    ds = gpt(gpt_corpus, cache="c4")
    assert ds.curriculum_metric_values == {}
    assert not any("metric" in f for f in os.listdir(gpt_corpus / "c4"))


# ------------------------------------------------------------------------------ map / reduce


@pytest.fixture
def user_metrics(monkeypatch):
    mod = types.ModuleType("analysis_user_metrics")
    mod.spread = lambda samples: [float(np.std(s)) for s in samples]  # floats
    mod.first_token = lambda samples: [int(s[0]) - 100 for s in samples]  # negative ints too

    def pairs(samples):
        return np.array([[len(s), int(s.sum())] for s in samples]).sum(axis=0)

    pairs.metric_type = "accumulate_value_over_samples"
    mod.pairs = pairs
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def test_map_reduce_outputs_match_brute_force(gpt_corpus, tmp_path, user_metrics):
    ds = gpt(gpt_corpus, num_samples=500)
    source = make_sample_source(ds)
    specs = BUILTINS + [
        f"{user_metrics}:spread",
        f"{user_metrics}:first_token",
        f"{user_metrics}:pairs",
    ]
    metrics = A.build_metrics(source, CurriculumMetricsConfig(specs, VOCAB, batch_size=64))
    for worker in (2, 0, 1):  # any order; three shards
        A.run_map(source, metrics, str(tmp_path), worker, 3)
    names = [m.name for m in metrics]
    for name in names:
        A.run_reduce(str(tmp_path), name, 3)
    samples = [ds[i]["text"] for i in range(len(ds))]
    expected = brute_force_values(samples, corpus_counts([str(gpt_corpus / "a")]), 41)
    for name in ("seqlen", "vocab_rarity", "seqlen_vocab_rarity"):
        assert_outputs_match(str(tmp_path), name, expected[name])
        index = O.load_metric_index(str(tmp_path), name)
        assert index.sample_to_metric.tolist() == expected[name]
    assert (
        O.load_metric_value(str(tmp_path), "total_vocab_freq").tolist()
        == expected["total_vocab_freq"]
    )
    first = [int(s[0]) - 100 for s in samples]
    assert_outputs_match(str(tmp_path), "first_token", first)
    flat, _, _ = O.read_rows(O.metric_prefix(str(tmp_path), "first_token", O.SAMPLE_TO_METRIC))
    assert flat.dtype == O.fit_int_dtype(min(first), max(first)) and flat.dtype.kind == "i"
    pairs = O.load_metric_value(str(tmp_path), "pairs")
    assert pairs.tolist() == [sum(len(s) for s in samples), int(sum(s.sum() for s in samples))]
    # float metric: integer files hold dense ranks, true values beside them
    spread = [float(np.std(s)) for s in samples]
    ranks = {v: r for r, v in enumerate(sorted(set(spread)))}
    assert_outputs_match(str(tmp_path), "spread", [ranks[v] for v in spread])
    index = O.load_metric_index(str(tmp_path), "spread")
    assert index.is_float and index.sample_to_metric.tolist() == spread
    info = O.read_analysis_info(str(tmp_path), "spread")
    assert info["value_type"] == "float" and info["num_samples"] == len(ds)


def test_percentile_merging_rule():
    for distinct, rows in ((7, 7), (99, 99), (100, 100), (250, 125), (1001, 101)):
        values = np.arange(distinct * 2) % distinct
        index = O.MetricIndex.from_values(values)
        assert index.percentile_row_ptr().size - 1 == rows
        _, _, merged = brute_force_rows(values.tolist())
        ptr = index.percentile_row_ptr()
        assert [index.order[ptr[i] : ptr[i + 1]].tolist() for i in range(rows)] == merged


def test_fit_int_dtype():
    cases = [
        ((0, 255), np.uint8),
        ((-1, 5), np.int8),
        ((0, 256), np.int16),
        ((-40000, 0), np.int32),
        ((0, 2**31), np.int64),
    ]
    for (low, high), dtype in cases:
        assert O.fit_int_dtype(low, high) == dtype


def test_workers_skip_restart_and_errors(gpt_corpus, tmp_path):
    source = make_sample_source(gpt(gpt_corpus, num_samples=300))
    metrics = A.build_metrics(source, CurriculumMetricsConfig(["vocab_rarity"], VOCAB))
    A.run_map(source, metrics, str(tmp_path), 0, 2)
    with pytest.raises(FileNotFoundError, match=r"workers \[1\] of 2"):
        A.run_reduce(str(tmp_path), "vocab_rarity", 2)
    A.run_map(source, metrics, str(tmp_path), 1, 2)
    assert A.finished_workers(str(tmp_path), "vocab_rarity") == {2: [0, 1]}
    assert all(r.skipped for r in A.run_map(source, metrics, str(tmp_path), 1, 2))
    assert not any(
        r.skipped for r in A.run_map(source, metrics, str(tmp_path), 1, 2, overwrite=True)
    )
    A.run_reduce(str(tmp_path), "vocab_rarity", 2)
    # a shard made from other samples cannot be merged with the rest
    npy, marker = A.shard_paths(str(tmp_path), "vocab_rarity", 1, 2)
    record = json.loads(open(marker).read())
    record["fingerprint"]["num_samples"] += 1
    open(marker, "w").write(json.dumps(record))
    with pytest.raises(ValueError, match="other samples"):
        A.run_reduce(str(tmp_path), "vocab_rarity", 2)
    assert not A.run_map(source, metrics, str(tmp_path), 1, 2)[0].skipped  # stale marker: redone
    with pytest.raises(ValueError, match="worker id 3"):
        A.shard_range(10, 3, 2)


def test_generic_sequence_source_and_empty_shards(tmp_path):
    """Any sequence of token arrays / padded dicts; more workers than samples."""
    items = [
        {"text": np.array([5, 6, 7, 0, 0]), "padding_mask": np.array([1, 1, 1, 0, 0])},
        {"text": np.array([8, 8, 0, 0, 0]), "padding_mask": np.array([1, 1, 0, 0, 0])},
    ]
    source = make_sample_source(items)
    assert [s.tolist() for s in source.samples(np.arange(2))] == [[5, 6, 7], [8, 8]]
    metrics = A.build_metrics(source, CurriculumMetricsConfig(["seqlen", "total_vocab_freq"], 10))
    for worker in range(4):
        A.run_map(source, metrics, str(tmp_path), worker, 4)
    for name in ("seqlen", "total_vocab_freq"):
        A.run_reduce(str(tmp_path), name, 4)
    assert O.load_metric_index(str(tmp_path), "seqlen").sample_to_metric.tolist() == [3, 2]
    freq = O.load_metric_value(str(tmp_path), "total_vocab_freq")
    assert freq.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 0]


def test_a_killed_workers_temporaries_are_removed_when_it_runs_again(gpt_corpus, tmp_path):
    source = make_sample_source(gpt(gpt_corpus, num_samples=100))
    metrics = A.build_metrics(source, CurriculumMetricsConfig(["seqlen"], VOCAB))
    npy, marker = A.shard_paths(str(tmp_path), "seqlen", 0, 1)
    os.makedirs(os.path.dirname(npy))
    stale = [f"{p}.tmp-999999999-0123abcd-{host_name()}" for p in (npy, marker)]
    for path in stale:
        open(path, "wb").write(b"\0" * 1000)
    A.run_map(source, metrics, str(tmp_path), 0, 1)
    assert not any(os.path.exists(p) for p in stale) and os.path.exists(npy)
