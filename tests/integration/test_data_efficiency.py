"""Curriculum learning and random-LTD through pretrain_gpt / pretrain_bert: schedules in the log,
exact resume, token accounting, pipeline parallelism with a changing sequence length."""

import json
import re

import numpy as np
import pytest

import pretrain_bert
import pretrain_gpt
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.core.datasets.token_counts import save_token_counts
from megatron.training.arguments import parse_args
from megatron.training.training import pretrain
from tests.distributed.launcher import run_distributed

VOCAB = 97
SEQ = 32


def _metric(
    name, kind, lo, hi, total, step, schedule="fixed_linear", diff_type="value", path="dummy"
):
    cfg = {"total_curriculum_step": total, "difficulty_step": step}
    if schedule == "fixed_root":
        cfg["root_degree"] = 2
    return {
        "index_to_sample_path": path,
        "index_to_metric_path": "dummy",
        "difficulty_type": diff_type,
        "clustering_type": kind,
        "min_difficulty": lo,
        "max_difficulty": hi,
        "schedule_type": schedule,
        "schedule_config": cfg,
    }


def ds_config(
    tmp_path, curriculum=True, ltd=True, layers=4, seq=SEQ, model_type="decoder", metrics=None
):
    metrics = metrics or {
        "voc": _metric(
            "voc",
            "schedule_based",
            1,
            100,
            6,
            1,
            "fixed_root",
            "percentile",
            path=str(tmp_path / "vocab_rarity_index_to_sample_percentile_merged"),
        ),
        "seqlen_truncate": _metric("seqlen_truncate", "single_cluster", 8, seq, 6, 8),
    }
    cfg = {
        "train_batch_size": 8,
        "data_efficiency": {
            "enabled": True,
            "seed": 1234,
            "data_routing": {
                "enabled": ltd,
                "random_ltd": {
                    "enabled": ltd,
                    "total_layer_num": layers,
                    "random_ltd_layer_num": layers - 2,
                    "random_ltd_layer_id": list(range(1, layers - 1)),
                    "model_mask_name": "attention_mask",
                    "model_type": model_type,
                    "hidden_state_order": "seq_batch_dim",
                    "random_ltd_schedule": {
                        "min_value": 8,
                        "max_value": seq,
                        "schedule_type": "fixed_linear",
                        "schedule_config": {"require_steps": 6, "seq_per_step": 8},
                    },
                },
            },
            "data_sampling": {
                "enabled": curriculum,
                "num_workers": 0,
                "curriculum_learning": {
                    "enabled": curriculum,
                    "data_cluster_path": str(tmp_path),
                    "curriculum_metrics": metrics,
                },
            },
        },
    }
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def gpt_data(tmp_path_factory):
    """A small GPT dataset of token ids with Zipf-like frequencies (so rarity varies)."""
    d = tmp_path_factory.mktemp("gpt_data")
    prefix = str(d / "toy_text_document")
    rs = np.random.RandomState(0)
    weights = 1.0 / np.arange(1, VOCAB)
    weights /= weights.sum()
    counts = np.zeros(VOCAB, dtype=np.int64)
    with IndexedDatasetBuilder(prefix + ".bin", np.uint16) as b:
        for _ in range(300):
            n = rs.randint(10, 120)
            doc = np.append(rs.choice(VOCAB - 1, size=n, p=weights), VOCAB - 1)  # eod = 96
            counts += np.bincount(doc, minlength=VOCAB)
            b.add_item(doc)
            b.end_document()
        b.finalize(prefix + ".idx")
    save_token_counts(prefix + ".token_counts.npy", counts)
    return prefix


def gpt_args(data, extra=()):
    return [
        "--num-layers",
        "4",
        "--hidden-size",
        "32",
        "--num-attention-heads",
        "4",
        "--seq-length",
        str(SEQ),
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "8",
        "--lr",
        "2e-3",
        "--lr-decay-style",
        "cosine",
        "--data-path",
        data,
        "--split",
        "90,10,0",
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        str(VOCAB - 1),
        "--log-interval",
        "1",
        "--eval-interval",
        "1000",
        "--eval-iters",
        "1",
        "--num-workers",
        "0",
        "--hidden-dropout",
        "0.1",
        "--attention-dropout",
        "0.1",
        "--seed",
        "3",
        *extra,
    ]


