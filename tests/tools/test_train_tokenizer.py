"""tools/train_tokenizer.py: train on the Austen JSONL, load the result with build_tokenizer."""

import json
import os

import pytest

from megatron.tokenizer import TokenizerConfig, build_tokenizer

pytest.importorskip("tokenizers")
pytest.importorskip("sentencepiece")

TEXT = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition."


@pytest.fixture(scope="module")
def tool(repo_root):
    import sys

    sys.path.insert(0, str(repo_root))
    from tools import train_tokenizer

    return train_tokenizer


@pytest.fixture(scope="module")
def austen_jsonl(repo_root, tmp_path_factory):
    """Every third chapter of the Austen JSONL (~1.3 MB, all six novels), to keep training fast."""
    from tools.austen_to_jsonl import write_jsonl

    folder = tmp_path_factory.mktemp("austen")
    write_jsonl(str(folder / "all.jsonl"), repo_root / "data" / "corpora" / "austen")
    with open(folder / "all.jsonl", encoding="utf-8") as f:
        lines = f.readlines()[::3]
    path = folder / "austen.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def _train(tool, jsonl, out, kind, *extra):
    argv = ["--input", jsonl, "--type", kind, "--vocab-size", "2000", "--output-dir", str(out)]
    assert tool.main(argv + list(extra)) == 0
    assert not [p for p in os.listdir(out.parent) if ".tmp-" in p or ".old-" in p]


def test_bpe(tool, austen_jsonl, tmp_path, capsys):
    out = tmp_path / "bpe"
    _train(tool, austen_jsonl, out, "bpe")
    assert sorted(os.listdir(out)) == ["merges.txt", "tokenizer.json", "vocab.json"]
    printed = capsys.readouterr().out
    assert f"--tokenizer-type GPT2BPETokenizer --vocab-file {out}/vocab.json" in printed
    for backend in ("python", "hf"):
        tok = build_tokenizer(
            TokenizerConfig(
                "GPT2BPETokenizer",
                vocab_file=str(out / "vocab.json"),
                merge_file=str(out / "merges.txt"),
                tokenizer_backend=backend,
            )
        )
        assert tok.vocab_size == 2000 and tok.eod == tok.vocab["<|endoftext|>"] == 0
        ids = tok.tokenize(TEXT + "\nNaïve 😀")
        assert len(ids) < len(TEXT) // 2  # merges were learned
        assert tok.detokenize(ids) == TEXT + "\nNaïve 😀"
    hf = build_tokenizer(
        TokenizerConfig("HuggingFaceTokenizer", tokenizer_model=str(out / "tokenizer.json"))
    )
    assert hf.tokenize(TEXT) == tok.tokenize(TEXT) and hf.eod == 0


def test_wordpiece(tool, austen_jsonl, tmp_path, capsys):
    out = tmp_path / "wordpiece"
    _train(tool, austen_jsonl, out, "wordpiece", "--min-frequency", "3")
    assert "--tokenizer-type BertWordPieceLowerCase" in capsys.readouterr().out
    with open(out / "vocab.txt", encoding="utf-8") as f:
        vocab = f.read().split("\n")
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for backend in ("python", "hf"):
        tok = build_tokenizer(
            TokenizerConfig(
                "BertWordPieceLowerCase",
                vocab_file=str(out / "vocab.txt"),
                tokenizer_backend=backend,
            )
        )
        assert (tok.pad, tok.unk, tok.cls, tok.sep, tok.mask) == (0, 1, 2, 3, 4)
        ids = tok.tokenize(TEXT)
        assert tok.unk not in ids and len(ids) < len(TEXT) // 3
        assert tok.detokenize(ids) == TEXT.lower()


def test_sentencepiece(tool, austen_jsonl, tmp_path, capsys):
    out = tmp_path / "sp"
    _train(tool, austen_jsonl, out, "sentencepiece", "--sp-model-type", "bpe")
    assert "--tokenizer-type SentencePieceTokenizer" in capsys.readouterr().out
    tok = build_tokenizer(
        TokenizerConfig("SentencePieceTokenizer", tokenizer_model=str(out / "tokenizer.model"))
    )
    assert tok.vocab_size == 2000
    assert (tok.unk, tok.bos, tok.eos, tok.pad, tok.cls, tok.sep, tok.mask) == (0, 1, 2, 3, 4, 5, 6)
    ids = tok.tokenize(TEXT)
    assert len(ids) < len(TEXT) // 2 and tok.detokenize(ids) == TEXT
    assert tok.detokenize(tok.tokenize("Ωmega 😀")) == "Ωmega 😀"  # byte fallback


def test_refuses_to_overwrite_and_replaces_with_flag(tool, austen_jsonl, tmp_path):
    small = tmp_path / "small.jsonl"
    with open(austen_jsonl, encoding="utf-8") as f:
        small.write_text("".join(next(f) for _ in range(3)), encoding="utf-8")
    out = tmp_path / "bpe"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    argv = ["--input", str(small), "--type", "bpe", "--vocab-size", "300"]
    argv += ["--output-dir", str(out)]
    with pytest.raises(SystemExit):
        tool.main(argv)
    assert os.listdir(out) == ["keep.txt"]
    assert tool.main(argv + ["--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["merges.txt", "tokenizer.json", "vocab.json"]
    assert sorted(os.listdir(tmp_path)) == ["bpe", "small.jsonl"]


def test_bad_json_line_names_file_and_line(tool, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    argv = ["--input", str(bad), "--type", "bpe", "--vocab-size", "300"]
    with pytest.raises(ValueError, match=r"bad.jsonl line 2 is not valid JSON"):
        tool.main(argv + ["--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_json_keys(tool, tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"title": "Alpha beta", "body": "gamma delta " * 50}) for _ in range(5)
        )
    )
    texts = list(tool.iter_texts([str(data)], ["title", "body"]))
    assert len(texts) == 10 and texts[0] == "Alpha beta"
