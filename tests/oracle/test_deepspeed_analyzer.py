"""DeepSpeed's DataAnalyzer as an oracle for our curriculum analysis.

DeepSpeed 0.19.8 lives in its own venv (no system site packages) under
`$MEGATRON_ORACLE_CACHE/deepspeed-venv` (default `~/.cache/megatron-de-oracles/deepspeed-venv`),
made once and reused: torch 2.13.0 first, from the local wheel only (any other torch would pull a
multi-GB CUDA build), then `DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed==0.19.8`.
The tests skip with the reason when that fails. DataAnalyzer runs in a subprocess of that venv
with DS_ACCELERATOR=cpu, torch.set_num_threads(1) and one process (its distributed variant is
broken with 2+ processes), on the very samples we analyse (exported as padded arrays with a
padding mask), with the metric functions of Megatron-DeepSpeed's analyze_data.py. We compare
every output file's rows, document boundaries and (where DeepSpeed picks a code 1-5 dtype)
dtypes.

`ensure_deepspeed_python` and `run_deepspeed_analyzer` are also used by
benchmarks/bench_analysis.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time

import numpy as np
import pytest

from tests.oracle.venvs import TORCH_VERSION, OracleUnavailable, ensure_venv, run
from tests.oracle.venvs import build_seconds as _build_seconds

DEEPSPEED_VERSION = "0.19.8"
VENV = "deepspeed-venv"
_CHECK = (
    "import torch, deepspeed, numpy; "
    "from deepspeed.runtime.data_pipeline.data_sampling.data_analyzer import DataAnalyzer; "
    "print(deepspeed.__version__)"
)
_ENV = {"DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0", "OMP_NUM_THREADS": "1"}
OUTPUT_KINDS = (
    "sample_to_metric",
    "index_to_sample",
    "index_to_metric",
    "index_to_sample_percentile_merged",
    "metric_value",
)

DeepSpeedUnavailable = OracleUnavailable  # the name benchmarks/bench_analysis.py imports


def _run(cmd, timeout: float) -> subprocess.CompletedProcess:
    return run(cmd, timeout, _ENV)


def ensure_deepspeed_python() -> pathlib.Path:
    """Python of a working DeepSpeed venv, made on first use.

    Raises:
        DeepSpeedUnavailable: the venv cannot be made here.
    """
    pin = f"torch=={TORCH_VERSION}"
    packages = [
        ([pin, "numpy"], "install torch's dependencies and numpy"),
        (
            ["--no-build-isolation", pin, f"deepspeed=={DEEPSPEED_VERSION}"],
            f"install deepspeed {DEEPSPEED_VERSION}",
        ),
    ]
    return ensure_venv(VENV, packages, _CHECK, lambda out: out.endswith(DEEPSPEED_VERSION), _ENV)


def build_seconds():
    """Seconds the cached venv took to build (None when it was made by hand)."""
    return _build_seconds(VENV)


# Runs inside the DeepSpeed venv: DataAnalyzer with Megatron-DeepSpeed's analyze_data.py metrics
# on padded samples (text, padding_mask), then every output file dumped to one .npz.
DS_WORKER = r"""
import json, math, sys, time
import numpy as np
import torch
torch.set_num_threads(1)  # DataAnalyzer forks; more threads deadlock
from deepspeed.runtime.data_pipeline.data_sampling.data_analyzer import DataAnalyzer
from deepspeed.runtime.data_pipeline.data_sampling.indexed_dataset import MMapIndexedDataset

job = json.load(open(sys.argv[1]))
arrays = np.load(job["samples"])
TEXT, MASK = arrays["text"], arrays["padding_mask"]
V, SEQ, SAVE = job["vocab_size"], job["seq_length"], job["save"]

class Samples(torch.utils.data.Dataset):
    def __len__(self):
        return TEXT.shape[0]
    def __getitem__(self, i):
        # "index" as Megatron-DeepSpeed's datasets give it: DataAnalyzer takes sample ids from it
        # (without it, it counts a dict batch as len(dict) = 3 samples and mislabels ids)
        return {"text": TEXT[i], "padding_mask": MASK[i], "index": np.array([i], dtype=np.int64)}

