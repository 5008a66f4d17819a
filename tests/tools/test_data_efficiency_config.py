"""tools/data_efficiency_config.py: generated JSON equals hand-written DeepSpeed configs, parses
with the training parser, is written atomically, and bad flags fail with the flag and the fix."""

import json
import os
import subprocess
import sys

import pytest

from megatron.core.curriculum.pacing import curriculum_difficulties
from megatron.core.deepspeed_config import load_deepspeed_config
from tools.data_efficiency_config import main as tool_main

VOC = "analysis/vocab_rarity/vocab_rarity"

# The GPT-3 1.3B CL + random-LTD config of the DeepSpeed Data Efficiency paper, written by hand
# in Megatron-DeepSpeed's layout.
PAPER_GPT_CL_LTD = {
    "train_batch_size": 512,
    "train_micro_batch_size_per_gpu": 4,
    "gradient_clipping": 1.0,
    "fp16": {
        "enabled": True,
        "loss_scale": 0,
        "loss_scale_window": 500,
        "hysteresis": 2,
        "min_loss_scale": 1,
        "initial_scale_power": 11,
    },
    "data_efficiency": {
        "enabled": True,
        "seed": 1234,
        "data_routing": {
            "enabled": True,
            "random_ltd": {
                "enabled": True,
                "total_layer_num": 24,
                "random_ltd_layer_num": 22,
                "random_ltd_layer_id": list(range(1, 23)),
                "model_mask_name": "attention_mask",
                "model_type": "decoder",
                "hidden_state_order": "seq_batch_dim",
                "random_ltd_schedule": {
                    "min_value": 128,
                    "max_value": 2048,
                    "schedule_type": "fixed_linear",
                    "schedule_config": {"require_steps": 200000, "seq_per_step": 16},
                },
            },
        },
        "data_sampling": {
            "enabled": True,
            "num_workers": 0,
            "curriculum_learning": {
                "enabled": True,
                "curriculum_metrics": {
                    "voc": {
                        "index_to_sample_path": VOC + "_index_to_sample_percentile_merged",
                        "index_to_metric_path": VOC + "_index_to_metric",
                        "difficulty_type": "percentile",
                        "clustering_type": "schedule_based",
                        "min_difficulty": 1,
                        "max_difficulty": 100,
                        "schedule_type": "fixed_root",
                        "schedule_config": {
                            "total_curriculum_step": 110000,
                            "difficulty_step": 1,
                            "root_degree": 2,
                        },
                    },
                    "seqlen_truncate": {
                        "difficulty_type": "value",
                        "clustering_type": "single_cluster",
                        "min_difficulty": 80,
                        "max_difficulty": 2048,
                        "schedule_type": "fixed_linear",
                        "schedule_config": {"total_curriculum_step": 110000, "difficulty_step": 8},
                    },
                },
            },
        },
    },
}

BASE = ["--global-batch-size", "512", "--micro-batch-size", "4", "--seed", "1234"]
VOC_METRIC = [
    "--cl-metric",
    "voc",
    "type=percentile",
    "clustering=schedule_based",
    "min=1",
    "max=100",
    "schedule=fixed_root",
    "total_steps=110000",
    "step=1",
    "root=2",
    f"index_to_sample={VOC}_index_to_sample_percentile_merged",
    f"index_to_metric={VOC}_index_to_metric",
]
LTD = [
    "--num-layers",
    "24",
    "--seq-length",
    "2048",
    "--random-ltd-min",
    "128",
    "--random-ltd-require-steps",
    "200000",
    "--random-ltd-seq-per-step",
    "16",
]


def run_tool(tmp_path, *flags):
    out = tmp_path / "ds_config.json"
    cfg = tool_main(["--output", str(out), *flags])
    assert json.loads(out.read_text()) == cfg
    return cfg, out


