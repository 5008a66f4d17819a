#!/usr/bin/env python
"""Write a DeepSpeed-style JSON for curriculum learning and random-LTD from named flags.

The file is what `pretrain_gpt.py` / `pretrain_bert.py` read with `--deepspeed_config` (and what
a DeepSpeed engine would read): the batch sizes, `gradient_clipping` and the `fp16` / `bf16`
block Megatron-DeepSpeed's configs carry, plus the `data_efficiency` block. It replaces
Megatron-DeepSpeed's JSON templates filled in by ~30 `sed` substitutions: every value has a named
flag, the result is validated with the same strict parser training uses (`load_deepspeed_config`)
before anything is written, the file is written atomically, and the tool prints where it wrote.

GPT-3 1.3B, curriculum learning (vocabulary rarity + sequence-length truncation) and random-LTD:

    python tools/data_efficiency_config.py --output ds_config.json \\
        --global-batch-size 512 --micro-batch-size 4 --seed 1234 --fp16 \\
        --cl-metric voc type=percentile clustering=schedule_based min=1 max=100 \\
            schedule=fixed_root total_steps=110000 step=1 root=2 \\
            index_to_sample=analysis/vocab_rarity/vocab_rarity_index_to_sample_percentile_merged \\
            index_to_metric=analysis/vocab_rarity/vocab_rarity_index_to_metric \\
        --seqlen-truncate 80 2048 110000 8 \\
        --num-layers 24 --seq-length 2048 \\
        --random-ltd-min 128 --random-ltd-require-steps 200000 --random-ltd-seq-per-step 16

Curriculum metrics: `--cl-metric NAME KEY=VALUE ...`, once per metric. NAME is the key in
`curriculum_metrics`; the pairs are separated by spaces (so a bash array can put each on its own
line and lists can use commas). Keys (the JSON key in parentheses is accepted too):

    type             (difficulty_type)       value | percentile                  [value]
    clustering       (clustering_type)       schedule_based | single_cluster     [schedule_based]
    min, max         (min_difficulty, max_difficulty)                            required
    schedule         (schedule_type)         fixed_linear | fixed_root | fixed_discrete | custom
                                                                                 [fixed_linear]
    total_steps      (total_curriculum_step) fixed_linear / fixed_root
    step             (difficulty_step)       round difficulties down to a multiple  [1]
    root             (root_degree)           fixed_root
    difficulty       (difficulty)            fixed_discrete: comma-separated values
    max_step         (max_step)              fixed_discrete: comma-separated steps
    function         (custom_function)       custom: package.module:function
    index_to_sample  (index_to_sample_path)  analysis output prefix (tools/analyze_data.py)
    index_to_metric  (index_to_metric_path)  analysis output prefix (value difficulty)

`--seqlen-truncate MIN MAX TOTAL_STEPS STEP` (or `--seqlen-reshape`) adds the sequence-length
metric: value difficulty, single_cluster, fixed_linear (GPT: truncate each sample / re-chunk the
batch; BERT: trim the padding).

Random-LTD is on when `--random-ltd-min` is given: the layers `--random-ltd-layers` (default all
but the first and the last of `--num-layers`) keep K tokens, K growing linearly from
`--random-ltd-min` to `--random-ltd-max` (default `--seq-length`) over
`--random-ltd-require-steps` steps in multiples of `--random-ltd-seq-per-step`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

sys.path.append(os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from megatron.core.curriculum.config import (
    CLUSTERING_TYPES,
    DIFFICULTY_TYPES,
    SCHEDULE_TYPES,
    SEQLEN_RESHAPE,
    SEQLEN_TRUNCATE,
)
from megatron.core.deepspeed_config import load_deepspeed_config
from megatron.core.random_ltd.config import LTD_HIDDEN_STATE_ORDERS, LTD_MODEL_TYPES
from megatron.training.data_efficiency import check_against_model

# --cl-metric key -> JSON key of the metric; keys under schedule_config carry the prefix "sc."
_METRIC_KEYS = {
    "type": "difficulty_type",
    "clustering": "clustering_type",
    "min": "min_difficulty",
    "max": "max_difficulty",
    "schedule": "schedule_type",
    "total_steps": "sc.total_curriculum_step",
    "step": "sc.difficulty_step",
    "root": "sc.root_degree",
    "difficulty": "sc.difficulty",
    "max_step": "sc.max_step",
    "function": "sc.custom_function",
    "index_to_sample": "index_to_sample_path",
    "index_to_metric": "index_to_metric_path",
}
_JSON_KEYS = {v.split(".")[-1]: v for v in _METRIC_KEYS.values()}
_INT_KEYS = {
    "min_difficulty",
    "max_difficulty",
    "total_curriculum_step",
    "difficulty_step",
    "root_degree",
}
_LIST_KEYS = {"difficulty", "max_step"}
_CHOICES = {
    "difficulty_type": DIFFICULTY_TYPES,
    "clustering_type": CLUSTERING_TYPES,
    "schedule_type": SCHEDULE_TYPES,
}
_METRIC_ORDER = (
    "index_to_sample_path",
    "index_to_metric_path",
    "difficulty_type",
    "clustering_type",
    "min_difficulty",
    "max_difficulty",
    "schedule_type",
    "schedule_config",
)
_SCHEDULE_ORDER = (
    "total_curriculum_step",
    "difficulty_step",
    "root_degree",
    "difficulty",
    "max_step",
    "custom_function",
)


class ToolError(ValueError):
    """A bad flag combination; the message names the flag and the fix."""


def _number(text: str, what: str) -> Any:
    """An int when the text is one (1.1e5 included), else a float."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ToolError(f"{what}: expected a number, got {text!r}") from None
    return int(value) if value.is_integer() else value


