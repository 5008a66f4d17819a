"""The training application: `pretrain` builds everything from the command line and trains.

A pretraining script provides three callbacks (see pretrain_gpt.py):

    model_provider(run, runtime, pre_process, post_process, vp_rank) -> torch.nn.Module
    datasets_provider(run, runtime, num_samples [train, valid, test]) -> (train, valid, test)
    forward_step(data_iterator, model) -> (output, loss_func)   (see core.pipeline_parallel)

`vp_rank` is the index of the model chunk to build (None without virtual pipeline stages);
`language_model_kwargs` gives the arguments GPTModel and BertModel share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron.core.distributed import DDPConfig, DistributedDataParallel, finalize_model_grads
from megatron.core.optimizer import NonFiniteGradError, get_megatron_optimizer
from megatron.core.pipeline_parallel import broadcast_from_last_stage, get_forward_backward_func
from megatron.core.pipeline_parallel.schedule_args import ScheduleArgs
from megatron.core.utils import unwrap_model

from . import checkpointing as ckpt
from . import resume
from .arguments import RunConfig, parse_args
from .budget import (
    DataExhaustedError,
    StepAccounting,
    build_scheduler,
    exhausted_message,
    sample_limit,
    schedule_spans,
    train_num_samples,
)
from .data import force_train_index
from .data_efficiency import build_data_efficiency
from .data_samplers import CyclicSampler, PretrainingSampler
from .initialize import Runtime, initialize, setup_logging
from .liveness import JobGone, PeerLiveness, report_lost_ranks
from .lr_scheduler import OptimizerParamScheduler
from .metrics import (
    IterationLogger,
    MetricSink,
    build_sinks,
    send_counters,
    send_vs,
    step_flops,
)
from .microbatches import MicroBatchCalculator
from .model_stats import num_zeros_in_grad, params_norm
from .save_lock import acquire_save_lock
from .timers import StepTimers, maybe_timers

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(FloatingPointError):
    """Training met a NaN or inf loss or gradient norm (--check-for-nan-in-loss-and-grad, on by
    default) or was about to save non-finite weights; the message names the iteration, and
    nothing was saved over the checkpoints in --save."""


@dataclasses.dataclass
class TrainState:
    """Counters saved in checkpoints."""

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    consumed_train_tokens: int = 0
    skipped_iterations: int = 0
    nan_iterations: int = 0
    floating_point_operations_so_far: float = 0.0
    train_time_s: float = 0.0
    """Wall-clock seconds spent in training steps (data, forward, backward, optimizer; not
    evaluation or checkpointing), summed over the runs of a resumed training."""


@dataclasses.dataclass
class TrainingContext:
    """What the training loop works with, built once by `pretrain`."""

    run: RunConfig
    """The run's options."""

    rt: Runtime
    """Process groups, device, RNG streams, tokenizer, data efficiency."""

    forward_step: Callable
    """The script's forward_step(data_iterator, model) -> (output, loss_func)."""

    model: List[torch.nn.Module]
    """This rank's model chunks, wrapped for data parallelism."""

    optimizer: Any
    """The mixed-precision / distributed optimizer."""

    scheduler: OptimizerParamScheduler
    """The learning-rate schedule."""

    calc: MicroBatchCalculator
    """Global batch size (ramp-up) and micro-batches per step."""

    sink: MetricSink
    """Where scalars go (TensorBoard / W&B / none)."""

    vocab_size: int
    """The model's (padded) vocabulary: the logits' width, for FLOP counts."""

    causal: bool
    """GPT (causal attention, half the score FLOPs) or BERT, for FLOP counts."""

    liveness: Optional[PeerLiveness] = None
    """Heartbeats and the watch on the job (None in a single process not run by torchrun)."""

    timers: Optional[StepTimers] = None
    """Per-phase timers (--log-timers-to-tensorboard; None when off)."""

    def timed(self, name: str):
        """Context manager timing its body under `name` (nothing without timers)."""
        return self.timers(name) if self.timers is not None else contextlib.nullcontext()

    def schedule_args(
        self, data_iterator, num_microbatches: int, shape: Tuple[int, int], forward_only: bool
    ) -> ScheduleArgs:
        """The schedule's arguments for one global batch of micro-batches (rows, length)."""
        model, pstate = self.model, self.rt.pstate
        no_sync = model[0].no_sync if len(model) == 1 else [m.no_sync for m in model]
        return ScheduleArgs(
            forward_step_func=self.forward_step,
            data_iterator=data_iterator,
            model=model if len(model) > 1 else model[0],
            num_microbatches=num_microbatches,
            seq_length=shape[1],
            micro_batch_size=shape[0],
            forward_only=forward_only,
            grad_scale_func=None if forward_only else self.optimizer.scale_loss,
            no_sync_func=None if forward_only else no_sync,
            pstate=pstate,
            config=self.run.transformer,
            p2p=self._timed_p2p(),
        )

    def _timed_p2p(self):
        if self.timers is None or self.rt.pstate.pp_size < 2:
            return None
        return self.timers.communicator(self.rt.pstate, next(self.model[0].parameters()).device)

    def schedule(self) -> Callable:
        """The forward/backward schedule of this rank's pipeline layout."""
        return get_forward_backward_func(self.rt.pstate.pp_size, self.rt.pstate.vpp_size)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """One training step, planned before it runs (each field a pure function of the step)."""

    step: int
    """1-based iteration number."""

    global_batch_size: int
    """Samples in the step (batch-size ramp-up may change it)."""

    num_microbatches: int
    """Micro-batches per data-parallel rank."""

    shape: Tuple[int, int]
    """(rows, tokens per row) of every micro-batch (a curriculum may change it)."""

    tokens: int
    """Tokens the step consumes for accounting (curriculum and random-LTD lengths). Where the
    count depends on the data (BERT trimming padding, `DataEfficiency.tokens_depend_on_data`) the
    plan holds the untrimmed upper bound, and `train_step` returns the plan with the measured
    count."""

    layer_tokens: int
    """Layer-tokens of the step (the random-LTD lr schedule's clock); measured like `tokens`."""

    flops: float
    """Model FLOPs of the step (`metrics.step_flops`: the curriculum's length, random-LTD's kept
    tokens in its layers); scaled by the measured tokens where those depend on the data."""


