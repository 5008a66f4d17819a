"""The training budget and the learning-rate schedule that spans it.

`StepAccounting` counts the samples, tokens and layer-tokens of every training step from the flags
alone: the batch-size ramp-up, the curriculum's sequence length and random-LTD's kept tokens are
pure functions of the step, so the counters after any step are known before training starts.

- `train_num_samples`: the training samples the datasets must provide. For --train-tokens it sums
  the per-step token counts until the budget is reached (curriculum learning and random-LTD make a
  sample count fewer tokens than --seq-length, so `train_tokens / seq_length` samples run out).
- `schedule_spans`: the lr warmup and decay spans in one unit, the decay's: samples, tokens or
  layer-tokens (random-LTD's layer_token_lr_schedule). With --train-tokens as the only budget the
  decay spans the token budget, as Megatron-DeepSpeed's data-efficiency scripts set it
  (--lr-decay-tokens = --train-tokens), so the lr reaches --min-lr at the budget. A warmup given in
  another unit (say --lr-warmup-iters with a token decay, or --lr-warmup-tokens with the
  layer-token schedule) is converted to the decay's unit by the accounting, so the lr is
  continuous where the warmup ends. The spans are checked against each other, naming the flags,
  before any heavy work.
- `build_scheduler`: the `OptimizerParamScheduler` of those spans.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Optional, Tuple

from megatron.core.curriculum.pacing import difficulty_segments
from megatron.core.curriculum.seqlen import seqlen_mode
from megatron.core.random_ltd.schedule import random_ltd_value

from .data_efficiency import DataEfficiency, data_efficiency_from_flags
from .lr_scheduler import OptimizerParamScheduler
from .microbatches import MicroBatchCalculator
from .run_config import RunConfig

logger = logging.getLogger(__name__)

DATA_DEPENDENT_MARGIN = 2
"""BERT trimming each micro-batch to its longest non-padding length (curriculum learning without
seqlen_truncate) counts a data-dependent number of tokens, at most the untrimmed count the
accounting knows in advance: with --train-tokens alone its training split is built with this many
times the samples the untrimmed count needs (Megatron-DeepSpeed's scripts build twice the samples
for every data-efficiency run); the loop stops with an error naming --train-samples if that is not
enough."""


@dataclasses.dataclass(frozen=True)
class Progress:
    """Training counters after `steps` steps."""

    steps: int = 0
    samples: int = 0
    tokens: int = 0
    layer_tokens: int = 0

    def get(self, unit: str) -> int:
        """The counter of `unit`: steps, samples, tokens or layer_tokens."""
        return getattr(self, unit)

    def plus(self, delta: "Progress", times: int = 1) -> "Progress":
        """These counters advanced by `times` steps of `delta` each."""
        return Progress(
            *(getattr(self, f) + times * getattr(delta, f) for f in _FIELDS)  # type: ignore
        )

    def minus(self, other: "Progress") -> "Progress":
        """The counters these have more than `other`."""
        return Progress(*(getattr(self, f) - getattr(other, f) for f in _FIELDS))  # type: ignore


_FIELDS = tuple(f.name for f in dataclasses.fields(Progress))


class StepAccounting:
    """Samples, tokens and layer-tokens of every training step (see the module docstring).

    Args:
        calc: the global batch size of each step (ramp-up).
        de: the run's curriculum learning / random-LTD (the per-step shape and kept tokens).
        micro_batch_size: --micro-batch-size.
    """

    def __init__(self, calc: MicroBatchCalculator, de: DataEfficiency, micro_batch_size: int):
        self.calc, self.de, self.micro_batch_size = calc, de, micro_batch_size
        self._steady = steady_step(de)
        self._crossings: Dict[Tuple[str, int], Tuple[Progress, Progress]] = {}

    @classmethod
    def from_run(cls, run: RunConfig, model_type: str = "gpt", ds_config=None) -> "StepAccounting":
        """The accounting of the run's flags (`ds_config`: the parsed --deepspeed_config, to
        avoid reading it again)."""
        tr = run.training
        calc = MicroBatchCalculator(
            tr.global_batch_size, tr.micro_batch_size, run.data_parallel_size, tr.rampup_batch_size
        )
        de = data_efficiency_from_flags(run, model_type, ds_config=ds_config)
        return cls(calc, de, tr.micro_batch_size)

    def after_step(self, done: Progress) -> Progress:
        """The counters after the step that follows `done`."""
        step = done.steps + 1
        gbs = self.calc.global_batch_at(done.samples)
        tokens, layer_tokens = self.de.step_counts(step, gbs, self.micro_batch_size)
        return Progress(
            step, done.samples + gbs, done.tokens + tokens, done.layer_tokens + layer_tokens
        )

    def crossing(self, unit: str, amount: int) -> Tuple[Progress, Progress]:
        """The counters before and after the step during which the `unit` counter (steps,
        samples, tokens or layer_tokens) reaches `amount` (>= 1)."""
        if amount < 1:
            raise ValueError(f"{unit} to reach must be >= 1, got {amount}")
        key = (unit, int(amount))
        if key not in self._crossings:
            self._crossings[key] = self._walk(unit, int(amount))
        return self._crossings[key]

    def _walk(self, unit: str, amount: int) -> Tuple[Progress, Progress]:
        before = Progress()
        while True:
            after = self.after_step(before)
            if after.get(unit) >= amount:
                return before, after
            if self._steady_after(after):  # every later step adds the same: jump
                delta = self.after_step(after).minus(after)
                n = -(-(amount - after.get(unit)) // delta.get(unit))  # >= 1 more steps
                before = after.plus(delta, n - 1)
                return before, before.plus(delta)
            before = after

    def _steady_after(self, done: Progress) -> bool:
        """Whether every step after `done` has the same shape, K and global batch size."""
        return (
            self._steady is not None
            and done.steps + 1 >= self._steady
            and self.calc.global_batch_at(done.samples) == self.calc.global_batch_size
        )

    def value_at(self, unit: str, amount: int, target: str) -> int:
        """The `target` counter at the point where the `unit` counter reaches `amount`,
        interpolated linearly within the step that crosses it (0 for amount 0)."""
        if amount <= 0:
            return 0
        before, after = self.crossing(unit, amount)
        a0, a1 = before.get(unit), after.get(unit)
        b0, b1 = before.get(target), after.get(target)
        return b0 + (b1 - b0) * (amount - a0) // (a1 - a0)


def steady_step(de: DataEfficiency) -> Optional[int]:
    """The first step from which every step has the same model-input shape and random-LTD K (1
    without curriculum or random-LTD); None when a custom schedule makes it unknowable."""
    first = 1
    if de.changes_seqlen:
        schedule = seqlen_mode(de.ds)[1]
        if schedule is not None:
            if schedule.schedule_type == "custom":
                return None
            first = difficulty_segments(schedule)[-1][0]
    if de.ltd is not None:
        first = max(first, _ltd_full_step(de.ltd.random_ltd_schedule))
    return first


def _ltd_full_step(schedule) -> int:
    """The first step at which random-LTD keeps max_value tokens (K never decreases)."""
    full = schedule.max_value

    def reached(step: int) -> bool:
        return random_ltd_value(schedule, step - 1) >= full

    hi = 1
    while not reached(hi):
        hi *= 2
    lo = hi // 2  # not reached at lo (when lo >= 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return hi


# ---- the budget --------------------------------------------------------------------------------
def train_num_samples(run: RunConfig, acct: StepAccounting) -> int:
    """Training samples the datasets must provide for the run's budget."""
    tr = run.training
    if tr.train_samples is not None:
        return tr.train_samples
    if tr.train_iters is not None:
        if tr.rampup_batch_size is None:
            return tr.train_iters * tr.global_batch_size
        consumed = 0
        for _ in range(tr.train_iters):
            consumed += acct.calc.global_batch_at(consumed)
        return consumed
    if tr.train_tokens is not None and tr.train_tokens > 0:
        end = acct.crossing("tokens", tr.train_tokens)[1]
        logger.info(
            "--train-tokens %d: %d steps, %d samples, %d layer-tokens",
            tr.train_tokens,
            end.steps,
            end.samples,
            end.layer_tokens,
        )
        if acct.de.tokens_depend_on_data:
            return end.samples * DATA_DEPENDENT_MARGIN
        return end.samples
    return 0


