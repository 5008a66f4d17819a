"""Iteration log lines, timers and metric sinks (TensorBoard / W&B / none), rank 0 only."""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

from megatron.core.transformer.config import TransformerConfig

logger = logging.getLogger(__name__)


def _layer_flops_per_token(cfg: TransformerConfig, length: float, causal: bool) -> float:
    """Forward FLOPs of one transformer layer per token of a sequence of `length` tokens."""
    h, a, f = cfg.hidden_size, cfg.num_attention_heads * cfg.kv_channels, cfg.ffn_hidden_size
    attn_span = length / 2 if causal else length
    return (
        2 * h * 3 * a
        + 4 * attn_span * a
        + 2 * a * h
        + 2 * h * f * (2 if cfg.swiglu else 1)
        + 2 * f * h
    )


def flops_per_token(
    cfg: TransformerConfig, seq_length: int, vocab_size: int, causal: bool = True
) -> float:
    """Model FLOPs per token of one forward + backward pass (3x the forward).

    Forward, per layer and token, counting a multiply-add as 2 FLOPs:
        QKV projection      2 * h * 3a            (a = heads * kv_channels)
        attention scores    2 * s * a             (q . k over s keys; halved when causal)
        attention context   2 * s * a             (probabilities . v; halved when causal)
        output projection   2 * a * h
        MLP                 2 * h * f * (2 if SwiGLU else 1) + 2 * f * h
    plus the logits 2 * h * V once per token. Activation recomputation is not counted (these are
    model FLOPs, the quantity MFU is defined on).
    """
    per_layer = _layer_flops_per_token(cfg, seq_length, causal)
    return 3.0 * (cfg.num_layers * per_layer + 2 * cfg.hidden_size * vocab_size)


def step_flops(
    cfg: TransformerConfig,
    vocab_size: int,
    causal: bool,
    rows: int,
    length: int,
    keep: Optional[int] = None,
    dropping_layers: int = 0,
) -> float:
    """Model FLOPs (forward + backward) of `rows` sequences of `length` tokens, `flops_per_token`'s
    terms counted at the length each layer really processes: with random-LTD, the
    `dropping_layers` layers attend over and transform only `keep` tokens of each row; the other
    layers and the logits see all `length`. (A curriculum's truncated length is `length`.)"""
    full = cfg.num_layers - (dropping_layers if keep is not None else 0)
    per_row = full * length * _layer_flops_per_token(cfg, length, causal)
    if keep is not None and dropping_layers:
        per_row += dropping_layers * keep * _layer_flops_per_token(cfg, keep, causal)
    per_row += length * 2 * cfg.hidden_size * vocab_size
    return 3.0 * rows * per_row


class Timer:
    """Wall-clock timer that accumulates between start/stop calls."""

    def __init__(self):
        self.elapsed_s, self._start = 0.0, None

    def start(self):
        self._start = time.perf_counter()

    def stop(self):
        if self._start is not None:
            self.elapsed_s += time.perf_counter() - self._start
            self._start = None

    def reset(self) -> float:
        e, self.elapsed_s = self.elapsed_s, 0.0
        return e


class MetricSink:
    """Where scalars go; the base class drops them."""

    def scalar(self, name: str, value: float, step: int) -> None:
        pass

    def flush(self) -> None:
        pass


class TensorBoardSink(MetricSink):
    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "--tensorboard-dir needs the tensorboard package: pip install tensorboard"
            ) from exc
        self.writer = SummaryWriter(log_dir=log_dir)

    def scalar(self, name, value, step):
        self.writer.add_scalar(name, value, step)

    def flush(self):
        self.writer.flush()


class WandbSink(MetricSink):
    """W&B run; its step must only grow, so the `vs samples` / `vs tokens` copies (stepped by
    samples and tokens) are left out: W&B plots any scalar against the `consumed-samples` and
    `consumed-tokens` counters it also gets."""

    def __init__(self, project: str, name: Optional[str], save_dir: Optional[str], config: Dict):
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("--wandb-project needs the wandb package: pip install wandb") from exc
        self.wandb = wandb
        wandb.init(project=project, name=name, dir=save_dir, config=config)

    def scalar(self, name, value, step):
        if name.endswith((" vs samples", " vs tokens")):
            return
        self.wandb.log({name: value}, step=step)


