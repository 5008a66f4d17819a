"""tools/evaluate.py: held-out loss / perplexity / bits per byte of a trained GPT checkpoint."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron.core.datasets.builder import parse_split, split_documents
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.training.heldout import document_token_range, score_stream, windows
from megatron.training.serial_model import load_serial_model
from tests.integration.test_pretrain_gpt import TINY, run
from tools import evaluate as evaluate_tool
from tools.preprocess_data import main as preprocess_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK_DIR = os.path.join(REPO, "data", "tokenizers")
GPT2 = ["--tokenizer-type", "GPT2BPETokenizer",
        "--vocab-file", os.path.join(TOK_DIR, "gpt2-vocab.json"),
        "--merge-file", os.path.join(TOK_DIR, "gpt2-merges.txt")]  # fmt: skip
TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune.",
    "Emma Woodhouse, handsome, clever, and rich — with a comfortable home — seemed to unite.",
    "Caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9s: bytes and characters differ here.",
    "Short.",
    "The family of Dashwood had long been settled in Sussex. Their estate was large.",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who never took up a book.",
]


def _without(flags, *names):
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f in names:
            skip = f != "--mock-data"
        else:
            out.append(f)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-layer GPT trained 3 steps on a GPT-2-tokenized corpus, and that corpus."""
    root = tmp_path_factory.mktemp("evaluate")
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    prefix = root / "docs"
    assert preprocess_main(["--input", str(jsonl), "--output-prefix", str(prefix), *GPT2,
                            "--append-eod", "--workers", "1"]) == 0  # fmt: skip
    data = str(root / "docs_text_document")
    base = _without(TINY, "--mock-data", "--tokenizer-type", "--vocab-size")
    run(base + GPT2 + ["--data-path", data, "--split", "100,0,0", "--train-iters", "3",
                       "--save", str(root / "ckpt")])  # fmt: skip
    return root, data


def test_windows_score_every_target_once():
    for n in (0, 1, 2, 16, 17, 18, 50):
        spans = list(windows(n, 16))
        targets = [t for a, b in spans for t in range(a + 1, b)]
        assert targets == list(range(1, n)), n
        assert all(b - a <= 17 for a, b in spans)


def test_loss_is_the_models_log_likelihood_and_batching_does_not_change_it(trained):
    root, data = trained
    model, _ = load_serial_model(str(root / "ckpt"))
    stream = np.random.default_rng(0).integers(0, 50257, 40)
    one = score_stream(model, stream, 16, micro_batch_size=1)
    many = score_stream(model, stream, 16, micro_batch_size=8)
    assert (one.tokens, one.windows) == (39, 3)
    assert many.nats == pytest.approx(one.nats, rel=1e-6)
    expect = 0.0
    for a, b in windows(len(stream), 16):  # an independent reference: log-softmax per window
        ids = torch.from_numpy(stream[a:b]).long()[None]
        with torch.no_grad():
            logits = model(ids[:, :-1], torch.arange(b - a - 1)[None])
        expect -= F.log_softmax(logits.double(), -1)[0, torch.arange(b - a - 1), ids[0, 1:]].sum()
    assert one.nats == pytest.approx(float(expect), rel=1e-5)


def test_tool_scores_every_token_and_counts_the_texts_bytes(trained, tmp_path, capsys):
    root, data = trained
    out = tmp_path / "result.json"
    argv = ["--load", str(root / "ckpt"), "--data-path", data, "--json-output", str(out)]
    assert evaluate_tool.main(argv) == 0
    result = json.loads(out.read_text())
    indexed = IndexedDataset(data)
    assert result["tokens"] == indexed.num_tokens  # the end of document in front predicts the 1st
    assert result["documents"] == [0, len(TEXTS)]
    assert result["text_bytes"] == sum(len(t.encode("utf-8")) for t in TEXTS)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    nats = result["loss"] * result["tokens"]
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / result["text_bytes"])
    assert 0 < result["loss"] < 2 * math.log(50257)
    assert "perplexity" in capsys.readouterr().out


def test_split_part_scores_its_documents_only(trained, tmp_path):
    root, data = trained
    out = tmp_path / "test.json"
    argv = ["--load", str(root / "ckpt"), "--data-path", data, "--split", "50,17,33"]
    assert evaluate_tool.main(argv + ["--json-output", str(out)]) == 0
    result = json.loads(out.read_text())
    first, last = split_documents(len(TEXTS), parse_split("50,17,33"))[2]
    assert result["documents"] == [first, last]
    start, stop = document_token_range(IndexedDataset(data), first, last)
    assert result["tokens"] == stop - start
    assert result["text_bytes"] == sum(len(t.encode("utf-8")) for t in TEXTS[first:last])


def test_bad_inputs_name_the_fix(trained, tmp_path):
    root, data = trained
    with pytest.raises(SystemExit, match="choose another --split-part"):
        evaluate_tool.main(["--load", str(root / "ckpt"), "--data-path", data,
                            "--split", "100,0,0", "--split-part", "valid"])  # fmt: skip
    with pytest.raises(SystemExit, match="positions"):
        evaluate_tool.main(["--load", str(root / "ckpt"), "--data-path", data,
                            "--seq-length", "64"])  # fmt: skip


def test_exported_hf_model_continues_greedily_like_generate(trained, tmp_path, capsys):
    """The quickstart's path out: export to transformers, and the HF model's greedy continuation
    is tools/generate.py's."""
    transformers = pytest.importorskip("transformers")
    from tools import checkpoint_to_hf
    from tools import generate as generate_tool

    root, _ = trained
    assert (
        checkpoint_to_hf.main(["--load", str(root / "ckpt"), "--save-dir", str(tmp_path / "hf")])
        == 0
    )
    prompt = "It is a truth universally"
    capsys.readouterr()
    assert generate_tool.main(["--load", str(root / "ckpt"), "--greedy", "--prompt", prompt,
                               "--max-new-tokens", "8"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    ours = lines[lines.index("--- sample 1 ---") + 1]
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)  # fmt: skip
    assert out.shape[1] == ids.shape[1] + 8
    assert tok.decode(out[0]) == ours