state = {}
def seqlen(d):
    return torch.count_nonzero(d["padding_mask"], dim=1).to(torch.int64)
def total_vocab_freq(d):
    f = torch.bincount(d["text"].view(-1), minlength=V, weights=d["padding_mask"].view(-1))
    return f.to(torch.int64)
def rarity(d):
    return torch.sum(d["padding_mask"] * state["table"][d["text"]], dim=1).to(torch.long)
def vocab_rarity(d):
    return rarity(d)
def seqlen_vocab_rarity(d):
    return seqlen(d) * state["coeff"] + rarity(d)
FUNCTIONS = dict(seqlen=seqlen, total_vocab_freq=total_vocab_freq, vocab_rarity=vocab_rarity,
                 seqlen_vocab_rarity=seqlen_vocab_rarity)
TYPES = dict(total_vocab_freq="accumulate_value_over_samples")

def analyze(names):
    da = DataAnalyzer(Samples(), num_workers=1, worker_id=0, num_threads=1, num_threads_reduce=1,
                      batch_size=job["batch_size"], metric_names=names,
                      metric_functions=[FUNCTIONS[n] for n in names],
                      metric_types=[TYPES.get(n, "single_value_per_sample") for n in names],
                      metric_dtypes=[torch.int64] * len(names), save_path=SAVE)
    t0 = time.perf_counter(); da.run_map(); t1 = time.perf_counter(); da.run_reduce()
    return {"map": t1 - t0, "reduce": time.perf_counter() - t1}

timings = {}
rare = [n for n in job["metrics"] if n in ("vocab_rarity", "seqlen_vocab_rarity")]
first = [n for n in job["metrics"] if n not in rare]
for n in first:
    timings[n] = analyze([n])
if rare:
    if job.get("token_counts"):
        freq = np.load(job["token_counts"])
    else:
        prefix = f"{SAVE}/total_vocab_freq/total_vocab_freq_metric_value"
        stored = MMapIndexedDataset(prefix, skip_warmup=True)
        freq = np.copy(stored[0])  # (keep `stored` alive: its rows are views of its mmap)
    # analyze_data.py's table. int64 first: the file's narrow dtype (uint16) makes its plain
    # sum() overflow upstream.
    freq = freq.astype(np.int64)
    freq[freq == 0] = 1
    table = np.log(freq / sum(freq)) * -1
    state["table"] = torch.tensor(table, dtype=torch.double)
    state["coeff"] = 10 ** (math.ceil(math.log(SEQ * torch.max(state["table"]).item(), 10)) + 1)
    for n in rare:
        timings[n] = analyze([n])
dump = {}
for n in job["metrics"]:
    for kind in ("sample_to_metric", "index_to_sample", "index_to_metric",
                 "index_to_sample_percentile_merged", "metric_value"):
        prefix = f"{SAVE}/{n}/{n}_{kind}"
        try:
            ds = MMapIndexedDataset(prefix, skip_warmup=True)
        except FileNotFoundError:
            continue
        rows = [np.asarray(ds[i]) for i in range(len(ds))]
        flat = np.concatenate(rows) if rows else np.zeros(0)
        dump[f"{n}/{kind}/flat"] = flat.astype(np.int64)
        dump[f"{n}/{kind}/sizes"] = np.array([r.size for r in rows], dtype=np.int64)
        dump[f"{n}/{kind}/doc_idx"] = np.array(ds.doc_idx, dtype=np.int64)  # a copy, not a view
        dump[f"{n}/{kind}/dtype"] = np.array(np.dtype(ds.dtype).name)
