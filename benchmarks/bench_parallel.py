#!/usr/bin/env python
"""CPU step time of TP2 and PP2 vs DP2 (2 gloo processes, same model and global batch), and the
measured 1F1B pipeline bubble vs the theoretical (p - 1) / (m + p - 1).

Every layout runs the real training step of the library: the schedule of its layout, DP gradient
reduction (DistributedDataParallel), finalize_model_grads and the AdamW step, on a GPT built
from the same seed. The two processes hold all layouts at once (a ParallelState each) and step
them in turn, round after round, so the machine's noise hits every layout alike; the baseline
is the same step in one process (rank 0 alone, 1 thread; every rank uses 1 thread).

Bubble: the pipeline communicator is wrapped with a timer, so each stage knows how long it
spent in point-to-point exchanges (waiting for its neighbour plus the transfer). A stage's busy
time is its schedule time minus that; its bubble is the rest of the pipeline's schedule time
(the slowest stage's, both starting together after a barrier). On a p-stage 1F1B pipeline with
m micro-batches of equal stages each stage idles (p - 1) / (m + p - 1) of the time; deviations
come from stage imbalance (the last stage also computes the logits and the loss) and transfer
cost.

    python benchmarks/bench_parallel.py [--layers 4 --hidden 128 --seq 128 --micro-batch 4 \
        --global-batch 32 --repeats 5 --bubble-microbatches 1 2 4 8]

Prints one JSON line per measurement: medians over the repeats of the slowest rank's wall time
per step, and of the CPU time summed over ranks (the work a layout costs, which other load on the
machine does not change).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.distributed import (
    DDPConfig,
    DistributedDataParallel,
    finalize_model_grads,
)  # noqa: E402
from megatron.core.models import GPTModel  # noqa: E402
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer  # noqa: E402
from megatron.core.parallel_state import ParallelState  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402
from tests.distributed.launcher import run_distributed  # noqa: E402


class TimedP2P(P2PCommunicator):
    """The pipeline communicator, timing every exchange (wait for the peer + transfer)."""

    def __init__(self, pstate, device="cpu"):
        super().__init__(pstate, device)
        self.seconds = 0.0

    def exchange(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().exchange(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def _loss(output):
    loss = output.float().mean()
    return loss, {"lm loss": loss.detach()}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    tokens, labels = batch["text"][:, :-1], batch["text"][:, 1:]
    return model(tokens, batch["position_ids"], None, labels=labels), _loss


def _batches(cfg):
    g = torch.Generator().manual_seed(0)
    b, s = cfg["micro_batch"], cfg["seq"]
    batch = {
        "text": torch.randint(0, cfg["vocab"], (b, s + 1), generator=g),
        "position_ids": torch.arange(s).expand(b, s).clone(),
    }
    while True:
        yield batch


def _build(cfg, pstate):
    tcfg = TransformerConfig(
        num_layers=cfg["layers"],
        hidden_size=cfg["hidden"],
        num_attention_heads=cfg["heads"],
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTModel(
        tcfg,
        cfg["vocab"],
        cfg["seq"],
        pstate,
        None,
        pstate.is_pipeline_first_stage(),
        pstate.is_pipeline_last_stage(),
    )
    model.initialize(1)
    ddp = DistributedDataParallel(model, DDPConfig(), pstate.dp_group)
    optimizer = get_megatron_optimizer(OptimizerConfig(lr=1e-4), [ddp], pstate)
    return tcfg, ddp, optimizer


class _Layout:
    """One model (chunk) of this rank under one layout, ready to step."""

    def __init__(self, cfg, pstate, num_micro):
        self.cfg, self.pstate, self.num_micro = cfg, pstate, num_micro
        self.tcfg, self.ddp, self.optimizer = _build(cfg, pstate)
        self.schedule = get_forward_backward_func(pstate.pp_size)
        self.p2p = TimedP2P(pstate) if pstate.pp_size > 1 else None
        self.data = _batches(cfg)

    def step(self, num_micro=None):
        """(step seconds, schedule seconds, seconds in p2p exchanges, CPU seconds of this process)
        of one training step."""
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        if self.p2p is not None:
            self.p2p.seconds = 0.0
        cpu, start = time.process_time(), time.perf_counter()
        self.schedule(
            forward_step_func=_forward_step,
            data_iterator=self.data,
            model=self.ddp,
            num_microbatches=num_micro or self.num_micro,
            seq_length=self.cfg["seq"],
            micro_batch_size=self.cfg["micro_batch"],
            no_sync_func=self.ddp.no_sync,
            pstate=self.pstate,
            config=self.tcfg,
            p2p=self.p2p,
        )
        sched = time.perf_counter() - start
        finalize_model_grads([self.ddp], self.pstate)
        self.optimizer.step()
        wall = time.perf_counter() - start
        return wall, sched, self.p2p.seconds if self.p2p else 0.0, time.process_time() - cpu


def _measure(rank, world_size, cfg, bubble_counts):
    """Both ranks: every layout in turn, round after round, so machine noise hits all alike.

    Returns {layout: [(step, schedule, p2p) per repeat]} and {("bubble", m): [...]}.
    """
    torch.set_num_threads(1)
    gbs, mbs = cfg["global_batch"], cfg["micro_batch"]
    layouts = {
        "DP2": _Layout(cfg, ParallelState.initialize(1, 1), gbs // (2 * mbs)),
        "TP2": _Layout(cfg, ParallelState.initialize(2, 1), gbs // mbs),
        "PP2": _Layout(cfg, ParallelState.initialize(1, 2), gbs // mbs),
    }
    single = _Layout(cfg, ParallelState.single(), gbs // mbs) if rank == 0 else None
    out = {name: [] for name in [*layouts, "single"]}
    out.update({("bubble", m): [] for m in bubble_counts})
    for _ in range(cfg["repeats"] + 1):  # round 0 is warm-up
        for name, layout in layouts.items():
            dist.barrier()
            out[name].append(layout.step())
        dist.barrier()  # the single-process baseline runs alone (rank 1 waits)
        out["single"].append(single.step() if single else (0.0, 0.0, 0.0, 0.0))
        dist.barrier()
        for m in bubble_counts:
            dist.barrier()
            out[("bubble", m)].append(layouts["PP2"].step(m))
    return {k: v[1:] for k, v in out.items()}


def _median_slowest(per_rank, key, field=0):
    """Median over repeats of the slowest rank's value."""
    repeats = len(per_rank[0][key])
    return statistics.median(max(r[key][i][field] for r in per_rank) for i in range(repeats))


