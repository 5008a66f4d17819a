"""pretrain_gpt end to end in one process: loss falls, exact resume, checkpoint format, errors."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import pretrain_gpt
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.training import checkpointing as ckpt
from megatron.training.training import NonFiniteTrainingError, pretrain

TINY = [
    "--num-layers",
    "2",
    "--hidden-size",
    "32",
    "--num-attention-heads",
    "4",
    "--seq-length",
    "16",
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "4",
    "--lr",
    "3e-3",
    "--lr-decay-style",
    "cosine",
    "--lr-warmup-iters",
    "2",
    "--mock-data",
    "--tokenizer-type",
    "NullTokenizer",
    "--vocab-size",
    "60",
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
    "7",
]


def run(argv, history=None):
    return pretrain(
        pretrain_gpt.datasets_provider,
        pretrain_gpt.model_provider,
        pretrain_gpt.forward_step,
        argv=argv,
        history=history,
    )


def test_exact_resume_bit_for_bit(tmp_path):
    straight = []
    run(TINY + ["--train-iters", "6"], straight)
    first = []
    run(TINY + ["--train-iters", "6", "--exit-interval", "3", "--save", str(tmp_path)], first)
    resumed = []
    st = run(
        TINY + ["--train-iters", "6", "--load", str(tmp_path), "--save", str(tmp_path)], resumed
    )
    assert [h["iteration"] for h in resumed] == [4, 5, 6]
    assert [h["lm loss"] for h in first] == [h["lm loss"] for h in straight[:3]]
    # Bit for bit: the same floats, not merely close ones.
    assert [h["lm loss"] for h in resumed] == [h["lm loss"] for h in straight[3:]]
    assert [h["lr"] for h in resumed] == [h["lr"] for h in straight[3:]]
    assert st.iteration == 6 and st.consumed_train_samples == 24


def test_checkpoint_layout_and_weights_only(tmp_path):
    run(
        TINY
        + [
            "--train-iters",
            "2",
            "--lr-warmup-iters",
            "1",
            "--save",
            str(tmp_path),
            "--save-interval",
            "1",
        ]
    )
    assert open(tmp_path / ckpt.TRACKER_FILENAME).read().strip() == "2"
    path = tmp_path / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    sd = torch.load(path, weights_only=True)
    assert sd["iteration"] == 1 and sd["consumed_train_samples"] == 4
    assert "decoder.layers.1.mlp.linear_fc1.weight" in sd["model"]
    assert sd["args"]["transformer"]["num_layers"] == 2
    assert sd["opt_param_scheduler"]["num_steps"] == 4
    assert not [f for f in os.listdir(path.parent) if "tmp" in f]


def write_cyclic_corpus(prefix: str, num_docs: int = 20, length: int = 100) -> None:
    """Documents counting 0..59 round and round from a random start: each next id is
    predictable, unlike --mock-data's uniform ids (nothing to learn beyond ln 61)."""
    rng = np.random.default_rng(3)
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16) as builder:
        for _ in range(num_docs):
            builder.add_item((rng.integers(60) + np.arange(length)) % 60)
            builder.end_document()
        builder.finalize(prefix + ".idx")


def test_loss_falls_on_predictable_data(tmp_path):
    write_cyclic_corpus(str(tmp_path / "cyclic"))
    argv = [a for a in TINY if a != "--mock-data"] + ["--train-iters", "30"]
    argv += ["--hidden-dropout", "0", "--attention-dropout", "0", "--split", "100,0,0"]
    argv += ["--data-path", str(tmp_path / "cyclic"), "--eval-iters", "0"]
    history = []
    run(argv, history)
    first = sum(h["lm loss"] for h in history[:5]) / 5
    last = sum(h["lm loss"] for h in history[-5:]) / 5
    assert last < first - 0.5


