"""The data-efficiency study's parts: the grid's scaled schedules, FLOP counting, the savings at
equal quality, and the readers of run logs (JSON lines, text logs, TensorBoard)."""

import dataclasses
import json
import math

import pytest

from megatron.core.transformer.config import TransformerConfig
from megatron.training.metrics import JsonlSink, flops_per_token, format_iteration_line, step_flops
from megatron.training.study.grid import RunSpec, StudyConfig, ds_config_argv, grid
from megatron.training.study.report import markdown_table, reach, results
from megatron.training.study.runlog import FINAL, VALIDATION, EvalPoint, RunLog, load_run


def _value(argv, flag, n=1):
    i = argv.index(flag)
    return argv[i + 1 : i + 1 + n]


def _kv(argv, key):
    return next(a.split("=", 1)[1] for a in argv if a.startswith(key + "="))


# ---- the grid ------------------------------------------------------------------------------
def test_grid_has_every_variant_share_and_seed_once():
    cfg = StudyConfig(model="gpt-toy", seeds=[1, 2])
    names = [s.name for s in grid(cfg)]
    assert len(names) == len(set(names)) == 4 * 3 * 2
    assert names[0] == "baseline_100pct_seed1" and names[-1] == "cl_ltd_50pct_seed2"


@pytest.mark.parametrize(
    "percent,lr,cl_steps,ltd_steps", [(100, 2e-4, 110000, 200000), (67, 3e-4, 73700, 134000),
                                      (50, 4e-4, 55000, 100000)]
)  # fmt: skip
def test_gpt3_paper_schedules_come_out_of_the_fractions(percent, lr, cl_steps, ltd_steps):
    """At the paper's GPT-3 1.3B size and 300B tokens the scaled fractions give the paper's
    step counts (67%: the paper rounded 200B/300B of 110k to 73k, the fraction gives 73.7k)."""
    cfg = StudyConfig(model="gpt3-1.3b", train_tokens=300_000_000_000)
    assert cfg.lr(percent) == pytest.approx(lr)
    argv = ds_config_argv(cfg, RunSpec("cl_ltd", percent, 1234), "an", "out.json")
    assert int(_kv(argv, "total_steps")) == pytest.approx(cl_steps, rel=0.002)
    assert int(_value(argv, "--random-ltd-require-steps")[0]) == pytest.approx(ltd_steps, rel=2e-3)
    assert _value(argv, "--seqlen-truncate", 4)[:2] == ["80", "2048"]
    assert _value(argv, "--random-ltd-min") == ["128"]
    assert _kv(argv, "min") == "1" and _kv(argv, "root") == "2"


def test_bert_large_paper_schedules():
    # the paper's 2M iterations of 1024 x 512 tokens
    cfg = StudyConfig(model="bert-large", train_tokens=2_000_000 * 1024 * 512)
    argv = ds_config_argv(cfg, RunSpec("cl_ltd", 100, 1), "an", "out.json")
    assert int(_kv(argv, "total_steps")) == 960000
    assert _value(argv, "--random-ltd-require-steps") == ["2000000"]
    assert _value(argv, "--seqlen-truncate", 2) == ["128", "512"]
    assert _value(argv, "--random-ltd-min") == ["128"] and "encoder" in argv
    assert cfg.lr(50) == pytest.approx(2e-4)


def test_baseline_and_single_technique_runs_get_only_their_settings():
    cfg = StudyConfig(model="gpt-toy")
    cl = ds_config_argv(cfg, RunSpec("cl", 100, 1), "an", "o.json")
    ltd = ds_config_argv(cfg, RunSpec("ltd", 100, 1), "an", "o.json")
    assert "--cl-metric" in cl and "--random-ltd-min" not in cl
    assert "--random-ltd-min" in ltd and "--cl-metric" not in ltd


@pytest.mark.parametrize(
    "kwargs,match",
    [({"model": "gpt-9b"}, "--model"), ({"variants": ["curriculum"]}, "--variants"),
     ({"percents": [0]}, "--percents"), ({"lr_scaling": "sqrt"}, "--lr-scaling")],
)  # fmt: skip
def test_bad_study_options_name_the_flag(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**kwargs)


# ---- FLOPs ---------------------------------------------------------------------------------
CFG = TransformerConfig(num_layers=6, hidden_size=64, num_attention_heads=4)


@pytest.mark.parametrize("causal", [True, False])
def test_step_flops_without_dropping_is_flops_per_token_times_tokens(causal):
    full = step_flops(CFG, 1000, causal, rows=8, length=128)
    assert full == pytest.approx(flops_per_token(CFG, 128, 1000, causal) * 8 * 128)
    assert step_flops(CFG, 1000, causal, 8, 128, keep=128, dropping_layers=4) == pytest.approx(full)


def test_step_flops_counts_the_kept_tokens_in_the_dropping_layers():
    s, k, n, rows, vocab = 128, 32, 4, 8, 1000
    ltd = step_flops(CFG, vocab, True, rows, s, keep=k, dropping_layers=n)
    one_layer = dataclasses.replace(CFG, num_layers=1)
    layer = lambda length: flops_per_token(one_layer, length, 0)  # noqa: E731 (no logits)
    expected = rows * ((6 - n) * s * layer(s) + n * k * layer(k) + 3 * s * 2 * 64 * vocab)
    assert ltd == pytest.approx(expected)
    assert ltd < step_flops(CFG, vocab, True, rows, s)


