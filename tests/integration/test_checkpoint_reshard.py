"""tools/checkpoint_util.py: a checkpoint saved at one TP/PP(/VPP) layout, converted to another,
continues training exactly like the original layout would (losses at rtol 1e-5, see
test_layout_matrix.py for why layouts agree to rounding, not bit for bit), and converting back
restores the original files bit for bit."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from megatron.core.tensor_parallel.init import shard_of
from megatron.training import checkpoint_convert as cc
from megatron.training import checkpointing as ckpt
from tests.distributed.launcher import run_distributed
from tests.integration.test_layout_matrix import (
    COMMON,
    GPT_ARGS,
    PADDED_VOCAB,
    TRUE_VOCAB,
    _train,
    layout_flags,
)
from tools import checkpoint_util

# Adam with its default eps: what users run. Losses are insensitive to the noise-driven steps of
# parameters without gradient (that is why their gradient is zero), so they compare at 1e-5.
ADAM = "--optimizer adam --lr 3e-3 --lr-decay-style cosine --lr-warmup-iters 2".split()
GPT = GPT_ARGS + ADAM + ["--swiglu", "--train-iters", "6"]  # swiglu: fc1 is sharded with stride 2


def train(model, base, tp, pp, vpp, dp, extra):
    return run_distributed(
        _train, tp * pp * dp, model, base + layout_flags(tp, pp, vpp) + extra, timeout=240
    )[0]


def convert(src, dst, tp, pp, vpp=None, *extra) -> int:
    argv = ["--load-dir", str(src), "--save-dir", str(dst), *extra]
    argv += ["--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp)]
    if vpp:
        argv += ["--target-num-layers-per-virtual-pipeline-stage", str(vpp)]
    return checkpoint_util.main(argv)


def files_of(root):
    """{relative path: contents} of every file of the latest iteration."""
    it, release = ckpt.read_tracker(str(root))
    folder = ckpt.checkpoint_dir(str(root), it, release)
    out = {}
    for shard in sorted(os.listdir(folder)):
        path = os.path.join(folder, shard, "model_optim_rng.pt")
        out[shard] = torch.load(path, map_location="cpu", weights_only=True)
    return out


def assert_same_losses(got, expect):
    assert [h["iteration"] for h in got] == [h["iteration"] for h in expect]
    np.testing.assert_allclose(
        [h["lm loss"] for h in got], [h["lm loss"] for h in expect], rtol=1e-5
    )
    np.testing.assert_allclose([h["lr"] for h in got], [h["lr"] for h in expect], rtol=1e-7)


def assert_equal_nested(a, b, path="") -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            assert_equal_nested(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def tp2pp2(tmp_path_factory):
    """A GPT checkpoint at iteration 3 of 6 saved at TP2xPP2, and iterations 4-6 continued there."""
    root = tmp_path_factory.mktemp("tp2pp2")
    train("gpt", GPT, 2, 2, None, 1, ["--exit-interval", "3", "--save", str(root / "A")])
    continued = train("gpt", GPT, 2, 2, None, 1, ["--load", str(root / "A")])
    return root, continued


def test_tp2pp2_to_tp1pp1_continues_like_the_original(tp2pp2):
    root, expect = tp2pp2
    assert convert(root / "A", root / "C", 1, 1) == 0
    got = train("gpt", GPT, 1, 1, None, 1, ["--load", str(root / "C")])
    assert [h["iteration"] for h in got] == [4, 5, 6]
    assert_same_losses(got, expect)


def test_serial_model_of_a_tp2pp2_checkpoint_is_its_tp1pp1_conversion(tp2pp2, tmp_path):
    """`serial_model` builds one process's model from any layout: the same model that
    generation builds from the checkpoint converted to TP 1 / PP 1."""
    from megatron.training.serial_model import load_serial_model
    from tools.generate import model_from_checkpoint, read_checkpoint

    root, _ = tp2pp2
    assert convert(root / "A", tmp_path / "C", 1, 1) == 0
    true_vocab = 61  # GPT_ARGS' NullTokenizer, padded to 64
    reference = model_from_checkpoint(read_checkpoint(str(tmp_path / "C")), true_vocab)
    model, merged = load_serial_model(str(root / "A"), true_vocab_size=true_vocab)
    assert (merged.layout.tp, merged.layout.pp, merged.iteration) == (2, 2, 3)
    ids = torch.randint(0, true_vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        got, expect = model(ids, pos), reference(ids, pos)
    assert got.shape == (2, 16, true_vocab)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_round_trip_restores_the_files_bit_for_bit(tp2pp2, tmp_path):
    root, _ = tp2pp2
    assert convert(root / "A", tmp_path / "one", 1, 1) == 0
    assert convert(tmp_path / "one", tmp_path / "back", 2, 2) == 0
    original, one, back = (
        files_of(root / "A"),
        files_of(tmp_path / "one"),
        files_of(tmp_path / "back"),
    )
    assert sorted(one) == ["mp_rank_00"]
    assert (
        sorted(back)
        == sorted(original)
        == ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]
    )
    single = one["mp_rank_00"]
    assert single["args"]["parallel"]["tensor_model_parallel_size"] == 1
    assert single["args"]["parallel"]["pipeline_model_parallel_size"] == 1
    assert single["args"]["world_size"] == 1
    assert single["iteration"] == 3 and single["consumed_train_samples"] == 24
    assert single["rng_state"] is None  # per-rank streams do not survive a layout change
    assert "output_layer.weight" not in single["model"]  # tied: PP 1 has no output copy
    for shard, sd in original.items():
        assert sd["rng_state"] is not None
        assert back[shard]["rng_state"] is None
        for key in (
            "model",
            "optimizer",
            "opt_param_scheduler",
            "args",
            "iteration",
            "train_state",
        ):
            assert_equal_nested(back[shard][key], sd[key], f"{shard}/{key}")


def test_same_layout_keeps_rng_and_output_is_atomic(tp2pp2, tmp_path, capsys):
    root, _ = tp2pp2
    assert convert(root / "A", tmp_path / "same", 2, 2) == 0
    original, same = files_of(root / "A"), files_of(tmp_path / "same")
    for shard, sd in original.items():
        assert_equal_nested(same[shard], sd, shard)  # everything, RNG included
    assert open(tmp_path / "same" / ckpt.TRACKER_FILENAME).read() == "3"
    assert set(os.listdir(tmp_path / "same")) == {
        ckpt.TRACKER_FILENAME,
        "iter_0000003",
    }  # no temporaries
    # The iteration exists: refuse to overwrite it.
    assert convert(root / "A", tmp_path / "same", 1, 1) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tp,pp,vpp,message",
    [
        (3, 1, None, "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"),
        (1, 3, None, "--target-pipeline-parallel-size 3 does not divide the 4 layers"),
        (1, 2, 3, "--target-num-layers-per-virtual-pipeline-stage 3 must divide the 2 layers"),
        (1, 1, 1, "needs --target-pipeline-parallel-size >= 2"),
    ],
)
def test_bad_target_layout_is_an_error(tp2pp2, tmp_path, capsys, tp, pp, vpp, message):
    root, _ = tp2pp2
    assert convert(root / "A", tmp_path / "bad", tp, pp, vpp) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_vocab_padding_follows_the_target_tp(tp2pp2, tmp_path):
    """61 ids padded to a multiple of 32 x TP: 64 rows at TP 2, 128 at TP 4 (zero rows added)."""
    root, _ = tp2pp2
    assert convert(root / "A", tmp_path / "tp4", 4, 1) == 0
    wide = cc.load_merged(str(tmp_path / "tp4"))
    narrow = cc.load_merged(str(root / "A"))
    emb = wide.model[cc.WORD_EMBEDDINGS]
    assert wide.padded_vocab_size == 128 and emb.shape[0] == 128
    assert torch.equal(emb[:64], narrow.model[cc.WORD_EMBEDDINGS]) and not emb[64:].any()
    assert wide.optimizer["params"][cc.WORD_EMBEDDINGS]["exp_avg"].shape[0] == 128
    assert convert(tmp_path / "tp4", tmp_path / "back", 2, 2) == 0
    assert_equal_nested(cc.load_merged(str(tmp_path / "back")).model, narrow.model)


def test_tp1_to_tp2_with_other_vocab_padding_continues_like_the_original(tmp_path):
    """70 ids: 80 rows at TP 1, 96 at TP 2. The converted checkpoint keeps the real rows, its
    added padding rows are zero, and TP 2 continues the TP 1 run; converting back is lossless."""
    base = GPT + PADDED_VOCAB
    train("gpt", base, 1, 1, None, 1, ["--exit-interval", "3", "--save", str(tmp_path / "A")])
    expect = train("gpt", base, 1, 1, None, 1, ["--load", str(tmp_path / "A")])
    assert convert(tmp_path / "A", tmp_path / "B", 2, 1) == 0
    source, wide = cc.load_merged(str(tmp_path / "A")), cc.load_merged(str(tmp_path / "B"))
    assert (source.padded_vocab_size, wide.padded_vocab_size) == (80, 96)
    for table in (wide.model, wide.optimizer["params"][cc.WORD_EMBEDDINGS]):
        emb = table[cc.WORD_EMBEDDINGS] if table is wide.model else table["exp_avg"]
        assert emb.shape[0] == 96 and not emb[TRUE_VOCAB:].any()
    emb = source.model[cc.WORD_EMBEDDINGS]
    assert torch.equal(wide.model[cc.WORD_EMBEDDINGS][:80], emb) and not emb[TRUE_VOCAB:].any()
    got = train("gpt", base, 2, 1, None, 1, ["--load", str(tmp_path / "B")])
    assert [h["iteration"] for h in got] == [4, 5, 6]
    assert_same_losses(got, expect)
    assert convert(tmp_path / "B", tmp_path / "back", 1, 1) == 0
    assert_equal_nested(cc.load_merged(str(tmp_path / "back")).model, source.model)


@pytest.mark.parametrize(
    "size,message",
    [
        ("20", "--true-vocab-size 20 differs from the stored tokenizer's 61 ids"),
        ("65", "--true-vocab-size 65 pads to 128 rows at TP 2, but the source has 64"),
    ],
)
def test_true_vocab_size_that_cannot_be_the_source_is_an_error(
    tp2pp2, tmp_path, capsys, size, message
):
    """A wrong --true-vocab-size (a smaller one would cut real rows off at TP 1) is refused
    before anything is written."""
    root, _ = tp2pp2
    assert convert(root / "A", tmp_path / "bad", 1, 1, None, "--true-vocab-size", size) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("stride,dim", [(1, 0), (1, 1), (2, 0)])
def test_merge_inverts_the_initialisation_slicing(stride, dim):
    full = torch.randn(8, 12)
    spec = cc.ParamSpec("w", "w", (8, 12), dim, stride, None, True)
    marker = type(
        "P", (), dict(tensor_model_parallel=True, partition_dim=dim, partition_stride=stride)
    )
    shards = [shard_of(full, marker, r, 2) for r in range(2)]
    assert all(torch.equal(cc.split_tensor(full, spec, r, 2), shards[r]) for r in range(2))
    assert torch.equal(cc.merge_shards(shards, spec), full)


@pytest.mark.slow
def test_tp1_to_interleaved_tp2pp2_untied_rope(tmp_path):
    base = GPT_ARGS + ADAM + ["--train-iters", "6", "--untie-embeddings-and-output-weights"]
    base += ["--use-rotary-position-embeddings"]
    train("gpt", base, 1, 1, None, 1, ["--exit-interval", "3", "--save", str(tmp_path / "A")])
    expect = train("gpt", base, 1, 1, None, 1, ["--load", str(tmp_path / "A")])
    assert convert(tmp_path / "A", tmp_path / "V", 2, 2, 1) == 0
    assert {"model0", "model1"} <= set(files_of(tmp_path / "V")["mp_rank_00_000"])
    got = train("gpt", base, 2, 2, 1, 1, ["--load", str(tmp_path / "V")])
    assert_same_losses(got, expect)


def write_legacy_copy(src, dst) -> None:
    """Copy a BERT checkpoint and rewrite every shard with the names earlier versions wrote."""
    from tests.unit.test_checkpoint_names import to_legacy

    shutil.copytree(src, dst)
    it, release = ckpt.read_tracker(str(dst))
    folder = ckpt.checkpoint_dir(str(dst), it, release)
    for shard in sorted(os.listdir(folder)):
        path = os.path.join(folder, shard, "model_optim_rng.pt")
        legacy = to_legacy(torch.load(path, map_location="cpu", weights_only=True))
        assert any(k.startswith("decoder.") for k in legacy.get("model", {}))
        ckpt.save_shard(legacy, path)


@pytest.mark.slow
def test_bert_tp2pp2_to_tp1pp1_dp2(tmp_path):
    """Also: the same checkpoint with the names earlier versions wrote (`decoder.*`,
    `lm_head.bias`, ...) resumes and converts exactly like today's."""
    from tests.integration.test_layout_matrix import write_bert_corpus

    write_bert_corpus(str(tmp_path / "corpus"))
    base = COMMON + ADAM + ["--seq-length", "32", "--split", "100,0,0"]
    base += ["--data-path", str(tmp_path / "corpus"), "--data-cache-path", str(tmp_path / "cache")]
    base += ["--train-iters", "6"]
    train("bert", base, 2, 2, None, 1, ["--exit-interval", "3", "--save", str(tmp_path / "A")])
    expect = train("bert", base, 2, 2, None, 1, ["--load", str(tmp_path / "A")])
    assert convert(tmp_path / "A", tmp_path / "C", 1, 1) == 0
    got = train("bert", base, 1, 1, None, 2, ["--load", str(tmp_path / "C")])
    assert_same_losses(got, expect)
    np.testing.assert_allclose(
        [h["sop loss"] for h in got], [h["sop loss"] for h in expect], rtol=1e-5
    )
    write_legacy_copy(tmp_path / "A", tmp_path / "L")
    legacy = train("bert", base, 2, 2, None, 1, ["--load", str(tmp_path / "L")])
    assert_same_losses(legacy, expect)
    assert [h["sop loss"] for h in legacy] == [h["sop loss"] for h in expect]
    assert convert(tmp_path / "L", tmp_path / "LC", 1, 1) == 0
    assert_equal_nested(files_of(tmp_path / "LC"), files_of(tmp_path / "C"))
    assert_same_serial_bert(tmp_path / "A", tmp_path / "C")


