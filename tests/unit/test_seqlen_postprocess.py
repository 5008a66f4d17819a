"""Sequence-length post-processing: truncate, reshape (Megatron-DeepSpeed's layout), BERT trim,
and the shape of every step known from the step alone."""

import math

import numpy as np
import pytest
import torch

from megatron.core.curriculum.config import (
    CurriculumLearningConfig,
    CurriculumMetricConfig,
    DataSamplingConfig,
    LegacyCurriculumConfig,
    ScheduleConfig,
)
from megatron.core.curriculum.seqlen import (
    bert_trim_length,
    gpt_batch_shape_at_step,
    gpt_reshape_rows,
    post_process_batch,
    reshape_gpt_batch,
    seqlen_at_step,
    trim_bert_batch,
    truncate_gpt_batch,
)
from megatron.core.datasets.gpt_dataset import get_ltor_masks_and_position_ids
from megatron.core.deepspeed_config import DataEfficiencyConfig, DeepSpeedConfig

EOD = 0


def gpt_batch(b, s, seed=0, eod=True):
    """A collated GPT batch with end-of-document tokens and per-document positions and masks."""
    text = np.random.RandomState(seed).randint(1, 50, size=(b, s + 1))
    if eod:
        text[:, 3::7] = EOD
    parts = [get_ltor_masks_and_position_ids(t[:-1], EOD, True, True, True) for t in text]
    batch = {key: np.stack([p[key] for p in parts]) for key in parts[0]}
    batch["text"], batch["index"] = text, np.arange(100, 100 + b)
    return batch


def metric(name, lo, hi, total, step=8, **kw):
    kw.setdefault("clustering_type", "single_cluster")
    return CurriculumMetricConfig(lo, hi, "fixed_linear", ScheduleConfig(total, step), **kw)


def de_config(*metrics):
    cl = CurriculumLearningConfig(enabled=True, curriculum_metrics={m.name: m for m in metrics})
    return DataEfficiencyConfig(True, 1, DataSamplingConfig(True, curriculum_learning=cl))


def named(name, *args, **kw):
    m = metric(name, *args, **kw)
    m.name = name
    return m


@pytest.mark.parametrize("to_torch", [False, True])
def test_truncate(to_torch):
    batch = gpt_batch(3, 32)
    if to_torch:
        batch = {k: torch.as_tensor(v) for k, v in batch.items()}
    out = truncate_gpt_batch(batch, 8)
    assert tuple(out["text"].shape) == (3, 9) and tuple(out["loss_mask"].shape) == (3, 8)
    assert tuple(out["attention_mask"].shape) == (3, 1, 8, 8)
    np.testing.assert_array_equal(np.asarray(out["text"]), np.asarray(batch["text"])[:, :9])
    for r in range(3):  # what the dataset computes for the shorter sample
        ref = get_ltor_masks_and_position_ids(
            np.asarray(out["text"][r, :-1]), EOD, True, True, True
        )
        for key in ("position_ids", "loss_mask", "attention_mask"):
            np.testing.assert_array_equal(np.asarray(out[key][r]), ref[key])
    assert truncate_gpt_batch(batch, 32)["text"] is batch["text"]


