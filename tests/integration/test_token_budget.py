"""--train-tokens as the only budget with curriculum learning and random-LTD, through `pretrain`:
the run reaches the budget without reading more samples than its training split holds, and the
lr reaches --min-lr exactly at the budget (also with fp16-skipped steps, the layer-token schedule
and BERT's padding trim)."""

import functools
import json
import math

import numpy as np
import pytest
import torch

import pretrain_bert
import pretrain_gpt
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.training.budget import DataExhaustedError
from megatron.training.checkpointing import read_tracker
from megatron.training.training import pretrain
from tests.distributed.launcher import run_distributed
from tests.integration.test_data_efficiency import _metric, ds_config, gpt_args

BUDGET, LR, MIN_LR = 2560, 2e-3, 2e-4


@pytest.fixture(scope="module")
def small_gpt_data(tmp_path_factory):
    """90 training documents of 2580 tokens in all: exactly 80 samples of 32 tokens per epoch,
    what ceil(--train-tokens 2560 / --seq-length 32) used to build."""
    prefix = str(tmp_path_factory.mktemp("small_gpt") / "toy_text_document")
    rs = np.random.RandomState(0)
    with IndexedDatasetBuilder(prefix + ".bin", np.uint16) as b:
        for i in range(100):  # --split 90,10,0: documents 0..89 train
            n = (28 if i < 60 else 27) if i < 90 else 30
            b.add_item(np.append(rs.randint(0, 96, size=n), 96))
            b.end_document()
        b.finalize(prefix + ".idx")
    return prefix


def _pretrain(argv, provider, model_type="gpt", forward_step=None):
    """(final state, history, length of the training split)."""
    script = pretrain_gpt if model_type == "gpt" else pretrain_bert
    sizes = []

    def datasets_provider(run, rt, num_samples):
        train, valid, test = provider(run, rt, num_samples)
        sizes.append(len(train))
        return train, valid, test

    history = []
    st = pretrain(
        datasets_provider,
        script.model_provider,
        forward_step or script.forward_step,
        argv=argv,
        model_type=model_type,
        history=history,
    )
    return st, history, sizes[0]


def _cosine(tokens):
    x = min(tokens / BUDGET, 1.0)
    return MIN_LR + 0.5 * (math.cos(math.pi * x) + 1.0) * (LR - MIN_LR)


def _assert_ends_at_the_budget(st, hist, split):
    tokens = [h["consumed_train_tokens"] for h in hist]
    assert tokens[-2] < BUDGET <= tokens[-1] == st.consumed_train_tokens
    assert st.consumed_train_samples <= split  # nothing read twice
    assert hist[-1]["lr"] == MIN_LR and hist[-2]["lr"] > MIN_LR  # --min-lr at the budget only


def _seqlen_curriculum(tmp_path, ltd):
    """seqlen_truncate 8 -> 32 by 8 over 30 steps; with random-LTD K 8 -> 32 by 8 over 40 steps
    (so K is below the curriculum length at some steps)."""
    metrics = {"seqlen_truncate": _metric("seqlen_truncate", "single_cluster", 8, 32, 30, 8)}
    path = ds_config(tmp_path, ltd=ltd, metrics=metrics)
    cfg = json.loads(open(path).read())
    ltd_schedule = cfg["data_efficiency"]["data_routing"]["random_ltd"]["random_ltd_schedule"]
    ltd_schedule["schedule_config"]["require_steps"] = 40
    open(path, "w").write(json.dumps(cfg))
    return path


RUNS = {  # the --deepspeed_config and flags of each technique
    "ltd": lambda p: ["--deepspeed_config", ds_config(p, curriculum=False), "--random-ltd"],
    "cl": lambda p: [
        "--deepspeed_config",
        _seqlen_curriculum(p, ltd=False),
        "--data-efficiency-curriculum-learning",
    ],
    "cl_ltd": lambda p: [
        "--deepspeed_config",
        _seqlen_curriculum(p, ltd=True),
        "--data-efficiency-curriculum-learning",
        "--random-ltd",
    ],
}