def test_data_of_another_tokenizer_stops_the_run_naming_the_file(tmp_path, repo_root):
    """Preprocessed for 200 ids, trained with 61: an error at dataset opening that names the file,
    the id and both sizes (was: IndexError deep in the embedding, or silently training on
    padding ids when the id fell inside the padded vocabulary)."""
    from tools.preprocess_data import main as preprocess_main

    with open(tmp_path / "in.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps({"text": " ".join(str((7 * i + j) % 60) for j in range(40))}))
            f.write("\n")
    prefix = tmp_path / "corpus"
    flags = ["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(prefix)]
    flags += ["--tokenizer-type", "NullTokenizer", "--vocab-size", "199", "--append-eod"]
    assert preprocess_main(flags) == 0
    data = f"{prefix}_text_document"
    argv = [a for a in TINY if a != "--mock-data"] + ["--train-iters", "3", "--split", "100,0,0"]
    argv += ["--data-path", data, "--data-cache-path", str(tmp_path / "cache")]
    res = subprocess.run(
        [sys.executable, "pretrain_gpt.py", *argv],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    # 199 is the end-of-document id of the 200-id tokenizer, appended after each document.
    assert (
        f"ValueError: {data}.bin: token id 199 at document 0, sequence 0, token 40 is outside the "
        "model's vocabulary of 61 ids (the file's ids span 0..199, read from "
        "corpus_text_document.token_counts.npy)" in res.stderr
    ), res.stderr[-2000:]
    assert "IndexError" not in res.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--global-batch-size", "6"], "not divisible by --micro-batch-size 4"),
        (["--num-attention-heads", "5"], "not divisible by --num-attention-heads 5"),
        (["--fp16", "--bf16"], "--fp16 and --bf16"),
        (["--recompute-granularity", "full"], "--recompute-method"),
    ],
)
def test_config_errors_name_the_flag(extra, message, capsys):
    argv = [a for a in TINY if a not in ()] + ["--train-iters", "2"]
    argv = argv + extra
    if "--global-batch-size" in extra:
        argv[argv.index("--micro-batch-size") + 1] = "4"
    with pytest.raises(SystemExit):
        run(argv)
    assert message in capsys.readouterr().err


def test_missing_budget_is_an_error(capsys):
    with pytest.raises(SystemExit):
        run(TINY)
    assert "--train-iters, --train-samples or --train-tokens" in capsys.readouterr().err


@pytest.mark.parametrize("precision", [["--bf16"], ["--fp16"]])
def test_mixed_precision_trains_on_cpu(precision):
    history = []
    # fp16 starts at a loss scale of 2**20 so a few steps overflow, then training proceeds.
    extra = ["--initial-loss-scale", str(2**20)] if precision == ["--fp16"] else []
    st = run(
        TINY
        + ["--train-iters", "10", "--hidden-dropout", "0", "--attention-dropout", "0"]
        + precision
        + extra,
        history,
    )
    assert all(torch.isfinite(torch.tensor(h["lm loss"])) for h in history)
    if precision == ["--fp16"]:
        # Overflowing steps are skipped and counted, and the scale backs off until steps succeed.
        skipped = [h["iteration"] for h in history if not h["update_successful"]]
        assert skipped and st.skipped_iterations == len(skipped)
        assert history[-1]["update_successful"]
    else:
        assert st.skipped_iterations == 0


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(
        TINY
        + [
            "--train-iters",
            "3",
            "--tensorboard-dir",
            str(tmp_path),
            "--log-validation-ppl-to-tensorboard",
            "--eval-interval",
            "3",
        ]
    )
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"lm loss", "learning-rate", "grad-norm", "lm loss validation"} <= tags
    assert [e.step for e in acc.Scalars("lm loss")] == [1, 2, 3]


def test_resume_is_exact_with_loader_workers(tmp_path):
    """Samples are pure functions of their index: any worker count reads the same batches."""
    straight = []
    run(TINY + ["--train-iters", "4"], straight)
    run(
        TINY
        + [
            "--train-iters",
            "4",
            "--exit-interval",
            "2",
            "--save",
            str(tmp_path),
            "--num-workers",
            "2",
        ]
    )
    resumed = []
    run(TINY + ["--train-iters", "4", "--load", str(tmp_path), "--num-workers", "1"], resumed)
    assert [h["lm loss"] for h in resumed] == [h["lm loss"] for h in straight[2:]]


def test_use_checkpoint_args_takes_the_architecture(tmp_path):
    arch = ["--hidden-size", "48", "--ffn-hidden-size", "96", "--lr-warmup-iters", "1"]
    run(TINY + ["--train-iters", "3", "--exit-interval", "2", "--save", str(tmp_path)] + arch)
    history = []
    # Without --use-checkpoint-args the default architecture does not match the checkpoint.
    with pytest.raises(SystemExit, match="--hidden-size: checkpoint 48, this run 32"):
        run(TINY + ["--train-iters", "3", "--lr-warmup-iters", "1", "--load", str(tmp_path)])
    st = run(
        TINY
        + [
            "--train-iters",
            "3",
            "--lr-warmup-iters",
            "1",
            "--load",
            str(tmp_path),
            "--use-checkpoint-args",
        ],
        history,
    )
    assert st.iteration == 3 and [h["iteration"] for h in history] == [3]


# ---- non-finite losses and gradients ---------------------------------------------------------
SCHEDULE = ["--lr-decay-iters", "6"]  # the same lr schedule in the good run and its resumption


def _files(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, names in os.walk(folder)
        for f in names
    }


