"""Time the random-LTD token ops: compiled kernels vs the pure-torch reference vs a plain copy.

Prints one JSON line per measurement: name, config, value (kernel GB/s), unit, reference_value
(torch reference GB/s, same inputs, same run), ratio (kernel / reference), copy_value (GB/s of
`flat[:n].clone()` moving the same bytes) and ratio_vs_copy (kernel / copy). Bytes moved count
every byte read plus every byte written once:

- token_gather: k*b*h elements read + written; token_scatter: s*b*h read (x for dropped rows, y for
  kept ones) + s*b*h written; gather_backward: k*b*h read + s*b*h written (zeros elsewhere);
  scatter_backward: s*b*h read + (s + k)*b*h written (grad_x and grad_y);
  gather_attention_mask: b*k*k elements read + written; token_sort: b*k int64 read + written.

For gather and scatter also prealloc_value / prealloc_copy_value: the kernel writing into a
preallocated output vs `out.copy_(src)` of the same bytes, i.e. kernel bandwidth without the
output allocation (on CPU, first-touch page faults of a fresh output often dominate both).

Defaults: s=2048, b=4, h=1024, k=s/2, fp32 and bf16, both layouts, median of 20 repeats.

    python benchmarks/bench_token_ops.py [--device cpu|cuda] [--repeats 20] [--seq 2048] ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from megatron.core import kernels  # noqa: E402
from megatron.core.random_ltd import token_ops as T  # noqa: E402


def median_seconds(fns, repeats, device):
    """Median seconds of each function, calls interleaved round-robin so load drifts hit all."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns:
        fn()
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def measure(name, config, nbytes, kernel_fn, reference_fn, copy_src, args, device, raw=None):
    """One JSON row; `raw` = (kernel into a preallocated output, its plain-copy twin)."""
    copy_elems = max(1, nbytes // (2 * copy_src.element_size()))  # read + write = nbytes
    fns = [kernel_fn, reference_fn, lambda: copy_src[:copy_elems].clone(), *(raw or ())]
    kernel_s, reference_s, copy_s, *raw_s = median_seconds(fns, args.repeats, device)
    gbps = lambda seconds: round(nbytes / seconds / 1e9, 3)  # noqa: E731
    row = {
        "name": name,
        "config": config,
        "value": gbps(kernel_s),
        "unit": "GB/s",
        "reference_value": gbps(reference_s),
        "reference": "pure-torch reference (advanced indexing / index_put / gather / sort)",
        "ratio": round(reference_s / kernel_s, 3),
        "copy_value": gbps(copy_s),
        "ratio_vs_copy": round(copy_s / kernel_s, 3),
        "kernel_ms": round(kernel_s * 1e3, 4),
        "reference_ms": round(reference_s * 1e3, 4),
    }
    if raw_s:  # without the output allocation (page faults dominate on CPU)
        row.update(
            prealloc_value=gbps(raw_s[0]),
            prealloc_copy_value=gbps(raw_s[1]),
            prealloc_ratio_vs_copy=round(raw_s[1] / raw_s[0], 3),
        )
    return row


def _raw_pair(kernels, op, x, y, idx, batch_first):
    """(kernel into a preallocated output, copy_ of as many bytes into a preallocated buffer)."""
    seq = x.shape[1] if batch_first else x.shape[0]
    if op == "gather":
        out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        src = x.reshape(-1)[: y.numel()]
        kernel = lambda: T._gather_kernel(kernels, x, idx, batch_first, out=out)  # noqa: E731
    else:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        src = x.reshape(-1)
        kernel = lambda: T._merge_kernel(  # noqa: E731
            kernels, x, y, idx, batch_first, seq, out=out
        )
    flat_out = out.view(-1)
    return kernel, lambda: flat_out.copy_(src)


def bench_layout(args, dtype, batch_first, device):
    s, b, h, k = args.seq, args.batch, args.hidden, args.kept or args.seq // 2
    gen = torch.Generator().manual_seed(0)
    shape = (b, s, h) if batch_first else (s, b, h)
    x = torch.randn(shape, generator=gen).to(dtype).to(device)
    idx = torch.sort(torch.stack([torch.randperm(s, generator=gen)[:k] for _ in range(b)]), 1)
    idx = idx.values.to(device)
    y = T.token_gather(x, idx, batch_first, backend="reference")
    e = x.element_size()
    flat = x.reshape(-1)
    kernels = T._kernels_for(device, "kernel")
    config = {
        "s": s,
        "b": b,
        "h": h,
        "k": k,
        "dtype": str(dtype).replace("torch.", ""),
        "layout": "[b, s, h]" if batch_first else "[s, b, h]",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "backend": T.active_backend(device),
    }

    def gather(backend):
        return lambda: T.token_gather(x, idx, batch_first, backend=backend)

    def scatter(backend):
        return lambda: T.token_scatter(x, y, idx, batch_first, backend=backend)

    yield measure(
        "token_gather",
        config,
        2 * k * b * h * e,
        gather("kernel"),
        gather("reference"),
        flat,
        args,
        device,
        _raw_pair(kernels, "gather", x, y, idx, batch_first),
    )
    yield measure(
        "token_scatter",
        config,
        2 * s * b * h * e,
        scatter("kernel"),
        scatter("reference"),
        flat,
        args,
        device,
        _raw_pair(kernels, "scatter", x, y, idx, batch_first),
    )
    yield measure(
        "gather_backward",
        config,
        (k + s) * b * h * e,
        _backward(x, idx, batch_first, "kernel", "gather"),
        _backward(x, idx, batch_first, "reference", "gather"),
        flat,
        args,
        device,
    )
    yield measure(
        "scatter_backward",
        config,
        (2 * s + k) * b * h * e,
        _backward(x, idx, batch_first, "kernel", "scatter", y),
        _backward(x, idx, batch_first, "reference", "scatter", y),
        flat,
        args,
        device,
    )


def _backward(x, idx, batch_first, backend, op, y=None):
    """A closure running only the backward of gather / scatter (graph built once, retained)."""
    xg = x.detach().requires_grad_()
    if op == "gather":
        out = T.token_gather(xg, idx, batch_first, backend=backend)
        inputs = [xg]
    else:
        yg = y.detach().requires_grad_()
        out = T.token_scatter(xg, yg, idx, batch_first, backend=backend)
        inputs = [xg, yg]
    grad = torch.ones_like(out)
    return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)


