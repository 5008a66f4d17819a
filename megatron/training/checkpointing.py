"""Checkpoints in Megatron's layout, written atomically, loadable with weights_only=True.

    <save>/latest_checkpointed_iteration.txt        the last complete iteration (or "release")
    <save>/iter_0000100/mp_rank_00/model_optim_rng.pt        TP rank 00 (no pipeline)
    <save>/iter_0000100/mp_rank_01_002/model_optim_rng.pt    TP rank 01, PP rank 002

One file per (TP, PP) rank, written by data-parallel rank 0 of that model shard, and beside it
`model_optim_rng.pt.sha256`, the file's sha256 in `sha256sum` format (`sha256sum -c` checks it by
hand). Every file is first written under a temporary name and renamed; the tracker file is
updated (also by rename) only after every rank has written its files, so a crash or a full disk
mid-save leaves the previous checkpoint as the latest one, and a failed save is an error on every
rank that names the file and the cause. Loading checks each shard against its checksum before
anything is restored (`--no-verify-checkpoint` skips that for huge checkpoints; a shard saved
without a checksum loads with a warning), and every load error names the file. Temporaries that
killed saves left behind are removed at the next start (`remove_stale_checkpoint_temporaries`).
Contents are plain data (tensors, numbers, strings, lists, dicts):

    args                  the run's options as a plain dict
    checkpoint_version    3.0
    iteration, consumed_train_samples, consumed_valid_samples, consumed_train_tokens
    model (or model0, model1, ... per virtual pipeline chunk)   {global param name: tensor}
    optimizer             layout-independent optimizer state (see megatron.core.optimizer)
    opt_param_scheduler   learning-rate schedule progress
    rng_state             [per DP rank] python / numpy / torch / cuda / tracker states
    data_efficiency       state of curriculum learning and random-LTD (or None)
    train_state           counters such as skipped iterations
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron.core.files import (
    atomic_write,
    atomic_write_text,
    file_sha256,
    remove_stale_temporaries,
)
from megatron.core.models.common import global_named_parameters

logger = logging.getLogger(__name__)

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0
CHECKSUM_SUFFIX = ".sha256"
"""A shard's checksum file is its path plus this suffix."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be saved or loaded; the message names the file, the cause and the fix."""


def checkpoint_dir(root: str, iteration: int, release: bool = False) -> str:
    """Folder of one iteration."""
    return os.path.join(root, "release" if release else f"iter_{iteration:07d}")


def checkpoint_file(
    root: str, iteration: int, tp_rank: int, pp_rank: int, pp_size: int, release=False
) -> str:
    """Path of one model shard's file (Megatron naming)."""
    shard = f"mp_rank_{tp_rank:02d}" if pp_size == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return os.path.join(checkpoint_dir(root, iteration, release), shard, "model_optim_rng.pt")


def read_tracker(root: str):
    """(iteration, release) from the tracker file, or (None, False) when there is none."""
    path = os.path.join(root, TRACKER_FILENAME)
    if not os.path.isfile(path):
        return None, False
    text = open(path).read().strip()
    if text == "release":
        return 0, True
    try:
        return int(text), False
    except ValueError:
        raise ValueError(
            f"{path}: expected an iteration number or 'release', found {text!r}"
        ) from None


def list_iterations(root: str) -> List[int]:
    """Iterations that have a folder under `root`, ascending."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(int(n[5:]) for n in names if re.fullmatch(r"iter_\d{7}", n))


def _iterations_hint(root: str, current: Optional[int] = None) -> str:
    found = [i for i in list_iterations(root) if i != current]
    other = "" if current is None else "other "
    if not found:
        return f" ({root} holds no {other}iteration folder)"
    return f" ({other}iterations in {root}: {', '.join(map(str, found[-8:]))})"


def checksum_path(path: str) -> str:
    """Path of a shard's checksum file."""
    return path + CHECKSUM_SUFFIX