np.savez(job["dump"], **dump)
print(json.dumps({"timings": timings, "coeff": state.get("coeff")}))
"""


def run_deepspeed_analyzer(
    python,
    text,
    padding_mask,
    metrics,
    vocab_size,
    seq_length,
    workdir,
    batch_size=256,
    token_counts=None,
) -> tuple:
    """Run DataAnalyzer on padded samples; returns (outputs {metric/kind/field: array}, report)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(
        workdir / "samples.npz",
        text=np.asarray(text, np.int64),
        padding_mask=np.asarray(padding_mask, np.int64),
    )
    job = {
        "samples": str(workdir / "samples.npz"),
        "metrics": list(metrics),
        "vocab_size": int(vocab_size),
        "seq_length": int(seq_length),
        "batch_size": batch_size,
        "save": str(workdir / "ds_out"),
        "dump": str(workdir / "ds_dump.npz"),
        "token_counts": str(token_counts) if token_counts is not None else None,
    }
    (workdir / "job.json").write_text(json.dumps(job))
    (workdir / "ds_worker.py").write_text(DS_WORKER)
    r = _run([python, "-I", workdir / "ds_worker.py", workdir / "job.json"], timeout=1200)
    if r.returncode != 0:
        raise AssertionError(
            f"DeepSpeed DataAnalyzer failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    report = json.loads(r.stdout.strip().splitlines()[-1])
    with np.load(workdir / "ds_dump.npz") as dump:
        return {k: dump[k] for k in dump.files}, report


def padded(samples, pad_id=0):
    """(text, padding_mask) int64 [N, longest] of a list of token arrays."""
    width = max(s.size for s in samples)
    text = np.full((len(samples), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(samples), width), dtype=np.int64)
    for i, s in enumerate(samples):
        text[i, : s.size], mask[i, : s.size] = s, 1
    return text, mask


# ------------------------------------------------------------------------------------- tests

VOCAB = 700
METRICS = ["seqlen", "total_vocab_freq", "vocab_rarity", "seqlen_vocab_rarity"]


def _write_corpus(prefix, rng, num_docs, sentences=(1, 8), length=(2, 40)):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    # Zipf-like ids so that rarity varies and many ids never occur (zero counts).
    weights = 1.0 / np.arange(1, VOCAB - 9) ** 1.1
    weights /= weights.sum()
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16) as builder:
        for _ in range(num_docs):
            for _ in range(rng.integers(*sentences)):
                builder.add_item(10 + rng.choice(VOCAB - 10, size=rng.integers(*length), p=weights))
            builder.end_document()
        builder.finalize(prefix + ".idx")


@pytest.fixture(scope="module")
def deepspeed_python():
    try:
        return ensure_deepspeed_python()
    except DeepSpeedUnavailable as e:
        pytest.skip(f"DeepSpeed oracle venv unavailable: {e}")


def _datasets(tmp):
    from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    rng = np.random.default_rng(11)
    _write_corpus(str(tmp / "bert"), rng, 700)
    _write_corpus(str(tmp / "gpt"), rng, 300, sentences=(1, 2), length=(5, 300))
    bert_cfg = BertDatasetConfig(
        random_seed=3,
        sequence_length=64,
        path_to_cache=str(tmp / "cache"),
        cls_id=1,
        sep_id=2,
        mask_id=3,
        pad_id=0,
        vocab_size=VOCAB,
    )
    bert_ix = IndexedDataset(str(tmp / "bert"))
    bert = BertDataset(bert_ix, str(tmp / "bert"), np.arange(700), 3000, "train", bert_cfg)
    gpt_cfg = GPTDatasetConfig(random_seed=4, sequence_length=48, path_to_cache=str(tmp / "cache"))
    gpt_ix = IndexedDataset(str(tmp / "gpt"))
    gpt = GPTDataset(gpt_ix, str(tmp / "gpt"), np.arange(300), 2000, "train", gpt_cfg)
    return {"bert": bert, "gpt": gpt}


def _ours(dataset, save):
    """Our analysis of every metric: total_vocab_freq first, rarity from its output (as DS)."""
    from megatron.core.curriculum.analysis import build_metrics, run_map, run_reduce
    from megatron.core.curriculum.metrics import CurriculumMetricsConfig
    from megatron.core.curriculum.scoring import make_sample_source

    source = make_sample_source(dataset)
    freq = os.path.join(save, "total_vocab_freq", "total_vocab_freq_metric_value")
    for group, counts in (
        (["seqlen", "total_vocab_freq"], None),
        (["vocab_rarity", "seqlen_vocab_rarity"], freq),
    ):
        metrics = build_metrics(source, CurriculumMetricsConfig(group, VOCAB, counts))
        run_map(source, metrics, save)
        for m in group:
            run_reduce(save, m, 1)
    return source