def plan_step(ctx: TrainingContext, st: TrainState) -> StepPlan:
    """The plan of the step after `st.iteration`."""
    step, mbs = st.iteration + 1, ctx.run.training.micro_batch_size
    gbs = ctx.calc.global_batch_at(st.consumed_train_samples)
    de = ctx.rt.data_efficiency
    tokens, layer_tokens = de.step_counts(step, gbs, mbs)
    rows, length = de.batch_shape(step, mbs)
    flops = step_flops(
        ctx.run.transformer,
        ctx.vocab_size,
        ctx.causal,
        gbs // mbs * rows,
        length,
        de.keep(step, length),
        len(de.ltd_layers) if de.ltd is not None else 0,
    )
    return StepPlan(
        step=step,
        global_batch_size=gbs,
        num_microbatches=gbs // ctx.calc.unit,
        shape=(rows, length),
        tokens=tokens,
        layer_tokens=layer_tokens,
        flops=flops,
    )


# ---- model ---------------------------------------------------------------------------------
def language_model_kwargs(
    run: RunConfig, rt: Runtime, pre_process: bool, post_process: bool, vp_rank: Optional[int]
) -> Dict[str, Any]:
    """The arguments GPTModel and BertModel take from the run and the runtime (the padded
    vocabulary and the tokenizer's, whose padding ids the models leave out of the softmax)."""
    return dict(
        config=run.transformer,
        vocab_size=rt.padded_vocab_size,
        true_vocab_size=rt.tokenizer.vocab_size if rt.tokenizer is not None else None,
        max_sequence_length=run.model.max_position_embeddings,
        pstate=rt.pstate,
        rng_tracker=rt.rng_tracker,
        pre_process=pre_process,
        post_process=post_process,
        vp_rank=vp_rank,
    )


def build_model(model_provider: Callable, run: RunConfig, rt: Runtime) -> List[torch.nn.Module]:
    """Model chunks of this rank, initialised, on the device, wrapped for data parallelism."""
    pstate = rt.pstate
    vpp = pstate.vpp_size
    gen_device = (
        "cpu" if run.parallel.use_cpu_initialization or rt.device.type == "cpu" else rt.device.type
    )
    chunks = []
    for vp in range(vpp or 1):
        vp_rank = vp if vpp else None
        pre = pstate.is_pipeline_first_stage(vp_rank)
        post = pstate.is_pipeline_last_stage(vp_rank)
        model = model_provider(run, rt, pre, post, vp_rank)
        model.to(rt.device)
        unwrap_model(model).initialize(run.training.seed, gen_device)
        chunks.append(model)
    n = sum(p.numel() for c in chunks for p in c.parameters())
    logger.info("number of parameters on (TP %d, PP %d): %d", pstate.tp_rank, pstate.pp_rank, n)
    ddp_cfg = DDPConfig(
        grad_reduce_in_fp32=run.parallel.accumulate_allreduce_grads_in_fp32 or run.optimizer.bf16,
        overlap_grad_reduce=run.parallel.overlap_grad_reduce,
        use_distributed_optimizer=run.optimizer.use_distributed_optimizer,
    )
    return [DistributedDataParallel(c, ddp_cfg, pstate.dp_group) for c in chunks]