@pytest.mark.parametrize("technique", list(RUNS))
def test_train_tokens_alone_runs_to_the_budget(tmp_path, small_gpt_data, technique):
    """Before: random-LTD died at iteration 11 with 'generator raised StopIteration' (lr at its
    minimum from iteration 10); the seqlen curriculum drew 184 samples from a split of 80 and sat
    at the minimum lr for 14 of 23 iterations. The lr decayed over 80 samples, not the tokens."""
    flags = ["--train-tokens", str(BUDGET), "--min-lr", str(MIN_LR), *RUNS[technique](tmp_path)]
    st, hist, split = _pretrain(gpt_args(small_gpt_data, flags), pretrain_gpt.datasets_provider)
    _assert_ends_at_the_budget(st, hist, split)
    for h in hist:  # cosine over the consumed tokens
        assert h["lr"] == pytest.approx(_cosine(h["consumed_train_tokens"]), rel=1e-12)
    steps = {"ltd": 12, "cl": 23, "cl_ltd": 25}[technique]
    assert st.iteration == steps and st.consumed_train_samples == 8 * steps


def test_fp16_skipped_steps_count_on_the_token_clock(tmp_path, small_gpt_data):
    """A step skipped for an fp16 overflow consumed its tokens: the token clock counts them, so
    the lr is the schedule at the consumed tokens and --min-lr at the budget (before: the clock
    missed the 320 tokens of the 2 skipped steps and the run ended at 1.12x --min-lr)."""
    flags = ["--train-tokens", str(BUDGET), "--min-lr", str(MIN_LR), *RUNS["ltd"](tmp_path)]
    flags += ["--fp16", "--initial-loss-scale", str(2**20)]
    st, hist, split = _pretrain(gpt_args(small_gpt_data, flags), pretrain_gpt.datasets_provider)
    assert st.skipped_iterations > 0 and not hist[0]["update_successful"]
    _assert_ends_at_the_budget(st, hist, split)
    for h in hist:
        assert h["lr"] == pytest.approx(_cosine(h["consumed_train_tokens"]), rel=1e-12)


def test_layer_token_schedule_continues_a_token_warmup(tmp_path, small_gpt_data):
    """layer_token_lr_schedule with warmup_layer_tokens 0 and --lr-warmup-tokens 512: the warmup
    ends at the layer-tokens of its last token (2048, after 3 steps) and the decay starts there
    (before: from layer-token 0, a drop right after the warmup), reaching --min-lr at the budget
    when total_layer_tokens is the budget's layer-token count (10752)."""
    path = ds_config(tmp_path, curriculum=False)
    cfg = json.loads(open(path).read())
    cfg["data_efficiency"]["data_routing"]["random_ltd"]["layer_token_lr_schedule"] = {
        "enabled": True,
        "total_layer_tokens": 10752,
        "warmup_layer_tokens": 0,
    }
    open(path, "w").write(json.dumps(cfg))
    flags = ["--train-tokens", str(BUDGET), "--min-lr", str(MIN_LR), "--lr-decay-style", "linear"]
    flags += ["--lr-warmup-tokens", "512", "--deepspeed_config", path]
    st, hist, split = _pretrain(gpt_args(small_gpt_data, flags), pretrain_gpt.datasets_provider)
    _assert_ends_at_the_budget(st, hist, split)
    layer_tokens = 0
    for h in hist:
        layer_tokens += 8 * (32 * 2 + h["random-LTD kept tokens"] * 2)
        if layer_tokens <= 2048:
            expected = LR * layer_tokens / 2048
        else:
            expected = MIN_LR + (LR - MIN_LR) * (1 - (layer_tokens - 2048) / (10752 - 2048))
        assert h["lr"] == pytest.approx(expected, rel=1e-12)
    assert hist[2]["lr"] == LR and hist[3]["lr"] > 0.9 * LR


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory, tokenizer_dir):
    from megatron.core.datasets.preprocess import preprocess_files
    from megatron.core.datasets.preprocess_config import PreprocessConfig
    from megatron.tokenizer import TokenizerConfig, build_tokenizer, split_sentences
    from tools.austen_to_jsonl import write_jsonl

    d = tmp_path_factory.mktemp("bert_budget")
    write_jsonl(str(d / "austen.jsonl"))
    (d / "small.jsonl").write_text("".join(open(d / "austen.jsonl").readlines()[:12]))
    vocab = str(tokenizer_dir / "bert-base-uncased-vocab.txt")
    preprocess_files(
        [str(d / "small.jsonl")],
        str(d / "austen"),
        functools.partial(build_tokenizer, TokenizerConfig("BertWordPieceLowerCase", vocab)),
        PreprocessConfig(split_sentences=True),
        sentence_splitter=split_sentences,
    )
    return str(d / "austen_text_sentence"), vocab