@pytest.fixture(scope="module")
def compared(tmp_path_factory, deepspeed_python):
    """(ours save path, DS dump, DS report, source) per dataset kind."""
    tmp = tmp_path_factory.mktemp("ds_oracle")
    start = time.perf_counter()
    results = {}
    for kind, dataset in _datasets(tmp).items():
        save = str(tmp / f"ours_{kind}")
        source = _ours(dataset, save)
        samples = (
            [source.unmasked(i) for i in range(len(dataset))]
            if kind == "bert"
            else [dataset[i]["text"] for i in range(len(dataset))]
        )
        text, mask = padded(samples)
        dump, report = run_deepspeed_analyzer(
            deepspeed_python,
            text,
            mask,
            METRICS,
            VOCAB,
            source.max_sample_tokens,
            tmp / f"ds_{kind}",
        )
        results[kind] = (save, dump, report, source)
    print(
        f"\nDeepSpeed venv build: {build_seconds()} s (cached: it is reused); oracle runs "
        f"{time.perf_counter() - start:.1f} s"
    )
    return results


@pytest.mark.parametrize("kind", ["bert", "gpt"])
@pytest.mark.parametrize("metric", METRICS)
def test_outputs_identical_to_deepspeed(compared, kind, metric):
    from megatron.core.curriculum.analysis_output import metric_prefix, read_rows

    save, dump, _, source = compared[kind]
    kinds = ["metric_value"] if metric == "total_vocab_freq" else list(OUTPUT_KINDS[:4])
    for out in kinds:
        key = f"{metric}/{out}"
        assert f"{key}/flat" in dump, f"DeepSpeed wrote no {key}"
        flat, row_ptr, doc_idx = read_rows(metric_prefix(save, metric, out))
        np.testing.assert_array_equal(flat.astype(np.int64), dump[f"{key}/flat"], err_msg=key)
        np.testing.assert_array_equal(np.diff(row_ptr), dump[f"{key}/sizes"], err_msg=key)
        np.testing.assert_array_equal(doc_idx, dump[f"{key}/doc_idx"], err_msg=key)
        ds_dtype = np.dtype(str(dump[f"{key}/dtype"]))
        if ds_dtype.name in ("uint8", "int8", "int16", "int32", "int64"):  # codes 1-5 agree
            assert flat.dtype == ds_dtype, key
        else:  # DS chose uint16/32/64 (codes 6-8): ours is the code 1-5 type holding the range
            assert flat.dtype.kind == "i" and flat.dtype.itemsize >= ds_dtype.itemsize, key
    if metric == "seqlen" and kind == "bert":
        assert np.unique(dump[f"{metric}/sample_to_metric/flat"]).size > 10  # not degenerate
    if metric == "vocab_rarity":
        assert np.unique(dump[f"{metric}/sample_to_metric/flat"]).size > 50


def test_in_builder_values_equal_deepspeed(compared, tmp_path):
    """The dataset-built values (same frequencies) equal DeepSpeed's sample_to_metric."""
    from megatron.core.curriculum.analysis import attach_metrics
    from megatron.core.curriculum.metrics import CurriculumMetricsConfig

    for kind in ("bert", "gpt"):
        save, dump, _, source = compared[kind]
        dataset = source.dataset
        freq = os.path.join(save, "total_vocab_freq", "total_vocab_freq_metric_value")
        config = CurriculumMetricsConfig(METRICS[:1] + METRICS[2:], VOCAB, freq)
        values = attach_metrics(dataset, config)
        for metric in ("seqlen", "vocab_rarity", "seqlen_vocab_rarity"):
            np.testing.assert_array_equal(values[metric], dump[f"{metric}/sample_to_metric/flat"])