def assert_same_serial_bert(tp2pp2, tp1pp1) -> None:
    from megatron.training.serial_model import load_serial_model

    (a, ma), (c, _) = load_serial_model(str(tp2pp2)), load_serial_model(str(tp1pp1))
    assert (ma.model_type, ma.layout.tp, ma.layout.pp) == ("BERT", 2, 2)
    vocab = ma.model["embedding.word_embeddings.weight"].shape[0]
    ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(1))
    types, padding = torch.zeros_like(ids), torch.ones_like(ids)
    with torch.no_grad():
        for x, y in zip(a(ids, padding, types), c(ids, padding, types)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_target_vocab_needs_the_true_size_when_ambiguous():
    """Without readable tokenizer files the padded size is kept only when it must stay the same."""
    args = {
        "model": {"make_vocab_size_divisible_by": 128},
        "tokenizer": {
            "tokenizer_type": "GPT2BPETokenizer",
            "vocab_file": "/nonexistent/vocab.json",
            "merge_file": "/nonexistent/merges.txt",
        },
    }
    merged = cc.MergedCheckpoint(args, 1, False, "GPT", cc.Layout(1, 1), 256, {}, None, {}, {})
    assert cc.target_vocab_size(merged, cc.Layout(2, 1)) == 256  # 129..256 ids pad to 256
    assert cc.target_vocab_size(merged, cc.Layout(4, 1)) == 512  # ... and to 512 at TP 4
    assert cc.target_vocab_size(merged, cc.Layout(4, 1), true_vocab_size=200) == 512
    narrow = cc.MergedCheckpoint(args, 1, False, "GPT", cc.Layout(2, 1), 256, {}, None, {}, {})
    with pytest.raises(ValueError, match="--true-vocab-size"):
        cc.target_vocab_size(narrow, cc.Layout(1, 1))  # 1..256 ids: 128 or 256 rows at TP 1
    assert cc.target_vocab_size(narrow, cc.Layout(1, 1), true_vocab_size=100) == 128