def test_paper_gpt_cl_ltd_equals_hand_written(tmp_path, capsys):
    cfg, out = run_tool(
        tmp_path,
        *BASE,
        "--fp16",
        *VOC_METRIC,
        "--seqlen-truncate",
        "80",
        "2048",
        "110000",
        "8",
        *LTD,
    )
    assert cfg == PAPER_GPT_CL_LTD
    assert f"wrote {out}" in capsys.readouterr().out
    parsed = load_deepspeed_config(str(out))
    de = parsed.data_efficiency
    assert de.random_ltd.enabled and de.random_ltd.random_ltd_layer_id == list(range(1, 23))
    # the data-efficiency paper's checked fixed_root values at steps 1, 1000, 10000, 27500
    steps = {
        s: curriculum_difficulties(de.curriculum_learning, s)["voc"]
        for s in (1, 1000, 10000, 27500)
    }
    assert steps == {1: 1, 1000: 10, 10000: 30, 27500: 50}
    assert parsed.ignored["train_batch_size"] == 512


def test_json_key_names_and_short_keys_give_the_same_metric(tmp_path):
    short, _ = run_tool(tmp_path, *BASE, *VOC_METRIC)
    long_names = [
        "--cl-metric",
        "voc",
        "difficulty_type=percentile",
        "clustering_type=schedule_based",
        "min_difficulty=1",
        "max_difficulty=100",
        "schedule_type=fixed_root",
        "total_curriculum_step=1.1e5",
        "difficulty_step=1",
        "root_degree=2",
        f"index_to_sample_path={VOC}_index_to_sample_percentile_merged",
        f"index_to_metric_path={VOC}_index_to_metric",
    ]
    full, _ = run_tool(tmp_path, *BASE, *long_names)
    assert short == full


def test_bert_encoder_layers_discrete_schedule_and_layer_token_lr(tmp_path):
    cfg, _ = run_tool(
        tmp_path,
        "--global-batch-size",
        "1024",
        "--micro-batch-size",
        "16",
        "--bf16",
        "--cl-metric",
        "seqlen",
        "min=128",
        "max=512",
        "schedule=fixed_discrete",
        "difficulty=128,256,512",
        "max_step=1000,2000",
        "--seqlen-reshape",
        "64",
        "512",
        "1000",
        "8",
        "--num-layers",
        "24",
        "--random-ltd-layers",
        "2,4,10-12",
        "--random-ltd-min",
        "128",
        "--random-ltd-max",
        "512",
        "--random-ltd-require-steps",
        "1000",
        "--random-ltd-model-type",
        "encoder",
        "--layer-token-lr-total-layer-tokens",
        "1000000",
        "--layer-token-lr-warmup-layer-tokens",
        "10",
    )
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    ltd = cfg["data_efficiency"]["data_routing"]["random_ltd"]
    assert ltd["random_ltd_layer_id"] == [2, 4, 10, 11, 12] and ltd["random_ltd_layer_num"] == 5
    assert ltd["model_type"] == "encoder"
    assert ltd["layer_token_lr_schedule"] == {
        "enabled": True,
        "total_layer_tokens": 1000000,
        "warmup_type": "linear",
        "warmup_layer_tokens": 10,
    }
    metrics = cfg["data_efficiency"]["data_sampling"]["curriculum_learning"]["curriculum_metrics"]
    assert metrics["seqlen"]["schedule_config"] == {
        "difficulty": [128, 256, 512],
        "max_step": [1000, 2000],
    }
    assert metrics["seqlen_reshape"]["min_difficulty"] == 64
    assert list(metrics) == ["seqlen", "seqlen_reshape"]


def test_baseline_config_has_data_efficiency_off(tmp_path):
    cfg, out = run_tool(tmp_path, *BASE)
    assert cfg["data_efficiency"] == {"enabled": False, "seed": 1234}
    parsed = load_deepspeed_config(str(out))
    assert not parsed.data_efficiency.curriculum_learning.enabled
    assert not parsed.data_efficiency.random_ltd.enabled


