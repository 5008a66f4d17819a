"""Curriculum sampler cost at the scale of the DeepSpeed Data Efficiency paper's runs (10M+
samples): one JSON line per measurement.

The GPT-3 data-efficiency run: a vocabulary-rarity metric with percentile difficulty 1 -> 100
(fixed_root, degree 2) plus seqlen_truncate (single_cluster), global batch 512, over N samples
(default 10M; the metric values are random integers, which is all the sampler looks at).

Measurements (seconds unless stated):
- `sampler_init`: sorting the metric (SortedMetric.from_values) and building the sampler;
- `sampler_batch_early`: mean time per global batch over steps 1..S (clusters forming, small
  clusters reshuffled often);
- `sampler_fast_forward`: replaying the state to step R without drawing samples (resume without
  a saved sampler state), and `sampler_first_batch_after_resume` (permuting every cluster);
- `sampler_batch_late`: mean time per global batch after that (all clusters formed);
- `sampler_state_dict` / `sampler_load_state_dict`.
- With --deepspeed, DeepSpeed's DeepSpeedDataSampler on the same data in its own venv (see
  tests/oracle/test_deepspeed_analyzer.py), reported as the `peer` of `sampler_batch_early`.

Usage: python benchmarks/bench_sampler.py [--samples 10000000] [--steps 2000] [--deepspeed]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from megatron.core.curriculum.metric_data import SortedMetric
from megatron.core.curriculum.sampler import CurriculumSampler  # noqa: E402
from megatron.core.datasets.indexed_dataset import write_array_dataset  # noqa: E402
from megatron.core.deepspeed_config import load_deepspeed_config  # noqa: E402


def ds_config(total_step: int, sample_path: str = "dummy", metric_path: str = "dummy") -> dict:
    metrics = {
        "voc": {
            "index_to_sample_path": sample_path,
            "index_to_metric_path": metric_path,
            "difficulty_type": "percentile",
            "clustering_type": "schedule_based",
            "min_difficulty": 1,
            "max_difficulty": 100,
            "schedule_type": "fixed_root",
            "schedule_config": {
                "total_curriculum_step": total_step,
                "difficulty_step": 1,
                "root_degree": 2,
            },
        },
        "seqlen_truncate": {
            "index_to_sample_path": "dummy",
            "index_to_metric_path": "dummy",
            "difficulty_type": "value",
            "clustering_type": "single_cluster",
            "min_difficulty": 80,
            "max_difficulty": 2048,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": total_step, "difficulty_step": 8},
        },
    }
    return {
        "data_efficiency": {
            "enabled": True,
            "seed": 1234,
            "data_sampling": {
                "enabled": True,
                "num_epochs": 1000,
                "num_workers": 0,
                "curriculum_learning": {
                    "enabled": True,
                    "data_cluster_path": "clusters",
                    "curriculum_metrics": metrics,
                },
            },
        }
    }


def emit(name: str, config: dict, value: float, unit: str, peer=None) -> None:
    line = {"name": name, "config": config, "value": round(value, 6), "unit": unit}
    if peer is not None:
        line["peer"] = peer
    print(json.dumps(line), flush=True)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_ours(args, values: np.ndarray) -> dict:
    cfg = load_deepspeed_config(ds_config(args.total_step)).data_efficiency
    common = {"samples": args.samples, "global_batch": args.global_batch, "clusters_metric": "voc"}
    metric, t_sort = timed(lambda: SortedMetric.from_values(values))

    def make():
        return CurriculumSampler(cfg, args.samples, 4, 0, 1, args.global_batch, {"voc": metric})

    sampler, t_make = timed(make)
    emit("sampler_init", common, t_sort + t_make, "s")
    _, t_early = timed(lambda: [sampler.next_global_batch() for _ in range(args.steps)])
    early = t_early / args.steps
    emit("sampler_batch_early", dict(common, steps=args.steps), early * 1e3, "ms/batch")
    late = make()
    _, t_ff = timed(lambda: late.fast_forward(args.resume_step))
    emit("sampler_fast_forward", dict(common, to_step=args.resume_step), t_ff, "s")
    _, t_first = timed(late.next_global_batch)
    clusters = len(late.clusters)
    emit("sampler_first_batch_after_resume", dict(common, clusters=clusters), t_first, "s")
    _, t_late = timed(lambda: [late.next_global_batch() for _ in range(args.steps)])
    emit(
        "sampler_batch_late",
        dict(common, steps=args.steps, clusters=clusters),
        t_late / args.steps * 1e3,
        "ms/batch",
    )
    state, t_save = timed(lambda: late.state_dict())
    emit("sampler_state_dict", dict(common, bytes=len(json.dumps(state))), t_save, "s")
    fresh = make()
    _, t_load = timed(lambda: fresh.load_state_dict(state))
    emit("sampler_load_state_dict", common, t_load, "s")
    run_two_metrics(args, values, common)
    return {"early_ms": early * 1e3}


def run_two_metrics(args, values: np.ndarray, common: dict) -> None:
    """Forming every cluster of two schedule_based metrics (intersections minus earlier ones):
    voc (percentile 1 -> 100, degree 2) and a value metric 128 -> 512 in steps of 8."""
    config = ds_config(args.total_step)
    metrics = config["data_efficiency"]["data_sampling"]["curriculum_learning"][
        "curriculum_metrics"
    ]
    seqlen = dict(metrics.pop("seqlen_truncate"), clustering_type="schedule_based")
    seqlen.update(min_difficulty=128, max_difficulty=512)
    metrics["seqlen"] = seqlen
    cfg = load_deepspeed_config(config).data_efficiency
    lengths = np.random.RandomState(1).randint(20, 513, size=args.samples)
    data = {"voc": SortedMetric.from_values(values), "seqlen": SortedMetric.from_values(lengths)}
    sampler = CurriculumSampler(cfg, args.samples, 4, 0, 1, args.global_batch, data)
    _, seconds = timed(lambda: sampler._table.form_upto(args.total_step * 2))
    config = dict(common, clusters=len(sampler._table.clusters), metrics=["voc", "seqlen"])
    emit("sampler_two_metrics_form_all_clusters", config, seconds, "s")
    sampler.fast_forward(args.resume_step)
    sampler.next_global_batch()  # permutes every cluster (timed above for one metric)
    _, seconds = timed(lambda: [sampler.next_global_batch() for _ in range(args.steps)])
    emit(
        "sampler_two_metrics_batch_late",
        dict(config, steps=args.steps),
        seconds / args.steps * 1e3,
        "ms/batch",
    )


_DEEPSPEED = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
import deepspeed.comm as dist
from deepspeed.runtime.data_pipeline.data_sampling.data_sampler import DeepSpeedDataSampler
from deepspeed.runtime.data_pipeline.config import get_data_efficiency_config
cfg_path, samples, steps, gbs, cluster_dir = sys.argv[1:6]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", RANK="0", WORLD_SIZE="1")
dist.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
config = get_data_efficiency_config(json.load(open(cfg_path)))
config["data_sampling"]["curriculum_learning"]["data_cluster_path"] = cluster_dir
sampler = DeepSpeedDataSampler(config, int(samples), int(gbs), 0, 1, None, 1, 0)
start = time.perf_counter()
for _ in range(int(steps)):
    sampler.get_next_global_batch()
end = time.perf_counter()
print(json.dumps({"ms_per_batch": (end - start) / int(steps) * 1e3, "setup_s": start - t0}))
"""


