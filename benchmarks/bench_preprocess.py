#!/usr/bin/env python
"""Preprocessing throughput (tokens/s) with the GPT-2 tokenizer on the embedded Austen corpus.

Measures `preprocess_files` (what tools/preprocess_data.py runs: read, parse, tokenize, write
.bin/.idx and token counts, pool start-up included) with --workers 1 and 2, side by side in the
same run with the ceiling: HF `tokenizers` `encode_batch` of the same texts (a GPT-2 ByteLevel BPE
built from the same vocab/merges, all documents in one batch, its own thread pool). Prints one
JSON line per measurement: name, config, value, unit, reference_value, ratio (value / reference),
medians over --repeats runs interleaved to share the machine's noise.

    python benchmarks/bench_preprocess.py   # --tokenizer-dir DIR: default data/tokenizers
"""

import argparse
import functools
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from megatron.core.datasets.preprocess import preprocess_files
from megatron.core.datasets.preprocess_config import PreprocessConfig
from megatron.tokenizer import TokenizerConfig, build_tokenizer  # noqa: E402
from tools.austen_to_jsonl import write_jsonl  # noqa: E402


def hf_reference(vocab: str, merges: str):
    """HF `tokenizers` GPT-2 byte-level BPE (the peer; used only here)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def time_hf(tok, texts) -> tuple:
    start = time.perf_counter()
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    return sum(len(e.ids) for e in encodings), seconds


def time_ours(jsonl: str, out_dir: str, factory, workers: int) -> tuple:
    start = time.perf_counter()
    result = preprocess_files(
        [jsonl], os.path.join(out_dir, f"w{workers}"), factory, PreprocessConfig(), workers=workers
    )
    return result.stats.tokens, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer-dir", default=str(REPO_ROOT / "data" / "tokenizers"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    vocab = os.path.join(args.tokenizer_dir, "gpt2-vocab.json")
    merges = os.path.join(args.tokenizer_dir, "gpt2-merges.txt")
    factory = functools.partial(
        build_tokenizer, TokenizerConfig("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    )
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = os.path.join(tmp, "austen.jsonl")
        n_docs = write_jsonl(jsonl)
        texts = [json.loads(line)["text"] for line in open(jsonl, encoding="utf-8")]
        size_mb = os.path.getsize(jsonl) / 1e6
        hf = hf_reference(vocab, merges)
        ref, ours = [], {w: [] for w in args.workers}
        for _ in range(args.repeats):
            ref_tokens, seconds = time_hf(hf, texts)
            ref.append(ref_tokens / seconds)
            for w in args.workers:
                tokens, seconds = time_ours(jsonl, tmp, factory, w)
                if tokens != ref_tokens:
                    raise SystemExit(f"token count mismatch: ours {tokens}, HF {ref_tokens}")
                ours[w].append(tokens / seconds)
    reference = statistics.median(ref)
    for w in args.workers:
        value = statistics.median(ours[w])
        config = {
            "tokenizer": "GPT2BPETokenizer",
            "corpus": "austen",
            "documents": n_docs,
            "tokens": ref_tokens,
            "megabytes": round(size_mb, 2),
            "workers": w,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
        }
        line = {
            "name": "preprocess_data_throughput",
            "config": config,
            "value": round(value),
            "unit": "tokens/s",
            "reference_value": round(reference),
            "reference": "HF tokenizers Tokenizer.encode_batch of all documents (own threads)",
            "ratio": round(value / reference, 3),
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
