"""tools/analyze_data.py: single process, a 2-rank torchrun (gloo) run, a re-run worker, BERT
with tokenizer flags, user metrics, and errors; outputs checked against per-sample loops."""

import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.core.curriculum import analysis_output as O
from megatron.core.curriculum.metrics import vocab_rarity_table
from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron.core.datasets.token_counts import save_token_counts, token_counts_path
from tools.analyze_data import main as analyze_main

VOCAB = 400
OUTPUTS = (O.SAMPLE_TO_METRIC, O.INDEX_TO_SAMPLE, O.INDEX_TO_METRIC, O.PERCENTILE_MERGED)


def write_corpus(prefix, seed, docs, sentences=(1, 2), length=(1, 150), low=10, high=VOCAB):
    rng = np.random.default_rng(seed)
    counts = np.zeros(high, dtype=np.int64)
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16) as builder:
        for _ in range(docs):
            for _ in range(int(rng.integers(*sentences))):
                tokens = low + rng.zipf(1.4, size=int(rng.integers(*length))) % (high - low)
                counts += np.bincount(tokens, minlength=high)
                builder.add_item(tokens)
            builder.end_document()
        builder.finalize(prefix + ".idx")
    save_token_counts(token_counts_path(prefix), counts)  # as preprocessing writes it
    return counts


def gpt_flags(prefix, save, cache):
    return [
        "--dataset-type",
        "GPT",
        "--data-path",
        prefix,
        "--split",
        "90,10,0",
        "--seq-length",
        "32",
        "--seed",
        "7",
        "--train-samples",
        "700",
        "--data-cache-path",
        cache,
        "--save",
        save,
        "--vocab-size",
        str(VOCAB),
    ]


def per_sample(samples, counts, max_tokens=33):
    """Every built-in metric by per-sample loops (total_vocab_freq: the summed bincount)."""
    table = vocab_rarity_table(counts)
    rarity = []
    for s in samples:
        total = 0.0
        for t in s:
            total += float(table[int(t)])
        rarity.append(int(total))
    coefficient = 10 ** (int(np.ceil(np.log10(max_tokens * table.max()))) + 1)
    freq = [0] * counts.size
    for s in samples:
        for t in s:
            freq[int(t)] += 1
    return {
        "seqlen": [len(s) for s in samples],
        "vocab_rarity": rarity,
        "seqlen_vocab_rarity": [len(s) * coefficient + r for s, r in zip(samples, rarity)],
        "total_vocab_freq": freq,
    }


def rows(save, name, kind):
    flat, ptr, doc = O.read_rows(O.metric_prefix(save, name, kind))
    return [flat[ptr[i] : ptr[i + 1]].tolist() for i in range(ptr.size - 1)], doc.tolist()