# ---- data ----------------------------------------------------------------------------------
def build_data_loader(
    dataset, consumed: int, run: RunConfig, rt: Runtime, cyclic: bool, sampler=None
):
    """Loader of this rank's micro-batches starting after `consumed` samples (None w/o data).

    `sampler` overrides the default batch sampler (the curriculum sampler does).
    """
    if dataset is None or len(dataset) == 0:
        return None
    tr, ps = run.training, rt.pstate
    if sampler is None:
        args = (len(dataset), consumed, tr.micro_batch_size, ps.dp_rank, ps.dp_size)
        sampler = CyclicSampler(*args, seed=tr.seed) if cyclic else PretrainingSampler(*args)
    # The loader gets its own generator: creating an iterator must not draw from the global RNG,
    # or a resumed run (which creates its iterator after restoring the RNG) would diverge.
    generator = torch.Generator()
    generator.manual_seed(tr.seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=tr.num_workers,
        pin_memory=rt.device.type == "cuda",
        persistent_workers=False,
        generator=generator,
    )


# ---- one step ------------------------------------------------------------------------------
def _average_reports(reports: List[Dict[str, torch.Tensor]], pstate) -> Dict[str, float]:
    """Reported values averaged over micro-batches and DP ranks, on every pipeline stage."""
    values: Dict[str, float] = {}
    if reports:  # the last pipeline stage
        keys = sorted(reports[0])
        vals = torch.stack(
            [torch.stack([r[k].detach().float().reshape(()).cpu() for k in keys]) for r in reports]
        ).mean(0)
        if pstate.dp_group is not None:
            dist.all_reduce(vals, group=pstate.dp_group)
            vals /= pstate.dp_size
        values = dict(zip(keys, vals.tolist()))
    return broadcast_from_last_stage(values, pstate)


def train_step(ctx: TrainingContext, data_iterator, plan: StepPlan, counts=None):
    """Forward/backward over the step's micro-batches, gradient sync, optimizer step.

    Every pipeline stage derives its activation shapes from `plan.shape`. `counts`: the
    (tokens, layer-tokens) of this rank's micro-batches, filled while they are read, when the
    step's count depends on the data. Returns (reports averaged over micro-batches and DP ranks,
    whether the update was applied, grad norm, the plan with the measured counts).

    The token and layer-token lr clocks advance by the step's tokens even when an fp16 overflow
    skips the update (Megatron-DeepSpeed's scheduler reads the absolute consumed-token count);
    the sample clock, as in Megatron, only on applied updates.
    """
    for m in ctx.model:
        m.zero_grad_buffer()
    ctx.optimizer.zero_grad()
    args = ctx.schedule_args(data_iterator, plan.num_microbatches, plan.shape, forward_only=False)
    with ctx.timed("forward-backward"):
        reports = ctx.schedule()(args)
    finalize_model_grads(ctx.model, ctx.rt.pstate)
    report = _average_reports(reports, ctx.rt.pstate)  # the same values on every rank
    if counts is not None:  # the same totals on every rank
        tokens, layer_tokens = ctx.rt.data_efficiency.measured(counts, ctx.rt.pstate.dp_group)
        flops = plan.flops * tokens / max(plan.tokens, 1)
        plan = dataclasses.replace(plan, tokens=tokens, layer_tokens=layer_tokens, flops=flops)
    check = ctx.run.training.check_for_nan_in_loss_and_grad
    bad = {k: v for k, v in report.items() if not math.isfinite(v)}
    if check and bad:
        raise _non_finite(ctx, plan.step, ", ".join(f"{k} is {v}" for k, v in bad.items()))
    try:
        with ctx.timed("optimizer"):
            ok, grad_norm, _ = ctx.optimizer.step(check_finite=check)
    except NonFiniteGradError as exc:
        raise _non_finite(ctx, plan.step, f"the gradient norm is {exc.grad_norm}") from None
    ctx.scheduler.step(plan.global_batch_size if ok else 0, plan.tokens, plan.layer_tokens)
    return report, ok, grad_norm, plan


