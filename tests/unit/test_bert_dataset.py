"""BERT sample mapping (C++ vs Python reference, semantics) and BertDataset samples and caching."""

import json
import logging
import os

import numpy as np
import pytest

from megatron.core import kernels
from megatron.core.datasets import bert_helpers_ref, helpers
from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig, truncate_seq_pair
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from tests.kernel_parity import assert_parity, extension_hidden, needs_kernel

needs_cpp = needs_kernel(kernels.DATASET_HELPERS)

CLS, SEP, MASK, PAD = 1, 2, 3, 0
FIRST_TOKEN = 100  # corpus ids start here, so they never collide with the special ids


# ------------------------------------------------------------------------------------ corpora


def _random_corpus(rng, num_docs, max_sentences=12, max_len=40, long_prob=0.0):
    """(docs, sizes) with empty and single-sentence documents and optional very long sentences."""
    counts = rng.integers(0, max_sentences + 1, num_docs)
    counts[rng.random(num_docs) < 0.1] = 0
    counts[rng.random(num_docs) < 0.1] = 1
    docs = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sizes = rng.integers(0, max_len + 1, int(docs[-1])).astype(np.int32)
    sizes[rng.random(sizes.size) < long_prob] = 600  # over LONG_SENTENCE_LEN
    return docs, sizes


def _write_corpus(tmp_path, doc_sentence_lengths, name="corpus"):
    """Sentence-split dataset whose tokens are FIRST_TOKEN, FIRST_TOKEN + 1, ... in corpus order.

    Returns (prefix, token_doc) where token_doc[t - FIRST_TOKEN] is the document of token t.
    """
    prefix = str(tmp_path / name)
    next_token, token_doc = FIRST_TOKEN, []
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32) as builder:
        for doc, lengths in enumerate(doc_sentence_lengths):
            for n in lengths:
                builder.add_item(np.arange(next_token, next_token + n))
                next_token += n
                token_doc.extend([doc] * n)
            builder.end_document()
        builder.finalize(prefix + ".idx")
    return prefix, np.array(token_doc)


def _doc_lengths(seed, num_docs=60, min_sent=2, max_sent=8, min_len=3, max_len=30):
    rng = np.random.default_rng(seed)
    return [
        list(rng.integers(min_len, max_len + 1, rng.integers(min_sent, max_sent + 1)))
        for _ in range(num_docs)
    ]


def _config(**kwargs):
    args = dict(
        random_seed=1234,
        sequence_length=64,
        cls_id=CLS,
        sep_id=SEP,
        mask_id=MASK,
        pad_id=PAD,
        vocab_size=FIRST_TOKEN + 100000,
    )
    args.update(kwargs)
    return BertDatasetConfig(**args)


def _dataset(prefix, split=None, num_samples=None, index_split="train", **config_kwargs):
    indexed = IndexedDataset(prefix)
    if split is None:
        split = np.arange(indexed.num_documents)
    return BertDataset(
        indexed, prefix, np.asarray(split), num_samples, index_split, _config(**config_kwargs)
    )


def _original_tokens(sample):
    """The sample's tokens before masking."""
    return np.where(sample["labels"] >= 0, sample["labels"], sample["text"])


# ---------------------------------------------------------------------------- build_mapping


PARITY_CASES = [
    # (num_docs, num_epochs, max_num_samples, max_seq_length, short_seq_prob, seed, min_sent, long)
    (300, 1, 10**9, 61, 0.1, 0, 2, 0.0),
    (300, 1, 10**9, 61, 0.0, 1, 2, 0.01),
    (300, 1, 10**9, 61, 1.0, 2, 1, 0.01),
    (200, 50, 1000, 125, 0.3, 3, 2, 0.0),
    (200, 3, 10**9, 2, 0.5, -7, 1, 0.0),
    (0, 1, 10**9, 61, 0.1, 4, 2, 0.0),
    (50, 5, 0, 61, 0.1, 5, 2, 0.0),
]


