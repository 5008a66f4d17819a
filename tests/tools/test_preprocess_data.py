"""tools/preprocess_data.py end to end on the embedded Austen corpus, plus bad-input handling."""

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.preprocess import preprocess_files, preprocess_partitioned
from megatron.core.datasets.preprocess_config import PreprocessConfig
from megatron.core.datasets.token_counts import load_token_counts, save_token_counts
from megatron.tokenizer import TokenizerConfig, build_tokenizer
from megatron.tokenizer.sentence_split import split_sentences
from tools.austen_to_jsonl import iter_documents
from tools.preprocess_data import main as preprocess_main


@pytest.fixture(scope="module")
def austen_texts(repo_root):
    """Every 8th chapter of the corpus (34 chapters from all six novels, ~120k GPT-2 tokens)."""
    docs = list(iter_documents(repo_root / "data" / "corpora" / "austen"))
    return [d["text"] for d in docs[::8]]


@pytest.fixture(scope="module")
def austen_jsonl(tmp_path_factory, austen_texts):
    path = tmp_path_factory.mktemp("austen") / "austen.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(austen_texts):
            f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def gpt2_flags(tokenizer_dir):
    return ["--tokenizer-type", "GPT2BPETokenizer",
            "--vocab-file", str(tokenizer_dir / "gpt2-vocab.json"),
            "--merge-file", str(tokenizer_dir / "gpt2-merges.txt")]  # fmt: skip


@pytest.fixture(scope="module")
def gpt2(tokenizer_dir):
    return build_tokenizer(
        TokenizerConfig(
            "GPT2BPETokenizer",
            vocab_file=str(tokenizer_dir / "gpt2-vocab.json"),
            merge_file=str(tokenizer_dir / "gpt2-merges.txt"),
        )
    )


def _run(inputs, out_prefix, flags, *extra):
    inputs = [str(p) for p in (inputs if isinstance(inputs, list) else [inputs])]
    return preprocess_main(["--input", *inputs, "--output-prefix", str(out_prefix), *flags, *extra])


def _files(prefix):
    return [open(f"{prefix}{ext}", "rb").read() for ext in (".bin", ".idx", ".token_counts.npy")]


def _docs(ds):
    """Per document, the list of its sequences as Python lists."""
    return [[ds[i].tolist() for i in ds.document_sequences(d)] for d in range(ds.num_documents)]


def test_gpt2_document_level_equals_direct_tokenization(tmp_path, austen_jsonl, austen_texts,
                                                        gpt2_flags, gpt2, capsys):  # fmt: skip
    assert (
        _run(austen_jsonl, tmp_path / "out", gpt2_flags, "--append-eod", "--log-interval", "10")
        == 0
    )
    prefix = str(tmp_path / "out_text_document")
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.uint16
    assert len(ds) == ds.num_documents == len(austen_texts)
    expected = gpt2.tokenize_batch(austen_texts)
    for i, ids in enumerate(expected):
        assert ds[i].tolist() == ids + [gpt2.eod]
    counts = load_token_counts(prefix, vocab_size=gpt2.vocab_size)
    all_ids = np.concatenate([ds[i] for i in range(len(ds))]).astype(np.int64)
    np.testing.assert_array_equal(counts, np.bincount(all_ids, minlength=gpt2.vocab_size))
    assert counts[gpt2.eod] == len(austen_texts)
    assert sorted(os.listdir(tmp_path)) == [
        "out_text_document.bin",
        "out_text_document.idx",
        "out_text_document.token_counts.npy",
    ]
    err = capsys.readouterr().err
    progress = re.findall(
        r"processed (\d+) documents \([\d.]+ docs/s, [\d.]+ MB/s, \d+ tokens/s\)", err
    )
    assert len(progress) >= 2 and int(progress[0]) >= 10  # after each chunk crossing 10, 20, ...
    assert f"done: {len(austen_texts)} documents" in err and "bad input lines: none" in err


