"""Curriculum analysis throughput: ours vs DeepSpeed's DataAnalyzer on the same samples.

For GPT samples (synthetic corpus, --seq-length) and BERT samples (synthetic sentence-split
corpus, --bert-seq-length) and the metrics `seqlen` and `vocab_rarity`, measures in one run:

- ours, built into the dataset index (`compute_metric_values`: values of every sample);
- ours, the tool pipeline (`run_map` + `run_reduce`: values, sort, all DeepSpeed-layout files);
- DeepSpeed 0.19.8 DataAnalyzer (run_map + run_reduce, one process, its own venv; see
  tests/oracle/test_deepspeed_analyzer.py) on the same samples handed to it as in-memory padded
  arrays, so its time is its analysis alone, not sample production (conservative for us). It
  reports its own timing; our outputs are checked to equal its outputs.

Prints one JSON line per measurement: name, config, value (ours, samples/s, median of
--repeats), unit, reference_value (DeepSpeed, samples/s, median), ratio (ours / DeepSpeed), and
extra fields. --skip-deepspeed measures ours only.

    python benchmarks/bench_analysis.py [--gpt-samples 20000] [--seq-length 1024]
        [--bert-samples 20000] [--bert-seq-length 128] [--repeats 3] [--skip-deepspeed]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

import numpy as np  # noqa: E402

from megatron.core import kernels  # noqa: E402
from megatron.core.curriculum import analysis as A  # noqa: E402
from megatron.core.curriculum import analysis_output as O  # noqa: E402
from megatron.core.curriculum.metrics import CurriculumMetricsConfig  # noqa: E402
from megatron.core.curriculum.scoring import make_sample_source  # noqa: E402
from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402
from megatron.core.datasets.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetBuilder,
)  # noqa: E402
from megatron.core.datasets.token_counts import save_token_counts, token_counts_path  # noqa: E402

METRICS = ("seqlen", "vocab_rarity")


def write_corpus(prefix, rng, tokens, vocab, sentences=(1, 2), length=(50, 4000)):
    """A Zipf-distributed corpus of about `tokens` tokens plus its token-count file."""
    counts = np.zeros(vocab, dtype=np.int64)
    written = 0
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16) as builder:
        while written < tokens:
            for _ in range(int(rng.integers(*sentences))):
                doc = (rng.zipf(1.2, size=int(rng.integers(*length))) + 9) % vocab
                counts += np.bincount(doc, minlength=vocab)
                builder.add_item(doc)
                written += doc.size
            builder.end_document()
        builder.finalize(prefix + ".idx")
    save_token_counts(token_counts_path(prefix), counts)
    return counts


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_ours(source, metric, folder, repeats):
    """(in-builder seconds, tool map+reduce seconds) medians for one metric."""
    metrics = A.build_metrics(source, CurriculumMetricsConfig([metric]))
    builtin = median_seconds(lambda: A.compute_metric_values(source, metrics), repeats)

    def pipeline():
        A.run_map(source, metrics, folder, overwrite=True)
        A.run_reduce(folder, metric, 1)

    return builtin, median_seconds(pipeline, repeats)


def measure_deepspeed(samples, counts, max_tokens, folder, repeats):
    """DeepSpeed's per-metric map+reduce seconds (medians) and its outputs, or None."""
    from tests.oracle.test_deepspeed_analyzer import (
        DeepSpeedUnavailable,
        ensure_deepspeed_python,
        padded,
        run_deepspeed_analyzer,
    )

    try:
        python = ensure_deepspeed_python()
    except DeepSpeedUnavailable as exc:
        print(f"DeepSpeed unavailable ({exc}); measuring ours only", file=sys.stderr)
        return None, None
    text, mask = padded(samples)
    np.save(os.path.join(folder, "counts.npy"), counts)
    runs, dump = {m: [] for m in METRICS}, None
    for r in range(repeats):
        dump, report = run_deepspeed_analyzer(
            python,
            text,
            mask,
            METRICS,
            counts.size,
            max_tokens,
            os.path.join(folder, f"ds{r}"),
            batch_size=1024,
            token_counts=os.path.join(folder, "counts.npy"),
        )
        for m in METRICS:
            runs[m].append(report["timings"][m]["map"] + report["timings"][m]["reduce"])
    return {m: statistics.median(t) for m, t in runs.items()}, dump