@needs_cpp
@pytest.mark.parametrize("case", PARITY_CASES)
def test_build_mapping_cpp_matches_python(case):
    num_docs, epochs, max_samples, max_len, short_prob, seed, min_sent, long_prob = case
    docs, sizes = _random_corpus(np.random.default_rng(seed + 100), num_docs, long_prob=long_prob)
    args = (docs, sizes, epochs, max_samples, max_len, short_prob, seed, min_sent)
    ref_map, _ = assert_parity(helpers.build_mapping, *args)  # mapping and stats
    assert ref_map.dtype == np.int64


@needs_cpp
def test_build_mapping_subarray_inputs_and_long_sentence_limit():
    """Non-contiguous / differently typed inputs and a custom long-sentence limit agree too."""
    docs, sizes = _random_corpus(np.random.default_rng(9), 200)
    args = (docs[::1], sizes.astype(np.int64)[::1], 2, 10**9, 40, 0.2, 11, 2, 25)
    _, ref_stats = assert_parity(helpers.build_mapping, *args)
    assert ref_stats["long_sentence_docs"] > 0


@pytest.mark.parametrize("backend", ["reference", pytest.param("kernel", marks=needs_cpp)])
def test_build_mapping_rejects_bad_arguments(backend):
    def build(*args, **kwargs):
        return helpers.build_mapping(*args, backend=backend, **kwargs)

    sizes = np.ones(10, dtype=np.int32)
    good = dict(
        num_epochs=1,
        max_num_samples=10,
        max_seq_length=8,
        short_seq_prob=0.1,
        seed=0,
        min_num_sent=2,
    )
    with pytest.raises(ValueError, match="docs"):
        build(np.array([0, 5, 3, 10], dtype=np.int64), sizes, **good)
    with pytest.raises(ValueError, match="docs"):
        build(np.array([0, 11], dtype=np.int64), sizes, **good)
    for key, value in [
        ("max_seq_length", 1),
        ("short_seq_prob", 1.5),
        ("num_epochs", 0),
        ("min_num_sent", 0),
    ]:
        with pytest.raises(ValueError, match=key):
            build(np.array([0, 10], dtype=np.int64), sizes, **{**good, key: value})


def _check_one_epoch(mapping, docs, sizes, max_len, min_sent):
    """Semantic checks of a one-epoch mapping; returns the targets."""
    starts, ends, targets = mapping.T
    assert np.all(starts < ends) and np.all((targets >= 2) & (targets <= max_len))
    doc_of_start = np.searchsorted(docs, starts, side="right") - 1
    assert np.all(ends <= docs[doc_of_start + 1])  # one document per row
    order = np.argsort(starts)
    assert not np.array_equal(order, np.arange(order.size))  # rows are shuffled
    starts, ends, targets, doc_of = starts[order], ends[order], targets[order], doc_of_start[order]
    cum = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    for d in np.unique(doc_of):
        rows = np.flatnonzero(doc_of == d)
        # every sentence of the document exactly once, in order
        assert starts[rows[0]] == docs[d] and ends[rows[-1]] == docs[d + 1]
        np.testing.assert_array_equal(starts[rows[1:]], ends[rows[:-1]])
        for r in rows[:-1]:  # a chunk is emitted as soon as the rule allows, not later
            n_sent = ends[r] - starts[r]
            assert cum[ends[r]] - cum[starts[r]] >= targets[r] and n_sent >= min_sent
            prefix_len, prefix_sent = cum[ends[r] - 1] - cum[starts[r]], n_sent - 1
            assert prefix_len < targets[r] or prefix_sent < min_sent
        if docs[d + 1] - docs[d] >= 2:
            assert ends[rows[-1]] - starts[rows[-1]] >= 2  # never a lone last sentence
    return targets


