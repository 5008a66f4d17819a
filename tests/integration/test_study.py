"""tools/data_efficiency_study.py end to end at toy size: the whole grid (4 variants x 3 shares)
trains, the report lists every run with finite losses and savings that follow from the curves
in the runs' own metric files, a rerun redoes nothing, changed options are refused, and
tools/plot_runs.py draws the figures from the runs' JSON lines and from a text log."""

import json
import math
import pathlib
import re

import pytest

from megatron.training.study.grid import StudyConfig, grid
from tools import data_efficiency_study, plot_runs

pytestmark = pytest.mark.slow

ARGS = ["--model", "gpt-toy", "--baseline-iters", "24", "--eval-points", "4", "--in-process"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import torch

    from tools.austen_to_jsonl import write_jsonl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest and steadiest
    d = tmp_path_factory.mktemp("study")
    write_jsonl(str(d / "austen.jsonl"))
    (d / "small.jsonl").write_text("".join(open(d / "austen.jsonl").readlines()[:16]))
    out = d / "out"
    argv = ["--output", str(out), "--data", str(d / "small.jsonl"), *ARGS]
    try:
        assert data_efficiency_study.main(argv) == 0
        yield out, argv
    finally:
        torch.set_num_threads(threads)


def _curve(run_dir: pathlib.Path):
    """(tokens, held-out loss) at every evaluation, read straight from metrics.jsonl."""
    last = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        last[(row["name"], row["step"])] = row["value"]
    losses = {
        s: v
        for (n, s), v in last.items()
        if n.startswith("lm loss validation") and " vs " not in n and not n.endswith("ppl")
    }
    return [(last[("consumed-tokens", s)], losses[s]) for s in sorted(losses)]


def _first_reach(curve, target):
    for (t0, l0), (t1, l1) in zip([curve[0]] + curve, curve):
        if l1 <= target:
            return t1 if l0 == l1 or l0 <= target else t0 + (l0 - target) / (l0 - l1) * (t1 - t0)
    return None


def test_every_run_is_reported_with_savings_from_its_curve(study):
    out, _ = study
    report = json.loads((out / "report.json").read_text())
    names = {s.name for s in grid(StudyConfig(model="gpt-toy"))}
    assert {r["run"] for r in report["runs"]} == names
    base = _curve(out / "runs" / "baseline_100pct_seed1234")
    target = base[-1][1]
    base_reach = _first_reach(base, target)
    for r in report["runs"]:
        curve = _curve(out / "runs" / r["run"])
        assert all(math.isfinite(loss) for _, loss in curve) and len(curve) >= 2
        assert r["final"]["loss"] == pytest.approx(curve[-1][1])
        assert r["target"] == pytest.approx(target)
        reached = _first_reach(curve, target)
        if reached is None:
            assert r["savings"]["tokens"] is None
        else:
            assert r["savings"]["tokens"] == pytest.approx(1 - reached / base_reach)
        # the budget is spent: tokens reach the share of the budget within one step
        budget = 24 * 8 * 64 * r["percent"] / 100
        assert budget <= r["final"]["tokens"] < budget + 8 * 64
    text = (out / "report.md").read_text()
    assert "| baseline | 100% |" in text and "| cl_ltd | 50% |" in text
    for fig in ("heldout_loss_vs_tokens", "heldout_loss_vs_flops", "schedules"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"


def test_flop_counter_is_below_the_full_length_count_with_the_techniques(study):
    """cl_ltd runs count fewer FLOPs per step than full-length steps of the same batch."""
    out, _ = study
    report = {r["run"]: r for r in json.loads((out / "report.json").read_text())["runs"]}
    base = report["baseline_100pct_seed1234"]["final"]
    per_step = base["flops"] / base["step"]
    for name in ("cl_100pct_seed1234", "cl_ltd_100pct_seed1234"):
        run = report[name]["final"]
        assert run["flops"] / run["step"] < per_step


def test_rerun_redoes_nothing_and_changed_options_are_refused(study, caplog):
    out, argv = study
    before = (out / "runs" / "cl_50pct_seed1234" / "metrics.jsonl").read_text()
    caplog.set_level("INFO")
    assert data_efficiency_study.main(argv) == 0
    assert (out / "runs" / "cl_50pct_seed1234" / "metrics.jsonl").read_text() == before
    assert caplog.text.count(": skipped") == 12
    changed = [a if a != "4" else "3" for a in argv]  # --eval-points 3
    assert data_efficiency_study.main(changed) == 1
    assert "was started with another command" in caplog.text


def test_an_interrupted_run_resumes_to_its_budget(study):
    """A run without its status file (killed after its last save) resumes from its checkpoint:
    it loads it, trains no step again and is marked done."""
    out, argv = study
    run = out / "runs" / "ltd_67pct_seed1234"
    (run / "status.json").unlink()
    assert data_efficiency_study.main([*argv, "--only", "ltd_67pct_seed1234"]) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    second = (run / "train.log").read_text().split("$ pretrain_gpt.py")[-1]
    assert "loaded checkpoint" in second
    assert re.search(r"^ (\[[^\]]*\] )?iteration +\d+/", second, re.M) is None  # none again


def test_plot_runs_from_json_lines_and_from_a_text_log(study, tmp_path):
    out, _ = study
    runs = [str(p) for p in sorted((out / "runs").iterdir())]
    assert plot_runs.main(["--output", str(tmp_path / "a"), *runs]) == 0
    assert (tmp_path / "a" / "heldout_loss_vs_seconds.png").exists()
    log = out / "runs" / "cl_100pct_seed1234" / "train.log"
    assert plot_runs.main(["--output", str(tmp_path / "b"), f"cl={log}"]) == 0
    written = {p.name for p in (tmp_path / "b").iterdir()}
    assert "heldout_loss_vs_tokens.png" in written and "schedules.png" in written
    assert "heldout_loss_vs_flops.png" not in written  # text logs carry no FLOP count