def test_shipped_tiny_config_is_what_the_tool_writes(tmp_path, repo_root):
    """examples/data_efficiency/ds_config_gpt_tiny_cl_ltd.json is generated by this command
    (quoted in examples/data_efficiency/README.md); a hand edit shows up here."""
    shipped = repo_root / "examples" / "data_efficiency" / "ds_config_gpt_tiny_cl_ltd.json"
    _, out = run_tool(
        tmp_path,
        "--global-batch-size",
        "32",
        "--micro-batch-size",
        "8",
        "--seed",
        "1234",
        "--cl-metric",
        "vocab_rarity",
        "type=percentile",
        "min=1",
        "max=100",
        "schedule=fixed_root",
        "total_steps=100",
        "root=2",
        "index_to_sample=vocab_rarity/vocab_rarity_index_to_sample_percentile_merged",
        "index_to_metric=vocab_rarity/vocab_rarity_index_to_metric",
        "--seqlen-truncate",
        "32",
        "128",
        "100",
        "8",
        "--num-layers",
        "4",
        "--seq-length",
        "128",
        "--random-ltd-min",
        "32",
        "--random-ltd-require-steps",
        "100",
    )
    assert out.read_text() == shipped.read_text()


BAD = [
    (
        ["--cl-metric", "voc", "typ=percentile", "min=1", "max=100"],
        "unknown key 'typ'; did you mean 'type'",
    ),
    (["--cl-metric", "type=percentile"], "needs the metric name first"),
    (["--cl-metric", "voc", "min=1"], "max=... is required"),
    (["--cl-metric", "voc", "min=1", "max=100", "min=2"], "min is given twice"),
    (["--cl-metric", "voc", "min=1", "max=x"], "expected a number, got 'x'"),
    (["--cl-metric", "voc", "min=1", "max=100", "schedule=fixed_rot"], "did you mean 'fixed_root'"),
    (
        ["--cl-metric", "voc", "min=1", "max=100", "schedule=fixed_root", "total_steps=10"],
        "root_degree is required for schedule_type fixed_root",
    ),
    (
        ["--cl-metric", "voc", "type=percentile", "min=1", "max=200", "total_steps=10"],
        "percentile difficulties must lie in [0, 100]",
    ),
    (
        ["--seqlen-truncate", "80", "4096", "100", "8", "--seq-length", "2048"],
        "MAX 4096 exceeds --seq-length 2048",
    ),
    (["--random-ltd-require-steps", "10"], "--random-ltd-require-steps needs --random-ltd-min"),
    (
        ["--random-ltd-min", "128", "--random-ltd-require-steps", "10", "--seq-length", "256"],
        "random-LTD needs --num-layers",
    ),
    (
        [
            "--num-layers",
            "4",
            "--random-ltd-min",
            "8",
            "--random-ltd-max",
            "64",
            "--random-ltd-require-steps",
            "10",
        ],
        "min_value 8 is below seq_per_step 16",
    ),
    (
        [
            "--num-layers",
            "4",
            "--random-ltd-layers",
            "1-5",
            "--random-ltd-min",
            "16",
            "--random-ltd-max",
            "64",
            "--random-ltd-require-steps",
            "10",
        ],
        "ids must be distinct and in [0, 4)",
    ),
    (
        [
            "--num-layers",
            "4",
            "--seq-length",
            "64",
            "--random-ltd-min",
            "64",
            "--random-ltd-require-steps",
            "10",
        ],
        "min_value 64 is not below --seq-length 64",
    ),
    (["--fp16", "--initial-loss-scale", "3000"], "must be a power of 2"),
    (["--fp16", "--bf16"], "exclude each other"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_flags_fail_with_a_clear_message_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "ds_config.json"
    with pytest.raises(SystemExit) as exc:
        tool_main(["--output", str(out), *BASE, *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_batch_sizes_must_divide(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tool_main(
            [
                "--output",
                str(tmp_path / "x.json"),
                "--global-batch-size",
                "10",
                "--micro-batch-size",
                "4",
            ]
        )
    assert "not a multiple of --micro-batch-size 4" in capsys.readouterr().err


def test_overwrite_is_atomic_and_the_script_runs_standalone(tmp_path, repo_root):
    out = tmp_path / "sub" / "ds.json"
    cmd = [
        sys.executable,
        str(repo_root / "tools" / "data_efficiency_config.py"),
        "--output",
        str(out),
        *BASE,
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert first.stdout.strip() == f"wrote {out} (data efficiency off)"
    bad = subprocess.run(cmd + ["--cl-metric", "voc"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "min=... is required" in bad.stderr
    # the failed run left the earlier file intact and no temporary files behind
    assert json.loads(out.read_text())["train_batch_size"] == 512
    assert os.listdir(out.parent) == ["ds.json"]
