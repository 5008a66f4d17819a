"""Flags and DeepSpeed JSON keys of Megatron launch scripts: mapped, no-ops with one warning line,
or errors naming the alternative; JSON values that contradict explicit flags are errors."""

import json
import logging
import re
import sys

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.training.arguments import parse_args
from megatron.training.compat import COMPAT_FLAGS
from megatron.training.metrics import build_sinks
from megatron.training.timers import StepTimers, p2p_timer_name

BASE = [
    "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
    "--seq-length", "16", "--micro-batch-size", "2", "--train-iters", "4", "--lr", "3e-3",
    "--tokenizer-type", "NullTokenizer", "--vocab-size", "60", "--num-workers", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "tiny_text_document")
    with IndexedDatasetBuilder(path + ".bin", np.uint16) as b:
        for n in range(5, 45):
            b.add_item(np.arange(n) % 59)
            b.end_document()
        b.finalize(path + ".idx")
    return path


def parse(prefix, *extra, world_size=1, model_type="gpt", base=BASE):
    return parse_args(
        [*base, "--data-path", prefix, *extra], world_size=world_size, model_type=model_type
    )


def error_of(capsys, *args, **kwargs):
    with pytest.raises(SystemExit) as exc:
        parse(*args, **kwargs)
    assert exc.value.code == 2
    return capsys.readouterr().err


def ds_json(tmp_path, **keys):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(keys))
    return str(path)


def test_every_accepted_flag_parses_and_warns_once(prefix, caplog):
    argv = []
    for flag in COMPAT_FLAGS:
        kwargs = dict(flag.kwargs)
        if kwargs.get("action") == "store_true":
            argv.append(flag.name)
        else:
            argv += [flag.name, str((kwargs.get("choices") or ["1"])[0])]
    caplog.set_level(logging.WARNING, logger="megatron.training.compat")
    run = parse(prefix, *argv)
    lines = [r.getMessage() for r in caplog.records if r.name == "megatron.training.compat"]
    assert len(lines) == len(COMPAT_FLAGS)
    for flag in COMPAT_FLAGS:
        assert sum(line.startswith(flag.name) for line in lines) == 1
        assert flag.name not in str(run.extra)


def test_the_readme_table_lists_every_accepted_flag(repo_root):
    readme = (repo_root / "README.md").read_text()
    table = readme.split("### Flags accepted from Megatron launch scripts")[1].split("\n## ")[0]
    for flag in COMPAT_FLAGS:
        assert re.search(rf"^\| `{flag.name}` \|", table, re.M), flag.name


def test_zero_stages_map_onto_the_distributed_optimizer(prefix, capsys):
    assert parse(prefix, "--zero-stage", "1").optimizer.use_distributed_optimizer
    assert parse(prefix, "--zero-stage", "2").optimizer.use_distributed_optimizer
    assert not parse(prefix, "--zero-stage", "0").optimizer.use_distributed_optimizer
    err = error_of(capsys, prefix, "--zero-stage", "3")
    assert "ZeRO stage 3" in err and "--use-distributed-optimizer" in err
    err = error_of(capsys, prefix, "--zero-stage", "0", "--use-distributed-optimizer")
    assert "--use-distributed-optimizer contradicts ZeRO stage 0" in err


def test_deepspeed_activation_checkpointing_is_full_recompute(prefix):
    t = parse(prefix, "--deepspeed-activation-checkpointing").transformer
    assert (t.recompute_granularity, t.recompute_method, t.recompute_num_layers) == (
        "full",
        "uniform",
        1,
    )
    assert parse(prefix).transformer.recompute_granularity is None


def test_what_cannot_be_done_is_an_error_naming_the_alternative(prefix, capsys):
    err = error_of(
        capsys,
        prefix,
        "--no-pipeline-parallel",
        "--pipeline-model-parallel-size",
        "2",
        world_size=2,
    )
    assert "--no-pipeline-parallel contradicts --pipeline-model-parallel-size 2" in err
    err = error_of(capsys, prefix, "--ckpt-format", "torch_dist")
    assert "--ckpt-format torch" in err and "tools/checkpoint_util.py" in err


FP16 = {
    "enabled": True,
    "loss_scale": 0,
    "loss_scale_window": 500,
    "hysteresis": 2,
    "min_loss_scale": 1,
    "initial_scale_power": 11,
}


