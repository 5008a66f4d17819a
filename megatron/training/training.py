"""The training application: `pretrain` builds everything from the command line and trains.

A pretraining script provides three callbacks (see pretrain_gpt.py):

    model_provider(run, runtime, pre_process, post_process, vp_rank) -> torch.nn.Module
    datasets_provider(run, runtime, num_samples [train, valid, test]) -> (train, valid, test)
    forward_step(data_iterator, model) -> (output, loss_func)   (see core.pipeline_parallel)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from megatron.core.distributed import DDPConfig, DistributedDataParallel, finalize_model_grads
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.pipeline_parallel import broadcast_from_last_stage, get_forward_backward_func

from . import checkpointing as ckpt
from .arguments import RunConfig, parse_args
from .data_efficiency import build_data_efficiency
from .data_samplers import CyclicSampler, PretrainingSampler
from .initialize import Runtime, initialize
from .liveness import report_lost_ranks
from .lr_scheduler import OptimizerParamScheduler
from .metrics import Timer, build_sinks, flops_per_token, format_iteration_line
from .microbatches import MicroBatchCalculator

logger = logging.getLogger(__name__)


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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside wrappers (DDP)."""
    while hasattr(model, "module"):
        model = model.module
    return model


# ---- budget --------------------------------------------------------------------------------
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
            f"--lr-warmup-tokens {s.lr_warmup_tokens} must be smaller than the token decay span {decay_tokens}"
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


# ---- model ---------------------------------------------------------------------------------
def build_model(model_provider: Callable, run: RunConfig, rt: Runtime) -> List[torch.nn.Module]:
    """Model chunks of this rank, initialised, on the device, wrapped for data parallelism."""
    pstate = rt.pstate
    vpp = run.transformer.virtual_pipeline_model_parallel_size
    chunks = []
    for vp in range(vpp or 1):
        pstate.virtual_pipeline_rank = vp if vpp else None
        pre = pstate.is_pipeline_first_stage()
        post = pstate.is_pipeline_last_stage()
        model = model_provider(run, rt, pre, post, vp if vpp else None)
        gen_device = (
            "cpu"
            if run.parallel.use_cpu_initialization or rt.device.type == "cpu"
            else rt.device.type
        )
        model.to(rt.device)
        unwrap(model).initialize(run.training.seed, gen_device)
        chunks.append(model)
    pstate.virtual_pipeline_rank = 0 if vpp else None
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


def _no_sync_func(model):
    return model[0].no_sync if len(model) == 1 else [m.no_sync for m in model]


def train_step(
    forward_step,
    data_iterator,
    model,
    optimizer,
    scheduler,
    run,
    rt,
    num_micro,
    increment,
    tokens,
    shape=None,
    layer_tokens=0,
):
    """Forward/backward over the micro-batches, gradient sync, optimizer step.

    `shape` is (rows, length) of this step's micro-batches (the curriculum may change it); every
    pipeline stage derives its activation shapes from it.
    """
    rows, length = shape or (run.training.micro_batch_size, run.model.seq_length)
    for m in model:
        m.zero_grad_buffer()
    optimizer.zero_grad()
    schedule = get_forward_backward_func(
        run.parallel.pipeline_model_parallel_size,
        run.transformer.virtual_pipeline_model_parallel_size,
    )
    reports = schedule(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=model if len(model) > 1 else model[0],
        num_microbatches=num_micro,
        seq_length=length,
        micro_batch_size=rows,
        forward_only=False,
        grad_scale_func=optimizer.scale_loss,
        no_sync_func=_no_sync_func(model),
        pstate=rt.pstate,
        config=run.transformer,
    )
    finalize_model_grads(model, rt.pstate)
    ok, grad_norm, _ = optimizer.step()
    if ok:
        scheduler.step(increment, tokens, layer_tokens)
    return _average_reports(reports, rt.pstate), ok, grad_norm