def test_workers_and_partitions_give_identical_output(tmp_path, austen_texts, tokenizer_dir):
    """Small chunks (2 lines) so that two workers really interleave; partitions of 1-3 processes."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t[:3000]}) + "\n" for t in austen_texts[:20]))
    factory = functools.partial(build_tokenizer, TokenizerConfig(
        "GPT2BPETokenizer", vocab_file=str(tokenizer_dir / "gpt2-vocab.json"),
        merge_file=str(tokenizer_dir / "gpt2-merges.txt")))  # fmt: skip
    config = PreprocessConfig(append_eod=True, chunk_lines=2)
    runs = {"w1": dict(workers=1), "w2": dict(workers=2), "p2": dict(workers=2, partitions=2)}
    outputs = {}
    for name, kw in runs.items():
        out = tmp_path / name
        out.mkdir()
        if "partitions" in kw:
            result = preprocess_partitioned([str(path)], str(out / "x"), factory, config, **kw)
        else:
            result = preprocess_files([str(path)], str(out / "x"), factory, config, **kw)
        assert result.stats.documents == 20 and result.outputs == [str(out / "x_text_document")]
        outputs[name] = _files(out / "x_text_document")
        assert len(os.listdir(out)) == 3, os.listdir(out)  # no partial or temporary files left
    for name in runs:
        assert outputs[name] == outputs["w1"], name


def test_bert_sentence_level(tmp_path, austen_jsonl, austen_texts, tokenizer_dir):
    flags = ["--tokenizer-type", "BertWordPieceLowerCase",
             "--vocab-file", str(tokenizer_dir / "bert-base-uncased-vocab.txt")]  # fmt: skip
    texts = austen_texts[:6]
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert (
        _run(small, tmp_path / "b", flags, "--split-sentences", "--append-eod", "--workers", "2")
        == 0
    )
    ds = IndexedDataset(str(tmp_path / "b_text_sentence"))
    bert = build_tokenizer(TokenizerConfig("BertWordPieceLowerCase", vocab_file=flags[3]))
    expected = []
    for text in texts:
        sentences = [ids for ids in bert.tokenize_batch(split_sentences(text)) if ids]
        sentences[-1] = sentences[-1] + [bert.eod]
        expected.append(sentences)
    assert _docs(ds) == expected
    assert len(ds) > 10 * ds.num_documents  # really one sequence per sentence
    counts = load_token_counts(str(tmp_path / "b_text_sentence"), bert.vocab_size)
    assert counts[bert.eod] >= len(texts) and counts.sum() == sum(ds.sequence_lengths)


def test_keep_newlines(tmp_path, gpt2_flags, gpt2):
    text = "First line.\nSecond sentence here.  Third one!\n\nA new paragraph. End."
    path = tmp_path / "nl.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n")
    assert _run(path, tmp_path / "k", gpt2_flags, "--split-sentences", "--keep-newlines") == 0
    assert _run(path, tmp_path / "d", gpt2_flags, "--split-sentences") == 0
    assert _run(path, tmp_path / "n", gpt2_flags) == 0
    kept = IndexedDataset(str(tmp_path / "k_text_sentence"))
    dropped = IndexedDataset(str(tmp_path / "d_text_sentence"))
    whole = IndexedDataset(str(tmp_path / "n_text_document"))
    assert len(kept) == len(dropped) == 5 and len(whole) == 1
    # with --keep-newlines the sentences decode back to the whole text, newlines included
    assert "".join(gpt2.detokenize(kept[i].tolist()) for i in range(5)) == text
    assert [gpt2.detokenize(dropped[i].tolist()) for i in range(5)] == split_sentences(text)
    assert gpt2.detokenize(whole[0].tolist()) == text  # documents are tokenized as they are


def test_several_keys_and_glob_input(tmp_path, gpt2_flags, gpt2):
    for part in range(2):
        lines = [{"text": f"Text {part}-{i}.", "title": f"Title {i}"} for i in range(3)]
        lines[1].pop("title")  # skipped for both keys, so document i matches across outputs
        (tmp_path / f"in{part}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    flags = [*gpt2_flags, "--json-keys", "text", "title"]
    assert _run(str(tmp_path / "in*.jsonl"), tmp_path / "o", flags) == 0
    text, title = (IndexedDataset(str(tmp_path / f"o_{k}_document")) for k in ("text", "title"))
    assert [gpt2.detokenize(text[i].tolist()) for i in range(len(text))] == [
        "Text 0-0.", "Text 0-2.", "Text 1-0.", "Text 1-2."]  # fmt: skip
    assert [gpt2.detokenize(title[i].tolist()) for i in range(len(title))] == [
        "Title 0",
        "Title 2",
    ] * 2


def test_null_tokenizer_dtype_and_tokenizer_errors(tmp_path, capsys):
    path = tmp_path / "ids.jsonl"
    lines = ["1 2 3", "7 abc", "4 1001", "999", "-1", "5 6"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    flags = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "1000", "--append-eod"]
    assert _run(path, tmp_path / "n", flags) == 0
    ds = IndexedDataset(str(tmp_path / "n_text_document"))
    assert ds.dtype == np.uint16
    assert [ds[i].tolist() for i in range(len(ds))] == [[1, 2, 3, 1000], [999, 1000], [5, 6, 1000]]
    err = capsys.readouterr().err
    assert "tokenizer error: 3 lines" in err
    assert re.search(r"ids\.jsonl:3: 'text': token id 1001 outside the vocabulary \[0, 1001\)", err)
    assert load_token_counts(str(tmp_path / "n_text_document"), 1001)[1000] == 3
    # three partitions of two lines: same bytes, same report
    assert _run(path, tmp_path / "p", [*flags, "--partitions", "3"]) == 0
    assert _files(tmp_path / "p_text_document") == _files(tmp_path / "n_text_document")
    assert capsys.readouterr().err.split("bad input lines")[1] == err.split("bad input lines")[1]
    wide = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "70000"]
    assert _run(path, tmp_path / "w", wide) == 0
    assert IndexedDataset(str(tmp_path / "w_text_document")).dtype == np.int32


def test_token_counts_loader_errors(tmp_path):
    prefix = str(tmp_path / "d")
    save_token_counts(prefix + ".token_counts.npy", np.arange(5))
    assert load_token_counts(prefix, vocab_size=5).tolist() == [0, 1, 2, 3, 4]
    assert load_token_counts(prefix + ".token_counts.npy").dtype == np.int64
    with pytest.raises(
        ValueError, match=r"counts for 5 token ids but the tokenizer's vocab_size is 7"
    ):
        load_token_counts(prefix, vocab_size=7)
    with pytest.raises(FileNotFoundError, match="no token-count file"):
        load_token_counts(str(tmp_path / "absent"))
    with open(prefix + ".token_counts.npy", "r+b") as f:
        f.truncate(20)
    with pytest.raises(ValueError, match="not a readable"):
        load_token_counts(prefix)
    with pytest.raises(ValueError, match="non-negative"):
        save_token_counts(prefix + ".token_counts.npy", np.array([1, -1]))
    assert sorted(os.listdir(tmp_path)) == ["d.token_counts.npy"]  # no temporaries


# ----------------------------------------------------------------------------- bad input fuzz

KIND_HEADERS = {
    "invalid UTF-8": "utf8", "blank line": "blank", "invalid JSON": "json",
    "not a JSON object": "object", "missing key": "key", "value not a string": "type",
    "empty document": "empty", "tokenizer error": "tokenizer",
}  # fmt: skip


def _bad_line(rng, kind, good_text):
    """A corrupt line (bytes, no newline) of the given kind."""
    if kind == "json":  # a good line cut short, or junk
        line = json.dumps({"text": good_text})
        return line[: int(rng.integers(1, len(line) - 1))].encode()
    if kind == "utf8":  # binary garbage, or invalid UTF-8 inside a string value
        garbage = bytes(int(b) for b in rng.integers(0, 256, size=30) if b not in (10, 13))
        return garbage + b"\xff" if rng.random() < 0.5 else b'{"text": "caf\xe9 \xc3"}'
    if kind == "object":
        return [b"[1, 2]", b'"just a string"', b"42", b"null"][int(rng.integers(0, 4))]
    if kind == "key":
        return json.dumps({"txt": good_text}).encode()
    if kind == "type":
        return [b'{"text": 123}', b'{"text": null}', b'{"text": {"a": "b"}}', b'{"text": [1]}'][
            int(rng.integers(0, 4))
        ]
    if kind == "empty":
        return b'{"text": ""}'
    if kind == "tokenizer":  # a lone surrogate escape: valid JSON, not valid Unicode
        return b'{"text": "ab\\ud800cd"}'
    return b"   "  # blank


@pytest.fixture(scope="module")
def corrupt_jsonl(tmp_path_factory, austen_texts):
    """Good short documents with corrupt lines of every kind at random, recorded line numbers."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("bad") / "mixed.jsonl"
    texts = [p for t in austen_texts[:4] for p in t.split("\n\n")][:120]
    kinds = list(KIND_HEADERS.values())
    lines, good, bad = [], [], {k: [] for k in kinds}
    for text in texts:
        while rng.random() < 0.35:
            kind = kinds[int(rng.integers(0, len(kinds)))]
            lines.append(_bad_line(rng, kind, text))
            bad[kind].append(len(lines))
        lines.append(json.dumps({"text": text}).encode())
        good.append(text)
    for kind in kinds:  # every kind at least once
        lines.append(_bad_line(rng, kind, texts[0]))
        bad[kind].append(len(lines))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, good, bad


