"""PNG figures of a set of runs (matplotlib, the `plots` extra): held-out loss against tokens,
training time and FLOPs, the curriculum and random-LTD schedules, and tokens per step."""

from __future__ import annotations

import logging
import pathlib
from typing import Dict, List

from .runlog import RunLog

logger = logging.getLogger(__name__)

SCHEDULES = (
    ("difficulty vocab_rarity", "CL difficulty (vocab-rarity percentile)"),
    ("curriculum seqlen", "curriculum sequence length"),
    ("random-LTD kept tokens", "random-LTD kept tokens K"),
)
"""Schedule scalars and their axis titles."""

AXES = {
    "tokens": "consumed tokens",
    "seconds": "training time (s)",
    "flops": "training FLOPs",
}

_COLORS = {"baseline": "black", "cl": "tab:blue", "ltd": "tab:orange", "cl_ltd": "tab:green"}
_STYLES = {100: "-", 67: "--", 50: ":"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "the plots need matplotlib: pip install matplotlib (or pip install -e '.[plots]')"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(name: str) -> Dict:
    """Colour by variant and line style by share for study run names, defaults otherwise."""
    variant, _, rest = name.partition("_")
    if rest.startswith("ltd_"):
        variant, rest = "cl_ltd", rest[4:]
    pct = rest.split("pct")[0] if "pct" in rest else ""
    style = {}
    if variant in _COLORS:
        style["color"] = _COLORS[variant]
    if pct.isdigit() and int(pct) in _STYLES:
        style["linestyle"] = _STYLES[int(pct)]
    return style


def _save(fig, ax, xlabel: str, ylabel: str, path: pathlib.Path) -> None:
    """Axis titles, grid and legend of a one-panel figure, written to `path`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def heldout(runs: Dict[str, RunLog], x: str, path: pathlib.Path) -> bool:
    """Held-out loss against `x` (tokens, seconds or flops), one line per run; False (and no
    file) when no run has that axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for name, log in runs.items():
        pts = [p for p in log.eval_points() if getattr(p, x) is not None]
        if pts:
            ax.plot([getattr(p, x) for p in pts], [p.loss for p in pts], label=name, **_style(name))
            drawn += 1
    if drawn:
        _save(fig, ax, AXES[x], "held-out loss (full length)", path)
    plt.close(fig)
    return bool(drawn)


def schedules(runs: Dict[str, RunLog], path: pathlib.Path) -> bool:
    """The CL difficulty, curriculum sequence length and random-LTD K over the steps."""
    plt = _pyplot()
    present = [(k, t) for k, t in SCHEDULES if any(log.series(k) for log in runs.values())]
    if not present:
        return False
    fig, axes = plt.subplots(len(present), 1, figsize=(8, 2.6 * len(present)), squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], present):
        for name, log in runs.items():
            pts = log.series(key)
            if pts:
                ax.plot(*zip(*pts), label=name, **_style(name))
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def tokens_per_step(runs: Dict[str, RunLog], path: pathlib.Path) -> bool:
    """Tokens per step between log lines (consumed-tokens differences)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = 0
    for name, log in runs.items():
        pts = log.series("consumed-tokens")
        rates = [(s1, (t1 - t0) / (s1 - s0)) for (s0, t0), (s1, t1) in zip(pts, pts[1:]) if s1 > s0]
        if rates:
            ax.plot(*zip(*rates), label=name, **_style(name))
            drawn += 1
    if drawn:
        _save(fig, ax, "step", "tokens per step", path)
    plt.close(fig)
    return bool(drawn)


def plot_all(runs: Dict[str, RunLog], folder: pathlib.Path) -> List[str]:
    """Every figure into `folder`; returns the file names written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for x in AXES:
        name = f"heldout_loss_vs_{x}.png"
        if heldout(runs, x, folder / name):
            written.append(name)
    if schedules(runs, folder / "schedules.png"):
        written.append("schedules.png")
    if tokens_per_step(runs, folder / "tokens_per_step.png"):
        written.append("tokens_per_step.png")
    logger.info("figures written to %s: %s", folder, ", ".join(written) or "none")
    return written