def save_shard(obj: Any, path: str) -> str:
    """Write one shard atomically, then its checksum file; returns the sha256."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    side = checksum_path(path)

    def drop_old_checksum():  # an old checksum must never describe the new file
        if os.path.exists(side):
            os.remove(side)

    digest = atomic_write(path, lambda f: torch.save(obj, f), "wb", drop_old_checksum)
    atomic_write_text(side, f"{digest}  {os.path.basename(path)}\n")
    return digest


def read_checksum(path: str) -> Optional[str]:
    """The sha256 recorded for a shard, None when it has no checksum file."""
    side = checksum_path(path)
    if not os.path.isfile(side):
        return None
    with open(side, encoding="utf-8", errors="replace") as f:
        text = f.read(512)
    parts = text.split()
    name = os.path.basename(path)
    if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]) or parts[1] != name:
        raise CheckpointError(
            f"{side}: not a checksum of {name} (expected '<64 hex digits>  {name}', found "
            f"{text[:100]!r}); restore it from a copy of the checkpoint, or delete it to load "
            f"{path} unverified"
        )
    return parts[0]


def verify_shard(path: str) -> bool:
    """Check a shard against its checksum file before it is loaded (raises CheckpointError when
    they differ); False, with a warning, when the shard has no checksum file."""
    expected = read_checksum(path)
    if expected is None:
        logger.warning(
            "%s has no checksum file %s (saved by an earlier version, or copied without it): "
            "loading it unverified",
            path,
            checksum_path(path),
        )
        return False
    actual = file_sha256(path)
    if actual != expected:
        root = os.path.dirname(os.path.dirname(os.path.dirname(path)))
        raise CheckpointError(
            f"{path} is damaged: its sha256 is {actual}, but {checksum_path(path)} recorded "
            f"{expected} when it was saved (a flipped bit, an incomplete copy or an edit); "
            "training from it would start from corrupted weights. Restore the file from a copy, "
            "or resume from another iteration with --ckpt-step"
            f"{_iterations_hint(root, shard_iteration(path))}; "
            "--no-verify-checkpoint skips this check"
        )
    return True


def remove_stale_checkpoint_temporaries(root: str) -> List[str]:
    """Remove what killed saves (or conversions) left half-written under a checkpoint folder: in
    `root`, its iteration folders and their shard folders. Returns the removed paths."""
    removed = remove_stale_temporaries(root)
    for it in list_iterations(root) + ["release"]:
        folder = os.path.join(root, "release" if it == "release" else f"iter_{it:07d}")
        if not os.path.isdir(folder):
            continue
        removed += remove_stale_temporaries(folder)
        for shard in sorted(os.listdir(folder)):
            if shard.startswith("mp_rank_") and os.path.isdir(os.path.join(folder, shard)):
                removed += remove_stale_temporaries(os.path.join(folder, shard))
    return removed


# ---- RNG state -----------------------------------------------------------------------------
def get_rng_state(rng_tracker) -> Dict[str, Any]:
    """This process's RNG states as plain data."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "random_rng_state": [py_version, list(py_state), py_gauss],
        "np_rng_state": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "rng_tracker_states": rng_tracker.get_states() if rng_tracker is not None else {},
    }
    return state