# ---- savings at equal quality --------------------------------------------------------------
def _points(*pairs, secs=1.0):
    return [
        EvalPoint(i + 1, loss, tok, tok * 10.0, tok * secs) for i, (tok, loss) in enumerate(pairs)
    ]


def test_reach_interpolates_between_the_evaluations_around_the_crossing():
    pts = _points((100, 5.0), (200, 4.0), (300, 3.0))
    assert reach(pts, 3.5, "tokens") == pytest.approx(250)
    assert reach(pts, 5.0, "tokens") == pytest.approx(100)
    assert reach(pts, 2.9, "tokens") is None
    assert reach(pts, 3.5, "flops") == pytest.approx(2500)


def _log(name, pts):
    log = RunLog(name)
    for p in pts:
        log.add(VALIDATION, p.step, p.loss)
        log.add("consumed-tokens", p.step, p.tokens)
        log.add("floating-point-operations", p.step, p.flops)
        log.add("train-time-s", p.step, p.seconds)
    return log


def test_savings_are_paired_by_seed_against_the_full_baseline():
    runs = {}
    for seed, shift in ((1, 0.0), (2, 0.1)):
        base = _points((100, 5 + shift), (200, 4 + shift), (300, 3 + shift))
        fast = _points((50, 4 + shift), (100, 3.5 + shift), (150, 2.5 + shift), secs=2.0)
        slow = _points((100, 6 + shift), (150, 5 + shift))
        runs[RunSpec("baseline", 100, seed)] = _log("b", base)
        runs[RunSpec("cl", 50, seed)] = _log("c", fast)
        runs[RunSpec("baseline", 50, seed)] = _log("s", slow)
    res = {(r.spec.variant, r.spec.percent, r.spec.seed): r for r in results(runs)}
    for seed in (1, 2):
        assert res[("baseline", 100, seed)].savings["tokens"] == pytest.approx(0.0)
        # the target (final baseline loss, 3 + shift) is reached half-way from 100 to 150
        assert res[("cl", 50, seed)].reached["tokens"] == pytest.approx(125)
        assert res[("cl", 50, seed)].savings["tokens"] == pytest.approx(1 - 125 / 300)
        assert res[("cl", 50, seed)].savings["seconds"] == pytest.approx(1 - 250 / 300)
        assert res[("baseline", 50, seed)].savings["tokens"] is None
    table = markdown_table(list(res.values()))
    assert "| cl | 50% |" in table and "2/2" in table and "58.3%" in table


# ---- run logs ------------------------------------------------------------------------------
def test_jsonl_sink_rows_are_read_back_keeping_the_last_value_of_a_step(tmp_path):
    path = tmp_path / "m.jsonl"
    sink = JsonlSink(str(path))
    sink.scalar("lm loss", 3.0, 10)
    sink.scalar("lm loss", float("nan"), 20)
    sink.scalar("lm loss", 2.5, 10)  # a resumed run repeats step 10
    sink.flush()
    with open(path, "a") as f:
        f.write('{"step": 30, "name": "lm lo')  # a torn last line
    rows = [json.loads(line) for line in path.read_text().splitlines()[:3]]
    assert rows[1]["value"] is None
    log = load_run(str(path))
    assert log.series("lm loss")[0] == (10, 2.5) and math.isnan(log.series("lm loss")[1][1])


def test_text_log_iteration_and_validation_lines(tmp_path):
    lines = []
    tokens = 0
    for step in (10, 20):
        tokens += 1000
        fields = {"consumed samples": step * 4, "consumed tokens": tokens,
                  "elapsed time per iteration (ms)": 100.0, "lm loss": 5.0 - step / 10,
                  "curriculum seqlen": 8 * step}  # fmt: skip
        lines.append(format_iteration_line(fields, step, 20))
    lines.append(" validation loss at iteration 20 | lm loss value: 4.000000E+00 | lm loss PPL: 5")
    lines.append(" validation (end of training) loss at iteration 20 | lm loss value: 3.9E+00 |")
    (tmp_path / "train.log").write_text("\n".join(lines) + "\n")
    log = load_run(str(tmp_path))
    assert log.series("consumed-tokens") == [(10, 1000.0), (20, 2000.0)]
    assert log.series("train-time-s") == [(10, pytest.approx(1.0)), (20, pytest.approx(2.0))]
    assert log.series("curriculum seqlen")[-1] == (20, 160.0)
    assert log.series(VALIDATION) == [(20, 4.0)] and log.series(FINAL) == [(20, 3.9)]
    final = log.final()
    assert (final.loss, final.tokens, final.flops) == (3.9, 2000.0, None)


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for step in (5, 10):
        w.add_scalar(VALIDATION, 6.0 - step / 10, step)
        w.add_scalar("consumed-tokens", step * 100, step)
    w.close()
    log = load_run(str(tmp_path / "tb"))
    assert [(p.step, p.tokens) for p in log.eval_points()] == [(5, 500.0), (10, 1000.0)]
    assert log.final().loss == pytest.approx(5.0)


def test_missing_run_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        load_run(str(tmp_path))
