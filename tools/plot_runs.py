#!/usr/bin/env python
"""Draw the data-efficiency study's figures from any set of training runs.

Each argument is a run: a folder holding `metrics.jsonl` (written with `--log-jsonl`),
TensorBoard event files (`--tensorboard-dir`) or `*.log` files with the iteration lines, or one
such file. `NAME=PATH` names the run in the legend (default: the folder or file name).

    python tools/plot_runs.py --output figures runs/study/runs/*
    python tools/plot_runs.py --output figures base=runs/a/train.log cl=runs/b/tensorboard

Writes heldout_loss_vs_tokens.png, heldout_loss_vs_seconds.png, heldout_loss_vs_flops.png (the
axes a run's logs have: text logs carry no FLOP count), schedules.png (CL difficulty, curriculum
sequence length, random-LTD K over the steps) and tokens_per_step.png. Needs matplotlib
(`pip install -e '.[plots]'`).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.training.study.plots import plot_all  # noqa: E402
from megatron.training.study.runlog import load_run  # noqa: E402


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", help="run folders or log files, optionally NAME=PATH")
    p.add_argument("--output", required=True, help="folder for the PNG files")
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = None, item
        try:
            log = load_run(path, name)
        except (FileNotFoundError, ImportError) as exc:
            p.error(str(exc))
        if log.name in runs:
            p.error(f"two runs are named {log.name!r}: name them with NAME=PATH")
        runs[log.name] = log
    written = plot_all(runs, pathlib.Path(args.output))
    if not written:
        logging.error("nothing to draw: the runs have no held-out losses or schedules")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