def _non_finite(ctx: TrainingContext, step: int, what: str) -> NonFiniteTrainingError:
    """The error that stops training at `step` (before its update; nothing is saved)."""
    save = ctx.run.checkpoint.save
    kept = ""
    if save:
        last, _ = ckpt.read_tracker(save)
        kept = f"; --save {save} " + (
            f"keeps its latest checkpoint, iteration {last}" if last is not None else "is empty"
        )
    return NonFiniteTrainingError(
        f"iteration {step}: {what}; training stopped before this update and saved nothing"
        f"{kept}. Look for the cause (a learning rate too high or a warmup too short, a bad "
        "sample, fp16 without loss scaling) and resume from the last checkpoint with --load; "
        "--no-check-for-nan-in-loss-and-grad trains on instead"
    )


@torch.no_grad()
def evaluate(ctx: TrainingContext, data_loader) -> Dict[str, float]:
    """Average reported values over --eval-iters global batches of `data_loader`."""
    run = ctx.run
    for m in ctx.model:
        m.eval()
    it = iter(data_loader)
    shape = (run.training.micro_batch_size, run.model.seq_length)
    num_micro = ctx.calc.num_micro_batches_at(0)
    totals: Dict[str, float] = {}
    for _ in range(run.training.eval_iters):
        reports = ctx.schedule()(ctx.schedule_args(it, num_micro, shape, forward_only=True))
        for k, v in _average_reports(reports, ctx.rt.pstate).items():
            totals[k] = totals.get(k, 0.0) + v / run.training.eval_iters
    for m in ctx.model:
        m.train()
    return totals


def _run_evaluation(ctx: TrainingContext, st: TrainState, loader, label: str = "validation"):
    run, sink = ctx.run, ctx.sink
    if loader is None or run.training.eval_iters == 0:
        return None
    results = evaluate(ctx, loader)
    parts = []
    for k, v in results.items():
        parts.append(f"{k} value: {v:.6E}")
        send_vs(sink, f"{k} {label}", v, st)
        if "loss" in k:
            # exp capped at e**20 as Megatron does; a NaN or inf loss has no perplexity to show
            ppl = math.exp(min(20.0, v)) if math.isfinite(v) else math.nan
            parts.append(f"{k} PPL: {ppl:.6E}")
            if run.logging.log_validation_ppl_to_tensorboard:
                send_vs(sink, f"{k} {label} ppl", ppl, st)
    send_counters(sink, st)
    line = f" {label} loss at iteration {st.iteration} | " + " | ".join(parts)
    logger.info("-" * len(line) + "\n" + line + "\n" + "-" * len(line))
    return results


# ---- the loop ------------------------------------------------------------------------------
class _ExitSignal:
    """Records SIGTERM so the loop can save a checkpoint and exit cleanly."""

    def __init__(self):
        self.received = False
        self._prev = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self.received = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._prev)


def _any_rank(flag: bool) -> bool:
    if not dist.is_initialized():
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces CUDA tensors only
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _max_over_ranks(value: float) -> float:
    """The largest `value` of all ranks (the value itself without torch.distributed)."""
    if not dist.is_initialized():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _budget_done(run: RunConfig, st: TrainState) -> bool:
    tr = run.training
    if tr.train_iters is not None and st.iteration >= tr.train_iters:
        return True
    if tr.train_samples is not None and st.consumed_train_samples >= tr.train_samples:
        return True
    if tr.train_tokens is not None and st.consumed_train_tokens >= tr.train_tokens:
        return True
    return False


def budget_fraction(run: RunConfig, st: TrainState) -> Optional[float]:
    """How much of the training budget is spent (the furthest of the iteration, sample and token
    budgets that are set), or None when none is."""
    tr, parts = run.training, []
    for budget, used in (
        (tr.train_iters, st.iteration),
        (tr.train_samples, st.consumed_train_samples),
        (tr.train_tokens, st.consumed_train_tokens),
    ):
        if budget:
            parts.append(min(1.0, used / budget))
    return max(parts) if parts else None


