"""Held-out loss, perplexity and bits per byte of a GPT checkpoint on an indexed dataset.

    python tools/evaluate.py --load runs/quickstart/checkpoints \\
        --data-path data/heldout_text_document [--split 949,50,1 --split-part test]

The checkpoint may be of any TP / PP / virtual-PP layout; it is scored on one process at full
sequence length, with no curriculum truncation and no token dropping, every token of the chosen
documents exactly once (see `megatron.training.heldout`). The result is printed and, with
--json-output, written as JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.datasets.builder import parse_split, split_documents  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402
from megatron.core.files import atomic_write_json  # noqa: E402
from megatron.tokenizer import build_stored_tokenizer  # noqa: E402
from megatron.training.checkpoint_convert import load_merged  # noqa: E402
from megatron.training.heldout import (  # noqa: E402
    document_token_range,
    score_stream,
    text_bytes,
)
from megatron.training.serial_model import build_serial_model  # noqa: E402

PARTS = ("train", "valid", "test")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, help="checkpoint folder (the --save of the run)")
    p.add_argument("--ckpt-step", type=int, default=None, help="iteration (default: latest)")
    p.add_argument("--data-path", required=True, help="indexed dataset prefix (no .bin/.idx)")
    p.add_argument("--split", default=None, help="e.g. 949,50,1: score one part of it")
    p.add_argument("--split-part", choices=PARTS, default="test", help="with --split [test]")
    p.add_argument(
        "--legacy-split-and-blend",
        action="store_true",
        help="--split's document ranges by Megatron-DeepSpeed's rounding (as training)",
    )
    p.add_argument("--seq-length", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json-output", default=None, help="also write the result here")
    for name in ("--vocab-file", "--merge-file", "--tokenizer-model"):
        p.add_argument(name, default=None, help="tokenizer file (default: the stored path)")
    return p.parse_args(argv)


def document_range(a, num_docs: int):
    """[first, last) documents to score: all of them, or one part of --split."""
    if a.split is None:
        return 0, num_docs
    ranges = split_documents(num_docs, parse_split(a.split), legacy=a.legacy_split_and_blend)
    first, last = ranges[PARTS.index(a.split_part)]
    if first == last:
        raise SystemExit(
            f"--split {a.split} gives the {a.split_part} part no document of the {num_docs} in "
            f"{a.data_path}; choose another --split-part or --split"
        )
    return first, last


def evaluate(a) -> dict:
    files = {k: getattr(a, k) for k in ("vocab_file", "merge_file", "tokenizer_model")}
    merged = load_merged(a.load, a.ckpt_step)
    if merged.model_type != "GPT":
        raise SystemExit(
            f"{a.load} holds a {merged.model_type} checkpoint; tools/evaluate.py scores causal "
            "language models (GPT)"
        )
    tokenizer = build_stored_tokenizer(merged.args["tokenizer"], files)
    model = build_serial_model(merged, true_vocab_size=tokenizer.vocab_size).to(a.device)
    seq_length = a.seq_length or merged.args["model"]["seq_length"]
    max_positions = merged.args["model"]["max_position_embeddings"]
    if seq_length > max_positions:
        raise SystemExit(f"--seq-length {seq_length} > the model's {max_positions} positions")
    indexed = IndexedDataset(a.data_path)
    first, last = document_range(a, len(indexed.document_indices) - 1)
    start, stop = document_token_range(indexed, first, last)
    stream = indexed.tokens(start, stop)
    if stream.size and int(stream.max()) >= tokenizer.vocab_size:
        raise SystemExit(
            f"{a.data_path}: token id {int(stream.max())} >= the tokenizer's "
            f"{tokenizer.vocab_size} ids; it was preprocessed with another tokenizer"
        )
    eod = getattr(tokenizer, "eod", None)
    if eod is not None:  # predict the first token too, after an end of document
        stream = np.concatenate([np.array([eod], dtype=np.int64), stream.astype(np.int64)])
    result = score_stream(model, stream, seq_length, a.micro_batch_size, a.max_windows, a.device)
    if a.max_windows is None and type(tokenizer).__name__ != "NullTokenizer":
        result.text_bytes = text_bytes(tokenizer, indexed, first, last)
    return {
        "load": a.load,
        "iteration": merged.iteration,
        "data_path": a.data_path,
        "documents": [first, last],
        "seq_length": seq_length,
        "tokens": result.tokens,
        "windows": result.windows,
        "loss": result.loss,
        "perplexity": result.perplexity,
        "bits_per_byte": result.bits_per_byte,
        "text_bytes": result.text_bytes,
    }


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a = parse_args(argv)
    out = evaluate(a)
    bpb = "n/a" if out["bits_per_byte"] is None else f"{out['bits_per_byte']:.4f}"
    print(
        f"{a.load} iteration {out['iteration']} on {a.data_path} documents "
        f"[{out['documents'][0]}, {out['documents'][1]}): {out['tokens']} tokens, "
        f"loss {out['loss']:.6f} | perplexity {out['perplexity']:.4f} | bits per byte {bpb}"
    )
    if a.json_output:
        atomic_write_json(a.json_output, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