def run_gpt(argv):
    history = []
    st = pretrain(
        pretrain_gpt.datasets_provider,
        pretrain_gpt.model_provider,
        pretrain_gpt.forward_step,
        argv=argv,
        history=history,
    )
    return st, history


def test_gpt_curriculum_and_random_ltd_schedules(tmp_path, gpt_data):
    cfg = ds_config(tmp_path)
    st, hist = run_gpt(
        gpt_args(
            gpt_data,
            [
                "--train-iters",
                "8",
                "--deepspeed",
                "--deepspeed_config",
                cfg,
                "--data-efficiency-curriculum-learning",
                "--random-ltd",
            ],
        )
    )
    seqlens = [h["curriculum seqlen"] for h in hist]
    difficulty = [h["difficulty voc"] for h in hist]
    kept = [h["random-LTD kept tokens"] for h in hist]
    assert seqlens == sorted(seqlens) and seqlens[0] == 8 and seqlens[-1] == SEQ
    assert difficulty == sorted(difficulty) and difficulty[0] < difficulty[-1] == 100
    assert kept == sorted(kept) and all(k <= s for k, s in zip(kept, seqlens))
    # consumed tokens: rows x effective length (S (L - n) + K n) // L, summed over steps
    expected = sum(8 * ((s * 2 + k * 2) // 4) for s, k in zip(seqlens, kept))
    assert st.consumed_train_tokens == expected == hist[-1]["consumed_train_tokens"]


def test_gpt_curriculum_exact_resume(tmp_path, gpt_data):
    cfg = ds_config(tmp_path)
    de = ["--deepspeed_config", cfg, "--train-iters", "6"]
    _, straight = run_gpt(gpt_args(gpt_data, de))
    ckpt = str(tmp_path / "ckpt")
    run_gpt(gpt_args(gpt_data, de + ["--exit-interval", "3", "--save", ckpt]))
    _, resumed = run_gpt(gpt_args(gpt_data, de + ["--load", ckpt]))
    assert [h["iteration"] for h in resumed] == [4, 5, 6]
    assert [h["lm loss"] for h in resumed] == [h["lm loss"] for h in straight[3:]]
    assert [h["curriculum seqlen"] for h in resumed] == [
        h["curriculum seqlen"] for h in straight[3:]
    ]


def test_unknown_key_in_deepspeed_config_fails_fast(tmp_path, gpt_data, capsys):
    cfg = json.loads(open(ds_config(tmp_path)).read())
    ltd = cfg["data_efficiency"]["data_routing"]["random_ltd"]
    ltd["random_ltd_schedul"] = ltd.pop("random_ltd_schedule")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cfg))
    with pytest.raises(SystemExit):
        run_gpt(gpt_args(gpt_data, ["--train-iters", "2", "--deepspeed_config", str(bad)]))
    err = capsys.readouterr().err
    assert "random_ltd_schedul" in err and "random_ltd_schedule" in err


def test_random_ltd_flag_without_config_block_is_an_error(tmp_path, gpt_data, capsys):
    cfg = ds_config(tmp_path, ltd=False)
    with pytest.raises(SystemExit) as exc:  # in parse_args, before anything is built
        run_gpt(
            gpt_args(gpt_data, ["--train-iters", "2", "--deepspeed_config", cfg, "--random-ltd"])
        )
    assert exc.value.code == 2 and "--random-ltd needs" in capsys.readouterr().err


def _edited_config(tmp_path, edit, **kwargs):
    """ds_config(tmp_path, **kwargs) with `edit` applied to its data_efficiency block."""
    cfg = json.loads(open(ds_config(tmp_path, **kwargs)).read())
    edit(cfg["data_efficiency"])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _truncate(de):
    return de["data_sampling"]["curriculum_learning"]["curriculum_metrics"]["seqlen_truncate"]