@torch.no_grad()
def evaluate(forward_step, data_loader, model, run, rt, num_micro) -> Dict[str, float]:
    """Average reported values over --eval-iters global batches of `data_loader`."""
    for m in model:
        m.eval()
    schedule = get_forward_backward_func(
        run.parallel.pipeline_model_parallel_size,
        run.transformer.virtual_pipeline_model_parallel_size,
    )
    it = iter(data_loader)
    totals: Dict[str, float] = {}
    for _ in range(run.training.eval_iters):
        reports = schedule(
            forward_step_func=forward_step,
            data_iterator=it,
            model=model if len(model) > 1 else model[0],
            num_microbatches=num_micro,
            seq_length=run.model.seq_length,
            micro_batch_size=run.training.micro_batch_size,
            forward_only=True,
            pstate=rt.pstate,
            config=run.transformer,
        )
        for k, v in _average_reports(reports, rt.pstate).items():
            totals[k] = totals.get(k, 0.0) + v / run.training.eval_iters
    for m in model:
        m.train()
    return totals


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
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _budget_done(run: RunConfig, st: TrainState) -> bool:
    tr = run.training
    if tr.train_iters is not None and st.iteration >= tr.train_iters:
        return True
    if tr.train_samples is not None and st.consumed_train_samples >= tr.train_samples:
        return True
    if tr.train_tokens is not None and st.consumed_train_tokens >= tr.train_tokens:
        return True
    return False


def save(run, rt, st, model, optimizer, scheduler):
    """Save a checkpoint of the current state to --save."""
    ck = run.checkpoint
    rt.last_saved_iteration = st.iteration
    de_state = (
        rt.data_efficiency.state_dict(st.iteration) if rt.data_efficiency is not None else None
    )
    ckpt.save_checkpoint(
        ck.save,
        st.iteration,
        [unwrap(m) for m in model],
        optimizer,
        scheduler,
        rt.pstate,
        rt.rng_tracker,
        run.to_plain_dict(),
        dataclasses.asdict(st),
        de_state,
        save_optim=not ck.no_save_optim,
        save_rng=not ck.no_save_rng,
    )


def _log_iteration(
    run,
    st,
    report,
    lr,
    gbs,
    elapsed,
    optimizer,
    grad_norm,
    interval_iters,
    tokens_interval,
    flops_tok,
    sink,
    extra=None,
):
    fields = {
        "consumed samples": st.consumed_train_samples,
        "consumed tokens": st.consumed_train_tokens,
        "elapsed time per iteration (ms)": elapsed * 1000.0 / interval_iters,
        "throughput (tokens/s)": tokens_interval / elapsed if elapsed > 0 else 0.0,
        "TFLOP/s per rank": flops_tok * tokens_interval / elapsed / 1e12 / max(run.world_size, 1)
        if elapsed > 0
        else 0.0,
        "learning rate": lr,
        "global batch size": gbs,
    }
    for k, v in (extra or {}).items():
        fields[k] = v
        sink.scalar(k, v, st.iteration)
    for k, v in report.items():
        fields[k] = v
        sink.scalar(k, v, st.iteration)
    fields["loss scale"] = float(optimizer.get_loss_scale())
    if grad_norm is not None:
        fields["grad norm"] = float(grad_norm)
        sink.scalar("grad-norm", float(grad_norm), st.iteration)
    fields["number of skipped iterations"] = st.skipped_iterations
    fields["number of nan iterations"] = st.nan_iterations
    sink.scalar("learning-rate", lr, st.iteration)
    logger.info(format_iteration_line(fields, st.iteration, run.training.train_iters))


def _run_evaluation(run, rt, st, forward_step, loader, model, calc, sink, label="validation"):
    if loader is None or run.training.eval_iters == 0:
        return None
    results = evaluate(forward_step, loader, model, run, rt, calc.num_micro_batches_at(0))
    parts = []
    for k, v in results.items():
        parts.append(f"{k} value: {v:.6E}")
        sink.scalar(f"{k} {label}", v, st.iteration)
        if "loss" in k:
            ppl = math.exp(min(20.0, v))
            parts.append(f"{k} PPL: {ppl:.6E}")
            if run.logging.log_validation_ppl_to_tensorboard:
                sink.scalar(f"{k} {label} ppl", ppl, st.iteration)
    line = f" {label} loss at iteration {st.iteration} | " + " | ".join(parts)
    logger.info("-" * len(line) + "\n" + line + "\n" + "-" * len(line))
    return results