def _good_checkpoint(folder):
    run(TINY + ["--train-iters", "3", "--save", str(folder)] + SCHEDULE)
    before = _files(folder)
    assert before[ckpt.TRACKER_FILENAME] == b"3"
    return before


def _poisoned_weight_provider(run_cfg, rt, pre, post, vp):
    """pretrain_gpt's model with one weight set to NaN before each forward (e.g. a corrupted
    update or a bad restore)."""
    model = pretrain_gpt.model_provider(run_cfg, rt, pre, post, vp)

    def poison(module, args):
        with torch.no_grad():
            module.decoder.layers[0].mlp.linear_fc1.weight[0, 0] = float("nan")

    model.register_forward_pre_hook(poison)
    return model


def _pretrain(provider, argv, history=None):
    return pretrain(
        pretrain_gpt.datasets_provider,
        provider,
        pretrain_gpt.forward_step,
        argv=argv,
        history=history,
    )


def test_nan_loss_stops_at_its_iteration_and_keeps_the_good_checkpoint(tmp_path):
    before = _good_checkpoint(tmp_path)
    history = []
    argv = TINY + ["--train-iters", "6", "--load", str(tmp_path), "--save", str(tmp_path)]
    argv += ["--save-interval", "1", "--eval-interval", "1"] + SCHEDULE
    message = "iteration 4: lm loss is nan; training stopped before this update and saved nothing"
    with pytest.raises(NonFiniteTrainingError, match=message) as exc:
        _pretrain(_poisoned_weight_provider, argv, history)
    assert f"--save {tmp_path} keeps its latest checkpoint, iteration 3" in str(exc.value)
    assert history == []  # not even iteration 4 was counted
    assert _files(tmp_path) == before  # no new checkpoint, the tracker still says 3


@pytest.mark.parametrize("clip", ["1.0", "0"])
def test_nan_gradient_stops_before_the_update(clip):
    """A finite loss with a NaN gradient: the weights never see the update (with --clip-grad 0
    the norm is computed for the check alone)."""
    models, initial = [], {}

    def provider(run_cfg, rt, pre, post, vp):
        model = pretrain_gpt.model_provider(run_cfg, rt, pre, post, vp)
        weight = model.decoder.layers[1].mlp.linear_fc2.weight
        weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))

        def remember_initial_weights(module, args):
            if not initial:
                initial.update({k: v.clone() for k, v in module.state_dict().items()})

        model.register_forward_pre_hook(remember_initial_weights)
        models.append(model)
        return model

    with pytest.raises(NonFiniteTrainingError, match="iteration 1: the gradient norm is nan"):
        _pretrain(provider, TINY + ["--train-iters", "4", "--clip-grad", clip])
    after = models[0].state_dict()
    assert initial and all(torch.equal(initial[k], after[k]) for k in initial)


def test_without_the_check_training_goes_on_but_nan_weights_are_not_saved(tmp_path, capsys):
    before = _good_checkpoint(tmp_path)
    history = []
    argv = TINY + ["--train-iters", "6", "--load", str(tmp_path), "--save", str(tmp_path)]
    argv += ["--save-interval", "2", "--eval-interval", "1", "--no-check-for-nan-in-loss-and-grad"]
    with pytest.raises(NonFiniteTrainingError, match="iteration 4: the model weights hold NaN"):
        _pretrain(_poisoned_weight_provider, argv + SCHEDULE, history)
    assert [h["iteration"] for h in history] == [4] and math.isnan(history[0]["lm loss"])
    assert _files(tmp_path) == before
    out = capsys.readouterr().out
    # the validation line shows no perplexity for a NaN loss (it used to print exp(20))
    assert "lm loss value: NAN | lm loss PPL: NAN" in out and "4.851652E+08" not in out


def test_the_script_exits_non_zero_naming_the_iteration(tmp_path, repo_root):
    """pretrain_gpt.py with a learning rate that blows the weights up after the first step."""
    argv = [a if a != "3e-3" else "1e30" for a in TINY] + ["--train-iters", "6"]
    argv += ["--save", str(tmp_path), "--save-interval", "1"]
    done = subprocess.run(
        [sys.executable, "pretrain_gpt.py", *argv], cwd=repo_root, capture_output=True, text=True
    )
    found = re.search(r"NonFiniteTrainingError: iteration (\d+): lm loss is (nan|inf)", done.stderr)
    assert done.returncode != 0 and found, done.stderr[-2000:]
    bad = int(found.group(1))
    tracker = open(tmp_path / ckpt.TRACKER_FILENAME).read().strip()
    assert bad >= 2 and tracker == str(bad - 1)  # every good step saved, the bad one not
    assert sorted(os.listdir(tmp_path))[-2] == f"iter_{bad - 1:07d}"