def _ltd(de):
    return de["data_routing"]["random_ltd"]


# (id, edit of the data_efficiency block, ds_config kwargs, expected message)
BAD_DE = [
    (
        "seqlen_truncate max above --seq-length",
        lambda de: _truncate(de).update(max_difficulty=2 * SEQ),
        dict(ltd=False),
        f"curriculum metric seqlen_truncate: max_difficulty {2 * SEQ} is above --seq-length "
        f"{SEQ}: lengths are capped at {SEQ} (full length from step 3 instead of step 6)",
    ),
    (
        "difficulty_step above the range",
        lambda de: _truncate(de)["schedule_config"].update(difficulty_step=64),
        dict(ltd=False),
        "difficulty_step 64 has no multiple in (min_difficulty 8, max_difficulty 32]: the "
        "difficulty would stay at 8 for the whole run",
    ),
    (
        "seqlen min 0",
        lambda de: _truncate(de).update(min_difficulty=0),
        dict(ltd=False),
        "curriculum metric seqlen_truncate: min_difficulty 0 is a sequence length and must be >= 1",
    ),
    (
        "random-LTD min_value above --seq-length",
        lambda de: _ltd(de)["random_ltd_schedule"].update(min_value=48, max_value=64),
        dict(curriculum=False),
        f"random_ltd_schedule.min_value 48 is not below --seq-length {SEQ}: every layer would "
        "keep all",
    ),
    (
        "random-LTD without layers",
        lambda de: _ltd(de).update(random_ltd_layer_id=[], random_ltd_layer_num=0),
        dict(curriculum=False),
        "random_ltd_layer_id is empty: random-LTD would drop tokens in no layer",
    ),
    (
        "random-LTD total_layer_num",
        lambda de: _ltd(de).update(total_layer_num=6),
        dict(curriculum=False),
        "total_layer_num is 6 but --num-layers is 4",
    ),
]


@pytest.mark.parametrize(
    "edit,kwargs,expected", [r[1:] for r in BAD_DE], ids=[r[0] for r in BAD_DE]
)
def test_data_efficiency_config_is_checked_against_the_model(
    tmp_path, gpt_data, capsys, edit, kwargs, expected
):
    """Each hole used to train silently (or fail at step 1); now parse_args exits 2 naming the
    file, the key, the flag it contradicts and the fix."""
    cfg = _edited_config(tmp_path, edit, **kwargs)
    with pytest.raises(SystemExit) as exc:
        parse_args(gpt_args(gpt_data, ["--train-iters", "8", "--deepspeed_config", cfg]))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and cfg in err and expected in err, err


def test_bad_data_efficiency_config_fails_before_the_model_is_built(tmp_path, gpt_data, capsys):
    cfg = _edited_config(tmp_path, BAD_DE[0][1], **BAD_DE[0][2])
    built = []

    def model_provider(*args):
        built.append(args)
        return pretrain_gpt.model_provider(*args)

    argv = gpt_args(gpt_data, ["--train-iters", "8", "--deepspeed_config", cfg])
    with pytest.raises(SystemExit) as exc:
        pretrain(
            pretrain_gpt.datasets_provider, model_provider, pretrain_gpt.forward_step, argv=argv
        )
    assert exc.value.code == 2 and not built
    assert "max_difficulty 64 is above --seq-length" in capsys.readouterr().err


def _pp_body(rank, world_size, argv):
    import torch

    torch.set_num_threads(1)
    _, hist = run_gpt(argv)
    return [(h["lm loss"], h["curriculum seqlen"]) for h in hist]