@pytest.mark.parametrize("min_sent", [1, 2])
def test_mapping_semantics(min_sent):
    docs, sizes = _random_corpus(np.random.default_rng(20 + min_sent), 400, long_prob=0.005)
    mapping, stats = bert_helpers_ref.build_mapping_reference(
        docs, sizes, 1, 10**9, 50, 0.25, 7, min_sent
    )
    counts = np.diff(docs)
    has_long = np.array([np.any(sizes[a:b] > 512) for a, b in zip(docs[:-1], docs[1:])])
    eligible = (counts >= min_sent) & ~has_long
    assert stats["empty_docs"] == np.sum(counts == 0)
    assert stats["short_docs"] == np.sum((counts > 0) & (counts < min_sent))
    assert stats["long_sentence_docs"] == np.sum(has_long & (counts >= min_sent)) > 0
    used = np.zeros(docs.size - 1, dtype=bool)
    used[np.searchsorted(docs, mapping[:, 0], side="right") - 1] = True
    np.testing.assert_array_equal(used, eligible)
    targets = _check_one_epoch(mapping, docs, sizes, 50, min_sent)
    assert 0.15 < np.mean(targets < 50) < 0.35  # short_seq_prob 0.25 (a few short draws hit 50)


def test_mapping_short_seq_prob_extremes():
    docs, sizes = _random_corpus(np.random.default_rng(30), 300)
    full, _ = bert_helpers_ref.build_mapping_reference(docs, sizes, 1, 10**9, 50, 0.0, 1, 2)
    assert np.all(full[:, 2] == 50)
    short, _ = bert_helpers_ref.build_mapping_reference(docs, sizes, 1, 10**9, 50, 1.0, 1, 2)
    assert short[:, 2].min() == 2 and np.unique(short[:, 2]).size > 30
    assert short.shape[0] > full.shape[0]


def test_mapping_epochs_until_max_num_samples():
    docs, sizes = _random_corpus(np.random.default_rng(40), 100)
    one, _ = bert_helpers_ref.build_mapping_reference(docs, sizes, 1, 10**9, 50, 0.0, 1, 2)
    per_epoch = one.shape[0]
    many, stats = bert_helpers_ref.build_mapping_reference(
        docs, sizes, 1000, 2 * per_epoch + 1, 50, 0.0, 1, 2
    )
    assert stats["epochs"] == 3 and many.shape[0] == 3 * per_epoch  # whole epochs only
    # Without short sequences every epoch makes the same rows.
    np.testing.assert_array_equal(np.unique(many, axis=0), np.unique(one, axis=0))
    empty, stats = bert_helpers_ref.build_mapping_reference(
        np.array([0, 1, 1]), np.ones(1, np.int32), 10**6, 10, 50, 0.1, 0, 2
    )
    assert empty.shape == (0, 3) and stats["epochs"] == 1  # no eligible document: stop


def test_splitmix64_known_values():
    """splitmix64 from seed 0 (published reference outputs), and the derived routines."""
    rng = bert_helpers_ref.SplitMix64(0)
    assert [rng.next_u64() for _ in range(3)] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]
    rng = bert_helpers_ref.SplitMix64(12345)
    values = [rng.uniform_int(7) for _ in range(7000)]
    assert set(values) == set(range(7)) and abs(np.mean(values) - 3) < 0.1
    doubles = [rng.uniform_double() for _ in range(1000)]
    assert 0.0 <= min(doubles) and max(doubles) < 1.0


# ---------------------------------------------------------------------------------- samples


def test_truncate_seq_pair_matches_token_by_token_rule():
    rng = np.random.RandomState(0)
    for la, lb, max_tokens in [
        (10, 3, 8),
        (3, 10, 8),
        (7, 7, 9),
        (20, 18, 5),
        (5, 0, 3),
        (4, 4, 8),
        (9, 2, 10),
        (6, 5, 2),
    ]:
        a, b = np.arange(la), np.arange(100, 100 + lb)
        ta, tb, truncated = truncate_seq_pair(a, b, max_tokens, rng)
        na, nb = la, lb
        while na + nb > max_tokens:  # BERT's loop: the longer side loses one, B on ties
            if na > nb:
                na -= 1
            else:
                nb -= 1
        assert (ta.size, tb.size) == (na, nb) and truncated == (la + lb > max_tokens)
        # contiguous pieces of the originals
        assert ta.size == 0 or np.array_equal(ta, np.arange(ta[0], ta[0] + ta.size))
        assert tb.size == 0 or np.array_equal(tb, np.arange(tb[0], tb[0] + tb.size))


