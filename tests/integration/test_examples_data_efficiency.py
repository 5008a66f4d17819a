"""examples/data_efficiency/: every launcher is valid bash; the paper launchers write the table's
JSON and a command line the training parser accepts; the tiny Austen launchers really train with
a rising curriculum and rising random-LTD kept tokens."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from megatron.core.deepspeed_config import load_deepspeed_config
from megatron.training.arguments import parse_args
from megatron.training.budget import StepAccounting, schedule_spans

EXAMPLES = "examples/data_efficiency"
PAPER = {  # model -> (launcher, training script, {percent: (lr, CL steps, LTD steps)})
    "gpt": (
        "gpt_1.3b.sh",
        "pretrain_gpt.py",
        {100: (2e-4, 110000, 200000), 67: (3e-4, 73000, 133000), 50: (4e-4, 55000, 100000)},
    ),
    "bert": (
        "bert_large.sh",
        "pretrain_bert.py",
        {100: (1e-4, 960000, 2000000), 67: (1.5e-4, 640000, 1340000), 50: (2e-4, 480000, 1000000)},
    ),
}


def launchers(repo_root):
    return sorted(p.name for p in (repo_root / EXAMPLES).glob("*.sh"))


def test_every_launcher_is_valid_bash(repo_root):
    names = launchers(repo_root)
    assert {
        "gpt_1.3b.sh",
        "bert_large.sh",
        "analyze_data.sh",
        "austen_gpt_cl_ltd.sh",
        "austen_bert_cl_ltd.sh",
        "austen_prepare.sh",
    } <= set(names)
    for name in names:
        res = subprocess.run(
            ["bash", "-n", str(repo_root / EXAMPLES / name)], capture_output=True, text=True
        )
        assert res.returncode == 0, f"{name}: {res.stderr}"


def dry_run(repo_root, tmp_path, tokenizer_dir, model, **env):
    launcher = PAPER[model][0]
    tok = (
        {
            "VOCAB_FILE": str(tokenizer_dir / "gpt2-vocab.json"),
            "MERGE_FILE": str(tokenizer_dir / "gpt2-merges.txt"),
        }
        if model == "gpt"
        else {"VOCAB_FILE": str(tokenizer_dir / "bert-base-uncased-vocab.txt")}
    )
    full_env = {
        **os.environ,
        "DRY_RUN": "1",
        "DATA_PATH": str(tmp_path / "corpus"),
        "OUT": str(tmp_path / "out"),
        "ANALYSIS": str(tmp_path / "analysis"),
        "NPROC_PER_NODE": "8",
        "NNODES": "4",
        "PYTHON": sys.executable,
        **tok,
        **env,
    }
    res = subprocess.run(
        ["bash", str(repo_root / EXAMPLES / launcher)],
        env=full_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    return shlex.split(res.stdout.strip().splitlines()[-1])


def _metrics(cfg):
    sampling = cfg["data_efficiency"].get("data_sampling")
    return sampling["curriculum_learning"]["curriculum_metrics"] if sampling else {}


@pytest.mark.parametrize("model", ["gpt", "bert"])
@pytest.mark.parametrize("run", ["baseline", "cl", "ltd", "cl_ltd"])
def test_paper_launcher_writes_the_table_config_and_a_valid_command(
    repo_root, tmp_path, tokenizer_dir, model, run
):
    percent = 50 if run != "cl_ltd" else 67
    lr, cl_steps, ltd_steps = PAPER[model][2][percent]
    argv = dry_run(repo_root, tmp_path, tokenizer_dir, model, RUN=run, DATA_PERCENT=str(percent))
    cfg_path = tmp_path / "out" / "ds_config.json"
    cfg = json.loads(cfg_path.read_text())
    load_deepspeed_config(str(cfg_path))
    metrics, de = _metrics(cfg), cfg["data_efficiency"]
    assert cfg["fp16"]["initial_scale_power"] == 11 and cfg["fp16"]["loss_scale_window"] == 500
    assert ("voc" in metrics) == ("seqlen_truncate" in metrics) == ("cl" in run)
    assert ("data_routing" in de) == ("ltd" in run)
    if "cl" in run:
        voc = metrics["voc"]
        assert voc["min_difficulty"] == (1 if model == "gpt" else 5)
        assert voc["schedule_config"] == {
            "total_curriculum_step": cl_steps,
            "difficulty_step": 1,
            "root_degree": 2,
        }
        assert voc["index_to_sample_path"].startswith(str(tmp_path / "analysis"))
        seqlen = metrics["seqlen_truncate"]
        assert (seqlen["min_difficulty"], seqlen["max_difficulty"]) == (
            (80, 2048) if model == "gpt" else (128, 512)
        )
    if "ltd" in run:
        ltd = de["data_routing"]["random_ltd"]
        assert ltd["random_ltd_layer_id"] == list(range(1, 23))
        assert ltd["model_type"] == ("decoder" if model == "gpt" else "encoder")
        assert ltd["random_ltd_schedule"]["min_value"] == 128
        assert ltd["random_ltd_schedule"]["schedule_config"]["require_steps"] == ltd_steps
    # the training command is what pretrain would accept on 32 processes
    script = PAPER[model][1]
    flags = argv[argv.index(script) + 1 :]
    parsed = parse_args(flags, world_size=32, check_data_files=False, model_type=model)  # dry run
    t = parsed.training
    assert parsed.optimizer.lr == pytest.approx(lr)
    assert parsed.data_efficiency.deepspeed_config == str(cfg_path)
    assert parsed.data_efficiency.random_ltd == ("ltd" in run)
    assert parsed.data_efficiency.data_efficiency_curriculum_learning == ("cl" in run)
    spans = schedule_spans(parsed, StepAccounting.from_run(parsed, model))
    assert spans["decay_tokens"] == t.train_tokens


def test_analysis_launcher_uses_the_training_data_flags(repo_root, tmp_path, tokenizer_dir):
    train = dry_run(repo_root, tmp_path, tokenizer_dir, "gpt", RUN="cl")
    analyze = dry_run(repo_root, tmp_path, tokenizer_dir, "gpt", STAGE="analyze")
    assert "tools/analyze_data.py" in analyze and "torch.distributed.run" in analyze
    for flag in (
        "--data-path",
        "--split",
        "--seq-length",
        "--seed",
        "--train-samples",
        "--data-cache-path",
    ):
        assert analyze[analyze.index(flag) + 1] == train[train.index(flag) + 1], flag


def _curve(log, key):
    return [int(v) for v in re.findall(rf"\| {re.escape(key)}: (\d+) \|", log)]


def _run_austen(repo_root, tmp_path, launcher, iters):
    env = {
        **os.environ,
        "WORK": str(tmp_path / "work"),
        "DATA": str(tmp_path / "data"),
        "ITERS": str(iters),
        "NPROC": "1",
        "LOG_INTERVAL": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
    }
    res = subprocess.run(
        ["bash", str(repo_root / EXAMPLES / launcher)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    return log


def _check_rising(log, iters, seq, metric_min, kept_last):
    """Every iteration line shows the three schedules, each rising from its start to its end."""
    seqlen = _curve(log, "curriculum seqlen")
    difficulty = _curve(log, "difficulty vocab_rarity")
    kept = _curve(log, "random-LTD kept tokens")
    assert len(seqlen) == len(difficulty) == len(kept) == iters
    for curve, first, last in (
        (seqlen, 32, seq),
        (difficulty, metric_min, 100),
        (kept, 32, kept_last),
    ):
        assert curve == sorted(curve) and first <= curve[0] < curve[-1] == last, curve
    assert all(k <= s for k, s in zip(kept, seqlen))


@pytest.mark.slow
def test_austen_gpt_launcher_trains_with_rising_curriculum_and_kept_tokens(repo_root, tmp_path):
    iters = 12
    log = _run_austen(repo_root, tmp_path, "austen_gpt_cl_ltd.sh", iters)
    assert "wrote " in log and "reduced vocab_rarity" in log
    _check_rising(log, iters, 128, 1, kept_last=128)  # K reaches S at 60% of the run
    losses = [float(v) for v in re.findall(r"\| lm loss: ([0-9.E+-]+) \|", log)]
    assert losses[-1] < losses[0]
    assert (tmp_path / "work" / "checkpoints" / "latest_checkpointed_iteration.txt").exists()
    heldout = json.loads((tmp_path / "work" / "heldout.json").read_text())  # the eval stage
    assert heldout["iteration"] == iters and 0 < heldout["loss"] < 12 and heldout["bits_per_byte"]


@pytest.mark.slow
def test_austen_bert_launcher_trains_with_rising_curriculum_and_kept_tokens(repo_root, tmp_path):
    iters = 8
    log = _run_austen(repo_root, tmp_path, "austen_bert_cl_ltd.sh", iters)
    # K ramps over the whole run (the paper's BERT): 32 + 96 * 7 / 8 = 116, rounded down to 112
    _check_rising(log, iters, 128, 5, kept_last=112)


def test_zero_shot_eval_runs_the_papers_tasks_through_megatron_de(repo_root, tmp_path):
    """The launchers' eval stage: lm_eval's `megatron_de` model on the paper's 19 zero-shot tasks
    (plus wikitext) and the shipped local tasks; LOCAL_ONLY=1 keeps to the offline ones."""
    script = str(repo_root / EXAMPLES / "eval_zero_shot.sh")
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, DEVICE="cpu")

    def tasks(**extra):
        res = subprocess.run(["bash", script, str(tmp_path / "ckpt")], capture_output=True,
                             text=True, env=dict(env, **extra))  # fmt: skip
        assert res.returncode == 0, res.stderr
        argv = shlex.split(res.stdout)
        assert argv[argv.index("--model") + 1] == "megatron_de"
        assert argv[argv.index("--model_args") + 1] == f"load={tmp_path / 'ckpt'}"
        return argv[argv.index("--tasks") + 1].split(",")

    paper = {"record", "triviaqa", "hellaswag", "arc_challenge", "arc_easy", "race", "multirc",
             "openbookqa", "lambada_openai", "webqs", "winogrande", "piqa", "anli_r1",
             "anli_r2", "anli_r3", "boolq", "copa", "rte", "wsc"}  # fmt: skip
    assert len(paper) == 19 and paper | {"wikitext", "lambada_austen", "austen_ppl"} == set(tasks())
    assert tasks(LOCAL_ONLY="1") == ["lambada_austen", "austen_ppl"]
    for task in ("lambada_austen", "austen_ppl"):
        assert (repo_root / "megatron" / "evaluation" / "tasks" / f"{task}.yaml").is_file()
    for launcher in ("gpt_1.3b.sh", "austen_gpt_cl_ltd.sh"):
        assert "eval_zero_shot.sh" in (repo_root / EXAMPLES / launcher).read_text()