@pytest.mark.slow
def test_pipeline_parallel_with_changing_sequence_length(tmp_path, gpt_data):
    cfg = ds_config(tmp_path)
    argv = gpt_args(
        gpt_data,
        [
            "--train-iters",
            "5",
            "--deepspeed_config",
            cfg,
            "--hidden-dropout",
            "0",
            "--attention-dropout",
            "0",
        ],
    )
    single = run_distributed(_pp_body, 1, argv, timeout=300)[0]
    pp = run_distributed(_pp_body, 2, argv + ["--pipeline-model-parallel-size", "2"], timeout=300)
    assert pp[0] == pp[1]  # both stages log the last stage's loss
    assert [s for _, s in single] == [s for _, s in pp[0]] and len({s for _, s in single}) > 1
    for (a, _), (b, _) in zip(single, pp[0]):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory, tokenizer_dir):
    import functools

    from megatron.core.datasets.preprocess import preprocess_files
    from megatron.core.datasets.preprocess_config import PreprocessConfig
    from megatron.tokenizer import TokenizerConfig, build_tokenizer, split_sentences
    from tools.austen_to_jsonl import write_jsonl

    d = tmp_path_factory.mktemp("bert_data")
    full = d / "austen.jsonl"
    write_jsonl(str(full))
    small = d / "small.jsonl"
    small.write_text("".join(open(full).readlines()[:12]))
    tok = TokenizerConfig(
        "BertWordPieceLowerCase", vocab_file=str(tokenizer_dir / "bert-base-uncased-vocab.txt")
    )
    preprocess_files(
        [str(small)],
        str(d / "austen"),
        functools.partial(build_tokenizer, tok),
        PreprocessConfig(split_sentences=True),
        sentence_splitter=split_sentences,
    )
    return str(d / "austen_text_sentence"), str(tokenizer_dir / "bert-base-uncased-vocab.txt")


