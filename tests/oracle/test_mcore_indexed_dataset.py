"""megatron-core as an oracle for our MMIDIDX files.

megatron-core (in its own venv, see mcore_env.py) reads the files we write, writes byte-identical
files from the same documents, merges byte-identically, and agrees on dtype codes. All megatron-core
work runs in one subprocess per module (its import alone takes seconds).
"""

import json

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder
from megatron.core.datasets.merge import merge_datasets
from tests.oracle.mcore_env import (
    OracleUnavailable,
    build_seconds,
    ensure_mcore_python,
    run_mcore_worker,
)

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

VOCAB_SIZES = [1, 255, 256, 50257, 65499, 65500, 65535, 70000, 250000]


def _random_docs(rng, dtype, n_docs, max_seq=12, max_seqs_per_doc=4):
    """(tokens, sequence_lengths, document_sequences) of random documents, some empty sequences."""
    dtype = np.dtype(dtype)
    doc_seqs = rng.integers(1, max_seqs_per_doc + 1, size=n_docs)
    lengths = rng.integers(0, max_seq + 1, size=int(doc_seqs.sum()))
    n = int(lengths.sum())
    if dtype.kind == "f":
        tokens = rng.standard_normal(n).astype(dtype)
    else:
        info = np.iinfo(dtype)
        tokens = rng.integers(info.min, info.max, size=n, endpoint=True, dtype=dtype)
    return tokens, lengths.astype(np.int64), doc_seqs.astype(np.int64)


def _write_ours(prefix, tokens, lengths, doc_seqs):
    with IndexedDatasetBuilder(prefix + ".bin", dtype=tokens.dtype) as b:
        start, seq = 0, 0
        for n_seq in doc_seqs:
            for n in lengths[seq : seq + n_seq]:
                b.add_item(tokens[start : start + n])
                start += int(n)
            seq += int(n_seq)
            b.end_document()
        b.finalize(prefix + ".idx")


