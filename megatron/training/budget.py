"""The training budget and the learning-rate schedule that spans it.

`train_num_samples` is the number of training samples the datasets must provide for
--train-iters / --train-samples / --train-tokens; `schedule_spans` derives the lr warmup and decay
spans from the lr flags and checks them against each other (so a bad combination fails before any
heavy work, naming the flags); `build_scheduler` makes the `OptimizerParamScheduler`.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, Optional

from .lr_scheduler import OptimizerParamScheduler
from .microbatches import MicroBatchCalculator
from .run_config import RunConfig

logger = logging.getLogger(__name__)


def train_num_samples(run: RunConfig, calc: MicroBatchCalculator) -> int:
    """Training samples the datasets must provide."""
    tr = run.training
    if tr.train_samples is not None:
        return tr.train_samples
    if tr.train_iters is not None:
        if tr.rampup_batch_size is None:
            return tr.train_iters * tr.global_batch_size
        consumed = 0
        for _ in range(tr.train_iters):
            consumed += calc.global_batch_at(consumed)
        return consumed
    if tr.train_tokens is not None:
        return math.ceil(tr.train_tokens / run.model.seq_length)
    return 0


def schedule_spans(run: RunConfig, train_samples: int) -> Dict[str, Optional[int]]:
    """Warmup and decay spans of the lr schedule in samples (and tokens), checked against each
    other so a bad combination fails before any heavy work, naming the flags."""
    s, gbs = run.scheduler, run.training.global_batch_size
    if run.optimizer.lr is None:
        raise ValueError("--lr is required")
    if s.lr_decay_samples is not None:
        decay, decay_src = s.lr_decay_samples, "--lr-decay-samples"
    elif s.lr_decay_iters is not None:
        decay, decay_src = s.lr_decay_iters * gbs, "--lr-decay-iters"
    else:
        decay, decay_src = (
            train_samples or None,
            "the training budget (--train-iters/--train-samples)",
        )
    decay_tokens = s.lr_decay_tokens
    if decay_tokens is None and not decay and run.training.train_tokens:
        decay_tokens = run.training.train_tokens
    if s.lr_warmup_fraction is not None:
        warmup, warmup_src = int(s.lr_warmup_fraction * (decay or 0)), "--lr-warmup-fraction"
    else:
        warmup = s.lr_warmup_samples or s.lr_warmup_iters * gbs
        warmup_src = "--lr-warmup-samples" if s.lr_warmup_samples else "--lr-warmup-iters"
    if s.lr_decay_style != "constant" and decay and not s.lr_warmup_tokens and warmup >= decay:
        raise ValueError(
            f"the lr warmup ({warmup_src}: {warmup} samples) must be shorter than the decay span "
            f"({decay_src}: {decay} samples); shorten the warmup or lengthen the decay"
        )
    if s.lr_warmup_tokens and decay_tokens and s.lr_warmup_tokens >= decay_tokens:
        raise ValueError(
            f"--lr-warmup-tokens {s.lr_warmup_tokens} must be smaller than the token decay span "
            f"{decay_tokens}"
        )
    return dict(
        warmup_steps=warmup,
        decay_steps=decay,
        warmup_tokens=s.lr_warmup_tokens,
        decay_tokens=decay_tokens,
    )


def build_scheduler(
    run: RunConfig, optimizer, train_samples: int, de=None
) -> OptimizerParamScheduler:
    """Learning-rate schedule in samples (or tokens, or random-LTD layer-tokens) from the lr flags,
    the budget and the data_efficiency config's layer_token_lr_schedule."""
    spans = schedule_spans(run, train_samples)
    lt = de.ltd.layer_token_lr_schedule if de is not None and de.ltd is not None else None
    if lt is not None and lt.enabled:
        spans.update(
            warmup_layer_tokens=lt.warmup_layer_tokens or None,
            decay_layer_tokens=lt.total_layer_tokens,
        )
        logger.info(
            "lr schedule in layer-tokens: warmup %s, decay over %s",
            lt.warmup_layer_tokens,
            lt.total_layer_tokens,
        )
    return OptimizerParamScheduler(
        optimizer,
        max_lr=run.optimizer.lr,
        min_lr=run.optimizer.min_lr,
        decay_style=run.scheduler.lr_decay_style,
        **spans,
    )
