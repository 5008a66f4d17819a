"""tools/merge_datasets.py: order, equality with an unsplit run, token counts, and errors."""

import json
import os

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import IndexedDataset, write_array_dataset
from megatron.core.datasets.token_counts import load_token_counts, save_token_counts
from tools.merge_datasets import main as merge_main
from tools.preprocess_data import main as preprocess_main

NULL_FLAGS = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "500", "--append-eod"]


def _jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": " ".join(map(str, d))}) + "\n" for d in docs))
    return path


def _preprocess(jsonl, prefix):
    argv = ["--input", str(jsonl), "--output-prefix", str(prefix), *NULL_FLAGS]
    assert preprocess_main(argv) == 0
    return f"{prefix}_text_document"


def _read(prefix):
    ds = IndexedDataset(str(prefix))
    return [ds[i].tolist() for i in range(len(ds))], ds.document_indices.tolist()


@pytest.fixture
def parts(tmp_path):
    """Three preprocessed parts in tmp/parts (names sort as c, a, b would not) and the whole."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 500, size=int(rng.integers(1, 30))).tolist() for _ in range(30)]
    (tmp_path / "parts").mkdir()
    prefixes = []
    for name, chunk in zip(["p0", "p1", "p2"], (docs[:7], docs[7:20], docs[20:])):
        src = _jsonl(tmp_path / f"{name}.jsonl", chunk)
        prefixes.append(_preprocess(src, tmp_path / "parts" / name))
    whole = _preprocess(_jsonl(tmp_path / "all.jsonl", docs), tmp_path / "whole")
    return prefixes, whole, docs


def _bytes(prefix):
    return [open(f"{prefix}{ext}", "rb").read() for ext in (".bin", ".idx", ".token_counts.npy")]


def test_merge_directory_equals_unsplit_run(tmp_path, parts, capsys):
    prefixes, whole, docs = parts
    out = tmp_path / "merged"
    assert merge_main(["--input", str(tmp_path / "parts"), "--output-prefix", str(out)]) == 0
    assert _bytes(out) == _bytes(whole)  # data, index and summed token counts
    assert _read(out)[0] == [d + [500] for d in docs]
    assert "merged 3 datasets" in capsys.readouterr().err
    # merging again into the same folder leaves the earlier output out of the inputs
    again = tmp_path / "parts" / "zz_merged"
    assert merge_main(["--input", str(tmp_path / "parts"), "--output-prefix", str(again)]) == 0
    assert merge_main(["--input", str(tmp_path / "parts"), "--output-prefix", str(again)]) == 0
    assert _bytes(again) == _bytes(whole)


def test_merge_listed_prefixes_in_given_order(tmp_path, parts):
    prefixes, _, docs = parts
    out = tmp_path / "m"
    inputs = [prefixes[2] + ".bin", prefixes[0], prefixes[1] + ".idx"]
    assert merge_main(["--input", *inputs, "--output-prefix", str(out)]) == 0
    tokens, doc_idx = _read(out)
    assert tokens == [d + [500] for d in docs[20:] + docs[:7] + docs[7:20]]
    assert doc_idx == list(range(31))
    counts = load_token_counts(str(out), vocab_size=501)
    assert counts.sum() == sum(len(t) for t in tokens) and counts[500] == 30


def test_merge_without_counts_everywhere(tmp_path, parts, caplog):
    prefixes, _, _ = parts
    out = tmp_path / "m"
    save_token_counts(f"{out}.token_counts.npy", np.ones(3, np.int64))  # stale, must go
    os.remove(prefixes[1] + ".token_counts.npy")
    assert merge_main(["--input", *prefixes, "--output-prefix", str(out)]) == 0
    assert IndexedDataset(str(out)).num_documents == 30
    assert not os.path.exists(f"{out}.token_counts.npy")
    assert "not all inputs have a token-count file" in caplog.text


def test_merge_dtype_mismatch_fails_cleanly(tmp_path, parts, capsys):
    prefixes, _, _ = parts
    other = str(tmp_path / "wide")
    write_array_dataset(other, [np.arange(5, dtype=np.int32)], np.int32)
    out = tmp_path / "out" / "m"
    out.parent.mkdir()
    assert merge_main(["--input", prefixes[0], other, "--output-prefix", str(out)]) == 1
    err = capsys.readouterr().err
    assert (
        "different dtypes" in err and f"{prefixes[0]} (uint16)" in err and f"{other} (int32)" in err
    )
    assert os.listdir(out.parent) == []


def test_merge_errors(tmp_path, parts, capsys):
    prefixes, _, _ = parts
    out = tmp_path / "out"
    out.mkdir()
    # corrupt input: truncated .bin
    with open(prefixes[1] + ".bin", "r+b") as f:
        f.truncate(4)
    assert merge_main(["--input", *prefixes, "--output-prefix", str(out / "m")]) == 1
    assert f"{prefixes[1]}.bin: data file truncated" in capsys.readouterr().err
    assert os.listdir(out) == []
    # a stray .bin without .idx in a folder
    os.remove(prefixes[1] + ".idx")
    assert merge_main(["--input", str(tmp_path / "parts"), "--output-prefix", str(out / "m")]) == 1
    assert "p1_text_document has a .bin without .idx" in capsys.readouterr().err
    # the output cannot be an input; counts of different lengths cannot be summed
    assert merge_main(["--input", prefixes[0], "--output-prefix", prefixes[0]]) == 1
    assert "is also an input" in capsys.readouterr().err
    save_token_counts(prefixes[2] + ".token_counts.npy", np.zeros(7, np.int64))
    assert merge_main(["--input", prefixes[0], prefixes[2], "--output-prefix", str(out / "m")]) == 1
    assert "different vocabularies" in capsys.readouterr().err
    assert os.listdir(out) == []