def test_the_fp16_block_fills_the_loss_scaler_options(prefix, tmp_path):
    opt = parse(prefix, "--deepspeed_config", ds_json(tmp_path, fp16=FP16)).optimizer
    assert opt.fp16 and not opt.bf16 and opt.loss_scale is None
    assert opt.initial_loss_scale == 2.0**11 and opt.loss_scale_window == 500
    assert opt.hysteresis == 2 and opt.min_loss_scale == 1.0
    # absent keys: DeepSpeed's defaults (not ours, 2^32), unless the flag is given
    path = ds_json(tmp_path, fp16={"enabled": True})
    assert parse(prefix, "--deepspeed_config", path).optimizer.initial_loss_scale == 2.0**16
    opt = parse(prefix, "--deepspeed_config", path, "--initial-loss-scale", "1024").optimizer
    assert opt.initial_loss_scale == 1024.0
    static = ds_json(tmp_path, fp16={"enabled": True, "loss_scale": 128})
    assert parse(prefix, "--deepspeed_config", static).optimizer.loss_scale == 128.0
    assert parse(
        prefix, "--deepspeed_config", ds_json(tmp_path, bf16={"enabled": True})
    ).optimizer.bf16


def test_engine_keys_fill_batch_clip_log_and_zero(prefix, tmp_path):
    path = ds_json(
        tmp_path,
        train_batch_size=8,
        train_micro_batch_size_per_gpu=2,
        steps_per_print=7,
        gradient_clipping=0.5,
        zero_optimization={"stage": 1},
        wall_clock_breakdown=False,
    )
    argv = [a for a in BASE]
    run = parse(prefix, "--deepspeed_config", path, base=argv, world_size=2)
    assert run.training.global_batch_size == 8 and run.training.micro_batch_size == 2
    assert run.training.log_interval == 7 and run.optimizer.clip_grad == 0.5
    assert run.optimizer.use_distributed_optimizer
    gas = ds_json(tmp_path, gradient_accumulation_steps=3)
    assert parse(prefix, "--deepspeed_config", gas, world_size=2).training.global_batch_size == 12


@pytest.mark.parametrize(
    "keys, flags, named",
    [
        ({"gradient_clipping": 1.0}, ["--clip-grad", "0.5"], "--clip-grad"),
        ({"steps_per_print": 5}, ["--log-interval", "10"], "--log-interval"),
        ({"train_batch_size": 8}, ["--global-batch-size", "4"], "--global-batch-size"),
        ({"fp16": FP16}, ["--hysteresis", "4"], "--hysteresis"),
        ({"fp16": FP16}, ["--bf16"], "--bf16"),
        ({"fp16": {"enabled": False}}, ["--fp16"], "--fp16"),
        ({"zero_optimization": {"stage": 0}}, ["--zero-stage", "1"], "--zero-stage 1"),
        ({"gradient_accumulation_steps": 2}, ["--global-batch-size", "2"], "--global-batch-size"),
    ],
)
def test_a_json_value_contradicting_an_explicit_flag_names_both(
    prefix, tmp_path, capsys, keys, flags, named
):
    err = error_of(capsys, prefix, "--deepspeed_config", ds_json(tmp_path, **keys), *flags)
    assert named in err and ("deepspeed_config" in err or "zero_optimization" in err)
    assert next(iter(keys)) in err


def test_tokenizer_defaults_as_in_megatron_deepspeed(prefix, tokenizer_dir, capsys):
    no_tok = [a for a in BASE if a not in ("--tokenizer-type", "NullTokenizer")]
    no_tok = no_tok[: no_tok.index("--vocab-size")] + no_tok[no_tok.index("--vocab-size") + 2 :]
    gpt2 = ["--vocab-file", str(tokenizer_dir / "gpt2-vocab.json")]
    gpt2 += ["--merge-file", str(tokenizer_dir / "gpt2-merges.txt")]
    assert parse(prefix, *gpt2, base=no_tok).tokenizer.tokenizer_type == "GPT2BPETokenizer"
    bert = ["--vocab-file", str(tokenizer_dir / "bert-base-uncased-vocab.txt")]
    run = parse(prefix, *bert, base=no_tok, model_type="bert")
    assert run.tokenizer.tokenizer_type == "BertWordPieceLowerCase"
    err = error_of(capsys, prefix, base=no_tok, model_type="bert")
    assert "BertWordPieceLowerCase" in err and "--vocab-file" in err and "GPT2" not in err


def test_tensorboard_dir_without_the_package_warns_and_trains_on(tmp_path, monkeypatch, caplog):
    from megatron.training.config import LoggingConfig

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    caplog.set_level(logging.WARNING)
    sink = build_sinks(LoggingConfig(tensorboard_dir=str(tmp_path / "tb")), 0, {})
    sink.scalar("lm loss", 1.0, 1)
    assert "pip install tensorboard" in caplog.text and "training without" in caplog.text


