#!/usr/bin/env python
"""GPT training-step throughput: our GPTModel vs HF transformers' GPT2LMHeadModel, same process.

Both models have the same architecture (pre-LN, learned positions, GeLU MLP, tied embeddings;
HF's activation set to exact "gelu" like ours), random weights, the same batch, and the same step:
forward, loss, backward, AdamW step, all parameters in the measured dtype. Runs alternate between
the two models and the median of the repeats is reported, so machine noise hits both alike.
Also reports the machine's measured matmul peak and our achieved model FLOP/s as a fraction of it.

    python benchmarks/bench_gpt_step.py [--layers 4 --hidden 256 --batch 8 --seq 256 --repeats 5]

Prints one JSON line per measurement.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.models import GPTModel  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402
from megatron.training.metrics import flops_per_token  # noqa: E402


def matmul_peak(dtype, n=2048, repeats=5) -> float:
    """FLOP/s of a large square matmul (the practical peak of this machine and dtype)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def build_ours(a, dtype):
    cfg = TransformerConfig(
        num_layers=a.layers,
        hidden_size=a.hidden,
        num_attention_heads=a.heads,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=dtype,
    )
    m = GPTModel(cfg, a.vocab, a.seq)
    m.initialize(1)
    return m, cfg


def build_hf(a, dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=a.vocab,
        n_positions=a.seq,
        n_embd=a.hidden,
        n_layer=a.layers,
        n_head=a.heads,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg).to(dtype)


def step_fn(kind, model, ids, pos, labels):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def step():
        if kind == "ours":
            loss = model(ids, pos, labels=labels).float().mean()
        else:
            logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), labels.reshape(-1)
            )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_step(step, warmup=1, repeats=1):
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t) / max(repeats, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    a = p.parse_args(argv)
    torch.manual_seed(0)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq))
    labels = torch.roll(ids, -1, 1)
    pos = torch.arange(a.seq).expand(a.batch, a.seq)
    config = {
        "layers": a.layers,
        "hidden": a.hidden,
        "heads": a.heads,
        "vocab": a.vocab,
        "batch": a.batch,
        "seq": a.seq,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    tokens = a.batch * a.seq
    for name in a.dtypes:
        dtype = getattr(torch, name)
        ours, cfg = build_ours(a, dtype)
        hf = build_hf(a, dtype)
        steps = {
            "ours": step_fn("ours", ours, ids, pos, labels),
            "hf": step_fn("hf", hf, ids, pos, labels),
        }
        for s in steps.values():
            time_step(s, warmup=2, repeats=0)
        times = {"ours": [], "hf": []}
        for _ in range(a.repeats):
            for k in ("ours", "hf"):
                times[k].append(time_step(steps[k]))
        ours_tps = tokens / statistics.median(times["ours"])
        hf_tps = tokens / statistics.median(times["hf"])
        print(
            json.dumps(
                {
                    "name": "gpt_train_step_throughput",
                    "config": {**config, "dtype": name},
                    "value": round(ours_tps, 1),
                    "unit": "tokens/s",
                    "reference": "HF GPT2LMHeadModel",
                    "reference_value": round(hf_tps, 1),
                    "ratio": round(ours_tps / hf_tps, 3),
                }
            )
        )
        peak = matmul_peak(dtype)
        achieved = flops_per_token(cfg, a.seq, a.vocab, causal=True) * ours_tps
        print(
            json.dumps(
                {
                    "name": "gpt_model_flops_fraction_of_matmul_peak",
                    "config": {**config, "dtype": name},
                    "value": round(achieved / peak, 3),
                    "unit": "fraction",
                    "achieved_flops": round(achieved / 1e9, 2),
                    "matmul_peak_flops": round(peak / 1e9, 2),
                    "flops_unit": "GFLOP/s",
                }
            )
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