@dataclasses.dataclass(frozen=True)
class Span:
    """A warmup or decay span of the lr schedule."""

    unit: str
    """samples, tokens or layer_tokens."""

    amount: Optional[int]
    """Its length in `unit` (None: no decay span)."""

    source: str
    """The flag or key it comes from (for messages)."""


def _layer_token_schedule(acct: StepAccounting):
    ltd = acct.de.ltd
    lt = ltd.layer_token_lr_schedule if ltd is not None else None
    return lt if lt is not None and lt.enabled else None


def decay_span(run: RunConfig, acct: StepAccounting) -> Span:
    """The decay span: layer_token_lr_schedule, --lr-decay-tokens/-samples/-iters, else the
    training budget (in tokens for a --train-tokens-only budget)."""
    s, tr = run.scheduler, run.training
    lt = _layer_token_schedule(acct)
    if lt is not None:
        return Span(
            "layer_tokens", lt.total_layer_tokens, "layer_token_lr_schedule.total_layer_tokens"
        )
    if s.lr_decay_tokens is not None:
        return Span("tokens", s.lr_decay_tokens, "--lr-decay-tokens")
    if s.lr_decay_samples is not None:
        return Span("samples", s.lr_decay_samples, "--lr-decay-samples")
    if s.lr_decay_iters is not None:
        return Span("samples", s.lr_decay_iters * tr.global_batch_size, "--lr-decay-iters")
    if tr.train_samples is not None or tr.train_iters is not None:
        samples = train_num_samples(run, acct) or None
        return Span("samples", samples, "the training budget (--train-iters/--train-samples)")
    if tr.train_tokens:
        return Span("tokens", tr.train_tokens, "the token budget (--train-tokens)")
    return Span("samples", None, "no training budget")