def _bytes(prefix):
    return open(prefix + ".idx", "rb").read(), open(prefix + ".bin", "rb").read()


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, tokenizer_dir, repo_root):
    """Write our datasets, run every megatron-core job once, return inputs and results."""
    try:
        python = ensure_mcore_python()
    except OracleUnavailable as e:
        pytest.skip(f"megatron-core oracle venv unavailable: {e}")
    work = tmp_path_factory.mktemp("mcore")
    rng = np.random.default_rng(0)
    cases, jobs = {}, []
    for code in DType:
        docs = _random_docs(rng, code.numpy(), n_docs=7)
        cases[code.name] = docs
    cases["uint16_big"] = _random_docs(rng, np.uint16, n_docs=500, max_seq=200)
    cases["int32_b"] = _random_docs(rng, np.int32, n_docs=5)
    cases["empty"] = (np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    for name, (tokens, lengths, doc_seqs) in cases.items():
        ours, theirs = str(work / f"ours_{name}"), str(work / f"mcore_{name}")
        _write_ours(ours, tokens, lengths, doc_seqs)
        data = str(work / f"{name}.npz")
        np.savez(data, tokens=tokens, sequence_lengths=lengths, document_sequences=doc_seqs)
        jobs.append({"op": "write", "prefix": theirs, "dtype": tokens.dtype.name, "data": data})
        if len(lengths):  # megatron-core cannot memory-map an empty .bin
            jobs.append({"op": "read", "prefix": ours, "out": str(work / f"read_{name}.npz")})
    merged_inputs = [str(work / "ours_int32"), str(work / "ours_int32_b")]
    merge_datasets(merged_inputs, str(work / "ours_merged"))
    jobs.append({"op": "merge", "prefixes": merged_inputs, "output": str(work / "mcore_merged"),
                 "dtype": "int32"})  # fmt: skip
    pre = _preprocess_austen(work, tokenizer_dir, repo_root)
    jobs.append({"op": "read", "prefix": pre, "out": str(work / "read_austen.npz")})
    jobs.append({"op": "dtypes", "vocab_sizes": VOCAB_SIZES})
    results = run_mcore_worker(python, jobs, work)
    seconds = build_seconds()
    print(f"megatron-core oracle venv: built in {seconds} s (recorded when it was made)")
    return {"work": work, "cases": cases, "jobs": jobs, "results": results, "austen": pre}


def _preprocess_austen(work, tokenizer_dir, repo_root):
    """A real tools/preprocess_data.py output (GPT-2, a few Austen chapters, append-eod)."""
    from tools.austen_to_jsonl import iter_documents
    from tools.preprocess_data import main as preprocess_main

    jsonl = work / "austen.jsonl"
    docs = iter_documents(repo_root / "data" / "corpora" / "austen")
    with open(jsonl, "w", encoding="utf-8") as f:
        for _, doc in zip(range(12), docs):
            f.write(json.dumps(doc) + "\n")
    argv = ["--input", str(jsonl), "--output-prefix", str(work / "austen"),
            "--tokenizer-type", "GPT2BPETokenizer",
            "--vocab-file", str(tokenizer_dir / "gpt2-vocab.json"),
            "--merge-file", str(tokenizer_dir / "gpt2-merges.txt"), "--append-eod"]  # fmt: skip
    assert preprocess_main(argv) == 0
    return str(work / "austen_text_document")


def _result(oracle, op, key, value):
    for job, res in zip(oracle["jobs"], oracle["results"]):
        if job["op"] == op and job.get(key) == value:
            return res
    raise KeyError((op, value))


def _check_read(oracle, prefix, npz):
    ours = IndexedDataset(prefix)
    res = _result(oracle, "read", "prefix", prefix)
    got = np.load(npz)
    assert res["len"] == len(ours)
    assert res["dtype_code"] == int(DType.code_of(ours.dtype))
    np.testing.assert_array_equal(got["sizes"], ours.sequence_lengths)
    np.testing.assert_array_equal(got["document_indices"], ours.document_indices)
    flat = [ours[i] for i in range(len(ours))]
    np.testing.assert_array_equal(got["tokens"], np.concatenate(flat))
    assert got["tokens"].dtype == ours.dtype
    expected = [ours.get(i, 1, len(s) - 2).astype(np.int64).tolist() for i, s in enumerate(flat)
                if len(s) >= 2]  # fmt: skip
    assert res["slices"] == expected


def test_mcore_reads_our_files(oracle):
    work = oracle["work"]
    for name, (_, lengths, _) in oracle["cases"].items():
        if len(lengths):
            _check_read(oracle, str(work / f"ours_{name}"), work / f"read_{name}.npz")


def test_mcore_reads_preprocess_data_output(oracle):
    _check_read(oracle, oracle["austen"], oracle["work"] / "read_austen.npz")
    assert IndexedDataset(oracle["austen"]).dtype == np.uint16


def test_mcore_writes_byte_identical_files(oracle):
    work = oracle["work"]
    for name in oracle["cases"]:
        assert _bytes(str(work / f"mcore_{name}")) == _bytes(str(work / f"ours_{name}")), name


def test_we_read_mcore_files(oracle):
    work = oracle["work"]
    for name, (tokens, lengths, doc_seqs) in oracle["cases"].items():
        ds = IndexedDataset(str(work / f"mcore_{name}"))
        assert ds.dtype == tokens.dtype
        np.testing.assert_array_equal(ds.sequence_lengths, lengths)
        assert ds.document_indices.tolist() == [0] + np.cumsum(doc_seqs).tolist()
        flat = [ds[i] for i in range(len(ds))]
        np.testing.assert_array_equal(np.concatenate(flat) if flat else tokens, tokens)


def test_merge_byte_identical(oracle):
    work = oracle["work"]
    assert _bytes(str(work / "mcore_merged")) == _bytes(str(work / "ours_merged"))


def test_dtype_codes_and_optimal_dtype(oracle):
    res = _result(oracle, "dtypes", "op", "dtypes")
    assert res["codes"] == {code.name: int(code) for code in DType}
    ours = [DType.optimal_token_dtype(v).name for v in VOCAB_SIZES]
    assert res["optimal"] == ours