def _parse_report(err):
    """{kind: [line numbers]} from the tool's final summary."""
    found, kind = {}, None
    for line in err.splitlines():
        m = re.match(r"  (\S.*): (\d+) lines?$", line)
        if m:
            kind = KIND_HEADERS[m.group(1)]
            found[kind] = []
        elif kind and (m := re.match(r"    .*mixed\.jsonl:(\d+): ", line)):
            found[kind].append(int(m.group(1)))
    return found


def test_bad_lines_skipped_and_reported(tmp_path, corrupt_jsonl, gpt2_flags, gpt2, capsys):
    path, good, bad = corrupt_jsonl
    flags = [*gpt2_flags, "--workers", "2", "--max-bad-lines-reported", "1000"]
    assert _run(path, tmp_path / "o", flags) == 0
    ds = IndexedDataset(str(tmp_path / "o_text_document"))
    assert [ds[i].tolist() for i in range(len(ds))] == gpt2.tokenize_batch(good)
    err = capsys.readouterr().err
    assert _parse_report(err) == {k: v for k, v in bad.items() if v}
    assert f"bad input lines skipped: {sum(map(len, bad.values()))}" in err
    # a short report lists the first lines of each kind, then how many more
    assert _run(path, tmp_path / "p", [*gpt2_flags, "--max-bad-lines-reported", "1"]) == 0
    err = capsys.readouterr().err
    for kind, lines in bad.items():
        assert _parse_report(err)[kind] == lines[:1]
        if len(lines) > 1:
            assert f"... and {len(lines) - 1} more" in err


@pytest.mark.parametrize("flags", [[], ["--workers", "2", "--partitions", "2"]], ids=["w1", "p2"])
def test_strict_fails_and_leaves_nothing(tmp_path, corrupt_jsonl, gpt2_flags, repo_root, flags):
    path, _, bad = corrupt_jsonl
    first = min(line for lines in bad.values() for line in lines)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, str(repo_root / "tools" / "preprocess_data.py"), "--input", str(path),
           "--output-prefix", str(out / "x"), *gpt2_flags, "--strict", *flags]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"{path}:{first}: " in r.stderr and "--strict" in r.stderr
    assert os.listdir(out) == []  # no outputs, no temporaries, no partition folder
