"""Megatron-DeepSpeed's data-efficiency launchers run here unchanged apart from sizes and paths.

The command lines below are those of examples_deepspeed/data_efficiency/{gpt,bert}/ (analysis map /
reduce scripts and the pretraining base scripts with curriculum learning and random-LTD on) of
microsoft/Megatron-DeepSpeed f4157bea, flag for flag and in their order; only the values the
scripts compute from the cluster (sizes, paths, step counts) are scaled to a 2-core CPU. The
DeepSpeed JSON templates in launchers/ are the scripts' templates with the layer counts scaled to
the 4-layer model; the placeholders are substituted as the scripts' sed lines do.
"""

import functools
import json
import pathlib

import numpy as np
import pytest

import pretrain_bert
import pretrain_gpt
from megatron.training.training import pretrain

LAUNCHERS = pathlib.Path(__file__).parent / "launchers"
SEQ, GBS, LAYERS = 32, 4, 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer_dir):
    """GPT documents and BERT sentences of the paragraphs of 40 chapters of the embedded corpus."""
    from megatron.core.datasets.preprocess import preprocess_files
    from megatron.core.datasets.preprocess_config import PreprocessConfig
    from megatron.tokenizer import TokenizerConfig, build_tokenizer, split_sentences
    from tools.austen_to_jsonl import write_jsonl

    d = tmp_path_factory.mktemp("md_corpus")
    write_jsonl(str(d / "austen.jsonl"))
    # paragraphs as documents: enough of them that --split 949,50,1 leaves the test split some
    paragraphs = [
        p.strip()
        for line in open(d / "austen.jsonl").readlines()[:40]
        for p in json.loads(line)["text"].split("\n\n")
        if len(p.split()) > 10
    ]
    small = d / "small.jsonl"
    small.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    vocab, merges = str(tokenizer_dir / "gpt2-vocab.json"), str(tokenizer_dir / "gpt2-merges.txt")
    bert_vocab = str(tokenizer_dir / "bert-base-uncased-vocab.txt")
    gpt = TokenizerConfig("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    preprocess_files(
        [str(small)],
        str(d / "pile"),
        functools.partial(build_tokenizer, gpt),
        PreprocessConfig(append_eod=True),
    )
    bert = TokenizerConfig("BertWordPieceLowerCase", vocab_file=bert_vocab)
    preprocess_files(
        [str(small)],
        str(d / "pile_bert_train"),
        functools.partial(build_tokenizer, bert),
        PreprocessConfig(split_sentences=True),
        sentence_splitter=split_sentences,
    )
    return {
        "gpt": str(d / "pile_text_document"),
        "bert": str(d / "pile_bert_train_text_sentence"),
        "vocab": vocab,
        "merges": merges,
        "bert_vocab": bert_vocab,
    }


def _analyze(options):
    from tools import analyze_data

    assert analyze_data.main(options) == 0


def analysis_options(task, data_type, data_path, tokenizer, save, num_epochs, seq_len):
    """ds_analyze_{gpt,bert}_data_{map,reduce}.sh: num_workers=1 num_threads=40 worker_id=0
    batch_size=10000 (scaled: threads 2, batch 1000)."""
    options = ["--analyzing-task", task, "--analyzing-data-type", data_type]
    options += ["--analyzing-metric", "vocab_rarity", "--analyzing-num-workers", "1"]
    if task == "map":
        options += ["--analyzing-worker-id", "0"]
    options += ["--analyzing-num-threads", "2"]
    if task == "reduce":
        options += ["--analyzing-num-threads-reduce", "2"]
    return options + [
        *tokenizer,
        "--data-path", data_path,
        "--data-impl", "mmap",
        *(["--tokenizer-type", "GPT2BPETokenizer"] if data_type == "GPT" else
          ["--tokenizer-type", "BertWordPieceLowerCase"]),
        "--micro-batch-size", "1000",
        "--global-batch-size", "1000",
        "--seq-length", str(seq_len),
        "--max-position-embeddings", str(seq_len),
        "--num-layers", "1",
        "--hidden-size", "1",
        "--num-attention-heads", "1",
        "--split", "949,50,1",
        "--distributed-backend", "gloo",
        "--train-data-exact-num-epochs", str(num_epochs),
        "--return-data-index",
        "--save-interval", "1",
        "--save", str(save),
    ]  # fmt: skip