def train(
    run,
    rt,
    st,
    forward_step,
    model,
    optimizer,
    scheduler,
    calc,
    train_loader,
    valid_loader,
    sink,
    flops_tok,
    history=None,
):
    """The training loop; returns the exit reason (None when the budget was spent).

    When `history` is a list, one dict per iteration is appended to it (iteration, reported
    values averaged over DP, lr, grad norm, update success) for tests and tools.
    """
    tr, ck = run.training, run.checkpoint
    de = rt.data_efficiency
    exit_signal = _ExitSignal()
    start_time = time.time()
    for m in model:
        m.train()
    data_iter = iter(train_loader)
    timer, interval_iters, tokens_interval = Timer(), 0, 0
    report_acc: Dict[str, float] = {}
    try:
        while not _budget_done(run, st):
            step = st.iteration + 1
            gbs = calc.global_batch_at(st.consumed_train_samples)
            num_micro = gbs // calc.unit
            mbs = tr.micro_batch_size
            shape = de.batch_shape(step, mbs)
            tokens = de.tokens_per_step(step, gbs, mbs)
            step_iter = de.step_iterator(data_iter, step, num_micro)
            timer.start()
            report, ok, grad_norm = train_step(
                forward_step,
                step_iter,
                model,
                optimizer,
                scheduler,
                run,
                rt,
                num_micro,
                gbs,
                tokens,
                shape,
                de.layer_tokens_per_step(step, gbs, mbs),
            )
            timer.stop()
            st.iteration += 1
            st.consumed_train_samples += gbs
            st.consumed_train_tokens += tokens
            st.floating_point_operations_so_far += flops_tok * tokens
            if not ok:
                st.skipped_iterations += 1
            if any(not math.isfinite(v) for v in report.values()):
                st.nan_iterations += 1
            interval_iters += 1
            tokens_interval += tokens
            if history is not None:
                history.append(
                    {
                        "iteration": st.iteration,
                        **report,
                        **de.log_fields(step, mbs),
                        "lr": scheduler.get_lr(),
                        "grad_norm": grad_norm,
                        "update_successful": ok,
                        "consumed_train_tokens": st.consumed_train_tokens,
                    }
                )
            for k, v in report.items():
                report_acc[k] = report_acc.get(k, 0.0) + v
            if st.iteration % tr.log_interval == 0:
                avg = {k: v / interval_iters for k, v in report_acc.items()}
                _log_iteration(
                    run,
                    st,
                    avg,
                    scheduler.get_lr(),
                    gbs,
                    timer.reset(),
                    optimizer,
                    grad_norm,
                    interval_iters,
                    tokens_interval,
                    flops_tok,
                    sink,
                    de.log_fields(step, mbs),
                )
                interval_iters, tokens_interval, report_acc = 0, 0, {}
            if valid_loader is not None and st.iteration % tr.eval_interval == 0:
                _run_evaluation(run, rt, st, forward_step, valid_loader, model, calc, sink)
            saved = False
            if ck.save and ck.save_interval and st.iteration % ck.save_interval == 0:
                save(run, rt, st, model, optimizer, scheduler)
                saved = True
            reason = None
            if _any_rank(exit_signal.received):
                reason = "SIGTERM received"
            elif tr.exit_duration_in_mins and _any_rank(
                (time.time() - start_time) / 60.0 > tr.exit_duration_in_mins
            ):
                reason = f"--exit-duration-in-mins {tr.exit_duration_in_mins} reached"
            elif tr.exit_interval and st.iteration % tr.exit_interval == 0:
                reason = f"--exit-interval {tr.exit_interval} reached"
            if reason:
                if ck.save and not saved:
                    save(run, rt, st, model, optimizer, scheduler)
                logger.info("exiting at iteration %d: %s", st.iteration, reason)
                return reason
        sink.flush()
        return None
    finally:
        exit_signal.restore()


def _load(run, rt, st, model, optimizer, scheduler):
    ck = run.checkpoint
    path = ckpt.find_checkpoint(ck.load, rt.pstate, ck.ckpt_step)
    if path is None:
        logger.info("no checkpoint found in --load %s: starting from scratch", ck.load)
        return None
    sd = ckpt.load_checkpoint_file(path)
    ckpt.restore_model(sd, [unwrap(m) for m in model])
    if ck.finetune:
        logger.info("loaded model weights from %s (finetune: iteration 0)", path)
        return None
    ts = sd.get("train_state") or {}
    for f in dataclasses.fields(TrainState):
        if f.name in ts:
            setattr(st, f.name, ts[f.name])
    st.iteration = sd["iteration"]
    if not ck.no_load_optim and sd.get("optimizer") is not None:
        optimizer.load_state_dict(sd["optimizer"])
    if sd.get("opt_param_scheduler") is not None and not ck.no_load_optim:
        scheduler.load_state_dict(
            sd["opt_param_scheduler"],
            use_checkpoint=run.scheduler.use_checkpoint_opt_param_scheduler,
            override=run.scheduler.override_opt_param_scheduler,
        )
    if not ck.no_load_rng:
        ckpt.restore_rng(sd, rt.pstate, rt.rng_tracker)
    logger.info("loaded checkpoint %s at iteration %d", path, st.iteration)
    return sd.get("data_efficiency")