def set_rng_state(state: Dict[str, Any], rng_tracker) -> None:
    """Restore states saved by `get_rng_state`."""
    v, s, g = state["random_rng_state"]
    random.setstate((v, tuple(s), g))
    n = state["np_rng_state"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch_rng_state"])
    if state.get("cuda_rng_state") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng_state"])
    if rng_tracker is not None and state.get("rng_tracker_states"):
        rng_tracker.set_states(state["rng_tracker_states"])


def _gather_rng_states(rng_tracker, dp_group) -> List[Dict[str, Any]]:
    state = get_rng_state(rng_tracker)
    if dp_group is None:
        return [state]
    out: List[Any] = [None] * dist.get_world_size(dp_group)
    dist.all_gather_object(out, state, group=dp_group)
    return out


# ---- model state ---------------------------------------------------------------------------
def model_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """{global parameter name: tensor} of one model chunk (no wrapper prefixes)."""
    return {name: p.detach().clone() for name, p in global_named_parameters(model)}


def load_model_state_dict(
    model: torch.nn.Module, sd: Dict[str, torch.Tensor], strict: bool = True
) -> None:
    """Copy tensors saved by `model_state_dict` into a chunk, by global name."""
    params = dict(global_named_parameters(model))
    missing = [k for k in params if k not in sd]
    unexpected = [k for k in sd if k not in params]
    if strict and (missing or unexpected):
        raise ValueError(
            "checkpoint does not match the model: missing "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; check "
            "--num-layers, "
            "--hidden-size, the tokenizer (vocab size) and the parallel layout"
        )
    with torch.no_grad():
        for name, p in params.items():
            if name not in sd:
                continue
            t = sd[name]
            if t.shape != p.shape:
                raise ValueError(
                    f"checkpoint tensor {name} has shape {tuple(t.shape)} but the model expects "
                    f"{tuple(p.shape)}; was it saved with another --tensor-model-parallel-size? "
                    "Convert it with tools/checkpoint_util.py"
                )
            p.copy_(t.to(p.dtype))


# ---- save / load ---------------------------------------------------------------------------
@dataclasses.dataclass
class CheckpointContent:
    """What one checkpoint holds, as the training loop hands it over."""

    iteration: int
    """The iteration the state belongs to (names the folder)."""

    model_chunks: List[torch.nn.Module]
    """This rank's model chunks, unwrapped (no DDP)."""

    args: Dict[str, Any]
    """The run's options as plain data."""

    train_state: Dict[str, Any]
    """The loop's counters (iteration, consumed samples and tokens, skipped iterations, ...)."""

    optimizer: Any = None
    """The optimizer whose state is saved (None: none saved, --no-save-optim)."""

    scheduler: Any = None
    """The learning-rate scheduler (None: none saved)."""

    data_efficiency: Optional[Dict[str, Any]] = None
    """State of curriculum learning and random-LTD, or None."""

    rng_tracker: Any = None
    """The tensor-parallel RNG streams, saved with the other RNG states."""

    save_rng: bool = True
    """Save every data-parallel rank's RNG states (off with --no-save-rng)."""


def agree_on_errors(error: Optional[str]) -> List[str]:
    """Every rank's error (None: none) gathered on every rank, so all fail together."""
    if not dist.is_initialized():
        return [error] if error else []
    errors: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return list(dict.fromkeys(e for e in errors if e))


def _failed_save(root: str, iteration: int, errors: List[str]) -> CheckpointError:
    previous, release = read_tracker(root)
    latest = (
        "there is no earlier checkpoint"
        if previous is None
        else f"the latest complete checkpoint is still {'release' if release else previous}"
    )
    return CheckpointError(
        f"could not save the checkpoint of iteration {iteration}: " + "; ".join(errors) + ". "
        f"{os.path.join(root, TRACKER_FILENAME)} was not updated: {latest}; "
        f"{checkpoint_dir(root, iteration)} is incomplete and may be deleted. Free space on that "
        "file system or point --save elsewhere"
    )


def _shard_content(content: CheckpointContent, optim_sd, rng) -> Dict[str, Any]:
    train_state, scheduler = content.train_state, content.scheduler
    sd: Dict[str, Any] = {
        "args": content.args,
        "checkpoint_version": CHECKPOINT_VERSION,
        "iteration": content.iteration,
        "optimizer": optim_sd,
        "opt_param_scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_state": rng,
        "data_efficiency": content.data_efficiency,
        "train_state": dict(train_state),
    }
    counters = ("consumed_train_samples", "consumed_valid_samples", "consumed_train_tokens")
    sd.update({k: train_state[k] for k in counters if k in train_state})
    chunks = content.model_chunks
    if len(chunks) == 1:
        sd["model"] = model_state_dict(chunks[0])
    else:
        for i, chunk in enumerate(chunks):
            sd[f"model{i}"] = model_state_dict(chunk)
    return sd


def save_checkpoint(root: str, content: CheckpointContent, pstate) -> str:
    """Save one iteration under `root` (collective: every rank must call it). Returns the folder.

    Raises CheckpointError on every rank when any rank cannot write its files (the tracker file
    then still names the previous checkpoint).
    """
    # Collectives first, on every rank, in the same order.
    optimizer, iteration = content.optimizer, content.iteration
    optim_sd = optimizer.state_dict() if optimizer is not None else None
    rng = _gather_rng_states(content.rng_tracker, pstate.dp_group) if content.save_rng else None
    error = None
    if pstate.dp_rank == 0:
        path = checkpoint_file(root, iteration, pstate.tp_rank, pstate.pp_rank, pstate.pp_size)
        try:
            save_shard(_shard_content(content, optim_sd, rng), path)
        except OSError as exc:
            error = str(exc)
    errors = agree_on_errors(error)
    if not errors and pstate.rank == 0:
        try:
            atomic_write_text(os.path.join(root, TRACKER_FILENAME), str(iteration))
        except OSError as exc:
            error = str(exc)
    errors = errors or agree_on_errors(error)
    if errors:
        raise _failed_save(root, iteration, errors)
    folder = checkpoint_dir(root, iteration)
    logger.info("saved checkpoint at iteration %d to %s", iteration, folder)
    return folder


def find_checkpoint(root: str, pstate, step: Optional[int] = None) -> Optional[str]:
    """The file this rank loads from `root` (latest unless `step`), None when there is none."""
    if step is not None:
        iteration, release = step, False
    else:
        iteration, release = read_tracker(root)
        if iteration is None:
            return None
    folder = checkpoint_dir(root, iteration, release)
    if not os.path.isdir(folder):
        source = f"--ckpt-step {step}" if step is not None else os.path.join(root, TRACKER_FILENAME)
        raise FileNotFoundError(
            f"{folder}: missing, but {source} names it{_iterations_hint(root)}; pick an "
            "iteration that exists with --ckpt-step"
        )
    path = checkpoint_file(root, iteration, pstate.tp_rank, pstate.pp_rank, pstate.pp_size, release)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: missing; the checkpoint at {root} (iteration {iteration}) has no file for TP "
            f"rank {pstate.tp_rank}, PP rank {pstate.pp_rank}; it is incomplete, or was saved "
            "with another parallel layout: convert it with tools/checkpoint_util.py"
        )
    return path


