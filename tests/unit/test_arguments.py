"""Bad command lines fail in `parse_args`, before anything is built, naming the flag and the fix.

Each row of BAD is a flag combination that used to fail only after the model and optimizer were
built, with a misleading message (another flag's), with a library's own error, or not at all.
"""

import numpy as np
import pytest

import pretrain_gpt
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.training.arguments import parse_args
from megatron.training.training import pretrain

BASE = [
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
    "--train-iters",
    "4",
    "--lr",
    "3e-3",
    "--lr-decay-style",
    "linear",
    "--tokenizer-type",
    "NullTokenizer",
    "--vocab-size",
    "60",
    "--num-workers",
    "0",
]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    """A real (tiny) dataset prefix, so that only the flag under test is wrong."""
    path = str(tmp_path_factory.mktemp("data") / "tiny_text_document")
    with IndexedDatasetBuilder(path + ".bin", np.uint16) as b:
        for n in range(5, 25):
            b.add_item(np.arange(n) % 59)
            b.end_document()
        b.finalize(path + ".idx")
    return path


def _set(argv, flag, *values):
    """argv with `flag` set to `values` (replaced when present, appended otherwise)."""
    argv = list(argv)
    if flag in argv:
        i = argv.index(flag)
        argv[i + 1 : i + 2] = list(values)
    else:
        argv += [flag, *values]
    return argv


def _drop(argv, flag, nargs=1):
    i = argv.index(flag)
    return argv[:i] + argv[i + 1 + nargs :]


def _gpt2(argv, vocab, merges):
    argv = _drop(_set(argv, "--tokenizer-type", "GPT2BPETokenizer"), "--vocab-size")
    return argv + ["--vocab-file", vocab, "--merge-file", merges]


MOCK = BASE + ["--mock-data"]

# (id, argv builder taking (prefix, tokenizer_dir), expected substring of the message)
BAD = [
    (
        "data-path missing",
        lambda p, t: BASE + ["--data-path", p + "_missing"],
        "--data-path " + "{p}_missing: no such dataset",
    ),
    (
        "data-path with .bin",
        lambda p, t: BASE + ["--data-path", p + ".bin"],
        "give the prefix without .bin",
    ),
    (
        "train-data-path missing",
        lambda p, t: BASE + ["--train-data-path", p + "_missing"],
        "--train-data-path {p}_missing: no such dataset",
    ),
    (
        "data-path weight without prefix",
        lambda p, t: BASE + ["--data-path", "0.5", p, "0.5"],
        "--data-path has 3 tokens",
    ),
    ("split a,b", lambda p, t: BASE + ["--data-path", p, "--split", "a,b"], "--split 'a,b'"),
    ("split 0,0,0", lambda p, t: BASE + ["--data-path", p, "--split", "0,0,0"], "--split '0,0,0'"),
    ("min-lr above lr", lambda p, t: MOCK + ["--min-lr", "1"], "--min-lr 1.0 is larger than --lr"),
    ("negative min-lr", lambda p, t: MOCK + ["--min-lr", "-1"], "--min-lr must be >= 0"),
    (
        "global-batch-size 0",
        lambda p, t: _set(MOCK, "--global-batch-size", "0"),
        "--global-batch-size must be >= 1",
    ),
    ("train-iters 0", lambda p, t: _set(MOCK, "--train-iters", "0"), "--train-iters must be >= 1"),
    (
        "train-samples 0",
        lambda p, t: _drop(MOCK, "--train-iters") + ["--train-samples", "0"],
        "--train-samples must be >= 1",
    ),
    (
        "rampup from 0",
        lambda p, t: MOCK + ["--rampup-batch-size", "0", "2", "8"],
        "--rampup-batch-size 0 2 8: the start batch must be >= 1",
    ),
    (
        "rampup increment 0",
        lambda p, t: MOCK + ["--rampup-batch-size", "2", "0", "8"],
        "the increment must be >= 1",
    ),
    (
        "rampup not a multiple",
        lambda p, t: MOCK + ["--rampup-batch-size", "3", "1", "8"],
        "--rampup-batch-size start 3 and increment 1 must be multiples",
    ),
    (
        "lr-decay-iters 0",
        lambda p, t: MOCK + ["--lr-decay-iters", "0"],
        "--lr-decay-iters must be >= 1",
    ),
    (
        "warmup as long as the decay",
        lambda p, t: MOCK + ["--lr-warmup-iters", "4"],
        "the lr warmup (--lr-warmup-iters",
    ),
    ("no lr", lambda p, t: _drop(MOCK, "--lr"), "--lr is required"),
    (
        "hidden-dropout above 1",
        lambda p, t: MOCK + ["--hidden-dropout", "1.5"],
        "--hidden-dropout is a probability and must be in [0, 1], got 1.5",
    ),
    (
        "attention-dropout below 0",
        lambda p, t: MOCK + ["--attention-dropout", "-0.1"],
        "--attention-dropout is a probability and must be in [0, 1], got -0.1",
    ),
    ("kv-channels 0", lambda p, t: MOCK + ["--kv-channels", "0"], "--kv-channels must be >= 1"),
    (
        "ffn-hidden-size 0",
        lambda p, t: MOCK + ["--ffn-hidden-size", "0"],
        "--ffn-hidden-size must be >= 1",
    ),
    (
        "swapped vocab and merge files",
        lambda p, t: _gpt2(MOCK, f"{t}/gpt2-merges.txt", f"{t}/gpt2-vocab.json"),
        "--vocab-file '{t}/gpt2-merges.txt' looks like a merges file and --merge-file "
        "'{t}/gpt2-vocab.json' like a vocab.json: swap them",
    ),
    (
        "merges file as vocab",
        lambda p, t: _gpt2(MOCK, f"{t}/gpt2-merges.txt", f"{t}/gpt2-merges.txt"),
        "--vocab-file '{t}/gpt2-merges.txt' looks like a merges file",
    ),
    (
        "vocab file as merges",
        lambda p, t: _gpt2(MOCK, f"{t}/gpt2-vocab.json", f"{t}/gpt2-vocab.json"),
        "--merge-file '{t}/gpt2-vocab.json' looks like a vocab.json",
    ),
    ("seed -1", lambda p, t: _set(MOCK, "--seed", "-1"), "--seed must be in [0, 2**32 - 1]"),
    (
        "seed too large",
        lambda p, t: _set(MOCK, "--seed", str(2**32)),
        "--seed must be in [0, 2**32 - 1]",
    ),
    (
        "negative weight decay",
        lambda p, t: MOCK + ["--weight-decay", "-0.1"],
        "--weight-decay must be >= 0, got -0.1",
    ),
    (
        "exit-interval -1",
        lambda p, t: MOCK + ["--exit-interval", "-1"],
        "--exit-interval must be >= 1",
    ),
    (
        "exit-duration 0",
        lambda p, t: MOCK + ["--exit-duration-in-mins", "0"],
        "--exit-duration-in-mins must be > 0",
    ),
]


