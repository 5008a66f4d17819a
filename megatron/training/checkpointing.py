"""Checkpoints in Megatron's layout, written atomically, loadable with weights_only=True.

    <save>/latest_checkpointed_iteration.txt        the last complete iteration (or "release")
    <save>/iter_0000100/mp_rank_00/model_optim_rng.pt        TP rank 00 (no pipeline)
    <save>/iter_0000100/mp_rank_01_002/model_optim_rng.pt    TP rank 01, PP rank 002

One file per (TP, PP) rank, written by data-parallel rank 0 of that model shard. Every file is
first written under a temporary name and renamed; the tracker file is updated (also by rename)
only after every rank has finished, so a crash mid-save leaves the previous checkpoint as the
latest one. Contents are plain data (tensors, numbers, strings, lists, dicts):

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
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron.core.datasets.utils import atomic_write, atomic_write_text
from megatron.core.models.common import global_named_parameters

logger = logging.getLogger(__name__)

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0


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


def _atomic_save(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f), "wb")


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


def save_checkpoint(root: str, content: CheckpointContent, pstate) -> str:
    """Save one iteration under `root` (collective: every rank must call it). Returns the folder."""
    # Collectives first, on every rank, in the same order.
    optimizer, iteration = content.optimizer, content.iteration
    optim_sd = optimizer.state_dict() if optimizer is not None else None
    rng = _gather_rng_states(content.rng_tracker, pstate.dp_group) if content.save_rng else None
    if pstate.dp_rank == 0:
        train_state, scheduler = content.train_state, content.scheduler
        sd: Dict[str, Any] = {
            "args": content.args,
            "checkpoint_version": CHECKPOINT_VERSION,
            "iteration": iteration,
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
        path = checkpoint_file(root, iteration, pstate.tp_rank, pstate.pp_rank, pstate.pp_size)
        _atomic_save(sd, path)
    if dist.is_initialized():
        dist.barrier()
    if pstate.rank == 0:
        atomic_write_text(os.path.join(root, TRACKER_FILENAME), str(iteration))
    if dist.is_initialized():
        dist.barrier()
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
    path = checkpoint_file(root, iteration, pstate.tp_rank, pstate.pp_rank, pstate.pp_size, release)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: missing; the checkpoint at {root} (iteration {iteration}) has no file for TP "
            "rank "
            f"{pstate.tp_rank}, PP rank {pstate.pp_rank}; it was probably saved with another "
            "parallel "
            "layout: convert it with tools/checkpoint_util.py"
        )
    return path


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """Read one checkpoint file safely (weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)


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
        logger.warning("checkpoint has no RNG state; continuing with the current one")
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
        raise FileNotFoundError(f"--use-checkpoint-args: no {TRACKER_FILENAME} in --load {root}")
    folder = checkpoint_dir(root, iteration, release)
    shards = (
        sorted(d for d in os.listdir(folder) if d.startswith("mp_rank_"))
        if os.path.isdir(folder)
        else []
    )
    if not shards:
        raise FileNotFoundError(f"--use-checkpoint-args: {folder} holds no mp_rank_* shard")
    path = os.path.join(folder, shards[0], "model_optim_rng.pt")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["args"]