def ds_config(template, out, values):
    """The scripts' `sed "s/GBSIZE/${global_batch_size}/" ...` over the template."""
    text = (LAUNCHERS / template).read_text()
    for key in sorted(values, key=len, reverse=True):  # CL_1st_MIN before CL_1st_M...
        text = text.replace(key, str(values[key]))
    out.write_text(text)
    json.loads(text)
    return str(out)


def gpt_command_line(corpus, tmp_path, config_json, dp_size=1, pp_size=1):
    """ds_pretrain_gpt_1.3B_dense_base_script.sh with ltd_enabled=true cl_enabled=true."""
    seq_len, global_batch_size, zero_stage, seed = SEQ, GBS, 1, 1234
    batch_size = global_batch_size // dp_size
    train_tokens = 6 * global_batch_size * seq_len
    train_samples = train_tokens * 2 // seq_len
    lr_warmup_tokens = 2 * global_batch_size * seq_len
    save_interval = train_tokens // seq_len // global_batch_size // 2  # num_save=2
    data_home = pathlib.Path(corpus["gpt"]).parent
    stem = f"{corpus['gpt']}_train_indexmap_exact1ep_{seq_len}sl_{seed}s"
    checkpoint_path, tensorboard_path = tmp_path / "checkpoint", tmp_path / "tensorboard"
    megatron_options = [
        "--override-opt_param-scheduler",
        "--adam-beta1", "0.9",
        "--adam-beta2", "0.95",
        "--tensor-model-parallel-size", "1",
        "--init-method-std", "0.013",
        "--lr-decay-tokens", str(train_tokens),
        "--lr-warmup-tokens", str(lr_warmup_tokens),
        "--micro-batch-size", str(batch_size),
        "--exit-duration-in-mins", "30000000",
        "--global-batch-size", str(global_batch_size),
        "--num-layers", str(LAYERS),
        "--hidden-size", "32",
        "--num-attention-heads", "4",
        "--seq-length", str(seq_len),
        "--max-position-embeddings", str(seq_len),
        "--train-tokens", str(train_tokens),
        "--train-samples", str(train_samples),
        "--lr", "2e-4",
        "--min-lr", "1.0e-6",
        "--lr-decay-style", "cosine",
        "--split", "949,50,1",
        "--log-interval", "1",
        "--eval-interval", "100",
        "--eval-iters", "2",
        "--save-interval", str(save_interval),
        "--weight-decay", "0.1",
        "--clip-grad", "1.0",
        "--hysteresis", "2",
        "--num-workers", "0",
        "--fp16",
        "--seed", str(seed),
        "--load", str(checkpoint_path),
        "--save", str(checkpoint_path),
        "--tensorboard-queue-size", "1",
        "--log-timers-to-tensorboard",
        "--log-batch-size-to-tensorboard",
        "--log-validation-ppl-to-tensorboard",
        "--tensorboard-dir", str(tensorboard_path),
        "--checkpoint-activations",
        "--log-optimizer-states-to-tensorboard",
        "--random-ltd",
        "--train-doc-idx-path", f"{stem}_doc_idx.npy",
        "--train-sample-idx-path", f"{stem}_sample_idx.npy",
        "--train-shuffle-idx-path", f"{stem}_shuffle_idx.npy",
        "--data-efficiency-curriculum-learning",
    ]  # fmt: skip
    data_options = ["--vocab-file", corpus["vocab"], "--merge-file", corpus["merges"]]
    data_options += ["--data-path", corpus["gpt"], "--data-impl", "mmap"]
    deepspeed_options = ["--deepspeed", "--deepspeed_config", config_json]
    deepspeed_options += ["--zero-stage", str(zero_stage)]
    deepspeed_options += ["--pipeline-model-parallel-size", str(pp_size)]
    if pp_size == 1:  # no_pp="true"
        deepspeed_options += ["--no-pipeline-parallel"]
    deepspeed_options += ["--deepspeed-activation-checkpointing"]
    assert data_home.is_dir()
    return megatron_options + data_options + deepspeed_options


