"""A training run's scalars, read from what the run left behind.

Three sources, tried in this order for a run folder:
- `metrics.jsonl` written by `--log-jsonl` (every scalar, with the counters consumed-tokens,
  floating-point-operations and train-time-s at every log line and evaluation);
- TensorBoard event files (`events.out.tfevents.*`, read with the tensorboard package);
- text logs (`*.log`): Megatron's iteration lines and validation lines. Text logs carry no FLOP
  count; the training time is summed from the per-iteration times of the lines.

Scalar names are the sinks' (`lm loss`, `learning-rate`, `consumed-tokens`, `lm loss validation`,
`curriculum seqlen`, `random-LTD kept tokens`, ...). A step logged twice (a resumed run repeats
the steps after its last checkpoint) keeps its last value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from typing import Dict, List, Optional, Tuple

VALIDATION = "lm loss validation"
"""The held-out loss during training (GPT and BERT report their MLM / LM loss as `lm loss`)."""
FINAL = "lm loss validation (end of training)"
"""The held-out loss after the last step."""


@dataclasses.dataclass
class EvalPoint:
    """A held-out loss and where the run was when it was measured."""

    step: int
    loss: float
    tokens: float
    flops: Optional[float]
    seconds: Optional[float]


@dataclasses.dataclass
class RunLog:
    """The scalars of one run: name -> {step: value}."""

    name: str
    scalars: Dict[str, Dict[int, float]] = dataclasses.field(default_factory=dict)

    def add(self, name: str, step: int, value: Optional[float]) -> None:
        self.scalars.setdefault(name, {})[int(step)] = math.nan if value is None else float(value)

    def series(self, name: str) -> List[Tuple[int, float]]:
        """(step, value) pairs of `name`, by step (empty when never logged)."""
        return sorted(self.scalars.get(name, {}).items())

    def value_at(self, name: str, step: int) -> Optional[float]:
        """`name` at `step`, else linearly interpolated between the steps around it."""
        pts = self.series(name)
        if not pts:
            return None
        exact = self.scalars[name].get(step)
        if exact is not None:
            return exact
        for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
            if s0 < step < s1:
                return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
        if step < pts[0][0]:  # before the first log line: the counters start at 0
            return pts[0][1] * step / pts[0][0] if pts[0][0] else pts[0][1]
        return pts[-1][1]

    def eval_points(self) -> List[EvalPoint]:
        """The held-out losses (during and after training) with tokens, FLOPs and training
        seconds at their steps."""
        losses = dict(self.series(VALIDATION))
        losses.update(self.series(FINAL))
        points = []
        for step, loss in sorted(losses.items()):
            tokens = self.value_at("consumed-tokens", step)
            if tokens is None:
                continue
            points.append(
                EvalPoint(
                    step,
                    loss,
                    tokens,
                    self.value_at("floating-point-operations", step),
                    self.value_at("train-time-s", step),
                )
            )
        return points

    def final(self) -> Optional[EvalPoint]:
        """The last held-out point (the end-of-training evaluation when there is one)."""
        pts = self.eval_points()
        return pts[-1] if pts else None


# ---- readers --------------------------------------------------------------------------------
def read_jsonl(path: pathlib.Path, log: RunLog) -> RunLog:
    """Add the rows of a `--log-jsonl` file; a torn last line (a killed run) is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            log.add(row["name"], row["step"], row["value"])
    return log


def read_tensorboard(folder: pathlib.Path, log: RunLog) -> RunLog:
    """Add the scalars of the TensorBoard event files under `folder`."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:
        raise ImportError(
            f"{folder} holds TensorBoard event files: reading them needs the tensorboard "
            "package (pip install tensorboard), or train with --log-jsonl"
        ) from exc
    for events in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for ev in acc.Scalars(tag):
                log.add(tag, ev.step, ev.value)
    return log


_ITERATION = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?iteration\s+(\d+)/\s*(?:\d+|\?)\s*\|(.*)$")
_VALIDATION = re.compile(
    r"^\s*(validation(?: \(end of training\))?|test) loss at iteration (\d+) \|(.*)$"
)
_TEXT_NAMES = {"consumed samples": "consumed-samples", "consumed tokens": "consumed-tokens",
               "learning rate": "learning-rate", "grad norm": "grad-norm"}  # fmt: skip


def _fields(text: str) -> Dict[str, float]:
    out = {}
    for part in text.split("|"):
        key, sep, value = part.rpartition(":")
        if not sep:
            continue
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


def read_text_log(path: pathlib.Path, log: RunLog) -> RunLog:
    """Add the iteration and validation lines of a training log. The training time is summed
    from "elapsed time per iteration" over each line's interval; where a resumed attempt goes
    back to earlier steps it continues from the time logged before them."""
    seconds, prev = 0.0, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _ITERATION.search(line)
            if m:
                step, fields = int(m.group(1)), _fields(m.group(2))
                if step <= prev:  # a resumed attempt
                    times = log.scalars.get("train-time-s", {})
                    prev = max((s for s in times if s < step), default=0)
                    seconds = times.get(prev, 0.0)
                ms = fields.get("elapsed time per iteration (ms)")
                if ms is not None:
                    seconds += ms / 1000.0 * (step - prev)
                    log.add("train-time-s", step, seconds)
                prev = step
                for key, value in fields.items():
                    log.add(_TEXT_NAMES.get(key, key), step, value)
                continue
            m = _VALIDATION.search(line)
            if m:
                label, step = m.group(1), int(m.group(2))
                for key, value in _fields(m.group(3)).items():
                    if key.endswith(" value"):
                        log.add(f"{key[: -len(' value')]} {label}", step, value)
    return log


def load_run(path: str, name: Optional[str] = None) -> RunLog:
    """The scalars of a run folder (metrics.jsonl, else TensorBoard events, else *.log) or of
    one file (.jsonl, an event file, or a text log)."""
    p = pathlib.Path(path)
    log = RunLog(name or (p.name if p.is_dir() else p.stem))
    if p.is_file():
        if p.suffix == ".jsonl":
            return read_jsonl(p, log)
        if p.name.startswith("events.out.tfevents."):
            return read_tensorboard(p.parent, log)
        return read_text_log(p, log)
    if not p.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder or log file")
    if (p / "metrics.jsonl").exists():
        return read_jsonl(p / "metrics.jsonl", log)
    if any(p.rglob("events.out.tfevents.*")):
        return read_tensorboard(p, log)
    logs = sorted(p.glob("*.log"))
    if not logs:
        raise FileNotFoundError(
            f"{path}: no metrics.jsonl, TensorBoard event files or *.log in this folder"
        )
    for f in logs:
        read_text_log(f, log)
    return log
