"""Time the GPT sample index and blending index builders: C++ extension vs numpy reference.

Prints one JSON line per measurement: name, config, value (C++ median seconds), unit,
reference_value (reference median seconds, measured in the same run on the same inputs) and
ratio (reference / C++). Defaults build the index of a synthetic ~1B-token dataset (1M documents
of 1-1999 tokens, seq_length 2048, one epoch).

    python benchmarks/bench_sample_index.py [--docs 1000000] [--seq-length 2048] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron.core import kernels  # noqa: E402
from megatron.core.datasets import helpers  # noqa: E402


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_sample_idx(args):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 2000, args.docs).astype(np.int32)  # mean ~1000 tokens
    doc_idx = np.arange(args.docs, dtype=np.int32)
    np.random.RandomState(1234).shuffle(doc_idx)
    tokens = int(sizes.sum(dtype=np.int64))
    call = (sizes, doc_idx, args.seq_length, 1, tokens)
    cpp_s, cpp = median_seconds(
        lambda: helpers.build_sample_idx(*call, backend="kernel"), args.repeats
    )
    ref_s, ref = median_seconds(lambda: helpers.build_sample_idx_reference(*call), args.repeats)
    if not np.array_equal(cpp, ref):
        raise SystemExit("C++ and reference sample indices differ")
    config = {
        "documents": args.docs,
        "tokens": tokens,
        "seq_length": args.seq_length,
        "epochs": 1,
        "samples": int(cpp.shape[0] - 1),
    }
    return {
        "name": "build_sample_idx",
        "config": config,
        "value": cpp_s,
        "unit": "s",
        "reference_value": ref_s,
        "reference": "numpy reference build_sample_idx_reference (full size, not extrapolated)",
        "ratio": ref_s / cpp_s,
    }


def bench_blending(args):
    weights = np.array([0.2, 0.3, 0.5])
    cpp_s, cpp = median_seconds(
        lambda: helpers.build_blending_indices(weights, args.blend_size, backend="kernel"),
        args.repeats,
    )
    ref_s, ref = median_seconds(
        lambda: helpers.build_blending_indices_reference(weights, args.blend_size), 1
    )
    if not all(np.array_equal(a, b) for a, b in zip(cpp, ref)):
        raise SystemExit("C++ and reference blending indices differ")
    return {
        "name": "build_blending_indices",
        "config": {"datasets": 3, "size": args.blend_size},
        "value": cpp_s,
        "unit": "s",
        "reference_value": ref_s,
        "reference": "pure-Python loop build_blending_indices_reference (one run, full size)",
        "ratio": ref_s / cpp_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--blend-size", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not kernels.available(kernels.DATASET_HELPERS):
        raise SystemExit(kernels.unavailable_message(kernels.DATASET_HELPERS))
    for bench in (bench_sample_idx, bench_blending):
        print(json.dumps(bench(args)), flush=True)


if __name__ == "__main__":
    main()
