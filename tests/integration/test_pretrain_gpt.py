"""pretrain_gpt end to end in one process: loss falls, exact resume, checkpoint format, errors."""

import os

import pytest
import torch

import pretrain_gpt
from megatron.training import checkpointing as ckpt
from megatron.training.training import pretrain

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


def test_loss_falls_on_repeated_data(tmp_path):
    history = []
    run(
        TINY + ["--train-iters", "30", "--hidden-dropout", "0", "--attention-dropout", "0"], history
    )
    first = sum(h["lm loss"] for h in history[:5]) / 5
    last = sum(h["lm loss"] for h in history[-5:]) / 5
    assert last < first - 0.1


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