def warmup_span(run: RunConfig, acct: StepAccounting, decay: Span) -> Span:
    """The warmup span in the unit of `decay`: layer_token_lr_schedule.warmup_layer_tokens,
    --lr-warmup-fraction of the decay span, or --lr-warmup-tokens/-samples/-iters converted by
    the accounting to the counter value where that warmup ends."""
    s, gbs = run.scheduler, run.training.global_batch_size
    lt = _layer_token_schedule(acct)
    if lt is not None and lt.warmup_layer_tokens:
        return Span("layer_tokens", lt.warmup_layer_tokens, "warmup_layer_tokens")
    if s.lr_warmup_fraction is not None:
        return Span(
            decay.unit, int(s.lr_warmup_fraction * (decay.amount or 0)), "--lr-warmup-fraction"
        )
    if s.lr_warmup_tokens:
        given = Span("tokens", s.lr_warmup_tokens, "--lr-warmup-tokens")
    elif s.lr_warmup_samples:
        given = Span("samples", s.lr_warmup_samples, "--lr-warmup-samples")
    elif s.lr_warmup_iters:
        given = Span("samples", s.lr_warmup_iters * gbs, "--lr-warmup-iters")
    else:
        return Span(decay.unit, 0, "no warmup")
    if given.unit == decay.unit:
        return given
    amount = acct.value_at(given.unit, given.amount, decay.unit)
    return Span(decay.unit, amount, f"{given.source} ({given.amount} {given.unit})")


