"""The token budget with curriculum learning and random-LTD: the samples a --train-tokens run needs
and the lr spans over it, from the step accounting (a pure function of the flags and the step)."""

import json
import math
import types

import pytest

from megatron.training.arguments import parse_args
from megatron.training.budget import (
    StepAccounting,
    build_scheduler,
    schedule_spans,
    train_num_samples,
)

SEQ, LAYERS = 32, 4


def _seqlen(lo, hi, total, step, kind="fixed_linear"):
    cfg = {"total_curriculum_step": total, "difficulty_step": step}
    if kind == "fixed_discrete":
        cfg = {"difficulty": [lo, (lo + hi) // 2, hi], "max_step": [total // 2, total]}
    return {
        "index_to_sample_path": "dummy",
        "index_to_metric_path": "dummy",
        "difficulty_type": "value",
        "clustering_type": "single_cluster",
        "min_difficulty": lo,
        "max_difficulty": hi,
        "schedule_type": kind,
        "schedule_config": cfg,
    }


def _ltd(lo, hi, steps, per, layers, layer_tokens=None):
    block = {
        "enabled": True,
        "total_layer_num": layers,
        "random_ltd_layer_id": list(range(1, layers - 1)),
        "random_ltd_schedule": {
            "min_value": lo,
            "max_value": hi,
            "schedule_type": "fixed_linear",
            "schedule_config": {"require_steps": steps, "seq_per_step": per},
        },
    }
    if layer_tokens is not None:
        block["layer_token_lr_schedule"] = layer_tokens
    return block


def _config(tmp_path, seqlen=None, ltd=None, name="ds.json"):
    de = {"enabled": True}
    if ltd is not None:
        de["data_routing"] = {"enabled": True, "random_ltd": ltd}
    if seqlen is not None:
        cl = {"enabled": True, "curriculum_metrics": {"seqlen_truncate": seqlen}}
        de["data_sampling"] = {"enabled": True, "curriculum_learning": cl}
    path = tmp_path / name
    path.write_text(json.dumps({"data_efficiency": de}))
    return str(path)


TINY_CL = _seqlen(8, SEQ, 30, 8)
TINY_LTD = _ltd(8, SEQ, 6, 8, LAYERS)
CASES = {  # id: (seqlen_truncate metric, random_ltd block, extra flags)
    "none": (None, None, []),
    "cl": (TINY_CL, None, []),
    "ltd": (None, TINY_LTD, []),
    "cl_ltd": (TINY_CL, TINY_LTD, []),
    "cl_discrete_ltd_rampup": (
        _seqlen(8, SEQ, 20, 8, "fixed_discrete"),
        TINY_LTD,
        ["--rampup-batch-size", "2", "2", "40"],
    ),
}


def _run(tmp_path, seqlen=None, ltd=None, extra=(), seq=SEQ, layers=LAYERS, gbs=8, mbs=2):
    argv = [
        "--num-layers",
        str(layers),
        "--hidden-size",
        "32",
        "--num-attention-heads",
        "4",
        "--seq-length",
        str(seq),
        "--micro-batch-size",
        str(mbs),
        "--global-batch-size",
        str(gbs),
        "--lr",
        "1.0",
        "--min-lr",
        "0.0",
        "--lr-decay-style",
        "linear",
        "--mock-data",
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        "96",
        *extra,
    ]
    if seqlen is not None or ltd is not None:
        argv += ["--deepspeed_config", _config(tmp_path, seqlen, ltd)]
    run = parse_args(argv, world_size=1)
    return run, StepAccounting.from_run(run)


def _naive(acct, tokens):
    """Counters (steps, samples, tokens, layer-tokens) after each step until `tokens` are reached,
    one step at a time."""
    out, samples, total, layer_total = [], 0, 0, 0
    while total < tokens:
        step = len(out) + 1
        gbs = acct.calc.global_batch_at(samples)
        t, lt = acct.de.step_counts(step, gbs, acct.micro_batch_size)
        samples, total, layer_total = samples + gbs, total + t, layer_total + lt
        out.append((step, samples, total, layer_total))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_token_budget_sizes_the_data_by_the_summed_step_tokens(tmp_path, case):
    """--train-tokens alone: the samples of the steps that reach the budget, summing each step's
    token count (curriculum length, random-LTD effective length, ramp-up), however far into the
    run the budget ends (the constant tail is counted without walking it)."""
    seqlen, ltd, extra = CASES[case]
    for budget in (1, 2560, 2561, 50_000, 1_000_003):
        run, acct = _run(tmp_path, seqlen, ltd, [*extra, "--train-tokens", str(budget)])
        steps = _naive(acct, budget)
        assert train_num_samples(run, acct) == steps[-1][1]
        before, after = acct.crossing("tokens", budget)
        assert (after.steps, after.samples, after.tokens, after.layer_tokens) == steps[-1]
        assert before.tokens < budget <= after.tokens
        assert (before.steps, before.samples) == (steps[-2][:2] if len(steps) > 1 else (0, 0))
    if case == "none":  # whole steps of 8 x 32 tokens; ceil(T / seq_length) fell short of them
        assert train_num_samples(run, acct) == math.ceil(1_000_003 / 256) * 8
        assert math.ceil(1_000_003 / SEQ) < train_num_samples(run, acct)


def test_the_quoted_small_runs_need_more_samples_than_tokens_over_seq_length(tmp_path):
    """The runs of the issue: 2560 tokens of 4-layer GPT, global batch 8, seq 32. Before, both
    were given ceil(2560 / 32) = 80 samples: random-LTD died at the 11th step, the seqlen
    curriculum drew 184 samples from 80."""
    budget = ["--train-tokens", "2560"]
    run, acct = _run(tmp_path, None, TINY_LTD, budget)
    assert train_num_samples(run, acct) == 96  # 12 steps
    run, acct = _run(tmp_path, TINY_CL, None, budget)
    assert train_num_samples(run, acct) == 184  # 23 steps


def test_gpt3_1_3b_paper_settings(tmp_path):
    """GPT-3 1.3B, 300B tokens, global batch 512, seq 2048, seqlen 80 -> 2048 by 8 over 110k steps,
    K 128 -> 2048 by 16 over 200k steps on layers 1..22: ceil(300e9 / 2048) = 146484375 samples
    were built; the runs need 1.19x (CL), 1.30x (random-LTD), 1.32x (both)."""
    seqlen = _seqlen(80, 2048, 110_000, 8)
    ltd = _ltd(128, 2048, 200_000, 16, 24)
    budget = ["--train-tokens", str(300 * 10**9), "--micro-batch-size", "4"]
    needed = {}
    for name, (s, r) in {"cl": (seqlen, None), "ltd": (None, ltd), "cl_ltd": (seqlen, ltd)}.items():
        run, acct = _run(tmp_path, s, r, budget, seq=2048, layers=24, gbs=512, mbs=4)
        needed[name] = train_num_samples(run, acct)
    assert needed == {"cl": 173_654_528, "ltd": 190_867_968, "cl_ltd": 193_159_168}
    before = math.ceil(300 * 10**9 / 2048)
    assert [round(n / before, 2) for n in needed.values()] == [1.19, 1.30, 1.32]


def test_the_lr_decays_over_the_token_budget(tmp_path):
    """With --train-tokens as the only budget the decay spans the tokens (it spanned
    ceil(train_tokens / seq_length) samples, which CL and random-LTD consume before the budget)."""
    run, acct = _run(tmp_path, TINY_CL, TINY_LTD, ["--train-tokens", "2560"])
    spans = schedule_spans(run, acct)
    assert spans["decay_tokens"] == 2560 and spans["decay_steps"] is None
    assert spans["warmup_tokens"] is None and spans["warmup_steps"] == 0
    run, acct = _run(tmp_path, TINY_CL, TINY_LTD, ["--train-iters", "10"])
    assert schedule_spans(run, acct)["decay_steps"] == 80  # a sample budget decays over samples


def test_a_warmup_in_samples_is_converted_to_the_token_decay(tmp_path, capsys):
    """--lr-warmup-iters with a token decay: the warmup ends at the tokens those iterations
    consume, so the lr is --lr there and decays from it without a jump; one not shorter than
    the budget fails in parse_args, naming both in one unit."""
    flags = ["--train-tokens", "2560", "--lr-warmup-iters", "3"]
    run, acct = _run(tmp_path, TINY_CL, TINY_LTD, flags)
    spans = schedule_spans(run, acct)
    three = _naive(acct, 2560)[2][2]  # tokens after 3 steps
    assert spans["warmup_tokens"] == three and spans["warmup_steps"] == 0
    with pytest.raises(SystemExit):
        _run(tmp_path, TINY_CL, TINY_LTD, ["--train-tokens", "2560", "--lr-warmup-iters", "30"])
    assert (
        "the lr warmup (--lr-warmup-iters (240 samples): 4032 tokens) must be shorter than the "
        "decay span (the token budget (--train-tokens): 2560 tokens)"
    ) in capsys.readouterr().err


def test_layer_token_schedule_with_a_token_warmup_keeps_one_unit(tmp_path):
    """layer_token_lr_schedule with warmup_layer_tokens 0 and --lr-warmup-tokens: the warmup ends
    at the layer-tokens consumed when the token warmup ends, so the lr goes on from --lr (it
    dropped from 1.0x to 0.909x one token after the warmup: decay counted from layer-token 0)."""
    lt = {"enabled": True, "total_layer_tokens": 22528, "warmup_layer_tokens": 0}
    ltd = _ltd(8, SEQ, 6, 8, LAYERS, layer_tokens=lt)
    run, acct = _run(tmp_path, None, ltd, ["--train-iters", "20", "--lr-warmup-tokens", "512"])
    spans = schedule_spans(run, acct)
    # steps 1-3 (K 8, 8, 16): 160 + 160 + 192 = 512 tokens, 640 + 640 + 768 = 2048 layer-tokens
    assert spans["warmup_layer_tokens"] == 2048 and spans["decay_layer_tokens"] == 22528
    assert spans["warmup_tokens"] is None and spans["decay_tokens"] is None
    opt = types.SimpleNamespace(param_groups=[{"lr": 0.0}])
    sched = build_scheduler(run, opt, acct)
    for tokens, layer_tokens in ((160, 640), (160, 640), (192, 768)):
        sched.step(8, tokens, layer_tokens)
    assert sched.get_lr() == 1.0
    sched.step(0, 1, 4)  # one token (4 layer-tokens) later
    assert sched.get_lr() == pytest.approx(1.0 - 4 / (22528 - 2048))
    # a fraction of the decay span is a fraction of total_layer_tokens
    run, acct = _run(tmp_path, None, ltd, ["--train-iters", "20", "--lr-warmup-fraction", "0.25"])
    assert schedule_spans(run, acct)["warmup_layer_tokens"] == 22528 // 4


def test_a_layer_token_decay_that_ends_off_the_budget_is_warned_about(tmp_path, caplog):
    """With --train-tokens the layer-tokens at the budget are known: a total_layer_tokens that
    differs (the lr would reach --min-lr before or after the budget) is named with the value
    that ends the decay at the budget."""
    lt = {"enabled": True, "total_layer_tokens": 22528, "warmup_layer_tokens": 0}
    ltd = _ltd(8, SEQ, 6, 8, LAYERS, layer_tokens=lt)
    run, acct = _run(tmp_path, None, ltd, ["--train-tokens", "2560"])
    opt = types.SimpleNamespace(param_groups=[{"lr": 0.0}])
    with caplog.at_level("WARNING", logger="megatron.training.budget"):
        build_scheduler(run, opt, acct)
    assert "total_layer_tokens is 22528 but the --train-tokens budget ends at 10752" in caplog.text
    assert "only after the budget; set total_layer_tokens to 10752" in caplog.text