def _median_cpu(per_rank, key):
    """Median over repeats of the CPU time summed over ranks (work done, whatever the load)."""
    repeats = len(per_rank[0][key])
    return statistics.median(sum(r[key][i][3] for r in per_rank) for i in range(repeats))


def report_step_times(cfg, per_rank):
    names = ("single", "DP2", "TP2", "PP2")
    times = {name: _median_slowest(per_rank, name) for name in names}
    cpu = {name: _median_cpu(per_rank, name) for name in names}
    for name, t in times.items():
        print(
            json.dumps(
                {
                    "name": "parallel_step_time",
                    "config": {**cfg, "layout": name},
                    "value": round(t * 1000, 1),
                    "unit": "ms",
                    "reference": "DP2",
                    "reference_value": round(times["DP2"] * 1000, 1),
                    "ratio": round(t / times["DP2"], 3),
                    "speedup_vs_single": round(times["single"] / t, 3),
                    "cpu_ms_all_ranks": round(cpu[name] * 1000, 1),
                    "cpu_ratio": round(cpu[name] / cpu["DP2"], 3),
                }
            ),
            flush=True,
        )


def report_bubbles(cfg, per_rank, counts, p=2):
    """Bubble of stage r in one step: 1 - (its schedule time - its p2p time) / the pipeline's
    schedule time (the slowest stage's, all stages starting together after a barrier)."""
    for m in counts:
        key = ("bubble", m)
        per_repeat = []
        for i in range(len(per_rank[0][key])):
            span = max(r[key][i][1] for r in per_rank)
            per_repeat.append([1 - (r[key][i][1] - r[key][i][2]) / span for r in per_rank])
        stages = [statistics.median(rep[s] for rep in per_repeat) for s in range(p)]
        measured = statistics.mean(stages)
        theory = (p - 1) / (m + p - 1)
        print(
            json.dumps(
                {
                    "name": "pipeline_bubble_fraction",
                    "config": {**cfg, "pp": p, "microbatches": m},
                    "value": round(measured, 3),
                    "unit": "fraction of the pipeline's schedule time idle",
                    "per_stage": [round(x, 3) for x in stages],
                    "theoretical": round(theory, 3),
                    "ratio": round(measured / theory, 3),
                    "schedule_ms": round(1000 * _median_slowest(per_rank, key, 1), 1),
                }
            ),
            flush=True,
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bubble-microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    a = p.parse_args(argv)
    cfg = {
        "layers": a.layers,
        "hidden": a.hidden,
        "heads": a.heads,
        "vocab": a.vocab,
        "seq": a.seq,
        "micro_batch": a.micro_batch,
        "global_batch": a.global_batch,
        "repeats": a.repeats,
        "threads_per_rank": 1,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    per_rank = run_distributed(_measure, 2, cfg, a.bubble_microbatches, timeout=3600)
    report_step_times(cfg, per_rank)
    report_bubbles(cfg, per_rank, a.bubble_microbatches)


if __name__ == "__main__":
    main()
