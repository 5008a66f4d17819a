"""The engine settings of a DeepSpeed JSON, read into the same options as the command line.

Megatron-DeepSpeed launchers state the batch sizes, mixed precision, gradient clipping, ZeRO
stage and log interval in the DeepSpeed JSON (`--deepspeed_config`), often beside the equivalent
flags. Here the JSON's values fill the options the flags fill; a value that contradicts a flag
given on the command line is an error naming both. Keys absent from an enabled `fp16` block take
DeepSpeed's defaults (initial_scale_power 16, loss_scale_window 1000, hysteresis 2,
min_loss_scale 1), as the DeepSpeed engine would, unless the flag is given.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Dict, Iterable, Optional, Tuple

logger = logging.getLogger(__name__)

USED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "steps_per_print",
    "gradient_clipping",
    "zero_optimization",
    "fp16",
    "bf16",
)
"""Top-level DeepSpeed keys read here (the other engine keys are ignored)."""

_FP16_DEFAULTS = {
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}
_FP16_KEYS = {  # fp16 key -> (option, flag, converter)
    "initial_scale_power": ("initial_loss_scale", "--initial-loss-scale", lambda p: 2.0**p),
    "loss_scale_window": ("loss_scale_window", "--loss-scale-window", int),
    "hysteresis": ("hysteresis", "--hysteresis", int),
    "min_loss_scale": ("min_loss_scale", "--min-loss-scale", float),
}


class _Filler:
    """Sets options from the JSON, checking those given on the command line."""

    def __init__(self, ns: argparse.Namespace, explicit: Iterable[str], path: str):
        self.ns, self.explicit, self.path = ns, set(explicit), path
        self.applied: Dict[str, Any] = {}

    def set(self, dest: str, flag: str, key: str, value: Any, shown: Any = None) -> None:
        """Option `dest` (flag `flag`) takes `value` from JSON key `key` (whose value was
        `shown`, default `value`)."""
        current = getattr(self.ns, dest)
        raw = value if shown is None else shown
        if dest in self.explicit and current != value:
            raise ValueError(
                f"--deepspeed_config {self.path} sets {key} {raw!r} ({flag} {value!r}) but the "
                f"command line has {flag} {current!r}; make them agree (or drop one of the two)"
            )
        setattr(self.ns, dest, value)
        self.applied[key] = raw


def _enabled(block: Any, key: str, path: str) -> Optional[bool]:
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ValueError(f"--deepspeed_config {path}: {key} must be an object, got {block!r}")
    value = block.get("enabled", False)
    if value == "auto":
        return None
    return bool(value)


def _precision(f: _Filler, raw: Dict[str, Any]) -> None:
    fp16 = _enabled(raw.get("fp16"), "fp16", f.path)
    bf16 = _enabled(raw.get("bf16", raw.get("bfloat16")), "bf16", f.path)
    for on, other, flag in ((fp16, "bf16", "--bf16"), (bf16, "fp16", "--fp16")):
        if on and other in f.explicit and getattr(f.ns, other):
            key = "bf16" if other == "fp16" else "fp16"
            raise ValueError(
                f"--deepspeed_config {f.path} enables {key} but the command line has {flag}; "
                f"make them agree (drop {flag}, or enable {other} in the JSON instead)"
            )
    if fp16 is not None:
        f.set("fp16", "--fp16", "fp16.enabled", fp16)
    if bf16 is not None:
        f.set("bf16", "--bf16", "bf16.enabled", bf16)
    if not fp16:
        return
    block = raw["fp16"]
    scale = block.get("loss_scale", 0)
    f.set("loss_scale", "--loss-scale", "fp16.loss_scale", float(scale) if scale else None)
    for key, (dest, flag, convert) in _FP16_KEYS.items():
        if key in block:
            f.set(dest, flag, f"fp16.{key}", convert(block[key]), block[key])
        elif dest not in f.explicit:
            default = _FP16_DEFAULTS[key]
            f.set(dest, flag, f"fp16.{key} (DeepSpeed's default)", convert(default), default)


def _batch(f: _Filler, raw: Dict[str, Any], dp: int) -> None:
    ns = f.ns
    if "train_micro_batch_size_per_gpu" in raw:
        f.set(
            "micro_batch_size",
            "--micro-batch-size",
            "train_micro_batch_size_per_gpu",
            int(raw["train_micro_batch_size_per_gpu"]),
        )
    if "train_batch_size" in raw:
        gbs = int(raw["train_batch_size"])
        f.set("global_batch_size", "--global-batch-size", "train_batch_size", gbs)
    gas = raw.get("gradient_accumulation_steps")
    if gas is None or gas == "auto":
        return
    implied = ns.micro_batch_size * dp * int(gas)
    if ns.global_batch_size is None:
        ns.global_batch_size = implied
        f.applied["gradient_accumulation_steps"] = int(gas)
    elif ns.global_batch_size != implied:
        raise ValueError(
            f"--deepspeed_config {f.path} sets gradient_accumulation_steps {gas}, which with "
            f"--micro-batch-size {ns.micro_batch_size} and data-parallel size {dp} is a global "
            f"batch of {implied}, but --global-batch-size (or train_batch_size) is "
            f"{ns.global_batch_size}; make them agree"
        )


def apply_deepspeed_settings(
    ns: argparse.Namespace,
    raw: Dict[str, Any],
    explicit: Iterable[str],
    data_parallel_size: int,
    path: str,
) -> Tuple[Optional[int], Dict[str, Any]]:
    """Fill the namespace of our options from the DeepSpeed JSON's engine keys.

    Args:
        ns: the parsed command line (modified in place).
        raw: the JSON's top-level keys other than data_efficiency / curriculum_learning.
        explicit: destinations of the options given on the command line.
        data_parallel_size: the run's data-parallel size (for gradient_accumulation_steps).
        path: the --deepspeed_config path (for messages).

    Returns:
        (zero_optimization.stage or None, {JSON key: value applied}).

    Raises:
        ValueError: a JSON value contradicts an explicit flag (both are named).
    """
    f = _Filler(ns, explicit, path)
    _precision(f, raw)
    _batch(f, raw, data_parallel_size)
    if "steps_per_print" in raw:
        f.set("log_interval", "--log-interval", "steps_per_print", int(raw["steps_per_print"]))
    if "gradient_clipping" in raw:
        f.set("clip_grad", "--clip-grad", "gradient_clipping", float(raw["gradient_clipping"]))
    zero = raw.get("zero_optimization")
    stage = None
    if isinstance(zero, dict) and "stage" in zero:
        stage = int(zero["stage"])
        f.applied["zero_optimization.stage"] = stage
    ignored = sorted(k for k in raw if k not in USED_KEYS)
    logger.info(
        "--deepspeed_config %s: using %s%s",
        path,
        ", ".join(f"{k}={v}" for k, v in f.applied.items()) or "no engine settings",
        f"; ignoring {', '.join(ignored)} (DeepSpeed engine only)" if ignored else "",
    )
    return stage, f.applied