def _model_stats(ctx: TrainingContext) -> Dict[str, float]:
    """params-norm / num-zeros of the model when --log-params-norm / --log-num-zeros-in-grad."""
    cfg, out = ctx.run.logging, {}
    if cfg.log_params_norm:
        out["params-norm"] = params_norm(ctx.model, ctx.rt.pstate)
    if cfg.log_num_zeros_in_grad:
        out["num-zeros"] = float(num_zeros_in_grad(ctx.model, ctx.rt.pstate))
    return out


def save(ctx: TrainingContext, st: TrainState) -> None:
    """Save a checkpoint of the current state to --save (collective; refuses non-finite weights,
    so a checkpoint that was good stays the latest one)."""
    run, rt, ck = ctx.run, ctx.rt, ctx.run.checkpoint
    params = [p for m in ctx.model for p in m.parameters()]
    finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
    if _any_rank(not finite):
        hint = (
            ""
            if run.training.check_for_nan_in_loss_and_grad
            else (
                "drop --no-check-for-nan-in-loss-and-grad to stop at the first non-finite loss and "
            )
        )
        raise NonFiniteTrainingError(
            f"iteration {st.iteration}: the model weights hold NaN or inf values "
            f"({st.nan_iterations} non-finite iterations so far); not saving them to --save "
            f"{ck.save}, whose checkpoints are kept: {hint}resume from the last checkpoint with "
            "--load"
        )
    rt.last_saved_iteration = st.iteration
    # every rank timed its own steps: store one value, the slowest rank's (all files agree)
    st.train_time_s = _max_over_ranks(st.train_time_s)
    de = rt.data_efficiency
    content = ckpt.CheckpointContent(
        iteration=st.iteration,
        model_chunks=[unwrap_model(m) for m in ctx.model],
        args=run.to_plain_dict(),
        train_state=dataclasses.asdict(st),
        optimizer=None if ck.no_save_optim else ctx.optimizer,
        scheduler=ctx.scheduler,
        data_efficiency=de.state_dict(st.iteration) if de is not None else None,
        rng_tracker=rt.rng_tracker,
        save_rng=not ck.no_save_rng,
    )
    ckpt.save_checkpoint(ck.save, content, rt.pstate)


def _count(st: TrainState, plan: StepPlan, report: Dict[str, float], ok: bool, seconds: float):
    """Advance the counters by one step that took `seconds`."""
    st.iteration += 1
    st.consumed_train_samples += plan.global_batch_size
    st.consumed_train_tokens += plan.tokens
    st.floating_point_operations_so_far += plan.flops
    st.train_time_s += seconds
    if not ok:
        st.skipped_iterations += 1
    if any(not math.isfinite(v) for v in report.values()):
        st.nan_iterations += 1


JOB_GONE = "the job is gone"
"""Start of the exit reason when the torchrun agent or the rendezvous store is gone."""


def _exit_reason(ctx: TrainingContext, st: TrainState, exit_signal: _ExitSignal, start: float):
    """Why the loop stops after this iteration (None: it goes on); agreed by every rank."""
    run = ctx.run
    tr = run.training
    gone = ctx.liveness.job_gone if ctx.liveness is not None else None
    if _any_rank(gone is not None):
        return f"{JOB_GONE}: {gone or 'another rank noticed that its agent or the store is gone'}"
    if _any_rank(exit_signal.received):
        return "SIGTERM received"
    minutes = tr.exit_duration_in_mins
    if minutes and _any_rank((time.time() - start) / 60.0 > minutes):
        return f"--exit-duration-in-mins {minutes} reached"
    if tr.exit_interval and st.iteration % tr.exit_interval == 0:
        return f"--exit-interval {tr.exit_interval} reached"
    return None


def _after_step(ctx: TrainingContext, st: TrainState, valid_loader, exit_signal, start: float):
    """Evaluation, periodic save and the exit checks after an iteration; the exit reason."""
    tr, ck = ctx.run.training, ctx.run.checkpoint
    if valid_loader is not None and st.iteration % tr.eval_interval == 0:
        _run_evaluation(ctx, st, valid_loader)
    saved = False
    if ck.save and ck.save_interval and st.iteration % ck.save_interval == 0:
        save(ctx, st)
        saved = True
    reason = _exit_reason(ctx, st, exit_signal, start)
    if reason:
        if ck.save and not saved:
            save(ctx, st)
        logger.info("exiting at iteration %d: %s", st.iteration, reason)
    return reason