def gpt_values(tmp_path, analysis, dp_size=1):
    voc = analysis / "vocab_rarity"
    return {
        "GBSIZE": GBS, "MBSIZE": GBS // dp_size, "LOG_INTERVAL": 1, "ZERO_STAGE": 1,
        "PRESCALE_GRAD": "false", "DATA_EFFICIENCY_SEED": 1234,
        "LTD_ENABLED": "true", "LTD_MIN": 16, "LTD_MAX": SEQ, "LTD_STEP": 4,
        "CL_ENABLED": "true", "DATA_SAMPLING_NUM_WORKERS": 0,
        "CL_CLUSTER_PATH": tmp_path / "data_cluster",
        "CL_1st_METRIC_NAME": "voc",
        "CL_1st_SAMPLE_PATH": voc / "vocab_rarity_index_to_sample_percentile_merged",
        "CL_1st_METRIC_PATH": voc / "vocab_rarity_index_to_metric",
        "CL_1st_DIFF_TYPE": "percentile", "CL_1st_CLUSTER_TYPE": "schedule_based",
        "CL_1st_MIN": 1, "CL_1st_MAX": 100, "CL_1st_TOTAL_STEP": 4,
        "CL_1st_DIFF_STEP": 1, "CL_1st_ROOT": 2,
    }  # fmt: skip


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def gpt_launch(corpus, tmp_path, dp_size=1):
    """The analysis map and reduce scripts, the JSON of the template; the training command."""
    analysis = tmp_path / "analysis_pile_gpt_1epoch"
    tok = ["--vocab-file", corpus["vocab"], "--merge-file", corpus["merges"]]
    for task in ("map", "reduce"):
        _analyze(analysis_options(task, "GPT", corpus["gpt"], tok, analysis, 1, SEQ))
    (tmp_path / "data_cluster").mkdir()
    config_json = ds_config(
        "ds_config_gpt_1clmetric_TEMPLATE.json",
        tmp_path / "ds_config.json",
        gpt_values(tmp_path, analysis, dp_size),
    )
    return config_json


def check_gpt_history(history):
    assert len(history) >= 6
    # the JSON's fp16 block (initial_scale_power 11) instead of a 2^32 start: no skipped steps
    assert all(h["update_successful"] for h in history)
    assert all(np.isfinite(h["lm loss"]) for h in history)
    kept = [h["random-LTD kept tokens"] for h in history]
    assert kept[0] == 16 and kept[-1] == SEQ and kept == sorted(kept)


def test_gpt_data_efficiency_launcher_runs_unchanged(corpus, tmp_path, capsys):
    config_json = gpt_launch(corpus, tmp_path)
    history = []
    pretrain(
        pretrain_gpt.datasets_provider,
        pretrain_gpt.model_provider,
        pretrain_gpt.forward_step,
        argv=gpt_command_line(corpus, tmp_path, config_json),
        history=history,
    )
    check_gpt_history(history)
    warned = capsys.readouterr().out
    assert "--zero-stage 1: ZeRO stage 1 maps to --use-distributed-optimizer" in warned
    assert "--data-impl mmap: no-op" in warned
    assert "train index forced from" in warned
    tags = _scalars(tmp_path / "tensorboard")
    assert {"forward-backward-time", "optimizer-time", "batch-generator-time"} <= tags


def _gpt_body(rank, world_size, argv):
    import torch

    torch.set_num_threads(1)
    history = []
    pretrain(
        pretrain_gpt.datasets_provider,
        pretrain_gpt.model_provider,
        pretrain_gpt.forward_step,
        argv=argv,
        history=history,
    )
    return history