def seed_reshape(text, seqlen):
    """Megatron-DeepSpeed's seqlen_reshape of a [b, S + 1] token tensor, written from its rules."""
    width = seqlen + 1
    total = text.numel()
    usable = (text.size(1) // width) * width
    rows = torch.cat((text[:, :usable].reshape(-1, width), text[:, -width:]), 0)
    keep = min(math.ceil(total / width), rows.size(0))
    if keep > 1 and keep % 2:
        keep -= 1
    return rows[:keep]


@pytest.mark.parametrize(
    "b,s,seqlen", [(3, 10, 3), (4, 64, 7), (1, 64, 15), (2, 2048, 80), (5, 33, 10)]
)
def test_reshape_matches_the_seed_layout_and_recomputed_masks(b, s, seqlen):
    batch = gpt_batch(b, s, seed=b + s)
    out = reshape_gpt_batch(batch, seqlen)
    expected = seed_reshape(torch.as_tensor(batch["text"]), seqlen).numpy()
    np.testing.assert_array_equal(out["text"], expected)
    rows = gpt_reshape_rows(b, s, seqlen)
    assert out["text"].shape == (rows, seqlen + 1) and out["index"].shape == (rows,)
    for r in range(0, rows, max(1, rows // 6)):
        ref = get_ltor_masks_and_position_ids(out["text"][r, :-1], EOD, True, True, True)
        for key in ("position_ids", "loss_mask", "attention_mask"):
            np.testing.assert_array_equal(out[key][r], ref[key], err_msg=f"{key} row {r}")
    torch_out = reshape_gpt_batch({k: torch.as_tensor(v) for k, v in batch.items()}, seqlen)
    for key, value in out.items():
        np.testing.assert_array_equal(torch_out[key].numpy(), value)


def test_reshape_rows_bookkeeping():
    assert gpt_reshape_rows(3, 10, 3) == 8  # ceil(33 / 4) = 9 rows, made even
    assert gpt_reshape_rows(1, 10, 4) == 2  # 11 tokens -> 2 chunks of 5 + tail: 3 -> even 2
    assert gpt_reshape_rows(4, 10, 10) == 4  # no reshape at full length


def test_bert_trim():
    padding = np.zeros((3, 64), dtype=np.int64)
    padding[0, :37], padding[1, :12], padding[2, :5] = 1, 1, 1
    assert bert_trim_length(padding) == 40
    assert bert_trim_length(torch.as_tensor(padding)) == 40
    assert bert_trim_length(padding, seqlen=130) == 136
    batch = {
        key: np.arange(3 * 64).reshape(3, 64)
        for key in ("text", "types", "labels", "loss_mask", "padding_mask")
    }
    batch["is_random"] = np.zeros(3)
    out = trim_bert_batch(batch, 40)
    assert all(
        out[k].shape == (3, 40) for k in ("text", "types", "labels", "loss_mask", "padding_mask")
    )
    assert out["is_random"] is batch["is_random"]
    assert trim_bert_batch(batch, 64)["text"] is batch["text"]


def test_seqlen_at_step_for_each_mode():
    trunc = named("seqlen_truncate", 80, 2048, 110000)
    voc = named(
        "voc", 1, 100, 110000, 1, difficulty_type="percentile", clustering_type="schedule_based"
    )
    assert seqlen_at_step(de_config(voc, trunc), 500, 2048) == 88
    assert seqlen_at_step(de_config(voc, trunc), 10**6, 1024) == 1024
    assert seqlen_at_step(de_config(voc, trunc), 500, 2048, "bert") == 88
    bert_trunc = named("seqlen_truncate", 130, 512, 1000)
    assert seqlen_at_step(de_config(bert_trunc), 1, 512, "bert") == 136  # multiple of 8
    assert seqlen_at_step(de_config(voc), 7, 512, "bert") is None  # longest non-pad: data
    assert seqlen_at_step(de_config(voc), 7, 512, "bert", trim_padding=False) == 512
    assert seqlen_at_step(de_config(voc), 7, 2048) == 2048
    legacy = LegacyCurriculumConfig(8, 1024, "fixed_linear", ScheduleConfig(40000, 8), enabled=True)
    assert seqlen_at_step(DeepSpeedConfig(curriculum_learning=legacy), 20000, 1024) == 512
    assert seqlen_at_step(DeepSpeedConfig(), 20000, 1024) == 1024
    with pytest.raises(ValueError, match="for GPT"):
        seqlen_at_step(de_config(named("seqlen_reshape", 80, 512, 100)), 1, 512, "bert")


@pytest.mark.parametrize("name", ["seqlen_truncate", "seqlen_reshape"])
def test_shape_of_every_step_is_known_from_the_step(name):
    config = de_config(named(name, 8, 64, 40))
    batch = gpt_batch(4, 64)
    for step in range(1, 50, 3):
        out = post_process_batch(config, step, batch, 64)
        rows, length = gpt_batch_shape_at_step(config, step, 4, 64)
        assert out["text"].shape == (rows, length + 1)
        assert out["loss_mask"].shape == (rows, length)


def test_post_process_bert_and_legacy():
    config = de_config(
        named("voc", 1, 100, 100, 1, difficulty_type="percentile", clustering_type="schedule_based")
    )
    padding = np.zeros((2, 128), dtype=np.int64)
    padding[0, :50] = 1
    batch = {
        "text": np.ones((2, 128), np.int64),
        "padding_mask": padding,
        "labels": np.ones((2, 128)),
    }
    assert post_process_batch(config, 3, batch, 128, "bert")["text"].shape == (2, 56)
    assert post_process_batch(config, 3, batch, 128, "bert", trim_padding=False)["text"].shape == (
        2,
        128,
    )
    legacy = LegacyCurriculumConfig(8, 64, "fixed_linear", ScheduleConfig(100, 8), enabled=True)
    out = post_process_batch(DeepSpeedConfig(curriculum_learning=legacy), 1, gpt_batch(2, 64), 64)
    assert out["text"].shape == (2, 9)