def train(
    ctx: TrainingContext,
    st: TrainState,
    train_loader,
    valid_loader,
    history: Optional[List[Dict]] = None,
    samples_available: Optional[int] = None,
) -> Optional[str]:
    """The training loop; returns the exit reason (None when the budget was spent).

    When `history` is a list, one dict per iteration is appended to it (iteration, reported
    values averaged over DP, lr, grad norm, update success) for tests and tools.
    `samples_available`: the samples the training split holds when it was sized for the run (a
    step that would read past them saves and stops with an error instead of repeating data).
    """
    run, de = ctx.run, ctx.rt.data_efficiency
    mbs = run.training.micro_batch_size
    exit_signal = _ExitSignal()
    start_time = time.time()
    for m in ctx.model:
        m.train()
    data_iter = iter(train_loader)
    log = IterationLogger(
        ctx.sink,
        run.world_size,
        run.training.train_iters,
        run.logging,
        progress=lambda state: budget_fraction(run, state),
    )
    try:
        while not _budget_done(run, st):
            plan = plan_step(ctx, st)
            _check_samples_left(ctx, st, plan, samples_available)
            counts = [] if de.tokens_depend_on_data else None
            step_iter = de.step_iterator(data_iter, plan.step, plan.num_microbatches, counts=counts)
            if ctx.timers is not None:
                step_iter = ctx.timers.iterate("batch-generator", step_iter)
            step_start = time.perf_counter()
            log.timer.start()
            report, ok, grad_norm, plan = train_step(ctx, step_iter, plan, counts)
            log.timer.stop()
            _count(st, plan, report, ok, time.perf_counter() - step_start)
            log.record(report, plan.tokens, plan.flops)
            fields = de.log_fields(plan.step, mbs)
            if history is not None:
                history.append(
                    {
                        "iteration": st.iteration,
                        **report,
                        **fields,
                        "lr": ctx.scheduler.get_lr(),
                        "grad_norm": grad_norm,
                        "update_successful": ok,
                        "consumed_train_tokens": st.consumed_train_tokens,
                    }
                )
            if st.iteration % run.training.log_interval == 0:
                loss_scale = ctx.optimizer.get_loss_scale()
                lr = ctx.scheduler.get_lr()
                if ctx.timers is not None:
                    ctx.timers.write(ctx.sink, st.iteration, log.iterations)
                stats = _model_stats(ctx)
                log.log(st, lr, plan.global_batch_size, loss_scale, grad_norm, fields, stats)
            reason = _after_step(ctx, st, valid_loader, exit_signal, start_time)
            if reason:
                return reason
        ctx.sink.flush()
        return None
    finally:
        exit_signal.restore()


def _check_samples_left(ctx: TrainingContext, st: TrainState, plan: StepPlan, limit) -> None:
    """Stop (saving first, with --save) before a step that would read past the training split."""
    if limit is None or st.consumed_train_samples + plan.global_batch_size <= limit:
        return
    save_to = ctx.run.checkpoint.save
    if save_to and ctx.rt.last_saved_iteration != st.iteration:
        save(ctx, st)
    first = st.consumed_train_samples
    raise DataExhaustedError(
        exhausted_message(plan.step, first, plan.global_batch_size, limit, st, bool(save_to))
    )


# ---- pretrain ------------------------------------------------------------------------------
def _parse(argv, extra_args_provider, args_defaults, model_type: str = "gpt"):
    """(the run's options, its step accounting, its training samples); a bad lr schedule or a
    --load that does not fit the run fails here, before any heavy work."""
    run = parse_args(argv, extra_args_provider, args_defaults, model_type=model_type)
    resume.check_load(run)
    acct = StepAccounting.from_run(run, model_type)
    n_train = train_num_samples(run, acct)
    try:
        schedule_spans(run, acct)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return run, acct, n_train