class JsonlSink(MetricSink):
    """Appends every scalar as one JSON line `{"step": N, "name": ..., "value": ...}` to a file.

    The file is opened in append mode, so a resumed run adds to the lines of the runs before it;
    steps a crashed run logged after its last checkpoint are logged again by the resumed run, and
    readers keep the last value of a (name, step) pair (`megatron.training.study.runlog`).
    Non-finite values are written as null.
    """

    def __init__(self, path: str):
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self.path = path
        self._file = None

    def scalar(self, name, value, step):
        if self._file is None:  # line-buffered: a killed run keeps every line it wrote
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        value = float(value)
        row = {"step": int(step), "name": name, "value": value if math.isfinite(value) else None}
        self._file.write(json.dumps(row) + "\n")

    def flush(self):
        """Close the file (the next scalar opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class MultiSink(MetricSink):
    def __init__(self, sinks: List[MetricSink]):
        self.sinks = sinks

    def scalar(self, name, value, step):
        for s in self.sinks:
            s.scalar(name, value, step)

    def flush(self):
        for s in self.sinks:
            s.flush()


def build_sinks(logging_cfg, rank: int, config_dict: Dict) -> MetricSink:
    """TensorBoard / JSON-lines / W&B sinks on global rank 0 (a null sink elsewhere)."""
    if rank != 0:
        return MetricSink()
    sinks: List[MetricSink] = []
    if logging_cfg.tensorboard_dir:
        try:
            sinks.append(TensorBoardSink(logging_cfg.tensorboard_dir))
        except ImportError as exc:  # as Megatron: warn and train on
            logger.warning("%s; training without TensorBoard scalars", exc)
    if logging_cfg.log_jsonl:
        sinks.append(JsonlSink(logging_cfg.log_jsonl))
    if logging_cfg.wandb_project:
        sinks.append(
            WandbSink(
                logging_cfg.wandb_project,
                logging_cfg.wandb_exp_name,
                logging_cfg.wandb_save_dir,
                config_dict,
            )
        )
    return MultiSink(sinks)


def format_iteration_line(
    fields: Dict[str, object], iteration: int, train_iters: Optional[int]
) -> str:
    """Megatron's ` [YYYY-MM-DD HH:MM:SS] iteration N/ M | key: value | ...` line."""
    total = f"{train_iters:8d}" if train_iters else "       ?"
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    parts = [f" [{now}] iteration {iteration:8d}/{total}"]
    for key, value in fields.items():
        if isinstance(value, float):
            if key in ("learning rate",) or key.endswith("loss"):
                parts.append(f"{key}: {value:.6E}")
            elif key.startswith("TFLOP"):
                parts.append(f"{key}: {value:.4g}")
            elif math.isfinite(value) and abs(value) >= 1e4:
                parts.append(f"{key}: {value:.1f}")
            else:
                parts.append(f"{key}: {value:.3f}")
        else:
            parts.append(f"{key}: {value}")
    return " | ".join(parts) + " |"


COUNTERS = {
    "consumed-samples": "consumed_train_samples",
    "consumed-tokens": "consumed_train_tokens",
    "floating-point-operations": "floating_point_operations_so_far",
    "train-time-s": "train_time_s",
}
"""Scalar name -> training counter, sent to the sinks at every log line and every evaluation so
that a loss at step N can be placed against tokens, model FLOPs and training wall-clock."""


def send_vs(sink: MetricSink, name: str, value: float, state: Any) -> None:
    """Megatron's scalar `name` at the iteration, `name vs samples` at the consumed samples and
    Megatron-DeepSpeed's `name vs tokens` at the consumed tokens (dashboards plot the same value
    against all three x-axes)."""
    value = float(value)
    sink.scalar(name, value, state.iteration)
    sink.scalar(f"{name} vs samples", value, int(state.consumed_train_samples))
    sink.scalar(f"{name} vs tokens", value, int(state.consumed_train_tokens))


DATA_EFFICIENCY_TAGS = {
    "curriculum seqlen": "seqlen/curriculum_seqlen",
    "random-LTD kept tokens": "seqlen/random_ltd_reserved_length",
}
"""Iteration-line field -> Megatron-DeepSpeed's TensorBoard name (also sent under its own)."""


def send_counters(sink: MetricSink, state: Any) -> None:
    """Send the training counters of `state` (a TrainState) at its iteration (`COUNTERS`)."""
    for name, attr in COUNTERS.items():
        sink.scalar(name, float(getattr(state, attr)), state.iteration)