def test_sample_layout(tmp_path):
    lengths = _doc_lengths(0)
    prefix, token_doc = _write_corpus(tmp_path, lengths)
    ds = _dataset(prefix, return_data_index=True)
    sizes = IndexedDataset(prefix).sequence_lengths
    assert len(ds) > 20
    for i in range(len(ds)):
        s = ds[i]
        start, end, target = ds.mapping[i]
        for key in ("text", "types", "labels", "loss_mask", "padding_mask"):
            assert s[key].shape == (64,) and s[key].dtype == np.int64
        orig = _original_tokens(s)
        n = int(s["padding_mask"].sum())
        np.testing.assert_array_equal(s["padding_mask"][:n], 1)
        np.testing.assert_array_equal(s["text"][n:], PAD)
        seps = np.flatnonzero(orig[:n] == SEP)
        assert orig[0] == CLS and seps.size == 2 and seps[1] == n - 1
        np.testing.assert_array_equal(s["types"][: seps[0] + 1], 0)
        np.testing.assert_array_equal(s["types"][seps[0] + 1 : n], 1)
        np.testing.assert_array_equal(s["types"][n:], 0)
        total = int(sizes[start:end].sum())
        assert n - 3 == min(total, target) and s["truncated"] == (total > target)
        np.testing.assert_array_equal(s["loss_mask"], s["labels"] >= 0)
        assert not np.isin(np.flatnonzero(s["labels"] >= 0), [0, seps[0], seps[1]]).any()
        assert s["index"] == i
        content = np.concatenate([orig[1 : seps[0]], orig[seps[0] + 1 : n - 1]])
        assert np.unique(token_doc[content - FIRST_TOKEN]).size == 1  # SOP: one document


def test_masked_fraction_over_dataset(tmp_path):
    prefix, _ = _write_corpus(tmp_path, _doc_lengths(1, num_docs=80, min_len=20, max_len=40))
    ds = _dataset(prefix, sequence_length=128, masking_probability=0.15)
    predicted = real = 0
    for i in range(len(ds)):
        s, target = ds[i], int(ds.mapping[i, 2])
        n_pred, n_real = int(s["loss_mask"].sum()), int(s["padding_mask"].sum())
        assert 1 <= n_pred <= max(1, round(0.15 * target))
        predicted, real = predicted + n_pred, real + n_real - 3
    assert abs(predicted / real - 0.15) < 0.01


def test_sop_swaps_half_and_labels_them(tmp_path):
    prefix, _ = _write_corpus(tmp_path, _doc_lengths(2, num_docs=150))
    ds = _dataset(prefix, masking_probability=0.0)
    labels = []
    for i in range(len(ds)):
        s = ds[i]
        orig, n = _original_tokens(s), int(s["padding_mask"].sum())
        sep = int(np.flatnonzero(orig == SEP)[0])
        a, b = orig[1:sep], orig[sep + 1 : n - 1]
        swapped = a.min() > b.max()
        assert swapped or a.max() < b.min()
        assert s["is_random"] == int(swapped)
        labels.append(int(swapped))
    assert len(labels) > 200 and abs(np.mean(labels) - 0.5) < 0.1