def check_equal(folder, dump):
    for m in METRICS:
        for kind in (O.SAMPLE_TO_METRIC, O.INDEX_TO_SAMPLE, O.INDEX_TO_METRIC, O.PERCENTILE_MERGED):
            flat, _, _ = O.read_rows(O.metric_prefix(folder, m, kind))
            if not np.array_equal(flat.astype(np.int64), dump[f"{m}/{kind}/flat"]):
                raise SystemExit(f"our {m} {kind} differs from DeepSpeed's")


def bench(kind, dataset, samples_fn, counts, args, folder):
    source = make_sample_source(dataset)
    n = source.num_samples
    ours = {m: measure_ours(source, m, os.path.join(folder, "ours"), args.repeats) for m in METRICS}
    ds, dump = (None, None)
    if not args.skip_deepspeed:
        ds, dump = measure_deepspeed(
            samples_fn(), counts, source.max_sample_tokens, folder, args.repeats
        )
        if dump is not None:
            check_equal(os.path.join(folder, "ours"), dump)
    config = {
        "dataset": kind,
        "samples": n,
        "sample_tokens": source.max_sample_tokens,
        "vocab": int(counts.size),
        "cpp_kernels": kernels.available(kernels.DATASET_HELPERS),
        "repeats": args.repeats,
    }
    for m in METRICS:
        builtin, pipeline = ours[m]
        for name, seconds in (("in_builder", builtin), ("tool_map_reduce", pipeline)):
            line = {
                "name": f"analysis_{m}_{kind}_{name}",
                "config": config,
                "value": n / seconds,
                "unit": "samples/s",
                "seconds": seconds,
            }
            if ds is not None:
                line.update(
                    reference="deepspeed 0.19.8 DataAnalyzer run_map+run_reduce, 1 process, "
                    "samples in memory",
                    reference_value=n / ds[m],
                    reference_seconds=ds[m],
                    ratio=ds[m] / seconds,
                )
            print(json.dumps(line), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpt-samples", type=int, default=20000)
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--bert-samples", type=int, default=20000)
    p.add_argument("--bert-seq-length", type=int, default=128)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-deepspeed", action="store_true")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpt_samples:
            prefix = os.path.join(tmp, "gpt")
            counts = write_corpus(prefix, rng, args.gpt_samples * args.seq_length + 1, args.vocab)
            config = GPTDatasetConfig(
                random_seed=1,
                sequence_length=args.seq_length,
                path_to_cache=os.path.join(tmp, "cache"),
                create_attention_mask=False,
            )
            indexed = IndexedDataset(prefix)
            ds = GPTDataset(
                indexed, prefix, np.arange(len(indexed)), args.gpt_samples, "train", config
            )
            samples = lambda: [ds[i]["text"] for i in range(len(ds))]  # noqa: E731
            os.makedirs(os.path.join(tmp, "g"))
            bench("gpt", ds, samples, counts, args, os.path.join(tmp, "g"))
        if args.bert_samples:
            prefix = os.path.join(tmp, "bert")
            tokens = args.bert_samples * args.bert_seq_length
            counts = write_corpus(prefix, rng, tokens, args.vocab, (2, 12), (5, 40))
            config = BertDatasetConfig(
                random_seed=1,
                sequence_length=args.bert_seq_length,
                path_to_cache=os.path.join(tmp, "cache"),
                cls_id=1,
                sep_id=2,
                mask_id=3,
                pad_id=0,
                vocab_size=args.vocab,
            )
            indexed = IndexedDataset(prefix)
            docs = np.arange(indexed.num_documents)
            ds_b = BertDataset(indexed, prefix, docs, args.bert_samples, "train", config)
            source = make_sample_source(ds_b)
            samples = lambda: [source.unmasked(i) for i in range(len(ds_b))]  # noqa: E731
            os.makedirs(os.path.join(tmp, "b"))
            bench("bert", ds_b, samples, counts, args, os.path.join(tmp, "b"))


if __name__ == "__main__":
    main()