def test_bert_curriculum_and_random_ltd(tmp_path, bert_data):
    prefix, vocab = bert_data
    metrics = {
        "vocab_rarity": _metric(
            "vocab_rarity", "schedule_based", 1, 100, 5, 1, "fixed_root", "percentile"
        ),
        "seqlen_truncate": _metric("seqlen_truncate", "single_cluster", 16, 64, 5, 8),
    }
    cfg = ds_config(tmp_path, layers=4, seq=64, model_type="encoder", metrics=metrics)
    history = []
    argv = [
        "--num-layers",
        "4",
        "--hidden-size",
        "32",
        "--num-attention-heads",
        "4",
        "--seq-length",
        "64",
        "--micro-batch-size",
        "4",
        "--global-batch-size",
        "8",
        "--train-iters",
        "6",
        "--lr",
        "1e-3",
        "--data-path",
        prefix,
        "--split",
        "90,10,0",
        "--tokenizer-type",
        "BertWordPieceLowerCase",
        "--vocab-file",
        vocab,
        "--log-interval",
        "1",
        "--eval-interval",
        "1000",
        "--eval-iters",
        "1",
        "--num-workers",
        "0",
        "--deepspeed_config",
        cfg,
        "--random-ltd",
        "--data-efficiency-curriculum-learning",
        "--log-jsonl",
        str(tmp_path / "metrics.jsonl"),
    ]
    pretrain(
        pretrain_bert.datasets_provider,
        pretrain_bert.model_provider,
        pretrain_bert.forward_step,
        argv=argv,
        model_type="bert",
        history=history,
    )
    seqlens = [h["curriculum seqlen"] for h in history]
    assert seqlens[0] == 24 and seqlens[-1] == 64 and seqlens == sorted(seqlens)  # 16 + 48/5 -> 24
    assert all(s % 8 == 0 for s in seqlens)
    assert all(np.isfinite(h["lm loss"]) for h in history)
    names = {row["name"] for row in read_jsonl(tmp_path / "metrics.jsonl")}
    for base in ("lm loss", "sop loss", "seqlen/curriculum_seqlen"):
        assert {base, f"{base} vs samples", f"{base} vs tokens"} <= names, base


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_dashboards_fill_under_megatrons_names(tmp_path, gpt_data, capsys):
    """TensorBoard / JSON-lines scalars under Megatron's names, each also vs samples and vs
    tokens at those x values; Megatron-DeepSpeed's data-efficiency scalars; the iteration line's
    timestamp, percent done and ETA."""
    cfg = ds_config(tmp_path)
    flags = ["--log-params-norm", "--log-num-zeros-in-grad", "--log-throughput",
             "--log-batch-size-to-tensorboard", "--log-world-size-to-tensorboard",
             "--log-timers-to-tensorboard", "--log-validation-ppl-to-tensorboard"]  # fmt: skip
    argv = ["--train-iters", "4", "--eval-interval", "2", "--deepspeed", "--deepspeed_config", cfg,
            "--data-efficiency-curriculum-learning", "--random-ltd", "--log-jsonl",
            str(tmp_path / "m.jsonl"), "--tensorboard-dir", str(tmp_path / "tb"),
            *flags]  # fmt: skip
    st, hist = run_gpt(gpt_args(gpt_data, argv))
    out = capsys.readouterr()
    rows = read_jsonl(tmp_path / "m.jsonl")
    at = {(r["name"], r["step"]): r["value"] for r in rows}
    names = {r["name"] for r in rows}
    bases = ["learning-rate", "batch-size", "lm loss", "loss-scale", "grad-norm", "params-norm",
             "num-zeros", "iteration-time", "throughput", "world-size", "lm loss validation",
             "lm loss validation ppl", "seqlen/curriculum_seqlen",
             "seqlen/random_ltd_reserved_length"]  # fmt: skip
    for base in bases:
        assert {base, f"{base} vs samples", f"{base} vs tokens"} <= names, base
    samples = {h["iteration"]: 8 * h["iteration"] for h in hist}
    for h in hist:
        it, tokens = h["iteration"], h["consumed_train_tokens"]
        assert at[("lm loss", it)] == pytest.approx(h["lm loss"])
        assert at[("lm loss vs samples", samples[it])] == pytest.approx(h["lm loss"])
        assert at[("lm loss vs tokens", tokens)] == pytest.approx(h["lm loss"])
        assert at[("seqlen/curriculum_seqlen", it)] == h["curriculum seqlen"]
        assert at[("seqlen/random_ltd_reserved_length", it)] == h["random-LTD kept tokens"]
        assert at[("batch-size", it)] == 8 and at[("world-size", it)] == 1
        assert at[("grad-norm", it)] == pytest.approx(h["grad_norm"])
        assert (
            at[("params-norm", it)] > 0
            and 0 <= at[("num-zeros", it)] < at[("params-norm", it)] * 1e9
        )
    text = (out.out + out.err).splitlines()
    lines = [line for line in text if "] iteration" in line and "| consumed samples" in line]
    assert len(lines) == 4
    assert all(re.match(r"^ \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] iteration", line) for line in lines)
    assert "percent done: 25.000" in lines[0] and "percent done: 100.000" in lines[-1]
    assert "ETA: 0:00:00" in lines[-1] and "ETA" in lines[1]
    assert "params norm:" in lines[0] and "num zeros:" in lines[0]
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = tb.EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert set(bases) <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("learning-rate vs samples")] == [8, 16, 24, 32]


def test_num_zeros_with_the_distributed_optimizer_is_an_error(tmp_path, gpt_data, capsys):
    argv = ["--train-iters", "2", "--log-num-zeros-in-grad", "--use-distributed-optimizer"]
    with pytest.raises(SystemExit):
        parse_args(gpt_args(gpt_data, argv), world_size=1)
    assert "--log-num-zeros-in-grad" in capsys.readouterr().err


def _analyze(gpt_data, save, seed, samples):
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "tools/analyze_data.py",
        "--metric",
        "vocab_rarity",
        "--save",
        str(save),
        "--dataset-type",
        "GPT",
        "--data-path",
        gpt_data,
        "--split",
        "90,10,0",
        "--seq-length",
        str(SEQ),
        "--seed",
        str(seed),
        "--train-samples",
        str(samples),
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        str(VOCAB - 1),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return str(save / "vocab_rarity" / "vocab_rarity_index_to_sample_percentile_merged")