def check_against(save, name, values):
    """The output rows equal those grouped by hand from per-sample values."""
    got, doc = rows(save, name, O.SAMPLE_TO_METRIC)
    assert got == [[v] for v in values] and doc == [0, len(values), len(values)]
    groups = {}
    for i, v in enumerate(values):
        groups.setdefault(v, []).append(i)
    keys = sorted(groups)
    assert rows(save, name, O.INDEX_TO_SAMPLE)[0] == [groups[k] for k in keys]
    assert rows(save, name, O.INDEX_TO_METRIC)[0] == [[k] for k in keys]
    step = max(1, len(keys) // 100)
    merged = [sum((groups[k] for k in keys[i : i + step]), []) for i in range(0, len(keys), step)]
    assert rows(save, name, O.PERCENTILE_MERGED)[0] == merged


def output_bytes(save, names):
    return {
        (n, k, ext): open(O.metric_prefix(save, n, k) + ext, "rb").read()
        for n in names
        for k in OUTPUTS
        for ext in (".bin", ".idx")
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyze")
    counts = write_corpus(str(tmp / "gpt"), 1, 150)
    return tmp, str(tmp / "gpt"), counts


def gpt_samples(corpus):
    tmp, prefix, _ = corpus
    config = GPTDatasetConfig(
        random_seed=7, sequence_length=32, split="90,10,0", path_to_cache=str(tmp / "cache")
    )
    indexed = IndexedDataset(prefix)
    dataset = GPTDataset(indexed, prefix, np.arange(135), 700, "train", config)  # 90% of 150
    return [dataset[i]["text"] for i in range(len(dataset))]


def test_single_process_matches_per_sample_loops(corpus, capsys):
    tmp, prefix, counts = corpus
    save = str(tmp / "single")
    names = ["seqlen", "vocab_rarity", "seqlen_vocab_rarity", "total_vocab_freq"]
    argv = gpt_flags(prefix, save, str(tmp / "cache")) + ["--metric", *names]
    assert analyze_main(argv) == 0
    err = capsys.readouterr().err
    assert "samples/s" in err and "ETA" in err
    expected = per_sample(gpt_samples(corpus), counts)
    for name in names[:3]:
        check_against(save, name, expected[name])
    assert O.load_metric_value(save, "total_vocab_freq").tolist() == expected["total_vocab_freq"]
    flat, _, doc = O.read_rows(O.metric_prefix(save, "total_vocab_freq", O.METRIC_VALUE))
    assert doc.tolist() == [0, 1] and flat.dtype.kind in "iu"
    assert len(set(expected["vocab_rarity"])) > 30
    assert analyze_main(argv) == 0  # a second run skips the finished shard
    assert "already done" in capsys.readouterr().err


def test_torchrun_two_ranks_and_a_rerun_worker(corpus, repo_root):
    tmp, prefix, _ = corpus
    single, multi = str(tmp / "ref"), str(tmp / "torchrun")
    names = ["seqlen", "vocab_rarity"]
    common = gpt_flags(prefix, single, str(tmp / "cache")) + ["--metric", *names]
    assert analyze_main(common) == 0
    flags = gpt_flags(prefix, multi, str(tmp / "cache")) + ["--metric", *names]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        os.path.join(repo_root, "tools", "analyze_data.py"),
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[worker 1/2]" in run.stderr and "reduced vocab_rarity from 2 worker(s)" in run.stderr
    assert output_bytes(multi, names) == output_bytes(single, names)
    # worker 1 "fails": its shard is lost; re-run it alone, then reduce
    for name in names:
        for path in (
            os.path.join(multi, name, "map", "worker-00001-of-00002" + e) for e in (".npy", ".json")
        ):
            os.remove(path)
    assert analyze_main(flags[:] + ["--reduce-only", "--num-workers", "2"]) == 2  # shard missing
    assert analyze_main(flags + ["--worker-id", "1", "--num-workers", "2"]) == 0
    assert analyze_main(["--save", multi, "--metric", *names, "--reduce-only"]) == 0
    assert output_bytes(multi, names) == output_bytes(single, names)


def test_user_float_metric_and_token_counts_flag(corpus, tmp_path, monkeypatch):
    tmp, prefix, counts = corpus
    (tmp_path / "my_metrics.py").write_text(
        "import numpy as np\ndef spread(samples):\n    return [float(np.std(s)) for s in samples]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    flat = np.ones(VOCAB, dtype=np.int64)
    np.save(tmp_path / "flat.npy", flat)
    save = str(tmp_path / "out")
    argv = gpt_flags(prefix, save, str(tmp / "cache")) + [
        "--metric",
        "spread=my_metrics:spread",
        "vocab_rarity",
        "--token-counts",
        str(tmp_path / "flat.npy"),
    ]
    assert analyze_main(argv) == 0
    samples = gpt_samples(corpus)
    spread = [float(np.std(s)) for s in samples]
    index = O.load_metric_index(save, "spread")
    assert index.is_float and index.sample_to_metric.tolist() == spread
    ranks = {v: r for r, v in enumerate(sorted(set(spread)))}
    check_against(save, "spread", [ranks[v] for v in spread])
    check_against(save, "vocab_rarity", per_sample(samples, flat)["vocab_rarity"])


def test_bert_with_tokenizer_flags(tmp_path, tokenizer_dir):
    vocab_file = str(tokenizer_dir / "bert-base-uncased-vocab.txt")
    prefix = str(tmp_path / "sent")
    from megatron.tokenizer import TokenizerConfig, build_tokenizer

    tokenizer = build_tokenizer(TokenizerConfig("BertWordPieceLowerCase", vocab_file=vocab_file))
    counts = write_corpus(
        prefix, 4, 120, sentences=(1, 8), length=(1, 30), low=1000, high=tokenizer.vocab_size
    )
    save = str(tmp_path / "out")
    argv = [
        "--dataset-type",
        "BERT",
        "--data-path",
        prefix,
        "--split",
        "100,0,0",
        "--seq-length",
        "48",
        "--seed",
        "3",
        "--train-samples",
        "400",
        "--data-cache-path",
        str(tmp_path / "cache"),
        "--save",
        save,
        "--tokenizer-type",
        "BertWordPieceLowerCase",
        "--vocab-file",
        vocab_file,
        "--metric",
        "seqlen",
        "seqlen_vocab_rarity",
    ]
    assert analyze_main(argv) == 0
    config = BertDatasetConfig(
        random_seed=3,
        sequence_length=48,
        split="100,0,0",
        path_to_cache=str(tmp_path / "cache"),
        tokenizer=tokenizer,
    )
    indexed = IndexedDataset(prefix)
    dataset = BertDataset(indexed, prefix, np.arange(120), 400, "train", config)
    samples = []
    for i in range(len(dataset)):
        item = dataset[i]
        n = int(item["padding_mask"].sum())
        samples.append(np.where(item["loss_mask"] == 1, item["labels"], item["text"])[:n])
    expected = per_sample(samples, counts, max_tokens=48)
    check_against(save, "seqlen", expected["seqlen"])
    check_against(save, "seqlen_vocab_rarity", expected["seqlen_vocab_rarity"])


def test_errors(corpus, tmp_path, capsys):
    tmp, prefix, _ = corpus
    base = gpt_flags(prefix, str(tmp_path / "e"), str(tmp / "cache"))
    assert analyze_main(base + ["--metric", "vocab_rarty"]) == 2
    assert "did you mean 'vocab_rarity'" in capsys.readouterr().err
    assert (
        analyze_main(["--save", str(tmp_path / "none"), "--metric", "seqlen", "--reduce-only"]) == 2
    )
    assert "--num-workers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze_main(["--save", "x", "--metric", "seqlen"])  # no dataset flags
