"""pretrain_gpt with several processes (DP equivalence) and the exit paths (SIGTERM, duration)."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.distributed.launcher import run_distributed
from tests.integration.test_pretrain_gpt import TINY, run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_DROPOUT = [
    "--hidden-dropout",
    "0",
    "--attention-dropout",
    "0",
    "--train-iters",
    "3",
    "--global-batch-size",
    "8",
]


def _rank_body(rank, world_size, argv):
    import torch

    torch.set_num_threads(1)
    history = []
    run(argv, history)
    return [h["lm loss"] for h in history]


def test_dp2_matches_dp1_losses():
    argv = TINY + NO_DROPOUT
    dp1 = run_distributed(_rank_body, 1, argv, timeout=300)[0]
    dp2 = run_distributed(_rank_body, 2, argv, timeout=300)
    assert dp2[0] == dp2[1]  # every rank logs the DP-averaged loss
    for a, b in zip(dp1, dp2[0]):
        assert a == pytest.approx(b, rel=1e-6)
    assert len(dp1) == 3


def _launch(tmp_path, extra):
    cmd = [sys.executable, os.path.join(REPO_ROOT, "pretrain_gpt.py")] + TINY + extra
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    save = tmp_path / "ckpt"
    proc = _launch(tmp_path, ["--train-iters", "100000", "--save", str(save)])
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if re.match(r"^\s*(\[[^\]]*\]\s*)?iteration\s+\d+/", line):  # [time] iteration N/
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(lines)
    out, _ = proc.communicate(timeout=240)
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert "SIGTERM received" in text
    iteration = int(open(save / "latest_checkpointed_iteration.txt").read())
    assert iteration >= 1
    assert (save / f"iter_{iteration:07d}" / "mp_rank_00" / "model_optim_rng.pt").is_file()


def test_exit_duration_saves_and_stops(tmp_path):
    save = tmp_path / "ckpt"
    history = []
    st = run(
        TINY + ["--train-iters", "1000", "--exit-duration-in-mins", "0.00001", "--save", str(save)],
        history,
    )
    assert st.iteration == 1 and len(history) == 1
    assert open(save / "latest_checkpointed_iteration.txt").read().strip() == "1"


def _nan_on_rank_0_body(rank, world_size, argv):
    """Rank 0 alone poisons a weight: every rank must stop at the same iteration (none may hang
    in a collective the others skipped)."""
    import torch

    import pretrain_gpt
    from megatron.training.training import NonFiniteTrainingError, pretrain

    torch.set_num_threads(1)

    def provider(run_cfg, rt, pre, post, vp):
        model = pretrain_gpt.model_provider(run_cfg, rt, pre, post, vp)

        def poison(module, args):  # once, before any graph holds the weight (1F1B overlaps)
            weight = module.decoder.layers[0].mlp.linear_fc1.weight
            if not torch.isnan(weight).any():
                with torch.no_grad():
                    weight[0, 0] = float("nan")

        if rank == 0:
            model.register_forward_pre_hook(poison)
        return model

    try:
        pretrain(pretrain_gpt.datasets_provider, provider, pretrain_gpt.forward_step, argv=argv)
    except NonFiniteTrainingError as exc:
        return str(exc).split(";")[0]
    return "trained on"


@pytest.mark.parametrize(
    "layout", [[], ["--pipeline-model-parallel-size", "2"], ["--tensor-model-parallel-size", "2"]]
)
def test_a_nan_on_one_rank_stops_every_rank_at_the_same_iteration(tmp_path, layout):
    argv = TINY + NO_DROPOUT + layout + ["--save", str(tmp_path), "--save-interval", "1"]
    assert (
        run_distributed(_nan_on_rank_0_body, 2, argv, timeout=300)
        == ["iteration 1: lm loss is nan"] * 2
    )
    assert os.listdir(tmp_path) == []  # nothing was saved
