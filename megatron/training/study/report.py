"""The study's table: final held-out losses and the savings at equal quality.

The quality target of a seed is the final held-out loss of its 100% baseline. A run reaches it
at the first point of its held-out curve at or below the target (linearly interpolated between
evaluations, in tokens, training seconds and FLOPs); its saving is `1 - run's cost / baseline's
cost` to reach that loss, paired by seed, so the baseline's own saving is 0. A run that never
reaches the target has no saving; the table shows how far its final loss stayed above it.
Over seeds the table gives the mean and the sample standard deviation (n - 1).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from megatron.core.files import atomic_write_json, atomic_write_text

from . import plots
from .grid import VARIANTS, RunSpec
from .runlog import EvalPoint, RunLog

COSTS = ("tokens", "seconds", "flops")
"""The cost axes a saving is computed on."""


def reach(points: Sequence[EvalPoint], target: float, cost: str) -> Optional[float]:
    """The cost (tokens, seconds or flops) at which the held-out loss first reaches `target`,
    interpolated between the evaluations around the crossing; None when it never does."""
    prev = None
    for p in points:
        x = getattr(p, cost)
        if x is None or not math.isfinite(p.loss):
            prev = None
            continue
        if p.loss <= target:
            if prev is None or getattr(prev, cost) is None or prev.loss == p.loss:
                return float(x)
            x0 = getattr(prev, cost)
            frac = (prev.loss - target) / (prev.loss - p.loss)
            return float(x0 + frac * (x - x0))
        prev = p
    return None


@dataclasses.dataclass
class RunResult:
    """One run's outcome."""

    spec: RunSpec
    final: EvalPoint
    """The last held-out evaluation."""
    target: Optional[float]
    """Its seed's 100% baseline final loss (None without that baseline)."""
    savings: Dict[str, Optional[float]]
    """cost -> saving at equal quality (None: target not reached or not measurable)."""
    reached: Dict[str, Optional[float]]
    """cost -> the cost at which the run reached the target."""


def results(runs: Dict[RunSpec, RunLog]) -> List[RunResult]:
    """Each run's final loss and savings against its seed's 100% baseline (runs without any
    held-out evaluation are left out)."""
    finals = {spec: log.eval_points() for spec, log in runs.items()}
    targets = {
        s.seed: pts[-1].loss
        for s, pts in finals.items()
        if s.variant == "baseline" and s.percent == 100 and pts
    }
    base = {
        s.seed: {c: reach(pts, targets[s.seed], c) for c in COSTS}
        for s, pts in finals.items()
        if s.variant == "baseline" and s.percent == 100 and pts
    }
    out = []
    for spec, pts in finals.items():
        if not pts:
            continue
        target = targets.get(spec.seed)
        reached = {c: reach(pts, target, c) if target is not None else None for c in COSTS}
        savings: Dict[str, Optional[float]] = {}
        for c in COSTS:
            b = base.get(spec.seed, {}).get(c)
            savings[c] = 1.0 - reached[c] / b if reached[c] is not None and b else None
        out.append(RunResult(spec, pts[-1], target, savings, reached))
    return out


def _mean_std(values: List[float]) -> Tuple[float, Optional[float]]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _fmt(values: List[float], scale: float = 1.0, digits: int = 3, pct: bool = False) -> str:
    if not values:
        return "-"
    mean, std = _mean_std([v * scale for v in values])
    unit = "%" if pct else ""
    text = f"{mean:.{digits}f}{unit}"
    return text + (f" ± {std:.{digits}f}{unit}" if std is not None else "")


def _si(x: float) -> str:
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


@dataclasses.dataclass
class Row:
    """One (variant, share) of the table, over its seeds."""

    variant: str
    percent: int
    seeds: List[int]
    runs: List[RunResult]

    def column(self, get) -> List[float]:
        return [v for v in (get(r) for r in self.runs) if v is not None and math.isfinite(v)]


def rows(res: List[RunResult]) -> List[Row]:
    """The results grouped by (variant, share), baseline 100% first."""
    groups: Dict[Tuple[str, int], List[RunResult]] = {}
    for r in res:
        groups.setdefault((r.spec.variant, r.spec.percent), []).append(r)
    keys = sorted(groups, key=lambda k: (-k[1], VARIANTS.index(k[0])))
    return [Row(v, p, sorted(r.spec.seed for r in groups[(v, p)]), groups[(v, p)]) for v, p in keys]


