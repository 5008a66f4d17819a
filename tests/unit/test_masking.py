"""BERT masking: budget, 80/10/10 statistics, special tokens, whole words, n-gram spans."""

import numpy as np
import pytest

from megatron.core.datasets import masking
from megatron.core.datasets.masking import create_masked_lm_predictions

CLS, SEP, MASK, PAD = 1, 2, 3, 0
VOCAB = 30000


def _sample(rng, length, first_segment):
    """[CLS] A [SEP] B [SEP] with random ordinary ids in [100, VOCAB)."""
    tokens = rng.randint(100, VOCAB, size=length)
    tokens[0], tokens[first_segment], tokens[-1] = CLS, SEP, SEP
    return tokens


def _mask(tokens, rng, **kwargs):
    args = dict(
        vocab_size=VOCAB,
        cls_id=CLS,
        sep_id=SEP,
        mask_id=MASK,
        masked_lm_prob=0.15,
        max_predictions_per_seq=10**6,
        rng=rng,
    )
    args.update(kwargs)
    return create_masked_lm_predictions(tokens, **args)


def test_budget_and_80_10_10_statistics():
    rng = np.random.RandomState(0)
    length, n_seq, prob = 128, 1500, 0.15
    budget = int(round(length * prob))  # 19
    counts = {"mask": 0, "same": 0, "random": 0}
    predicted_total = 0
    for _ in range(n_seq):
        tokens = _sample(rng, length, rng.randint(2, length - 2))
        out, pos, labels = _mask(tokens, rng, masked_lm_prob=prob)
        assert pos.size <= budget
        assert np.all(np.diff(pos) > 0)
        np.testing.assert_array_equal(labels, tokens[pos])
        untouched = np.ones(length, dtype=bool)
        untouched[pos] = False
        np.testing.assert_array_equal(out[untouched], tokens[untouched])
        predicted_total += pos.size
        is_mask = out[pos] == MASK
        is_same = out[pos] == tokens[pos]
        counts["mask"] += int(is_mask.sum())
        counts["same"] += int(is_same.sum())
        counts["random"] += int((~is_mask & ~is_same).sum())
        assert np.all((out[pos] >= 0) & (out[pos] < VOCAB))
    # Fraction predicted: exactly the rounded budget up to rare shortfalls from span collisions.
    assert budget * n_seq * 0.995 <= predicted_total <= budget * n_seq
    # 80/10/10 (a random id equals the original or [MASK] with prob ~1/VOCAB: negligible).
    n = predicted_total
    expected = {"mask": 0.8 * n, "same": 0.1 * n, "random": 0.1 * n}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in counts)
    assert chi2 < 20.0, (counts, chi2)  # 2 dof: p < 5e-5


def test_special_tokens_never_masked():
    rng = np.random.RandomState(1)
    for trial in range(300):
        tokens = _sample(rng, 20, 7)
        max_ngram = 1 + trial % 3
        out, pos, _ = _mask(tokens, rng, masked_lm_prob=0.9, max_ngram=max_ngram)
        assert not np.isin(pos, [0, 7, 19]).any()
        assert out[0] == CLS and out[7] == SEP and out[19] == SEP
        if max_ngram == 1:  # round(20 * 0.9) = 18 > 17 candidates: every ordinary token
            assert pos.size == 17


def test_max_predictions_cap_and_zero_probability():
    rng = np.random.RandomState(2)
    tokens = _sample(rng, 100, 50)
    _, pos, _ = _mask(tokens, rng, masked_lm_prob=0.5, max_predictions_per_seq=7)
    assert pos.size == 7
    out, pos, labels = _mask(tokens, rng, masked_lm_prob=0.0)
    assert pos.size == 0 and labels.size == 0
    np.testing.assert_array_equal(out, tokens)
    out, pos, _ = _mask(np.array([CLS, SEP, SEP]), rng)
    assert pos.size == 0
    # A very short sample still predicts one token (max(1, round(...))).
    _, pos, _ = _mask(np.array([CLS, 500, SEP]), rng, masked_lm_prob=0.01)
    np.testing.assert_array_equal(pos, [1])