def _resolve_key(key: str, metric: str) -> str:
    if key in _METRIC_KEYS:
        return _METRIC_KEYS[key]
    if key in _JSON_KEYS:
        return _JSON_KEYS[key]
    valid = sorted(set(_METRIC_KEYS) | set(_JSON_KEYS))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ToolError(f"--cl-metric {metric}: unknown key {key!r}{hint} (valid keys: {valid})")


def _parse_value(json_key: str, text: str, metric: str) -> Any:
    what = f"--cl-metric {metric} {json_key.split('.')[-1]}"
    name = json_key.split(".")[-1]
    if name in _LIST_KEYS:
        items = [t for t in text.split(",") if t.strip()]
        if not items:
            raise ToolError(f"{what}: expected comma-separated numbers, got {text!r}")
        return [_number(t.strip(), what) for t in items]
    if name in _INT_KEYS:
        value = _number(text, what)
        if not isinstance(value, int):
            raise ToolError(f"{what}: expected an integer, got {text!r}")
        return value
    if name in _CHOICES and text not in _CHOICES[name]:
        close = difflib.get_close_matches(text, _CHOICES[name], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ToolError(f"{what}: must be one of {list(_CHOICES[name])}, got {text!r}{hint}")
    return text


def parse_metric(tokens: Sequence[str]) -> tuple:
    """`NAME KEY=VALUE ...` -> (name, JSON dict of the metric) in DeepSpeed's key order."""
    if not tokens or "=" in tokens[0]:
        raise ToolError(
            f"--cl-metric needs the metric name first, then KEY=VALUE pairs, got {list(tokens)}; "
            "e.g. --cl-metric voc type=percentile min=1 max=100 schedule=fixed_root "
            "total_steps=110000 root=2 index_to_sample=PREFIX"
        )
    name, flat, schedule = tokens[0], {}, {}
    for pair in tokens[1:]:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ToolError(f"--cl-metric {name}: expected KEY=VALUE, got {pair!r}")
        json_key = _resolve_key(key, name)
        target = schedule if json_key.startswith("sc.") else flat
        short = json_key.split(".")[-1]
        if short in target:
            raise ToolError(f"--cl-metric {name}: {key} is given twice")
        target[short] = _parse_value(json_key, text, name)
    for req in ("min_difficulty", "max_difficulty"):
        if req not in flat:
            raise ToolError(f"--cl-metric {name}: {req.split('_')[0]}=... is required")
    flat.setdefault("difficulty_type", "value")
    flat.setdefault("clustering_type", "schedule_based")
    flat.setdefault("schedule_type", "fixed_linear")
    if flat["schedule_type"] in ("fixed_linear", "fixed_root"):
        schedule.setdefault("difficulty_step", 1)
    flat["schedule_config"] = {k: schedule[k] for k in _SCHEDULE_ORDER if k in schedule}
    return name, {k: flat[k] for k in _METRIC_ORDER if k in flat}


def seqlen_metric(values: Sequence[str], flag: str) -> Dict[str, Any]:
    """The sequence-length metric of `--seqlen-truncate/--seqlen-reshape MIN MAX STEPS STEP`."""
    nums = []
    for what, text in zip(("MIN", "MAX", "TOTAL_STEPS", "STEP"), values):
        value = _number(text, f"{flag} {what}")
        if not isinstance(value, int):
            raise ToolError(f"{flag} {what}: expected an integer, got {text!r}")
        nums.append(value)
    lo, hi, total, step = nums
    return {
        "difficulty_type": "value",
        "clustering_type": "single_cluster",
        "min_difficulty": lo,
        "max_difficulty": hi,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": total, "difficulty_step": step},
    }


def parse_layers(spec: Optional[str], num_layers: int) -> List[int]:
    """`1-22`, `1,3,5-7` (inclusive, 0-based) or None (all but the first and the last)."""
    if spec is None:
        if num_layers < 3:
            raise ToolError(
                f"--num-layers {num_layers} leaves no layer between the first and the last for "
                "random-LTD; give --random-ltd-layers explicitly"
            )
        return list(range(1, num_layers - 1))
    ids: List[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            ids += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise ToolError(
                f"--random-ltd-layers: expected 0-based ids and ranges like 1-22 or 1,3,5-7, got "
                f"{spec!r}"
            ) from None
    bad = [i for i in ids if not 0 <= i < num_layers]
    if not ids or bad or len(set(ids)) != len(ids):
        raise ToolError(
            f"--random-ltd-layers {spec!r}: ids must be distinct and in [0, {num_layers}) "
            f"(--num-layers {num_layers}); got {ids}"
        )
    return sorted(ids)


def _curriculum(a: argparse.Namespace) -> Optional[Dict[str, Any]]:
    metrics: Dict[str, Any] = {}
    for tokens in a.cl_metric or []:
        name, metric = parse_metric(tokens)
        if name in metrics:
            raise ToolError(f"--cl-metric {name} is given twice; give each metric once")
        metrics[name] = metric
    for flag, name, values in (
        ("--seqlen-truncate", SEQLEN_TRUNCATE, a.seqlen_truncate),
        ("--seqlen-reshape", SEQLEN_RESHAPE, a.seqlen_reshape),
    ):
        if values is None:
            continue
        if name in metrics:
            raise ToolError(f"{flag} and --cl-metric {name} both define {name}; give one")
        metric = seqlen_metric(values, flag)
        if a.seq_length is not None and metric["max_difficulty"] > a.seq_length:
            raise ToolError(
                f"{flag} MAX {metric['max_difficulty']} exceeds --seq-length {a.seq_length}; "
                "the curriculum cannot make samples longer than the model's sequence"
            )
        metrics[name] = metric
    if not metrics:
        return None
    cl: Dict[str, Any] = {"enabled": True}
    if a.data_cluster_path:
        cl["data_cluster_path"] = a.data_cluster_path
    cl["curriculum_metrics"] = metrics
    sampling: Dict[str, Any] = {"enabled": True}
    if a.num_epochs is not None:
        sampling["num_epochs"] = a.num_epochs
    sampling["num_workers"] = 0
    sampling["curriculum_learning"] = cl
    return sampling


def _random_ltd(a: argparse.Namespace) -> Optional[Dict[str, Any]]:
    given = [f for f in _LTD_FLAGS if getattr(a, f.lstrip("-").replace("-", "_")) is not None]
    if a.random_ltd_min is None:
        if given:
            raise ToolError(
                f"{given[0]} needs --random-ltd-min (random-LTD is on when it is given)"
            )
        return None
    if a.num_layers is None:
        raise ToolError("random-LTD needs --num-layers (the model's transformer layers)")
    if a.random_ltd_require_steps is None:
        raise ToolError("random-LTD needs --random-ltd-require-steps (steps of the K ramp)")
    high = a.random_ltd_max if a.random_ltd_max is not None else a.seq_length
    if high is None:
        raise ToolError("random-LTD needs --random-ltd-max or --seq-length (K at the ramp's end)")
    if a.seq_length is not None and high > a.seq_length:
        raise ToolError(f"--random-ltd-max {high} exceeds --seq-length {a.seq_length}")
    layers = parse_layers(a.random_ltd_layers, a.num_layers)
    ltd: Dict[str, Any] = {
        "enabled": True,
        "total_layer_num": a.num_layers,
        "random_ltd_layer_num": len(layers),
        "random_ltd_layer_id": layers,
        "model_mask_name": "attention_mask",
        "model_type": a.random_ltd_model_type or "decoder",
        "hidden_state_order": a.random_ltd_hidden_state_order or "seq_batch_dim",
        "random_ltd_schedule": {
            "min_value": a.random_ltd_min,
            "max_value": high,
            "schedule_type": "fixed_linear",
            "schedule_config": {
                "require_steps": a.random_ltd_require_steps,
                "seq_per_step": a.random_ltd_seq_per_step or 16,
            },
        },
    }
    if a.layer_token_lr_total_layer_tokens is not None:
        ltd["layer_token_lr_schedule"] = {
            "enabled": True,
            "total_layer_tokens": a.layer_token_lr_total_layer_tokens,
            "warmup_type": "linear",
            "warmup_layer_tokens": a.layer_token_lr_warmup_layer_tokens or 0,
        }
    elif a.layer_token_lr_warmup_layer_tokens is not None:
        raise ToolError(
            "--layer-token-lr-warmup-layer-tokens needs --layer-token-lr-total-layer-tokens"
        )
    return {"enabled": True, "random_ltd": ltd}


_LTD_FLAGS = (
    "--random-ltd-max",
    "--random-ltd-require-steps",
    "--random-ltd-seq-per-step",
    "--random-ltd-layers",
    "--random-ltd-model-type",
    "--random-ltd-hidden-state-order",
    "--layer-token-lr-total-layer-tokens",
    "--layer-token-lr-warmup-layer-tokens",
)


def _precision(a: argparse.Namespace) -> Dict[str, Any]:
    if a.fp16 and a.bf16:
        raise ToolError("--fp16 and --bf16 exclude each other; pick one")
    if a.bf16:
        return {"bf16": {"enabled": True}}
    if not a.fp16:
        return {}
    power = math.log2(a.initial_loss_scale)
    if a.initial_loss_scale < 1 or not power.is_integer():
        raise ToolError(
            f"--initial-loss-scale must be a power of 2 (DeepSpeed stores its exponent), got "
            f"{a.initial_loss_scale}"
        )
    return {
        "fp16": {
            "enabled": True,
            "loss_scale": a.loss_scale,
            "loss_scale_window": a.loss_scale_window,
            "hysteresis": a.hysteresis,
            "min_loss_scale": a.min_loss_scale,
            "initial_scale_power": int(power),
        }
    }


def build_config(a: argparse.Namespace) -> Dict[str, Any]:
    """The JSON dict of parsed flags (not yet validated by load_deepspeed_config)."""
    if a.global_batch_size % a.micro_batch_size:
        raise ToolError(
            f"--global-batch-size {a.global_batch_size} is not a multiple of --micro-batch-size "
            f"{a.micro_batch_size}"
        )
    cfg: Dict[str, Any] = {
        "train_batch_size": a.global_batch_size,
        "train_micro_batch_size_per_gpu": a.micro_batch_size,
    }
    if a.log_interval is not None:
        cfg["steps_per_print"] = a.log_interval
    cfg["gradient_clipping"] = a.clip_grad
    cfg.update(_precision(a))
    sampling, routing = _curriculum(a), _random_ltd(a)
    de: Dict[str, Any] = {"enabled": bool(sampling or routing), "seed": a.seed}
    if routing:
        de["data_routing"] = routing
    if sampling:
        de["data_sampling"] = sampling
    cfg["data_efficiency"] = de
    return cfg


def dumps(obj: Any, indent: int = 2, level: int = 0) -> str:
    """JSON text with nested objects indented and lists of numbers/strings kept on one line."""
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [f"{inner}{dumps(v, indent, level + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, separators=(", ", ": "))


def write_atomic(path: str, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (or examples/data_efficiency/README.md) for the keys.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", required=True, help="JSON file to write ('-': print it)")
    g = p.add_argument_group("run (top-level DeepSpeed keys)")
    g.add_argument("--global-batch-size", type=int, required=True, help="train_batch_size")
    g.add_argument(
        "--micro-batch-size", type=int, required=True, help="train_micro_batch_size_per_gpu"
    )
    g.add_argument("--seed", type=int, default=1234, help="data_efficiency.seed (sampler seed)")
    g.add_argument("--clip-grad", type=float, default=1.0, help="gradient_clipping")
    g.add_argument("--log-interval", type=int, help="steps_per_print")
    g.add_argument("--fp16", action="store_true", help="write the fp16 block (dynamic scaling)")
    g.add_argument("--bf16", action="store_true", help="write the bf16 block")
    g.add_argument("--loss-scale", type=float, default=0, help="fp16: static scale (0 = dynamic)")
    g.add_argument(
        "--initial-loss-scale",
        type=float,
        default=2.0**11,
        help="fp16: initial dynamic scale, a power of 2 (initial_scale_power)",
    )
    g.add_argument("--loss-scale-window", type=int, default=500, help="fp16: loss_scale_window")
    g.add_argument("--hysteresis", type=int, default=2, help="fp16: hysteresis")
    g.add_argument("--min-loss-scale", type=float, default=1, help="fp16: min_loss_scale")
    g.add_argument(
        "--seq-length",
        type=int,
        help="model sequence length: default --random-ltd-max, bound of the seqlen curriculum",
    )
    g.add_argument("--num-layers", type=int, help="model layers (random-LTD total_layer_num)")
    g = p.add_argument_group("curriculum learning (data_sampling)")
    g.add_argument(
        "--cl-metric",
        nargs="+",
        action="append",
        metavar="NAME KEY=VALUE",
        help="a curriculum metric: name then KEY=VALUE pairs (repeat per metric)",
    )
    g.add_argument(
        "--seqlen-truncate",
        nargs=4,
        metavar=("MIN", "MAX", "TOTAL_STEPS", "STEP"),
        help="seqlen_truncate metric, fixed_linear",
    )
    g.add_argument(
        "--seqlen-reshape",
        nargs=4,
        metavar=("MIN", "MAX", "TOTAL_STEPS", "STEP"),
        help="seqlen_reshape metric (GPT: re-chunk the batch), fixed_linear",
    )
    g.add_argument(
        "--data-cluster-path",
        help="data_cluster_path (DeepSpeed writes clusters there; unused by this framework)",
    )
    g.add_argument("--num-epochs", type=int, help="data_sampling.num_epochs [1000]")
    g = p.add_argument_group("random-LTD (data_routing)")
    g.add_argument("--random-ltd-min", type=int, help="K at the first step (turns random-LTD on)")
    g.add_argument("--random-ltd-max", type=int, help="K at the ramp's end [--seq-length]")
    g.add_argument("--random-ltd-require-steps", type=int, help="steps of the K ramp")
    g.add_argument("--random-ltd-seq-per-step", type=int, help="K is a multiple of this [16]")
    g.add_argument(
        "--random-ltd-layers",
        help="0-based layer ids, e.g. 1-22 or 1,3,5-7 [all but first and last]",
    )
    g.add_argument(
        "--random-ltd-model-type",
        choices=LTD_MODEL_TYPES,
        help="decoder (GPT) or encoder (BERT) [decoder]",
    )
    g.add_argument(
        "--random-ltd-hidden-state-order", choices=LTD_HIDDEN_STATE_ORDERS, help="[seq_batch_dim]"
    )
    g.add_argument(
        "--layer-token-lr-total-layer-tokens",
        type=int,
        help="turn the layer-token lr schedule on: layer-tokens of the whole run",
    )
    g.add_argument(
        "--layer-token-lr-warmup-layer-tokens", type=int, help="layer-tokens of linear warmup [0]"
    )
    return p


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse flags, build and validate the config, write it; returns the JSON dict."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        cfg = build_config(a)
        loaded = load_deepspeed_config(cfg)  # the parser training uses: strict keys, types, values
        if a.seq_length is not None and a.num_layers is not None:  # and its checks on the model
            check_against_model(loaded, a.seq_length, a.num_layers, sequence_parallel=False)
    except (ToolError, ValueError) as exc:  # ConfigError is a ValueError
        message = str(exc).removeprefix("<dict>: ")
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    text = dumps(cfg) + "\n"
    if a.output == "-":
        sys.stdout.write(text)
        return cfg
    write_atomic(a.output, text)
    parts = []
    if "data_sampling" in cfg["data_efficiency"]:
        cl = cfg["data_efficiency"]["data_sampling"]["curriculum_learning"]
        parts.append("curriculum " + ", ".join(cl["curriculum_metrics"]))
    if "data_routing" in cfg["data_efficiency"]:
        ltd = cfg["data_efficiency"]["data_routing"]["random_ltd"]
        parts.append(f"random-LTD on {ltd['random_ltd_layer_num']} layers")
    print(f"wrote {a.output} ({'; '.join(parts) or 'data efficiency off'})")
    return cfg


if __name__ == "__main__":
    main()