def test_nsp_random_segment_comes_from_another_document(tmp_path):
    prefix, token_doc = _write_corpus(tmp_path, _doc_lengths(3, num_docs=150))
    ds = _dataset(prefix, binary_head_type="nsp", masking_probability=0.0)
    labels = []
    for i in range(len(ds)):
        s = ds[i]
        orig, n = _original_tokens(s), int(s["padding_mask"].sum())
        sep = int(np.flatnonzero(orig == SEP)[0])
        doc_a = np.unique(token_doc[orig[1:sep] - FIRST_TOKEN])
        doc_b = np.unique(token_doc[orig[sep + 1 : n - 1] - FIRST_TOKEN])
        assert doc_a.size == 1 and doc_b.size == 1
        if s["is_random"]:
            assert doc_a[0] != doc_b[0]
        else:
            assert doc_a[0] == doc_b[0] and orig[1:sep].max() < orig[sep + 1 : n - 1].min()
        labels.append(int(s["is_random"]))
    assert abs(np.mean(labels) - 0.5) < 0.1


def test_no_binary_head(tmp_path):
    lengths = _doc_lengths(4, num_docs=40, min_sent=1, max_sent=3)
    lengths[0] = [12]  # a single-sentence document is usable without a binary head
    prefix, token_doc = _write_corpus(tmp_path, lengths)
    ds = _dataset(prefix, classification_head=False)
    assert ds.max_seq_length == 62
    covered = set()
    for i in range(len(ds)):
        s = ds[i]
        orig, n = _original_tokens(s), int(s["padding_mask"].sum())
        assert orig[0] == CLS and orig[n - 1] == SEP and np.sum(orig[:n] == SEP) == 1
        assert s["is_random"] == 0 and not s["types"].any()
        covered.update(token_doc[orig[1 : n - 1] - FIRST_TOKEN].tolist())
    assert 0 in covered


def test_samples_deterministic_in_any_order(tmp_path):
    prefix, _ = _write_corpus(tmp_path, _doc_lengths(5))
    ds1 = _dataset(prefix)
    ds2 = _dataset(prefix)
    order = np.random.default_rng(0).permutation(len(ds1))
    first = {i: ds1[i] for i in range(len(ds1))}
    for i in order:
        s = ds2[int(i)]
        for key in s:
            np.testing.assert_array_equal(s[key], first[i][key])
    other_seed = _dataset(prefix, random_seed=99)
    assert not np.array_equal(other_seed.mapping, ds1.mapping)


def test_num_samples_and_exact_epochs(tmp_path):
    prefix, _ = _write_corpus(tmp_path, _doc_lengths(6, num_docs=30))
    one_epoch = len(_dataset(prefix, short_sequence_probability=0.0))
    ds = _dataset(prefix, num_samples=3 * one_epoch + 1, short_sequence_probability=0.0)
    assert len(ds) == 4 * one_epoch
    exact = _dataset(
        prefix, num_samples=10, train_data_exact_num_epochs=2, short_sequence_probability=0.0
    )
    assert len(exact) == 2 * one_epoch
    with pytest.raises(IndexError):
        ds[len(ds)]


# ------------------------------------------------------------------------------ splits/cache


def test_split_handling_contiguous_and_scattered(tmp_path):
    prefix, token_doc = _write_corpus(tmp_path, _doc_lengths(7, num_docs=50))
    for split in (np.arange(10, 30), np.array([41, 3, 17, 8, 29])):
        ds = _dataset(prefix, split=split, index_split="valid")
        seen = set()
        for i in range(len(ds)):
            orig = _original_tokens(ds[i])
            content = orig[(orig >= FIRST_TOKEN)]
            seen.update(token_doc[content - FIRST_TOKEN].tolist())
        assert seen == set(split.tolist())  # every document of the split, and only those
    with pytest.raises(ValueError, match="document ids"):
        _dataset(prefix, split=np.array([0, 50]))