def test_timers_write_megatron_names_per_iteration():
    class Sink:
        def __init__(self):
            self.values = {}

        def scalar(self, name, value, step):
            self.values[name] = (value, step)

    timers, sink = StepTimers(), Sink()
    with timers("forward-backward"):
        pass
    items = list(timers.iterate("batch-generator", iter([1, 2, 3])))
    assert items == [1, 2, 3]
    timers.write(sink, 10, iterations=2)
    assert set(sink.values) == {"forward-backward-time", "batch-generator-time"}
    assert all(step == 10 and value >= 0 for value, step in sink.values.values())
    timers.write(sink, 11, iterations=1)  # reset after writing: nothing new
    assert all(step == 10 for _, step in sink.values.values())
    assert p2p_timer_name(True, False, False, False) == "forward-send"
    assert p2p_timer_name(False, False, True, False) == "forward-recv"
    assert p2p_timer_name(True, False, False, True) == "forward-send-backward-recv"
    assert p2p_timer_name(False, True, True, False) == "backward-send-forward-recv"
    assert p2p_timer_name(True, True, True, True) == "forward-backward-send-forward-backward-recv"


def test_the_curriculum_learning_launchers_parse(tmp_path, tokenizer_dir):
    """examples_deepspeed/curriculum_learning/ds_pretrain_gpt_1.3B_rope_slw.sh and
    ds_pretrain_gpt2.sh (sizes scaled; mp_size=1 pp_size=1 no_pp=true) with the scripts'
    ds_config_gpt_slw_TEMPLATE.json substituted."""
    cfg = {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 8,
        "steps_per_print": 10,
        "zero_optimization": {"stage": 1},
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "fp16": dict(FP16, loss_scale_window=500),
        "wall_clock_breakdown": False,
        "curriculum_learning": {
            "enabled": True,
            "curriculum_type": "seqlen",
            "min_difficulty": 8,
            "max_difficulty": 64,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
        },
    }
    path = ds_json(tmp_path, **cfg)
    vocab, merges = str(tokenizer_dir / "gpt2-vocab.json"), str(tokenizer_dir / "gpt2-merges.txt")
    rope_slw = [
        "--override-opt_param-scheduler", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
        "--tensor-model-parallel-size", "1", "--init-method-std", "0.013",
        "--lr-decay-tokens", "100000", "--lr-warmup-tokens", "3000", "--micro-batch-size", "8",
        "--exit-duration-in-mins", "30000000", "--global-batch-size", "8", "--num-layers", "2",
        "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "64",
        "--max-position-embeddings", "64", "--train-tokens", "100000", "--train-samples", "3000",
        "--lr", "2.0e-4", "--min-lr", "1.0e-6", "--lr-decay-style", "cosine",
        "--split", "949,50,1", "--log-interval", "10", "--eval-interval", "100",
        "--eval-iters", "10", "--save-interval", "100", "--weight-decay", "0.1",
        "--clip-grad", "1.0", "--hysteresis", "2", "--num-workers", "0", "--fp16",
        "--seed", "1234", "--load", str(tmp_path / "ck"), "--save", str(tmp_path / "ck"),
        "--no-async-tensor-model-parallel-allreduce", "--use-rotary-position-embeddings",
        "--rotary-percent", "0.25", "--tensorboard-queue-size", "1",
        "--log-timers-to-tensorboard", "--log-batch-size-to-tensorboard",
        "--log-validation-ppl-to-tensorboard", "--tensorboard-dir", str(tmp_path / "tb"),
        "--checkpoint-activations", "--log-optimizer-states-to-tensorboard",
        "--vocab-file", vocab, "--merge-file", merges, "--data-path", str(tmp_path / "pile"),
        "--data-impl", "mmap", "--deepspeed", "--deepspeed_config", path, "--zero-stage", "1",
        "--pipeline-model-parallel-size", "1", "--no-pipeline-parallel",
        "--deepspeed-activation-checkpointing",
    ]  # fmt: skip
    run = parse_args(rope_slw, world_size=1, check_data_files=False)
    assert run.optimizer.use_distributed_optimizer and run.optimizer.fp16
    assert run.optimizer.initial_loss_scale == 2.0**11 and run.transformer.rotary_percent == 0.25
    gpt2 = [a for a in rope_slw if a not in ("--use-rotary-position-embeddings",)]
    i = gpt2.index("--rotary-percent")
    gpt2 = (
        gpt2[:i] + gpt2[i + 2 :] + ["--distributed-backend", "gloo", "--no-masked-softmax-fusion"]
    )
    assert parse_args(gpt2, world_size=1, check_data_files=False).training.log_interval == 10