@pytest.mark.parametrize("dp_size, pp_size", [(2, 1), (1, 2)])
def test_gpt_launcher_with_two_processes(corpus, tmp_path, dp_size, pp_size):
    """num_gpus=2: data parallel with ZeRO-1 (the launcher's default), or pp_size=2 no_pp=false."""
    from tests.distributed.launcher import run_distributed

    config_json = gpt_launch(corpus, tmp_path, dp_size)
    argv = gpt_command_line(corpus, tmp_path, config_json, dp_size, pp_size)
    histories = run_distributed(_gpt_body, 2, argv, timeout=240)
    check_gpt_history(histories[0])
    tags = _scalars(tmp_path / "tensorboard")
    assert {"forward-backward-time", "optimizer-time"} <= tags
    if pp_size == 2:  # rank 0 (the first stage) sends activations and receives gradients
        assert tags & {"forward-send-time", "forward-send-backward-recv-time"}
        assert "backward-recv-time" in tags or "forward-send-backward-recv-time" in tags


BERT_SEQ, BERT_EPOCHS = 64, 5


def bert_command_line(corpus, tmp_path, config_json):
    """ds_pretrain_bert_336M_base_script.sh with ltd_enabled=true cl_enabled=true."""
    seq_len, global_batch_size, dp_size, zero_stage, seed = BERT_SEQ, GBS, 1, 0, 1234
    batch_size = global_batch_size // dp_size
    train_tokens = 6 * seq_len * global_batch_size  # train_iters_in_million scaled
    save_interval = train_tokens // seq_len // global_batch_size // 2  # num_save=2
    train_idx_path = (
        f"{corpus['bert']}_train_indexmap_exact{BERT_EPOCHS}ep_{seq_len - 3}msl_0.10ssp_{seed}s.npy"
    )
    checkpoint_path, tensorboard_path = tmp_path / "checkpoint", tmp_path / "tensorboard"
    megatron_options = [
        "--override-opt_param-scheduler",
        "--adam-beta1", "0.9",
        "--adam-beta2", "0.999",
        "--tensor-model-parallel-size", "1",
        "--init-method-std", "0.02",
        "--lr-decay-tokens", str(train_tokens),
        "--lr-warmup-iters", "2",
        "--micro-batch-size", str(batch_size),
        "--exit-duration-in-mins", "30000000",
        "--global-batch-size", str(global_batch_size),
        "--num-layers", str(LAYERS),
        "--hidden-size", "32",
        "--num-attention-heads", "4",
        "--seq-length", str(seq_len),
        "--max-position-embeddings", str(seq_len),
        "--train-tokens", str(train_tokens),
        "--train-iters", "4000000",
        "--lr", "1e-4",
        "--min-lr", "1e-5",
        "--lr-decay-style", "linear",
        "--split", "949,50,1",
        "--log-interval", "1",
        "--eval-interval", "1000",
        "--eval-iters", "2",
        "--save-interval", str(save_interval),
        "--weight-decay", "1e-2",
        "--clip-grad", "1.0",
        "--num-workers", "0",
        "--fp16",
        "--seed", str(seed),
        "--load", str(checkpoint_path),
        "--save", str(checkpoint_path),
        "--tensorboard-queue-size", "1",
        "--log-timers-to-tensorboard",
        "--log-batch-size-to-tensorboard",
        "--log-validation-ppl-to-tensorboard",
        "--tensorboard-dir", str(tensorboard_path),
        "--log-optimizer-states-to-tensorboard",
        "--attention-dropout", "0.1",
        "--hidden-dropout", "0.1",
        "--random-ltd",
        "--train-idx-path", train_idx_path,
        "--data-efficiency-curriculum-learning",
    ]  # fmt: skip
    data_options = ["--vocab-file", corpus["bert_vocab"], "--data-path", corpus["bert"]]
    data_options += ["--data-impl", "mmap"]
    deepspeed_options = ["--deepspeed", "--deepspeed_config", config_json]
    deepspeed_options += ["--zero-stage", str(zero_stage), "--pipeline-model-parallel-size", "1"]
    deepspeed_options += ["--no-pipeline-parallel"]
    return megatron_options + data_options + deepspeed_options