def test_cache_written_reused_and_keyed(tmp_path, monkeypatch):
    prefix, _ = _write_corpus(tmp_path, _doc_lengths(8))
    ds = _dataset(prefix)
    mapping_path, description_path = ds.cache_paths()
    assert os.path.dirname(mapping_path) == str(tmp_path / "cache" / "BertDataset_indices")
    assert os.path.isfile(mapping_path)
    description = json.load(open(description_path))["description"]
    assert description["index_split"] == "train" and description["sequence_length"] == 64
    assert not [f for f in os.listdir(os.path.dirname(mapping_path)) if ".tmp-" in f]

    def no_build(*args, **kwargs):
        raise AssertionError("mapping rebuilt although cached")

    monkeypatch.setattr(helpers, "build_mapping", no_build)
    again = _dataset(prefix)
    np.testing.assert_array_equal(again.mapping, ds.mapping)
    monkeypatch.undo()
    names = {os.path.basename(mapping_path)}
    for kwargs in (
        dict(random_seed=5),
        dict(sequence_length=48),
        dict(index_split="test"),
        dict(split=np.arange(10)),
        dict(num_samples=500),
        dict(short_sequence_probability=0.5),
        dict(classification_head=False),
    ):
        names.add(os.path.basename(_dataset(prefix, **kwargs).cache_paths()[0]))
    assert len(names) == 8
    # The key follows the data's content, not its modification time: touching keeps it ...
    os.utime(prefix + ".idx", ns=(0, 12345))
    assert _dataset(prefix).cache_paths()[0] == mapping_path
    # ... and re-preprocessing changes it, also when sizes and modification times are kept.
    stats = [os.stat(prefix + ext) for ext in (".bin", ".idx")]
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32) as builder:
        for lengths in _doc_lengths(8):
            for n in lengths:
                builder.add_item(np.full(n, FIRST_TOKEN))
            builder.end_document()
        builder.finalize(prefix + ".idx")
    for ext, st in zip((".bin", ".idx"), stats):
        assert os.path.getsize(prefix + ext) == st.st_size
        os.utime(prefix + ext, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _dataset(prefix).cache_paths()[0] != mapping_path


def test_corrupt_cache_is_rebuilt(tmp_path, caplog):
    prefix, _ = _write_corpus(tmp_path, _doc_lengths(9))
    cache = tmp_path / "my_cache"
    ds = _dataset(prefix, path_to_cache=str(cache))
    mapping_path = ds.cache_paths()[0]
    assert os.path.dirname(mapping_path) == str(cache)
    expected = np.array(ds.mapping)
    for garbage in (b"not a numpy file", open(mapping_path, "rb").read()[:100]):
        with open(mapping_path, "wb") as f:
            f.write(garbage)
        with caplog.at_level(logging.WARNING):
            rebuilt = _dataset(prefix, path_to_cache=str(cache))
        assert "damaged index cache entry" in caplog.text and "sha256" in caplog.text
        caplog.clear()
        np.testing.assert_array_equal(rebuilt.mapping, expected)
    edited = np.array(expected)
    edited[0, 2] += 1  # a valid npy of the same shape with in-range values: only the digest knows
    np.save(mapping_path, edited)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(_dataset(prefix, path_to_cache=str(cache)).mapping, expected)
    assert "was recorded when it was written" in caplog.text


def test_build_on_one_rank_others_wait(tmp_path):
    prefix, _ = _write_corpus(tmp_path, _doc_lengths(10))
    calls = []

    def rank0_builds_then_barrier():  # simulates rank 0 finishing before the barrier releases
        calls.append("sync")
        _dataset(prefix)

    indexed = IndexedDataset(prefix)
    split = np.arange(indexed.num_documents)
    follower = BertDataset(
        indexed,
        prefix,
        split,
        None,
        "train",
        _config(),
        is_built_on_rank=lambda: False,
        synchronize=rank0_builds_then_barrier,
    )
    assert calls == ["sync"] and len(follower) > 0
    with pytest.raises(RuntimeError, match="data-cache-path"):
        BertDataset(
            indexed,
            prefix,
            split,
            None,
            "valid",
            _config(),
            is_built_on_rank=lambda: False,
            synchronize=lambda: None,
        )


def test_python_fallback_without_cpp(tmp_path):
    prefix, _ = _write_corpus(tmp_path, _doc_lengths(11))
    expected = _dataset(prefix, path_to_cache=str(tmp_path / "a")).mapping
    with extension_hidden(kernels.DATASET_HELPERS):
        fallback = _dataset(prefix, path_to_cache=str(tmp_path / "b")).mapping
    np.testing.assert_array_equal(fallback, expected)


# ----------------------------------------------------------------------------------- config


class _FakeTokenizer:
    cls, sep, mask, pad, vocab_size = 101, 102, 103, 0, 6
    inv_vocab = {0: "[PAD]", 1: "the", 2: "##s", 3: "cat", 4: "##ty", 5: "dog"}


def test_config_from_tokenizer_and_validation():
    cfg = BertDatasetConfig(
        random_seed=0, sequence_length=16, tokenizer=_FakeTokenizer(), masking_do_full_word=True
    )
    assert (cfg.cls_id, cfg.sep_id, cfg.mask_id, cfg.pad_id, cfg.vocab_size) == (
        101,
        102,
        103,
        0,
        6,
    )
    np.testing.assert_array_equal(cfg.is_continuation, [False, False, True, False, True, False])
    assert (
        BertDatasetConfig(
            random_seed=0, sequence_length=16, tokenizer=_FakeTokenizer(), cls_id=7
        ).cls_id
        == 7
    )
    with pytest.raises(ValueError, match="cls_id"):
        BertDatasetConfig(random_seed=0, sequence_length=16)
    with pytest.raises(ValueError, match="--mask-prob"):
        _config(masking_probability=1.5)
    with pytest.raises(ValueError, match="binary_head_type"):
        _config(binary_head_type="mlm")
    with pytest.raises(ValueError, match="--seq-length"):
        _config(sequence_length=4)
    with pytest.raises(ValueError, match="is_continuation"):
        _config(masking_do_full_word=True)
    with pytest.raises(ValueError, match="shape"):
        _config(masking_do_full_word=True, vocab_size=10, is_continuation=np.zeros(5, bool))


def test_whole_word_masking_in_dataset(tmp_path):
    lengths = _doc_lengths(12, num_docs=40)
    prefix, _ = _write_corpus(tmp_path, lengths)
    vocab = FIRST_TOKEN + 100000
    is_cont = np.zeros(vocab, dtype=bool)
    is_cont[FIRST_TOKEN + 1 :: 2] = True  # words are (even id, following odd id)
    ds = _dataset(
        prefix,
        masking_do_full_word=True,
        is_continuation=is_cont,
        masking_probability=0.3,
        binary_head_type="nsp",
    )
    for i in range(len(ds)):
        s = ds[i]
        orig, pos = _original_tokens(s), np.flatnonzero(s["labels"] >= 0)
        for p in pos:
            if is_cont[orig[p]] and orig[p - 1] == orig[p] - 1:
                assert s["labels"][p - 1] >= 0  # its word start is predicted too
            if p + 1 < orig.size and is_cont[orig[p + 1]] and orig[p + 1] == orig[p] + 1:
                assert s["labels"][p + 1] >= 0


def test_works_with_the_dataset_builder_and_blending(tmp_path):
    from megatron.core.datasets.builder import build_train_valid_test_datasets

    prefix_a, docs_a = _write_corpus(tmp_path, _doc_lengths(13, num_docs=80), "a")
    prefix_b, _ = _write_corpus(tmp_path, _doc_lengths(14, num_docs=80), "b")
    config = _config(blend=([prefix_a, prefix_b], [0.3, 0.7]), split="90,5,5")
    train, valid, test = build_train_valid_test_datasets(BertDataset, [300, 30, 10], config)
    assert (len(train), len(valid), len(test)) == (300, 30, 10)
    sample = train[7]
    assert sample["text"].shape == (64,) and sample["text"][0] == CLS
    single = _config(blend=([prefix_a], None), split="90,5,5")
    train, _, _ = build_train_valid_test_datasets(BertDataset, [None, None, None], single)
    seen = set()
    for i in range(len(train)):
        orig = _original_tokens(train[i])
        seen.update(docs_a[orig[orig >= FIRST_TOKEN] - FIRST_TOKEN].tolist())
    assert seen == set(range(72))  # the first 90% of the documents