def _unreadable(path: str, exc: BaseException) -> CheckpointError:
    cause = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]
    root = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    return CheckpointError(
        f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {cause}); it is "
        "truncated, damaged or not a checkpoint file. Restore it from a copy, or resume from "
        f"another iteration with --ckpt-step{_iterations_hint(root, shard_iteration(path))}"
    )


def load_checkpoint_file(path: str, verify: bool = True) -> Dict[str, Any]:
    """Read one checkpoint file safely (weights_only=True), after checking it against its
    checksum file unless `verify` is False; every failure is a CheckpointError naming `path`."""
    if verify:
        verify_shard(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, random bytes, a pickle of disallowed objects, ...
        raise _unreadable(path, exc) from exc


def check_shard_iteration(path: str, sd: Dict[str, Any]) -> None:
    """Raise CheckpointError when a shard's stored iteration is not the one its folder names
    (a file copied from another iteration would make the run skip or repeat steps)."""
    folder_iteration, stored = shard_iteration(path), sd.get("iteration")
    if folder_iteration is None or stored == folder_iteration:
        return
    raise CheckpointError(
        f"{path} stores iteration {stored} but lies in the folder of iteration "
        f"{folder_iteration}: it was copied or moved from another iteration, and resuming from "
        "it would skip or repeat steps. Put the file of that iteration there, or load its own "
        "folder with --ckpt-step"
    )


def shard_iteration(path: str) -> Optional[int]:
    """The iteration a shard's folder names (None for release/ and unknown folders)."""
    name = os.path.basename(os.path.dirname(os.path.dirname(path)))
    return int(name[5:]) if re.fullmatch(r"iter_\d{7}", name) else None


def restore_model(
    sd: Dict[str, Any], model_chunks: List[torch.nn.Module], strict: bool = True
) -> None:
    """Load model tensors of a checkpoint dict into the chunks."""
    if len(model_chunks) == 1:
        load_model_state_dict(model_chunks[0], sd["model"], strict)
    else:
        for i, chunk in enumerate(model_chunks):
            load_model_state_dict(chunk, sd[f"model{i}"], strict)


def restore_rng(sd: Dict[str, Any], pstate, rng_tracker) -> None:
    """Restore this rank's RNG states (its DP rank's entry, or entry 0 after a DP-size change)."""
    states = sd.get("rng_state")
    if not states:
        logger.warning(
            "WARNING: the checkpoint has no RNG state (saved with --no-save-rng, or converted to "
            "another layout): dropout and the other random streams continue from --seed, so "
            "this run does not repeat an uninterrupted one; pass --no-load-rng to make that "
            "explicit"
        )
        return
    idx = pstate.dp_rank if pstate.dp_rank < len(states) else 0
    set_rng_state(states[idx], rng_tracker)


# Architecture options --use-checkpoint-args takes from the checkpoint (Megatron's set).
CHECKPOINT_ARCH_FIELDS = {
    "transformer": (
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "ffn_hidden_size",
        "kv_channels",
        "normalization",
        "layernorm_epsilon",
        "add_bias_linear",
        "swiglu",
        "position_embedding_type",
        "rotary_percent",
        "rotary_base",
    ),
    "model": (
        "max_position_embeddings",
        "make_vocab_size_divisible_by",
        "untie_embeddings_and_output_weights",
    ),
}


def stored_args(root: str, step: Optional[int] = None) -> Dict[str, Any]:
    """The run options stored in a checkpoint (read from its first shard, tensors memory-mapped)."""
    iteration, release = (step, False) if step is not None else read_tracker(root)
    if iteration is None:
        raise FileNotFoundError(f"--load {root}: no {TRACKER_FILENAME}")
    folder = checkpoint_dir(root, iteration, release)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"--load {root}: {folder} is missing{_iterations_hint(root)}; pick an iteration that "
            "exists with --ckpt-step"
        )
    shards = sorted(d for d in os.listdir(folder) if d.startswith("mp_rank_"))
    if not shards:
        raise FileNotFoundError(
            f"--load {root}: {folder} holds no mp_rank_* shard (an unfinished save)"
            f"{_iterations_hint(root, iteration)}; pick another iteration with --ckpt-step"
        )
    path = os.path.join(folder, shards[0], "model_optim_rng.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["args"]
    except Exception as exc:
        raise _unreadable(path, exc) from exc