def bert_values(tmp_path, analysis):
    voc = analysis / "vocab_rarity"
    return {
        "GBSIZE": GBS, "MBSIZE": GBS, "LOG_INTERVAL": 1, "ZERO_STAGE": 0,
        "PRESCALE_GRAD": "true", "DATA_EFFICIENCY_SEED": 1234,
        "LTD_ENABLED": "true", "LTD_MIN": 32, "LTD_MAX": BERT_SEQ, "LTD_STEP": 4,
        "CL_ENABLED": "true", "DATA_SAMPLING_NUM_WORKERS": 0,
        "CL_CLUSTER_PATH": tmp_path / "data_cluster",
        "CL_1st_METRIC_NAME": "voc",
        "CL_1st_SAMPLE_PATH": voc / "vocab_rarity_index_to_sample_percentile_merged",
        "CL_1st_METRIC_PATH": voc / "vocab_rarity_index_to_metric",
        "CL_1st_DIFF_TYPE": "percentile", "CL_1st_CLUSTER_TYPE": "schedule_based",
        "CL_1st_MIN": 1, "CL_1st_MAX": 100, "CL_1st_TOTAL_STEP": 4,
        "CL_1st_DIFF_STEP": 1, "CL_1st_ROOT": 2,
        "CL_2nd_METRIC_NAME": "seqlen_truncate",
        "CL_2nd_SAMPLE_PATH": "dummy", "CL_2nd_METRIC_PATH": "dummy",
        "CL_2nd_DIFF_TYPE": "value", "CL_2nd_CLUSTER_TYPE": "single_cluster",
        "CL_2nd_MIN": 16, "CL_2nd_MAX": BERT_SEQ, "CL_2nd_TOTAL_STEP": 4,
        "CL_2nd_DIFF_STEP": 8, "CL_2nd_ROOT": 1,
    }  # fmt: skip


def test_bert_data_efficiency_launcher_runs_unchanged(corpus, tmp_path, capsys):
    analysis = tmp_path / f"analysis_pile_bert_{BERT_EPOCHS}epoch"
    tok = ["--vocab-file", corpus["bert_vocab"]]
    for task in ("map", "reduce"):
        _analyze(
            analysis_options(task, "BERT", corpus["bert"], tok, analysis, BERT_EPOCHS, BERT_SEQ)
        )
    (tmp_path / "data_cluster").mkdir()
    config_json = ds_config(
        "ds_config_bert_2clmetrics_TEMPLATE.json",
        tmp_path / "ds_config.json",
        bert_values(tmp_path, analysis),
    )
    history = []
    pretrain(
        pretrain_bert.datasets_provider,
        pretrain_bert.model_provider,
        pretrain_bert.forward_step,
        argv=bert_command_line(corpus, tmp_path, config_json),
        model_type="bert",
        history=history,
    )
    assert len(history) >= 6
    assert all(h["update_successful"] for h in history)
    assert all(np.isfinite(h["lm loss"]) for h in history)
    seqlens = [h["curriculum seqlen"] for h in history]
    assert seqlens[0] < BERT_SEQ and seqlens[-1] == BERT_SEQ and seqlens == sorted(seqlens)
    out = capsys.readouterr().out
    assert "--zero-stage 0: ZeRO stage 0: no optimizer sharding" in out
    assert "train sample mapping forced from" in out


def test_without_the_forced_index_the_error_names_the_flag_that_matches_the_analysis(
    corpus, tmp_path
):
    """The analysis saw exactly 1 epoch; a training split built for the budget is another one."""
    argv = gpt_command_line(corpus, tmp_path, gpt_launch(corpus, tmp_path))
    for flag in ("--train-doc-idx-path", "--train-sample-idx-path", "--train-shuffle-idx-path"):
        i = argv.index(flag)
        argv = argv[:i] + argv[i + 2 :]
    with pytest.raises(ValueError, match="train with --train-data-exact-num-epochs 1, or re-run"):
        pretrain(
            pretrain_gpt.datasets_provider,
            pretrain_gpt.model_provider,
            pretrain_gpt.forward_step,
            argv=argv,
        )