def schedule_spans(run: RunConfig, acct: StepAccounting) -> Dict[str, Optional[int]]:
    """Warmup and decay spans of the lr schedule, all in one unit, as `OptimizerParamScheduler`
    keyword arguments; a warmup not shorter than the decay is an error naming both."""
    if run.optimizer.lr is None:
        raise ValueError("--lr is required")
    decay = decay_span(run, acct)
    warmup = warmup_span(run, acct, decay)
    unit = decay.unit.replace("_", "-")
    if (
        run.scheduler.lr_decay_style != "constant"
        and decay.amount
        and warmup.amount >= decay.amount
    ):
        raise ValueError(
            f"the lr warmup ({warmup.source}: {warmup.amount} {unit}) must be shorter than the "
            f"decay span ({decay.source}: {decay.amount} {unit}); shorten the warmup or lengthen "
            "the decay"
        )
    spans: Dict[str, Optional[int]] = dict(warmup_steps=0, decay_steps=None)
    for key in ("warmup_tokens", "decay_tokens", "warmup_layer_tokens", "decay_layer_tokens"):
        spans[key] = None
    if decay.unit == "samples":
        spans.update(warmup_steps=warmup.amount, decay_steps=decay.amount)
    elif decay.unit == "tokens":
        spans.update(warmup_tokens=warmup.amount or None, decay_tokens=decay.amount)
    else:
        spans.update(warmup_layer_tokens=warmup.amount or None, decay_layer_tokens=decay.amount)
    return spans


def build_scheduler(run: RunConfig, optimizer, acct: StepAccounting) -> OptimizerParamScheduler:
    """Learning-rate schedule in samples, tokens or random-LTD layer-tokens (`schedule_spans`)."""
    spans = schedule_spans(run, acct)
    if spans.get("decay_layer_tokens"):
        logger.info(
            "lr schedule in layer-tokens: warmup %s, decay over %s",
            spans.get("warmup_layer_tokens") or 0,
            spans["decay_layer_tokens"],
        )
        _check_layer_token_decay(run, acct, spans["decay_layer_tokens"])
    return OptimizerParamScheduler(
        optimizer,
        max_lr=run.optimizer.lr,
        min_lr=run.optimizer.min_lr,
        decay_style=run.scheduler.lr_decay_style,
        **spans,
    )


def _check_layer_token_decay(run: RunConfig, acct: StepAccounting, total: int) -> None:
    """Warn when the layer-token decay does not end where the --train-tokens budget does."""
    tr = run.training
    if tr.train_tokens is None or tr.train_iters is not None or tr.train_samples is not None:
        return
    end = acct.crossing("tokens", tr.train_tokens)[1].layer_tokens
    if end != total:
        logger.warning(
            "layer_token_lr_schedule.total_layer_tokens is %d but the --train-tokens budget ends "
            "at %d layer-tokens: the lr reaches --min-lr %s; set total_layer_tokens to %d to "
            "end the decay at the budget",
            total,
            end,
            "before the budget" if total < end else "only after the budget",
            end,
        )


# ---- the data the budget reads ------------------------------------------------------------------
class DataExhaustedError(RuntimeError):
    """The budget needs more training samples than the training split holds."""


def sample_limit(run: RunConfig, train_dataset) -> Optional[int]:
    """The samples a run may read from its training split: its length when the split was sized
    for the run (None where cycling over it is the intent: --dataloader-type cyclic, or a
    curriculum over --train-data-exact-num-epochs)."""
    if run.training.dataloader_type == "cyclic" or run.data.train_data_exact_num_epochs:
        return None
    return len(train_dataset)


def exhausted_message(step: int, first: int, size: int, limit: int, st, saved: bool) -> str:
    """Why step `step`, which would read samples first .. first + size - 1 of a training split
    of `limit`, does not run (`st`: the counters; `saved`: whether they are in --save)."""
    where = f"; iteration {st.iteration} is saved in --save" if saved else ""
    return (
        f"iteration {step} would read samples {first} to {first + size - 1}, but the training "
        f"split holds {limit}: the budget needs more samples than were built "
        f"({st.consumed_train_tokens} tokens consumed so far; e.g. BERT's padding trim counts a "
        f"data-dependent number of tokens); stopped without repeating data{where}. Build a "
        "bigger split with --train-samples N (a --train-tokens budget still stops the run; add "
        "--lr-decay-tokens set to it to keep the lr decay on tokens) and train again"
    )
