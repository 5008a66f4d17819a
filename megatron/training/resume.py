"""Resuming from `--load`: what it is checked against before any heavy work (`check_load`), and
restoring a checkpoint into the run (`load_into`); both called by `training.pretrain`.

- `--load` must name a checkpoint folder. A folder that does not exist, or holds no tracker file,
  is an error (a mistyped path would otherwise train from scratch), except when it is also
  `--save`: with the restartable-job pattern `--save X --load X` the first run starts fresh.
- The architecture stored in the checkpoint (`checkpointing.CHECKPOINT_ARCH_FIELDS` and the
  tokenizer type) must match the run's flags: the differences are listed as (flag, checkpoint,
  this run). `--override-checkpoint-args` names those that may differ on purpose;
  `--use-checkpoint-args` takes them from the checkpoint instead.
- The parallel layout (TP, PP, virtual stages) must match: the files are per (TP, PP) rank, so a
  change goes through tools/checkpoint_util.py. The data-parallel size may change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from megatron.core.utils import unwrap_model

from . import checkpointing as ckpt
from .checkpoint_names import upgrade_bert_names

logger = logging.getLogger(__name__)

# Fields whose flag is spelled differently, with whether the flag stores the negation.
_FLAGS = {"add_bias_linear": ("disable-bias-linear", True)}


def flag_of(field: str) -> str:
    """The flag name (without dashes) of a stored option."""
    return _FLAGS.get(field, (field.replace("_", "-"), False))[0]


def comparable_flags() -> List[str]:
    """Flag names (without dashes) --override-checkpoint-args accepts."""
    fields = [f for section in ckpt.CHECKPOINT_ARCH_FIELDS.values() for f in section]
    return sorted(flag_of(f) for f in fields + ["tokenizer_type"])


def _same_folder(a: Optional[str], b: Optional[str]) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def stored_run_args(run) -> Optional[Dict[str, Any]]:
    """The options stored in the checkpoint of --load, None when the run starts from scratch.

    Raises ValueError naming --load when it is not a checkpoint folder (see the module notes).
    """
    ck = run.checkpoint
    if not ck.load:
        return None
    fresh = _same_folder(ck.load, ck.save)
    if not os.path.isdir(ck.load):
        if fresh:
            logger.info("--load %s does not exist yet: starting from scratch", ck.load)
            return None
        raise ValueError(
            f"--load {ck.load}: no such folder; check the path. To start from scratch leave "
            "--load out, or give the same folder to --save and --load (the first run starts "
            "fresh, later ones resume)"
        )
    if ck.ckpt_step is None and ckpt.read_tracker(ck.load)[0] is None:
        return _no_tracker(ck, fresh)
    return ckpt.stored_args(ck.load, ck.ckpt_step)


def _no_tracker(ck, fresh: bool) -> None:
    iterations = ckpt.list_iterations(ck.load)
    unfinished = f"; it holds {len(iterations)} iteration folder(s) from saves that did not finish"
    if fresh:
        logger.warning(
            "WARNING: --load %s has no %s%s: starting from scratch",
            ck.load,
            ckpt.TRACKER_FILENAME,
            unfinished if iterations else "",
        )
        return None
    inside = sorted(n for n in os.listdir(ck.load) if os.path.isdir(os.path.join(ck.load, n)))
    hint = f" (its subfolders: {', '.join(inside[:8])})" if inside and not iterations else ""
    raise ValueError(
        f"--load {ck.load} holds no {ckpt.TRACKER_FILENAME}, so it is not the --save folder of a "
        f"run{hint}{unfinished if iterations else ''}; point --load at a checkpoint folder, or "
        "load one of its iterations with --ckpt-step"
    )


def _derived(section: Dict[str, Any], field: str) -> Any:
    """The value TransformerConfig derives for a field left unset (None when not derived)."""
    hidden, heads = section.get("hidden_size"), section.get("num_attention_heads")
    if field == "kv_channels" and hidden and heads:
        return hidden // heads
    if field == "ffn_hidden_size" and hidden:
        return int((4 * hidden * 2 / 3) / 64) * 64 or 64 if section.get("swiglu") else 4 * hidden
    return None


def architecture_differences(
    stored: Dict[str, Any], given: Dict[str, Any]
) -> List[Tuple[str, Any, Any]]:
    """(flag without dashes, checkpoint value, this run's value) of every architecture option
    that differs between two stored-args dicts (`RunConfig.to_plain_dict()` layout)."""
    out = []
    for section, fields in ckpt.CHECKPOINT_ARCH_FIELDS.items():
        old, new = stored.get(section) or {}, given.get(section) or {}
        for field in fields:
            if field not in old or field not in new or old[field] == new[field]:
                continue
            if old[field] == _derived(old, field) and new[field] == _derived(new, field):
                continue  # follows another difference (e.g. kv_channels from the head count)
            invert = _FLAGS.get(field, ("", False))[1]
            values = (not old[field], not new[field]) if invert else (old[field], new[field])
            out.append((flag_of(field), *values))
    old_tok = (stored.get("tokenizer") or {}).get("tokenizer_type")
    new_tok = (given.get("tokenizer") or {}).get("tokenizer_type")
    if old_tok and new_tok and old_tok != new_tok:
        out.append(("tokenizer-type", old_tok, new_tok))
    return out


def _layout(args: Dict[str, Any]) -> Tuple[int, int, Optional[int]]:
    par = args.get("parallel") or {}
    return (
        par.get("tensor_model_parallel_size", 1),
        par.get("pipeline_model_parallel_size", 1),
        par.get("num_layers_per_virtual_pipeline_stage"),
    )


def layout_difference(stored: Dict[str, Any], given: Dict[str, Any], load: str) -> Optional[str]:
    """Why the checkpoint's files cannot serve this run's (TP, PP, virtual) layout, or None."""
    old, new = _layout(stored), _layout(given)
    if old == new:
        return None

    def describe(layout):
        tp, pp, per_stage = layout
        virtual = f", {per_stage} layers per virtual stage" if per_stage else ""
        return f"TP {tp}, PP {pp}{virtual}"

    tp, pp, per_stage = new
    virtual = f" --target-num-layers-per-virtual-pipeline-stage {per_stage}" if per_stage else ""
    target = f"{load.rstrip('/')}_tp{tp}pp{pp}"
    return (
        f"the checkpoint in --load {load} was saved with {describe(old)}, but this run uses "
        f"{describe(new)} (--tensor-model-parallel-size, --pipeline-model-parallel-size, "
        "--num-layers-per-virtual-pipeline-stage); convert it first: python "
        f"tools/checkpoint_util.py --load-dir {load} --save-dir {target} "
        f"--target-tensor-parallel-size {tp} --target-pipeline-parallel-size {pp}{virtual}, "
        f"then --load {target}"
    )


def check_against_checkpoint(run, stored: Dict[str, Any]) -> None:
    """Raise ValueError listing what in the run's flags contradicts the checkpoint of --load."""
    ck, given = run.checkpoint, run.to_plain_dict()
    unknown = sorted(set(ck.override_checkpoint_args) - set(comparable_flags()))
    if unknown:
        raise ValueError(
            f"--override-checkpoint-args {' '.join(unknown)}: not a stored architecture option; "
            f"choose from {', '.join(comparable_flags())}"
        )
    problem = layout_difference(stored, given, ck.load)
    if problem:
        raise ValueError(problem)
    differences = architecture_differences(stored, given)
    allowed = [d for d in differences if d[0] in ck.override_checkpoint_args]
    for flag, old, new in allowed:
        logger.warning(
            "WARNING: --%s is %s in the checkpoint, %s in this run (--override-checkpoint-args)",
            flag,
            old,
            new,
        )
    refused = [d for d in differences if d[0] not in ck.override_checkpoint_args]
    if refused:
        lines = "\n".join(
            f"  --{flag}: checkpoint {old}, this run {new}" for flag, old, new in refused
        )
        names = " ".join(flag for flag, _, _ in refused)
        raise ValueError(
            f"the checkpoint in --load {ck.load} was saved with another architecture:\n{lines}\n"
            "Give the checkpoint's values (or --use-checkpoint-args to take them from it); to "
            f"change them on purpose add --override-checkpoint-args {names}"
        )


def _read_checkpoint(ck, pstate):
    """(path, contents) of this rank's file of --load ((None, None) without a checkpoint yet),
    checked against its checksum and its folder; every rank fails when any rank's file is bad."""
    path, sd, error = None, None, None
    try:
        path = ckpt.find_checkpoint(ck.load, pstate, ck.ckpt_step)
        if path is not None:
            sd = ckpt.load_checkpoint_file(path, verify=not ck.no_verify_checkpoint)
            ckpt.check_shard_iteration(path, sd)
    except (OSError, ckpt.CheckpointError) as exc:
        error = str(exc)
    errors = ckpt.agree_on_errors(error)
    if errors:
        raise ckpt.CheckpointError(f"cannot load --load {ck.load}: " + "; ".join(errors))
    return path, sd


def _warn_missing_state(sd: Dict[str, Any], path: str, ck, iteration: int) -> None:
    """Loud warnings for state a resumed run would otherwise silently start afresh."""
    if ck.no_load_optim:
        return
    if sd.get("optimizer") is None:
        logger.warning(
            "WARNING: %s has no optimizer state (saved with --no-save-optim): the optimizer "
            "starts afresh at iteration %d (zero Adam moments, fp32 master weights from the "
            "loaded model); pass --no-load-optim to make that explicit",
            path,
            iteration,
        )
    if sd.get("opt_param_scheduler") is None:
        logger.warning(
            "WARNING: %s has no learning-rate schedule state: the schedule restarts at step 0",
            path,
        )


def _restore_training_state(ctx, st, sd: Dict[str, Any], path) -> None:
    """Counters, optimizer, learning-rate schedule and RNG states of a resumed run."""
    run, rt, ck = ctx.run, ctx.rt, ctx.run.checkpoint
    ts = sd.get("train_state") or {}
    for f in dataclasses.fields(st):
        if f.name in ts:
            setattr(st, f.name, ts[f.name])
    st.iteration = sd["iteration"]
    _warn_missing_state(sd, path, ck, st.iteration)
    if not ck.no_load_optim and sd.get("optimizer") is not None:
        ctx.optimizer.load_state_dict(sd["optimizer"])
    if sd.get("opt_param_scheduler") is not None and not ck.no_load_optim:
        ctx.scheduler.load_state_dict(
            sd["opt_param_scheduler"],
            use_checkpoint=run.scheduler.use_checkpoint_opt_param_scheduler,
            override=run.scheduler.override_opt_param_scheduler,
        )
    if not ck.no_load_rng:
        ckpt.restore_rng(sd, rt.pstate, rt.rng_tracker)


def load_into(ctx, st):
    """Restore the state of --load into the model, optimizer, scheduler, RNG and counters of a
    `training.TrainingContext` and its `TrainState`; returns the checkpoint's data-efficiency
    state (None without one). An error while restoring names the file."""
    ck = ctx.run.checkpoint
    path, sd = _read_checkpoint(ck, ctx.rt.pstate)
    if path is None:
        logger.info("no checkpoint in --load %s yet: starting from scratch", ck.load)
        return None
    try:
        chunks = [unwrap_model(m) for m in ctx.model]
        if chunks[0].block_name == "encoder":
            upgrade_bert_names(sd, path)
        ckpt.restore_model(sd, chunks)
        if ck.finetune:
            logger.info("loaded model weights from %s (finetune: iteration 0)", path)
            return None
        _restore_training_state(ctx, st, sd, path)
    except (ValueError, KeyError) as exc:
        detail = f"no entry {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"{path}: {detail}") from exc
    logger.info("loaded checkpoint %s at iteration %d", path, st.iteration)
    return sd.get("data_efficiency")


def use_checkpoint_args(run, stored: Optional[Dict[str, Any]]) -> None:
    """--use-checkpoint-args: take the architecture (and the tokenizer, when none is given) from
    the checkpoint in --load, so a run can resume or fine-tune without repeating model flags."""
    from megatron.tokenizer.config import TokenizerConfig

    if not run.checkpoint.load:
        raise ValueError("--use-checkpoint-args needs --load")
    if stored is None:
        raise ValueError(f"--use-checkpoint-args: no checkpoint in --load {run.checkpoint.load}")
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


def check_load(run) -> None:
    """--load against the run, before any heavy work: the folder, --use-checkpoint-args, the
    stored architecture and layout (SystemExit naming the problem)."""
    try:
        stored = stored_run_args(run)
        if run.checkpoint.use_checkpoint_args:
            use_checkpoint_args(run, stored)
        if stored is not None:
            check_against_checkpoint(run, stored)
    except (ValueError, OSError, ckpt.CheckpointError) as exc:
        raise SystemExit(f"error: {exc}") from None
