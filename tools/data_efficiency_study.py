#!/usr/bin/env python
"""What curriculum learning and random-LTD buy on your corpus: the data-efficiency paper's grid.

Trains baseline, CL (vocabulary rarity + sequence-length curriculum), random-LTD and CL +
random-LTD, each at 100 / 67 / 50 % of a token budget and with every seed given, then writes
report.md (the table, with the savings at the 100% baseline's held-out loss), report.json and
figures/ (held-out loss against tokens, training time and FLOPs; the schedules; tokens per step).

    # the embedded Austen corpus, toy GPT, a minute or two on a laptop
    python tools/data_efficiency_study.py --output runs/study_toy --model gpt-toy
    # a JSONL corpus (a tokenizer is trained on it) or a prepared .bin/.idx prefix
    python tools/data_efficiency_study.py --output runs/study --model gpt-cpu \\
        --data corpus.jsonl --train-tokens 4000000 --seeds 1 2 3
    # the paper's GPT-3 1.3B grid, 8 GPUs per run, on each node of the job:
    python tools/data_efficiency_study.py --output /shared/study --model gpt3-1.3b \\
        --data /data/pile_text_document --tokenizer-type GPT2BPETokenizer \\
        --vocab-file gpt2-vocab.json --merge-file gpt2-merges.txt --train-tokens 300000000000 \\
        --nproc 8 --torchrun-args "--nnodes 8 --node-rank $NODE_RANK --master-addr node0" \\
        -- --fp16 --use-distributed-optimizer --recompute-granularity full

Restartable: run it again and finished runs are kept, an interrupted one resumes from its last
checkpoint, the report is rewritten. `--only NAME ...` runs some cells (e.g. one per cluster
job), `--report-only` rewrites the report from what has run, `--dry-run` prints the commands.
Flags after `--` go to every training run. The options of the grid are those of
`megatron.training.study.grid.StudyConfig`.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.training.options import add_dataclass_options, build_dataclass  # noqa: E402
from megatron.training.study.grid import StudyConfig, grid  # noqa: E402
from megatron.training.study.report import write_report  # noqa: E402
from megatron.training.study.runlog import load_run  # noqa: E402
from megatron.training.study.runner import REPO, Study, StudyError  # noqa: E402

logger = logging.getLogger("data_efficiency_study")


def get_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("study")
    g.add_argument("--output", required=True, help="the study folder (created; reused on rerun)")
    g.add_argument(
        "--data",
        default="austen",
        help="a JSONL corpus ({'text': ...} per line), a .bin/.idx prefix, or 'austen' for the "
        "embedded Jane Austen corpus (default)",
    )
    g.add_argument("--tokenizer-type", help="with a prepared prefix: its tokenizer")
    g.add_argument("--vocab-file")
    g.add_argument("--merge-file")
    g.add_argument("--vocab-size", type=int, default=4096, help="tokenizer trained on JSONL data")
    g.add_argument("--only", nargs="+", help="run only these cells (names as in the report)")
    g.add_argument("--report-only", action="store_true", help="only rewrite the report")
    g.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    g.add_argument(
        "--in-process",
        action="store_true",
        help="train single-process runs inside this process (saves the start-up per run)",
    )
    add_dataclass_options(p, StudyConfig, "grid", include=None)
    args = p.parse_args(argv)
    args.extra_args = extra
    return args


def _tokenizer_args(args):
    out = []
    for flag in ("tokenizer_type", "vocab_file", "merge_file"):
        value = getattr(args, flag)
        if value:
            out += ["--" + flag.replace("_", "-"), value]
    return out


def _corpus(args, study: Study) -> str:
    if args.data != "austen":
        return args.data
    path = study.folder / "data" / "austen.jsonl"
    if not path.exists() and not args.dry_run:
        study._call(
            [study.python, str(REPO / "tools/austen_to_jsonl.py"), "--output", str(path)],
            study.folder / "data" / "prepare.log",
            "writing the embedded Austen corpus",
        )
    return str(path)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args(argv)
    try:
        cfg = build_dataclass(StudyConfig, args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    folder = pathlib.Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    study = Study(cfg, folder, dry_run=args.dry_run, in_process=args.in_process)
    command = "python tools/data_efficiency_study.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        if not args.report_only:
            data = study.prepare_data(_corpus(args, study), _tokenizer_args(args), args.vocab_size)
            study.run_all(data, args.only)
    except StudyError as exc:
        logger.error("error: %s", exc)
        return 1
    if args.dry_run:
        return 0
    runs = {}
    for spec in grid(cfg):
        run_dir = study.run_dir(spec)
        if (run_dir / "metrics.jsonl").exists():
            runs[spec] = load_run(str(run_dir), spec.name)
    p = cfg.preset
    title = (
        f"Data-efficiency study: {cfg.model} ({p.model_type}, {p.num_layers} layers, hidden "
        f"{p.hidden_size}, seq {p.seq_length}), {cfg.full_budget} tokens at 100%"
    )
    notes = [
        "Zero-shot lm_eval scores are not part of this report: the project has no "
        "lm-evaluation-harness backend yet, so only the held-out loss is measured."
    ]
    content = write_report(folder, title, runs, command, notes)
    logger.info("report: %s (%d runs)", folder / "report.md", len(content["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