def run_deepspeed(args, values: np.ndarray):
    """DeepSpeedDataSampler's time per global batch on the same data (None when unavailable)."""
    root = (
        os.environ.get("MEGATRON_ORACLE_CACHE")
        or pathlib.Path.home() / ".cache/megatron-de-oracles"
    )
    python = pathlib.Path(root) / "deepspeed-venv" / "bin" / "python"
    if not python.exists():
        print(f"# no DeepSpeed venv at {python}; peer not measured", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        order = np.argsort(values, kind="stable")
        distinct, starts = np.unique(values[order], return_index=True)
        rows = np.split(order, starts[1:])
        step = max(1, len(rows) // 100)  # DeepSpeed's percentile-merged rows
        merged = [np.concatenate(rows[i : i + step]) for i in range(0, len(rows), step)]
        write_array_dataset(f"{tmp}/voc_index_to_sample_percentile_merged", merged, np.int64)
        write_array_dataset(
            f"{tmp}/voc_index_to_metric", [np.array([v]) for v in distinct], np.int64
        )
        config = ds_config(
            args.total_step,
            f"{tmp}/voc_index_to_sample_percentile_merged",
            f"{tmp}/voc_index_to_metric",
        )
        cfg_path = f"{tmp}/ds.json"
        json.dump(config, open(cfg_path, "w"))
        os.makedirs(f"{tmp}/clusters")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        cmd = [
            str(python),
            "-c",
            _DEEPSPEED,
            cfg_path,
            str(args.samples),
            str(args.steps),
            str(args.global_batch),
            f"{tmp}/clusters",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=3600)
        if proc.returncode != 0:
            print(f"# DeepSpeed sampler failed: {proc.stderr[-2000:]}", file=sys.stderr)
            return None
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"# DeepSpeed import + setup {result['setup_s']:.1f} s", file=sys.stderr)
        return result["ms_per_batch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--global-batch", type=int, default=512)
    parser.add_argument("--total-step", type=int, default=110_000)
    parser.add_argument("--resume-step", type=int, default=100_000)
    parser.add_argument("--deepspeed", action="store_true", help="also time DeepSpeedDataSampler")
    args = parser.parse_args()
    values = np.random.RandomState(0).randint(0, 60_000, size=args.samples)
    ours = run_ours(args, values)
    if args.deepspeed:
        theirs = run_deepspeed(args, values)
        if theirs is not None:
            config = {
                "samples": args.samples,
                "global_batch": args.global_batch,
                "steps": args.steps,
            }
            emit(
                "sampler_batch_early_vs_deepspeed",
                config,
                ours["early_ms"],
                "ms/batch",
                peer=theirs,
            )


if __name__ == "__main__":
    main()