def _build_loaders(ctx: TrainingContext, st: TrainState, datasets_provider, n_train, de_state):
    """(train, valid, test) loaders; the curriculum sampler, when on, at the loaded step."""
    run, rt = ctx.run, ctx.rt
    de, gbs = rt.data_efficiency, run.training.global_batch_size
    num_samples = [n_train, run.training.eval_iters * gbs, run.training.eval_iters * gbs]
    if run.data.forced_train_index or (
        de.curriculum is not None and run.data.train_data_exact_num_epochs
    ):
        # The curriculum workflow of Megatron-DeepSpeed: the train split holds exactly these
        # epochs (what the analysis saw) and the curriculum sampler cycles over it for
        # data_sampling.num_epochs.
        num_samples[0] = None
    train_ds, valid_ds, test_ds = datasets_provider(run, rt, num_samples)
    train_ds = force_train_index(run, train_ds)
    sampler = None
    if train_ds is not None and de.curriculum is not None:
        vocab = rt.tokenizer.vocab_size
        sampler = de.build_sampler(
            train_ds,
            run.training.micro_batch_size,
            rt.pstate.dp_size,
            ctx.calc.global_batch_at,
            vocab,
        )
        de.load_state_dict(de_state, st.iteration)
    cyclic = run.training.dataloader_type == "cyclic"
    return (
        build_data_loader(train_ds, st.consumed_train_samples, run, rt, cyclic, sampler),
        build_data_loader(valid_ds, 0, run, rt, False),
        build_data_loader(test_ds, 0, run, rt, False),
    )


def pretrain(
    datasets_provider: Callable,
    model_provider: Callable,
    forward_step: Callable,
    extra_args_provider: Optional[Callable] = None,
    args_defaults: Optional[Dict] = None,
    argv: Optional[List[str]] = None,
    model_type: str = "gpt",
    history: Optional[List[Dict]] = None,
) -> TrainState:
    """Parse the command line, build model/optimizer/data, load, train, evaluate, save.

    Args:
        model_type: "gpt" (causal) or "bert" (bidirectional): FLOP counting and the curriculum's
            sequence-length post-processing depend on it.

    Returns the final counters; pass a list as `history` to collect one dict per iteration.
    """
    setup_logging(dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0")))
    run, acct, n_train = _parse(argv, extra_args_provider, args_defaults, model_type)
    rt = initialize(run)
    script = _Script(datasets_provider, model_provider, forward_step, model_type)
    # From here on a collective that fails because a rank died is an error naming that rank.
    with report_lost_ranks(run.parallel.distributed_timeout_minutes) as liveness:
        lock = acquire_save_lock(run.checkpoint.save, rt.pstate.rank)
        try:
            return _build_and_train(run, rt, acct, n_train, script, liveness, history)
        finally:
            if lock is not None:
                lock.release()


@dataclasses.dataclass(frozen=True)
class _Script:
    """The pretraining script's callbacks (see the module docstring) and its model type."""

    datasets_provider: Callable
    model_provider: Callable
    forward_step: Callable
    model_type: str


def _build_and_train(run, rt, acct, n_train, script: _Script, liveness, history) -> TrainState:
    """Build the model, optimizer and data, load --load, train, evaluate, save."""
    if run.checkpoint.save and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        ckpt.remove_stale_checkpoint_temporaries(run.checkpoint.save)  # left by killed saves
    rt.data_efficiency = build_data_efficiency(run, script.model_type, rt.pstate, acct.de.ds)
    model = build_model(script.model_provider, run, rt)
    optimizer = get_megatron_optimizer(run.optimizer, model, rt.pstate)
    vocab = unwrap_model(model[0]).vocab_size
    ctx = TrainingContext(
        run=run,
        rt=rt,
        forward_step=script.forward_step,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(run, optimizer, acct),
        calc=acct.calc,
        sink=build_sinks(run.logging, rt.pstate.rank, run.to_plain_dict()),
        vocab_size=vocab,
        causal=script.model_type == "gpt",
        liveness=liveness,
        timers=maybe_timers(run.logging.log_timers_to_tensorboard),
    )
    st = TrainState()
    de_state = resume.load_into(ctx, st) if run.checkpoint.load else None
    train_loader, valid_loader, test_loader = _build_loaders(
        ctx, st, script.datasets_provider, n_train, de_state
    )
    reason = None
    if not run.training.skip_train:
        if train_loader is None:
            raise ValueError("no training samples: check --data-path and --split")
        limit = sample_limit(run, train_loader.dataset)
        reason = train(ctx, st, train_loader, valid_loader, history, limit)
        if reason is not None and reason.startswith(JOB_GONE):
            raise JobGone(f"stopped at iteration {st.iteration}: {reason}")
        if run.checkpoint.save and reason is None and rt.last_saved_iteration != st.iteration:
            save(ctx, st)
    if reason is None:
        _run_evaluation(ctx, st, valid_loader, "validation (end of training)")
        _run_evaluation(ctx, st, test_loader, "test")
    ctx.sink.flush()
    return st