def _bert_argv(tmp_path, bert_data):
    """BERT, seq 64, micro-batch 4, global batch 8, curriculum on vocabulary rarity only (no
    seqlen_truncate: each micro-batch is trimmed to its longest non-padding length, multiple of
    8), many short samples (--short-seq-prob 0.8), --train-tokens 2048."""
    prefix, vocab = bert_data
    metric = _metric("vocab_rarity", "schedule_based", 1, 100, 5, 1, "fixed_root", "percentile")
    metrics = {"vocab_rarity": metric}
    cfg = ds_config(tmp_path, ltd=False, seq=64, model_type="encoder", metrics=metrics)
    return [
        *("--num-layers 4 --hidden-size 32 --num-attention-heads 4 --seq-length 64").split(),
        *("--micro-batch-size 4 --global-batch-size 8 --lr-decay-style cosine").split(),
        *("--split 90,10,0 --tokenizer-type BertWordPieceLowerCase --log-interval 1").split(),
        *("--eval-interval 1000 --eval-iters 1 --num-workers 0 --short-seq-prob 0.8").split(),
        *["--lr", str(LR), "--min-lr", str(MIN_LR), "--train-tokens", "2048"],
        *["--data-path", prefix, "--vocab-file", vocab, "--deepspeed_config", cfg],
        "--data-efficiency-curriculum-learning",
    ]


def test_bert_padding_trim_counts_the_trimmed_tokens(tmp_path, bert_data):
    """BERT with a curriculum but no seqlen_truncate metric trims each micro-batch to its longest
    non-padding length: the consumed tokens, the token lr clock and the budget count that trimmed
    length (before: the full --seq-length, 2048 counted for 1408 trained over 4 steps, and the
    run stopped at 69% of the budget)."""
    shapes = []

    def forward_step(data_iterator, model):
        def recorded():
            while True:
                batch = next(data_iterator)
                shapes.append(tuple(batch["text"].shape))
                yield batch

        return pretrain_bert.forward_step(recorded(), model)

    argv = _bert_argv(tmp_path, bert_data)
    st, hist, split = _pretrain(argv, pretrain_bert.datasets_provider, "bert", forward_step)
    trimmed = [r * n for r, n in shapes[: 2 * len(hist)]]  # then come the validation batches
    per_step = [a + b for a, b in zip(trimmed[::2], trimmed[1::2])]  # 2 micro-batches a step
    assert any(n < 64 for _, n in shapes)  # the trim is exercised
    consumed = [h["consumed_train_tokens"] for h in hist]
    assert consumed == list(np.cumsum(per_step))
    assert consumed[-2] < 2048 <= consumed[-1] and st.consumed_train_samples <= split
    assert hist[-1]["lr"] == MIN_LR and hist[-2]["lr"] > MIN_LR
    assert torch.isfinite(torch.tensor([h["lm loss"] for h in hist])).all()


def _bert_counts(rank, world_size, argv):
    torch.set_num_threads(1)
    _, hist, _ = _pretrain(argv, pretrain_bert.datasets_provider, "bert")
    return [(h["consumed_train_tokens"], h["lr"]) for h in hist]


def test_bert_padding_trim_count_is_summed_over_data_parallel_ranks(tmp_path, bert_data):
    """With DP 2 each rank trims its own micro-batch (the same rows as DP 1's micro-batches); the
    step's tokens are summed over the ranks, so every rank counts what one process counts."""
    argv = _bert_argv(tmp_path, bert_data)
    single = run_distributed(_bert_counts, 1, argv, timeout=300)[0]
    dp = run_distributed(_bert_counts, 2, argv, timeout=300)
    assert dp[0] == dp[1] == single


def test_a_split_too_small_for_the_budget_stops_and_saves(tmp_path, small_gpt_data):
    """A training split smaller than the budget needs (here: a provider that builds only 40
    samples) stops before the step that would read past it, saving first, naming the fix (it
    died in the data loader with 'generator raised StopIteration')."""

    def short_provider(run, rt, num_samples):
        train, valid, test = pretrain_gpt.datasets_provider(run, rt, num_samples)
        return torch.utils.data.Subset(train, range(40)), valid, test

    save = str(tmp_path / "ckpt")
    flags = ["--train-tokens", str(BUDGET), *RUNS["ltd"](tmp_path), "--save", save]
    with pytest.raises(DataExhaustedError) as exc:
        _pretrain(gpt_args(small_gpt_data, flags), short_provider)
    message = str(exc.value)
    assert "iteration 6 would read samples 40 to 47, but the training split holds 40" in message
    assert "iteration 5 is saved in --save" in message and "--train-samples" in message
    assert read_tracker(save)[0] == 5