class IterationLogger:
    """The iteration line and the per-iteration scalars of the training loop.

    Reports and tokens accumulate between log lines (`record`); every --log-interval iterations
    `log` writes Megatron's iteration line with their averages, the throughput over the interval
    and the run's state, and sends the scalars to the sink.

    Args:
        sink: where scalars go (TensorBoard / JSON lines / W&B / none).
        world_size: ranks of the run (TFLOP/s per rank).
        train_iters: --train-iters (the "N/ M" of the line; None when the budget is not in
            iterations).
    """

    def __init__(
        self,
        sink: MetricSink,
        world_size: int,
        train_iters: Optional[int],
        logging_cfg: Any = None,
        progress: Optional[Callable[[Any], Optional[float]]] = None,
    ):
        self.sink = sink
        self.world_size, self.train_iters = max(world_size, 1), train_iters
        self.cfg = logging_cfg
        self.progress, self._last_progress = progress, None
        self.timer = Timer()
        self._reset()

    def _on(self, flag: str) -> bool:
        return bool(getattr(self.cfg, flag, False))

    def _reset(self) -> None:
        self.iterations, self.tokens, self.flops = 0, 0, 0.0
        self.reports: Dict[str, float] = {}

    def record(self, report: Dict[str, float], tokens: int, flops: float) -> None:
        """Add one iteration's averaged reports, consumed tokens and model FLOPs (`step_flops`)
        to the interval."""
        self.iterations += 1
        self.tokens += tokens
        self.flops += flops
        for k, v in report.items():
            self.reports[k] = self.reports.get(k, 0.0) + v

    def log(
        self,
        state: Any,
        lr: float,
        gbs: int,
        loss_scale: float,
        grad_norm,
        extra: Dict,
        norms: Optional[Dict[str, float]] = None,
    ) -> None:
        """Write the line for iteration `state.iteration` and start a new interval.

        Args:
            state: the training counters (iteration, consumed samples and tokens, skipped and
                nan iterations).
            lr: the current learning rate; gbs: the current global batch size.
            loss_scale: the optimizer's loss scale; grad_norm: the last gradient norm or None.
            extra: more fields for the line and the sink (curriculum and random-LTD values).
            norms: `params-norm` / `num-zeros` when --log-params-norm / --log-num-zeros-in-grad.
        """
        elapsed, n = self.timer.reset(), max(self.iterations, 1)
        step, sink = state.iteration, self.sink
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        fields = {
            "consumed samples": state.consumed_train_samples,
            "consumed tokens": state.consumed_train_tokens,
            "elapsed time per iteration (ms)": elapsed * 1000.0 / n,
            "throughput (tokens/s)": rate,
            "TFLOP/s per rank": (self.flops / elapsed if elapsed > 0 else 0.0)
            / 1e12
            / self.world_size,
            "learning rate": lr,
            "global batch size": gbs,
        }
        averages = {k: v / n for k, v in self.reports.items()}
        for k, v in extra.items():
            fields[k] = v
            sink.scalar(k, v, step)
            if k in DATA_EFFICIENCY_TAGS:
                send_vs(sink, DATA_EFFICIENCY_TAGS[k], v, state)
        for k, v in averages.items():  # the losses: `lm loss`, BERT's `sop loss`, ...
            fields[k] = v
            send_vs(sink, k, v, state)
        fields["loss scale"] = float(loss_scale)
        if grad_norm is not None:
            fields["grad norm"] = float(grad_norm)
            send_vs(sink, "grad-norm", grad_norm, state)
        for name, value in (norms or {}).items():  # params-norm, num-zeros (when asked for)
            fields[name.replace("-", " ")] = value
            send_vs(sink, name, value, state)
        fields["number of skipped iterations"] = state.skipped_iterations
        fields["number of nan iterations"] = state.nan_iterations
        self._send_run_scalars(state, lr, gbs, loss_scale, elapsed / n, fields)
        fields.update(self._eta(state, elapsed))
        send_counters(sink, state)
        logger.info(format_iteration_line(fields, step, self.train_iters))
        self._reset()

    def _send_run_scalars(self, state, lr, gbs, loss_scale, seconds_per_iter, fields) -> None:
        """learning-rate always; the others as Megatron's --log-* flags ask (`LoggingConfig`)."""
        send_vs(self.sink, "learning-rate", lr, state)
        if not self._on("no_log_loss_scale_to_tensorboard"):
            send_vs(self.sink, "loss-scale", loss_scale, state)
        if self._on("log_batch_size_to_tensorboard"):
            send_vs(self.sink, "batch-size", gbs, state)
        if self._on("log_world_size_to_tensorboard"):
            send_vs(self.sink, "world-size", self.world_size, state)
        if self._on("log_timers_to_tensorboard"):
            send_vs(self.sink, "iteration-time", seconds_per_iter, state)
        if self._on("log_throughput"):
            send_vs(self.sink, "throughput", fields["TFLOP/s per rank"], state)

    def _eta(self, state, elapsed: float) -> Dict[str, object]:
        """ "percent done" and "ETA" (h:mm:ss at the rate of the last interval) when the budget
        is known."""
        done = self.progress(state) if self.progress is not None else None
        if done is None:
            return {}
        out: Dict[str, object] = {"percent done": 100.0 * done}
        last, self._last_progress = self._last_progress, done
        if last is not None and done > last and elapsed > 0:
            seconds = int(round(elapsed * (1.0 - done) / (done - last)))
            out["ETA"] = str(datetime.timedelta(seconds=max(seconds, 0)))
        return out