def test_the_base_command_line_is_valid(prefix):
    """The rows below differ from a valid command line by one flag."""
    assert parse_args(BASE + ["--data-path", prefix], world_size=1).data.data_path == [prefix]
    assert parse_args(MOCK, world_size=1).training.train_iters == 4


@pytest.mark.parametrize("argv,expected", [(b, e) for _, b, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_flags_exit_2_naming_the_flag(argv, expected, prefix, tokenizer_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv(prefix, str(tokenizer_dir)), world_size=1)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected.format(p=prefix, t=tokenizer_dir) in err, err


def test_skip_train_accepts_train_iters_0():
    run = parse_args(_set(MOCK, "--train-iters", "0") + ["--skip-train"], world_size=1)
    assert run.training.skip_train and run.training.train_iters == 0


def test_seed_overflowing_at_the_last_pipeline_stage_is_an_error(capsys):
    argv = _set(MOCK, "--seed", str(2**32 - 50)) + ["--pipeline-model-parallel-size", "2"]
    with pytest.raises(SystemExit):
        parse_args(argv, world_size=2)
    assert "the last pipeline stage seeds with --seed + 100 x stage" in capsys.readouterr().err


def test_dry_run_parse_skips_the_data_files(prefix):
    argv = BASE + ["--data-path", prefix + "_elsewhere"]
    run = parse_args(argv, world_size=1, check_data_files=False)
    assert run.data.data_path == [prefix + "_elsewhere"]


THROUGH_PRETRAIN = ["data-path missing", "split a,b", "min-lr above lr", "kv-channels 0"]
THROUGH_PRETRAIN += ["swapped vocab and merge files", "train-iters 0"]


@pytest.mark.parametrize("name", THROUGH_PRETRAIN)
def test_pretrain_fails_before_building_anything(name, prefix, tokenizer_dir, capsys):
    """Through `pretrain`: exit 2 with the message, no tokenizer, model or dataset built."""
    ((argv, expected),) = [(b, e) for i, b, e in BAD if i == name]
    built = []

    def model_provider(*args):
        built.append("model")
        return pretrain_gpt.model_provider(*args)

    def datasets_provider(*args):
        built.append("datasets")
        return pretrain_gpt.datasets_provider(*args)

    with pytest.raises(SystemExit) as exc:
        pretrain(
            datasets_provider,
            model_provider,
            pretrain_gpt.forward_step,
            argv=argv(prefix, str(tokenizer_dir)),
        )
    assert exc.value.code == 2 and built == []
    captured = capsys.readouterr()
    assert expected.format(p=prefix, t=tokenizer_dir) in captured.err
    assert "building" not in captured.out + captured.err  # not even the tokenizer