def _use_checkpoint_args(run: RunConfig) -> None:
    """--use-checkpoint-args: take the architecture (and the tokenizer, when none is given) from
    the checkpoint in --load, so a run can resume or fine-tune without repeating model flags."""
    from megatron.tokenizer.config import TokenizerConfig

    if not run.checkpoint.load:
        raise SystemExit("error: --use-checkpoint-args needs --load")
    stored = ckpt.stored_args(run.checkpoint.load, run.checkpoint.ckpt_step)
    changes = {
        f: stored["transformer"][f]
        for f in ckpt.CHECKPOINT_ARCH_FIELDS["transformer"]
        if f in stored["transformer"]
    }
    run.transformer = dataclasses.replace(run.transformer, **changes)
    for f in ckpt.CHECKPOINT_ARCH_FIELDS["model"]:
        if f in stored.get("model", {}):
            setattr(run.model, f, stored["model"][f])
    if run.tokenizer is None and stored.get("tokenizer"):
        run.tokenizer = TokenizerConfig(**stored["tokenizer"])
    logger.info("--use-checkpoint-args: architecture from %s: %s", run.checkpoint.load, changes)


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
    run = parse_args(argv, extra_args_provider, args_defaults)
    if run.checkpoint.use_checkpoint_args:
        _use_checkpoint_args(run)
    calc = MicroBatchCalculator(
        run.training.global_batch_size,
        run.training.micro_batch_size,
        run.data_parallel_size,
        run.training.rampup_batch_size,
    )
    n_train = train_num_samples(run, calc)
    try:
        schedule_spans(run, n_train)  # fail on a bad lr schedule before any heavy work
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    rt = initialize(run)
    rt.data_efficiency = build_data_efficiency(run, model_type, rt.pstate)
    model = build_model(model_provider, run, rt)
    optimizer = get_megatron_optimizer(run.optimizer, model, rt.pstate)
    scheduler = build_scheduler(run, optimizer, n_train, rt.data_efficiency)
    st = TrainState()
    de_state = _load(run, rt, st, model, optimizer, scheduler) if run.checkpoint.load else None
    gbs = run.training.global_batch_size
    num_samples = [n_train, run.training.eval_iters * gbs, run.training.eval_iters * gbs]
    if rt.data_efficiency.curriculum is not None and run.data.train_data_exact_num_epochs:
        # The seed's curriculum workflow: the train split holds exactly these epochs (what the
        # analysis saw) and the curriculum sampler cycles over it for data_sampling.num_epochs.
        num_samples[0] = None
    train_ds, valid_ds, test_ds = datasets_provider(run, rt, num_samples)
    cyclic = run.training.dataloader_type == "cyclic"
    sampler = None
    if train_ds is not None and rt.data_efficiency.curriculum is not None:
        sampler = rt.data_efficiency.build_sampler(
            train_ds,
            run.training.micro_batch_size,
            rt.pstate.dp_size,
            calc.global_batch_at,
            rt.tokenizer.vocab_size,
        )
        rt.data_efficiency.load_state_dict(de_state, st.iteration)
    train_loader = build_data_loader(train_ds, st.consumed_train_samples, run, rt, cyclic, sampler)
    valid_loader = build_data_loader(valid_ds, 0, run, rt, False)
    test_loader = build_data_loader(test_ds, 0, run, rt, False)
    sink = build_sinks(run.logging, rt.pstate.rank, run.to_plain_dict())
    vocab = unwrap(model[0]).vocab_size
    flops_tok = flops_per_token(run.transformer, run.model.seq_length, vocab, model_type == "gpt")
    reason = None
    if not run.training.skip_train:
        if train_loader is None:
            raise ValueError("no training samples: check --data-path and --split")
        # A collective that fails because a rank died becomes an error naming that rank.
        with report_lost_ranks(run.parallel.distributed_timeout_minutes):
            reason = train(
                run,
                rt,
                st,
                forward_step,
                model,
                optimizer,
                scheduler,
                calc,
                train_loader,
                valid_loader,
                sink,
                flops_tok,
                history,
            )
        if run.checkpoint.save and reason is None and rt.last_saved_iteration != st.iteration:
            save(run, rt, st, model, optimizer, scheduler)
    if reason is None:
        _run_evaluation(
            run,
            rt,
            st,
            forward_step,
            valid_loader,
            model,
            calc,
            sink,
            "validation (end of training)",
        )
        _run_evaluation(run, rt, st, forward_step, test_loader, model, calc, sink, "test")
    sink.flush()
    return st