def test_deterministic_given_seed():
    tokens = _sample(np.random.RandomState(3), 64, 30)
    a = _mask(tokens, np.random.RandomState(42), max_ngram=3)
    b = _mask(tokens, np.random.RandomState(42), max_ngram=3)
    c = _mask(tokens, np.random.RandomState(43), max_ngram=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


def _word_ids(tokens, is_continuation):
    """Word index of each position (specials get their own word)."""
    starts = ~is_continuation[tokens]
    starts[0] = True
    return np.cumsum(starts) - 1


def test_whole_word_masking_masks_every_piece():
    rng = np.random.RandomState(4)
    is_cont = np.zeros(VOCAB, dtype=bool)
    is_cont[20000:] = True  # ids >= 20000 are "##" pieces
    partial_without_wwm = 0
    for _ in range(200):
        # words of 1-4 pieces: a start id in [100, 20000) followed by continuation ids
        pieces = []
        while len(pieces) < 60:
            pieces.append(rng.randint(100, 20000))
            pieces.extend(rng.randint(20000, VOCAB, size=rng.randint(0, 4)))
        tokens = np.array([CLS] + pieces[:60] + [SEP])
        words = _word_ids(tokens, is_cont)
        for wwm in (True, False):
            _, pos, _ = _mask(
                tokens, rng, is_continuation=is_cont, do_whole_word_mask=wwm, masked_lm_prob=0.2
            )
            chosen_words = np.unique(words[pos])
            whole = np.flatnonzero(np.isin(words, chosen_words))
            whole = whole[(tokens[whole] != CLS) & (tokens[whole] != SEP)]
            if wwm:
                np.testing.assert_array_equal(pos, whole)
            else:
                partial_without_wwm += int(pos.size != whole.size)
    assert partial_without_wwm > 50  # the check above would catch partial words


def test_whole_word_masking_requires_continuation_table():
    with pytest.raises(ValueError, match="is_continuation"):
        _mask(np.array([CLS, 5, SEP]), np.random.RandomState(0), do_whole_word_mask=True)


def test_ngram_length_distribution():
    rng = np.random.RandomState(5)
    n_units = 200000
    lengths = masking._ngram_lengths(rng, n_units, 3, False, False)
    inner = lengths[: n_units - 2]
    freq = np.bincount(inner, minlength=4)[1:] / inner.size
    np.testing.assert_allclose(freq, np.array([6, 3, 2]) / 11, atol=0.005)  # proportional to 1/n
    assert lengths[-1] == 1 and lengths[-2] in (1, 2)  # only lengths that fit
    longer = masking._ngram_lengths(rng, n_units, 3, True, False)[: n_units - 2]
    freq = np.bincount(longer, minlength=4)[1:] / longer.size
    np.testing.assert_allclose(freq, np.array([2, 3, 6]) / 11, atol=0.005)
    geo = masking._ngram_lengths(rng, n_units, 5, False, True)[: n_units - 4]
    assert geo.min() == 1 and geo.max() == 5
    assert abs(np.mean(geo == 1) - 0.2) < 0.005


def test_spans_are_contiguous_ngrams():
    """With max_ngram=3 and a tiny budget per span, chosen positions form runs of <= 3 units."""
    rng = np.random.RandomState(6)
    run_lengths = []
    for _ in range(400):
        tokens = _sample(rng, 200, 100)
        _, pos, _ = _mask(tokens, rng, masked_lm_prob=0.02, max_ngram=3)  # budget 4
        runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1)
        run_lengths.extend(len(r) for r in runs)
    counts = np.bincount(run_lengths)
    assert counts[2] > 0 and counts[3] > 0  # n-grams longer than 1 do occur
    assert counts[1] > counts[2] > counts[3]


def test_permutation_predicts_permuted_positions():
    tokens = _sample(np.random.RandomState(7), 100, 40)
    out, pos, labels = _mask(
        tokens, np.random.RandomState(8), do_permutation=True, masked_lm_prob=0.1
    )
    # The masking pass consumes the same draws with and without permutation.
    out_plain, pos_plain, _ = _mask(tokens, np.random.RandomState(8), masked_lm_prob=0.1)
    np.testing.assert_array_equal(labels, tokens[pos])
    assert pos_plain.size == 10 and pos.size == 20  # a disjoint second set of the same budget
    assert np.isin(pos_plain, pos).all()
    np.testing.assert_array_equal(out[pos_plain], out_plain[pos_plain])
    permuted = np.setdiff1d(pos, pos_plain)
    np.testing.assert_array_equal(np.sort(out[permuted]), np.sort(tokens[permuted]))
    assert np.any(out[permuted] != tokens[permuted])