def test_analysis_files_are_used_and_checked_against_the_dataset(tmp_path, gpt_data):
    good = _analyze(gpt_data, tmp_path / "good", seed=3, samples=32)
    metric = _metric("voc", "schedule_based", 1, 100, 6, 1, "fixed_root", "percentile", path=good)
    cfg = ds_config(tmp_path, ltd=False, metrics={"voc": metric})
    st, hist = run_gpt(gpt_args(gpt_data, ["--train-iters", "4", "--deepspeed_config", cfg]))
    assert [h["difficulty voc"] for h in hist] == sorted(h["difficulty voc"] for h in hist)
    other = _analyze(gpt_data, tmp_path / "other", seed=4, samples=32)  # another shuffle
    metric["index_to_sample_path"] = other
    bad = ds_config(tmp_path, ltd=False, metrics={"voc": metric})
    with pytest.raises(ValueError, match="analysed on another dataset"):
        run_gpt(gpt_args(gpt_data, ["--train-iters", "4", "--deepspeed_config", bad]))


def test_layer_token_lr_schedule_with_bf16(tmp_path, gpt_data):
    path = ds_config(tmp_path, curriculum=False)
    cfg = json.loads(open(path).read())
    warmup = 10**6
    cfg["data_efficiency"]["data_routing"]["random_ltd"]["layer_token_lr_schedule"] = {
        "enabled": True,
        "total_layer_tokens": 10 * warmup,
        "warmup_type": "linear",
        "warmup_layer_tokens": warmup,
    }
    open(path, "w").write(json.dumps(cfg))
    _, hist = run_gpt(
        gpt_args(gpt_data, ["--train-iters", "4", "--deepspeed_config", path, "--bf16"])
    )
    layer_tokens = 0
    for h in hist:  # lr after step k = 2e-3 * (layer-tokens consumed so far) / warmup
        k = h["random-LTD kept tokens"]
        layer_tokens += 8 * (SEQ * 2 + k * 2)
        assert h["lr"] == pytest.approx(2e-3 * layer_tokens / warmup)
    assert all(np.isfinite(h["lm loss"]) for h in hist)


def _bert_body(rank, world_size, argv):
    import torch

    torch.set_num_threads(1)
    history = []
    pretrain(
        pretrain_bert.datasets_provider,
        pretrain_bert.model_provider,
        pretrain_bert.forward_step,
        argv=argv,
        model_type="bert",
        history=history,
    )
    return [(h["lm loss"], h["curriculum seqlen"]) for h in history]


@pytest.mark.slow
def test_bert_curriculum_under_pipeline_parallelism(tmp_path, bert_data):
    prefix, vocab = bert_data
    metrics = {"seqlen_truncate": _metric("seqlen_truncate", "single_cluster", 16, 64, 4, 8)}
    cfg = ds_config(tmp_path, ltd=True, layers=4, seq=64, model_type="encoder", metrics=metrics)
    argv = [
        "--num-layers",
        "4",
        "--hidden-size",
        "32",
        "--num-attention-heads",
        "4",
        "--seq-length",
        "64",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "8",
        "--train-iters",
        "4",
        "--lr",
        "1e-3",
        "--data-path",
        prefix,
        "--split",
        "90,10,0",
        "--tokenizer-type",
        "BertWordPieceLowerCase",
        "--vocab-file",
        vocab,
        "--log-interval",
        "1",
        "--eval-interval",
        "1000",
        "--eval-iters",
        "1",
        "--num-workers",
        "0",
        "--deepspeed_config",
        cfg,
        "--hidden-dropout",
        "0",
        "--attention-dropout",
        "0",
    ]
    single = run_distributed(_bert_body, 1, argv, timeout=300)[0]
    pp = run_distributed(_bert_body, 2, argv + ["--pipeline-model-parallel-size", "2"], timeout=300)
    assert [s for _, s in pp[0]] == [s for _, s in single] == [24, 40, 48, 64]
    for (a, _), (b, _) in zip(single, pp[1]):
        assert a == pytest.approx(b, rel=1e-5)