def bench_mask_and_sort(args, device):
    s, b, k = args.seq, args.batch, args.kept or args.seq // 2
    gen = torch.Generator().manual_seed(1)
    pos = torch.arange(s)
    mask = (pos[None, :] > pos[:, None])[None, None].to(device)  # causal [1, 1, s, s]
    idx = torch.sort(torch.stack([torch.randperm(s, generator=gen)[:k] for _ in range(b)]), 1)
    idx = idx.values.to(device)
    config = {
        "s": s,
        "b": b,
        "k": k,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "backend": T.active_backend(device),
    }
    mask_fn = lambda backend: lambda: T.gather_attention_mask(mask, idx, backend=backend)  # noqa
    copy_src = torch.zeros(b * k * k, dtype=torch.bool, device=device)
    yield measure(
        "gather_attention_mask",
        dict(config, dtype="bool"),
        2 * b * k * k,
        mask_fn("kernel"),
        mask_fn("reference"),
        copy_src,
        args,
        device,
    )
    for length in (k, 5000):
        unsorted = torch.stack(
            [torch.randperm(max(s, length), generator=gen)[:length] for _ in range(b)]
        ).to(device)
        sort_fn = lambda backend: lambda: T.token_sort(unsorted, backend=backend)  # noqa
        yield measure(
            "token_sort",
            dict(config, k=length, dtype="int64"),
            2 * b * length * 8,
            sort_fn("kernel"),
            sort_fn("reference"),
            unsorted.reshape(-1),
            args,
            device,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--kept", type=int, default=0, help="kept tokens k (default seq / 2)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", default="", help="comma list of torch thread counts")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not T.kernels_available(device):
        ext = T.extension_for(device)
        if ext is None:
            raise SystemExit(f"no random-LTD kernel exists for {device} tensors")
        raise SystemExit(kernels.unavailable_message(ext))
    for threads in [int(t) for t in args.threads.split(",") if t] or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for dtype_name in args.dtypes.split(","):
            for batch_first in (False, True):
                for row in bench_layout(args, getattr(torch, dtype_name), batch_first, device):
                    print(json.dumps(row), flush=True)
        for row in bench_mask_and_sort(args, device):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