def markdown_table(res: List[RunResult]) -> str:
    """The paper's table: run, data, final held-out loss, training time, FLOPs, and the savings
    at the 100% baseline's loss (mean ± std over seeds; n/m: m of the seeds reached it)."""
    head = (
        "| run | data | tokens | final held-out loss | training time (s) | FLOPs "
        "| reached baseline-100% loss | data saving | time saving | FLOP saving |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows(res):
        n = len(row.runs)
        hit = sum(1 for r in row.runs if r.reached["tokens"] is not None)
        flops = row.column(lambda r: r.final.flops)
        tokens = statistics.fmean(row.column(lambda r: r.final.tokens))
        lines.append(
            f"| {row.variant} | {row.percent}% | {_si(tokens)} "
            f"| {_fmt(row.column(lambda r: r.final.loss), digits=4)} "
            f"| {_fmt(row.column(lambda r: r.final.seconds), digits=1)} "
            f"| {_si(statistics.fmean(flops)) if flops else '-'} | {hit}/{n} "
            f"| {_fmt(row.column(lambda r: r.savings['tokens']), 100, 1, True)} "
            f"| {_fmt(row.column(lambda r: r.savings['seconds']), 100, 1, True)} "
            f"| {_fmt(row.column(lambda r: r.savings['flops']), 100, 1, True)} |"
        )
    return head + "\n".join(lines) + "\n"


def per_seed_table(res: List[RunResult]) -> str:
    """Every run on its own line (the numbers the means are made of)."""
    head = (
        "| run | seed | steps | tokens | final held-out loss | gap to target | training time (s) "
        "| tokens to target |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows(res):
        for r in sorted(row.runs, key=lambda r: r.spec.seed):
            gap = f"{r.final.loss - r.target:+.4f}" if r.target is not None else "-"
            to = r.reached["tokens"]
            secs = f"{r.final.seconds:.1f}" if r.final.seconds is not None else "-"
            lines.append(
                f"| {r.spec.variant} {r.spec.percent}% | {r.spec.seed} | {r.final.step} "
                f"| {int(r.final.tokens)} | {r.final.loss:.4f} | {gap} | {secs} "
                f"| {int(to) if to is not None else 'not reached'} |"
            )
    return head + "\n".join(lines) + "\n"


def summary(res: List[RunResult]) -> List[Dict]:
    """The table as plain data (report.json)."""
    return [
        {
            "run": r.spec.name,
            "variant": r.spec.variant,
            "percent": r.spec.percent,
            "seed": r.spec.seed,
            "final": dataclasses.asdict(r.final),
            "target": r.target,
            "reached": r.reached,
            "savings": r.savings,
        }
        for r in res
    ]


def write_report(
    folder, title: str, runs: Dict[RunSpec, RunLog], command: str, notes: Sequence[str] = ()
) -> Dict:
    """report.md (tables and figures), report.json and figures/ in `folder`; returns the
    report.json content."""
    folder = pathlib.Path(folder)
    res = results(runs)
    figures = plots.plot_all({s.name: log for s, log in runs.items()}, folder / "figures")
    missing = sorted(s.name for s, log in runs.items() if not log.eval_points())
    parts = [
        f"# {title}\n",
        f"\nReproduce with:\n\n```bash\n{command}\n```\n",
        "Held-out loss: the validation split at the full sequence length (no curriculum "
        "truncation, no token dropping), the same batches at every evaluation. Training time: "
        "seconds in training steps (not evaluation or checkpointing). FLOPs: model FLOPs of "
        "the steps, counted at the curriculum's length and with random-LTD's kept tokens in "
        "its layers. Savings: at the final held-out loss of the seed's 100% baseline (see "
        "below), mean ± standard deviation over the seeds.\n\n",
        markdown_table(res),
        "\n## Every run\n\n",
        per_seed_table(res),
    ]
    if missing:
        parts.append(f"\nNo held-out evaluation yet (not finished): {', '.join(missing)}\n")
    parts.extend(f"\n{n}\n" for n in notes)
    if figures:
        parts.append("\n## Figures\n")
        parts.extend(f"\n![{f}](figures/{f})\n" for f in figures)
    atomic_write_text(str(folder / "report.md"), "".join(parts))
    content = {"title": title, "command": command, "runs": summary(res), "figures": figures}
    atomic_write_json(str(folder / "report.json"), content)
    return content
