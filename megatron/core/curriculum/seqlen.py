"""Curriculum post-processing by sequence length: pure functions of the step and the batch.

The sequence length at step k (1-based training iteration) is a function of k and the config
alone (`seqlen_at_step`, `gpt_batch_shape_at_step`), so every pipeline stage knows the shape of
every micro-batch without exchanging shapes. The functions below act on collated batches (dicts of
numpy arrays or torch tensors with a leading batch dimension) as the datasets produce them:

GPT (`GPTDataset`): "text" [b, S + 1], "position_ids" [b, S], "loss_mask" [b, S], optional
"attention_mask" [b, 1, S, S] (True = masked out); "tokens"/"labels" [b, S] are handled too.

- `seqlen_truncate` metric (and the legacy `curriculum_learning` block): keep the first L + 1
  tokens of each sample (`text[:, :L + 1]`, the other keys `[:, :L]`, the mask `[..., :L, :L]`).
- `seqlen_reshape` metric: re-chunk the batch into rows of W = L + 1 tokens, as Megatron-DeepSpeed
  does. With `per = (S + 1) // W` chunks per sample, the candidate rows are, in this order, the
  chunks `text[i, j*W : (j+1)*W]` of every sample i (j < per), then the last W tokens
  `text[i, S+1-W :]` of every sample (they overlap the chunks; the remainder of (S + 1) % W tokens
  is covered only by them). The first `ceil(b * (S + 1) / W)` rows are kept (at most all
  candidates), minus one when that count is odd and above 1. Each row's last token is only a
  label: the boundary between two chunks is not predicted. Position ids restart at 0 in each row
  (or later, after an end-of-document token, with --reset-position-ids) and the attention mask is
  the row's block of the sample's mask: what recomputing them from the row's tokens gives.

BERT (`BertDataset`): "text", "types", "labels", "loss_mask", "padding_mask" [b, S] are cut to a
length that is a multiple of 8: the seqlen_truncate difficulty rounded up, or, without that
metric (curriculum learning on), the longest non-padding length of the micro-batch rounded up
(data-dependent: Megatron-DeepSpeed takes the maximum over the data-parallel group with an
all-reduce; here each micro-batch is trimmed on its own and no collective is used; under pipeline
parallelism pass trim_padding=False, since later stages cannot know that length from the step).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from megatron.core.curriculum.config import SEQLEN_RESHAPE, SEQLEN_TRUNCATE, DifficultySchedule
from megatron.core.curriculum.pacing import difficulty_at
from megatron.core.deepspeed_config import DataEfficiencyConfig, DeepSpeedConfig

try:
    import torch
except ImportError:  # numpy-only use
    torch = None

Batch = Dict[str, Any]
BERT_LENGTH_MULTIPLE = 8
"""BERT lengths are rounded up to a multiple of this (tensor cores), as Megatron-DeepSpeed does."""

_GPT_SEQ_KEYS = ("position_ids", "loss_mask", "tokens", "labels")
_BERT_SEQ_KEYS = ("text", "types", "labels", "loss_mask", "padding_mask")


def _is_torch(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _contiguous(x: Any) -> Any:
    return x.contiguous() if _is_torch(x) else np.ascontiguousarray(x)


def _index(x: Any, idx: np.ndarray) -> Any:
    """An index array usable on x (a torch tensor on x's device, or the numpy array)."""
    return torch.as_tensor(idx, device=x.device) if _is_torch(x) else idx


# ----------------------------------------------------------------------------- which mode


def _parts(config: Union[DeepSpeedConfig, DataEfficiencyConfig]):
    """(data-efficiency config, enabled legacy block or None)."""
    if isinstance(config, DeepSpeedConfig):
        legacy = config.curriculum_learning
        return config.data_efficiency, legacy if legacy is not None and legacy.enabled else None
    if isinstance(config, DataEfficiencyConfig):
        return config, None
    raise TypeError(
        f"expected a DeepSpeedConfig or DataEfficiencyConfig, got {type(config).__name__}"
    )


def seqlen_mode(
    config: Union[DeepSpeedConfig, DataEfficiencyConfig],
) -> Tuple[str, Optional[DifficultySchedule]]:
    """How batches are post-processed: ("none" | "truncate" | "reshape" | "legacy" |
    "bert_trim", the schedule of the length or None). "bert_trim" means curriculum learning
    without a seqlen metric (BERT trims padding; GPT batches stay whole)."""
    de, legacy = _parts(config)
    if legacy is not None:
        return "legacy", legacy
    cl = de.data_sampling.curriculum_learning
    if not cl.enabled:
        return "none", None
    if SEQLEN_TRUNCATE in cl.curriculum_metrics:
        return "truncate", cl.curriculum_metrics[SEQLEN_TRUNCATE]
    if SEQLEN_RESHAPE in cl.curriculum_metrics:
        return "reshape", cl.curriculum_metrics[SEQLEN_RESHAPE]
    return "bert_trim", None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def seqlen_at_step(
    config: Union[DeepSpeedConfig, DataEfficiencyConfig],
    step: int,
    seq_length: int,
    model_type: str = "gpt",
    trim_padding: bool = True,
) -> Optional[int]:
    """Tokens per row of the model input at training step `step` (1-based iteration).

    GPT: min(difficulty, seq_length) with seqlen_truncate / seqlen_reshape / the legacy block,
    else seq_length (with seqlen_reshape the number of rows changes too: `gpt_batch_shape_at_step`).
    BERT: the truncate difficulty rounded up to a multiple of 8 (at most seq_length); None when
    the length depends on the data (curriculum learning without seqlen_truncate and trim_padding).
    """
    if model_type not in ("gpt", "bert"):
        raise ValueError(f"model_type must be gpt or bert, got {model_type!r}")
    mode, schedule = seqlen_mode(config)
    if mode == "none" or (mode == "bert_trim" and model_type == "gpt"):
        return seq_length
    if mode == "bert_trim":
        return None if trim_padding else seq_length
    if mode == "reshape" and model_type == "bert":
        raise ValueError(
            "the seqlen_reshape curriculum metric is for GPT; use seqlen_truncate for BERT"
        )
    length = int(difficulty_at(schedule, step))
    if length < 1:
        raise ValueError(
            f"curriculum sequence length {length} at step {step}; min_difficulty must be >= 1"
        )
    if model_type == "bert" and mode == "truncate":
        length = _round_up(length, BERT_LENGTH_MULTIPLE)
    return min(length, seq_length)


def gpt_reshape_rows(batch_size: int, seq_length: int, seqlen: int) -> int:
    """Rows of a [batch_size, seq_length + 1] GPT batch after seqlen_reshape to `seqlen`."""
    if seqlen >= seq_length:
        return batch_size
    width, total = seqlen + 1, seq_length + 1
    rows = min(math.ceil(batch_size * total / width), batch_size * (total // width + 1))
    return rows - 1 if rows > 1 and rows % 2 else rows


def gpt_batch_shape_at_step(
    config: Union[DeepSpeedConfig, DataEfficiencyConfig],
    step: int,
    micro_batch_size: int,
    seq_length: int,
) -> Tuple[int, int]:
    """(rows, tokens per row) of a GPT micro-batch's model input at step `step`."""
    length = seqlen_at_step(config, step, seq_length, "gpt")
    if seqlen_mode(config)[0] == "reshape":
        return gpt_reshape_rows(micro_batch_size, seq_length, length), length
    return micro_batch_size, length


# ----------------------------------------------------------------------------- GPT


def truncate_gpt_batch(batch: Batch, seqlen: int) -> Batch:
    """Keep the first seqlen input tokens of each sample (text: seqlen + 1 tokens); a new dict,
    unchanged when seqlen >= the batch's length."""
    total = batch["text"].shape[1]  # S + 1
    if seqlen >= total - 1:
        return dict(batch)
    out = dict(batch)
    out["text"] = _contiguous(batch["text"][:, : seqlen + 1])
    for key in _GPT_SEQ_KEYS:
        if key in batch and batch[key] is not None:
            out[key] = _contiguous(batch[key][:, :seqlen])
    mask = batch.get("attention_mask")
    if mask is not None:
        out["attention_mask"] = _contiguous(mask[..., :seqlen, :seqlen])
    return out


def gpt_reshape_layout(
    batch_size: int, seq_length: int, seqlen: int
) -> Tuple[np.ndarray, np.ndarray]:
    """(sample, first token) int64 [R] of each row of seqlen_reshape (see the module docstring)."""
    width, total = seqlen + 1, seq_length + 1
    per = total // width
    sample = np.concatenate([np.repeat(np.arange(batch_size), per), np.arange(batch_size)])
    start = np.concatenate(
        [np.tile(np.arange(per) * width, batch_size), np.full(batch_size, total - width)]
    )
    rows = gpt_reshape_rows(batch_size, seq_length, seqlen)
    return sample[:rows].astype(np.int64), start[:rows].astype(np.int64)


def _gather_rows(x: Any, sample: np.ndarray, pos: np.ndarray) -> Any:
    """x[sample[r], pos[r, :]] for a [b, n] array: [R, L]."""
    return x[_index(x, sample[:, None]), _index(x, pos)]


def _gather_mask(mask: Any, sample: np.ndarray, pos: np.ndarray) -> Any:
    """The [L, L] block of each row's sample mask: [b, h, S, S] -> [R, h, L, L] (or 3-D)."""
    rows, cols = _index(mask, pos[:, :, None]), _index(mask, pos[:, None, :])
    if mask.ndim == 3:
        return mask[_index(mask, sample[:, None, None]), rows, cols]
    # Advanced indices split by the head slice come first: [R, L, L, h] -> [R, h, L, L].
    block = mask[_index(mask, sample[:, None, None]), :, rows, cols]
    return block.permute(0, 3, 1, 2) if _is_torch(block) else np.moveaxis(block, -1, 1)


def reshape_gpt_batch(batch: Batch, seqlen: int) -> Batch:
    """Re-chunk a GPT batch into rows of seqlen + 1 tokens (Megatron-DeepSpeed's seqlen_reshape);
    a new dict, unchanged when seqlen >= the batch's length."""
    text = batch["text"]
    b, total = text.shape
    if seqlen >= total - 1:
        return dict(batch)
    sample, start = gpt_reshape_layout(b, total - 1, seqlen)
    pos = start[:, None] + np.arange(seqlen + 1)[None, :]  # [R, L + 1]
    out = {key: value for key, value in batch.items()}
    out["text"] = _gather_rows(text, sample, pos)
    inputs = pos[:, :-1]  # [R, L]
    for key in _GPT_SEQ_KEYS:
        if key in batch and batch[key] is not None:
            out[key] = _gather_rows(batch[key], sample, inputs)
    if out.get("position_ids") is not None:  # restart at each row's start (or a later eod)
        ramp = np.arange(seqlen)[None, :]
        ramp = torch.as_tensor(ramp, device=out["position_ids"].device) if _is_torch(text) else ramp
        out["position_ids"] = (torch.minimum if _is_torch(text) else np.minimum)(
            out["position_ids"], ramp
        )
    if batch.get("attention_mask") is not None:
        out["attention_mask"] = _gather_mask(batch["attention_mask"], sample, inputs)
    for key, value in batch.items():  # per-sample values (e.g. "index") follow their rows
        if key not in out or out[key] is value:
            if (
                getattr(value, "ndim", 0) >= 1
                and value.shape[0] == b
                and key not in ("text", "attention_mask")
            ):
                out[key] = value[_index(value, sample)]
    return out


# ----------------------------------------------------------------------------- BERT


def bert_trim_length(
    padding_mask: Any, seqlen: Optional[int] = None, multiple: int = BERT_LENGTH_MULTIPLE
) -> int:
    """Length a BERT micro-batch is cut to: `seqlen` (the truncate difficulty) or, when None, the
    longest non-padding length in the micro-batch, rounded up to a multiple of `multiple`."""
    if seqlen is None:
        counts = (padding_mask != 0).sum(1)
        seqlen = int(counts.max()) if counts.shape[0] else 0
    return _round_up(max(int(seqlen), 1), multiple)


def trim_bert_batch(batch: Batch, length: int) -> Batch:
    """Cut the sequence keys of a BERT batch to `length` (a new dict; unchanged when length >=
    the batch's length)."""
    if length >= batch["text"].shape[1]:
        return dict(batch)
    out = dict(batch)
    for key in _BERT_SEQ_KEYS:
        if key in batch and batch[key] is not None:
            out[key] = _contiguous(batch[key][:, :length])
    return out


# ----------------------------------------------------------------------------- dispatch


def post_process_batch(
    config: Union[DeepSpeedConfig, DataEfficiencyConfig],
    step: int,
    batch: Batch,
    seq_length: int,
    model_type: str = "gpt",
    trim_padding: bool = True,
) -> Batch:
    """Apply the curriculum's sequence-length post-processing of step `step` to a micro-batch.

    Args:
        config: the loaded config (the legacy block counts when it is a DeepSpeedConfig).
        step: the training step (1-based iteration) the micro-batch belongs to.
        batch: the collated micro-batch (numpy arrays or torch tensors).
        seq_length: --seq-length.
        model_type: gpt or bert.
        trim_padding: BERT without a seqlen_truncate metric: trim to the longest non-padding
            length (False under pipeline parallelism: that length is data-dependent).
    """
    mode, _ = seqlen_mode(config)
    length = seqlen_at_step(config, step, seq_length, model_type, trim_padding)
    if model_type == "gpt":
        if mode == "reshape":
            return reshape_gpt_batch(batch, length)
        return truncate_gpt_batch(batch, length) if length < seq_length else dict(batch)
    if length is None:
        length = bert_trim_length(batch["padding_mask"])
    return trim_bert_batch(batch, length)
