"""Start-up of a training process: logging, torch.distributed, process groups, seeds."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import random
import sys
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron.core.models.common import pad_vocab_size
from megatron.core.parallel_state import ParallelState
from megatron.core.tensor_parallel.random import (
    MODEL_PARALLEL_RNG,
    RNGStatesTracker,
    model_parallel_seed,
)

from .arguments import RunConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Runtime:
    """What initialisation produced: process groups, device, RNG streams."""

    pstate: ParallelState
    device: torch.device
    rng_tracker: RNGStatesTracker
    tokenizer: Optional[object] = None
    """The tokenizer of --tokenizer-type (None when the run has none)."""
    padded_vocab_size: Optional[int] = None
    """Vocabulary padded by --make-vocab-size-divisible-by x TP."""
    last_saved_iteration: Optional[int] = None
    """Iteration of the last checkpoint this run saved (avoids saving it twice)."""
    data_efficiency: Optional[object] = None
    """The run's `training.data_efficiency.DataEfficiency` (curriculum learning, random-LTD)."""


def setup_logging(rank: int) -> None:
    """INFO on global rank 0, WARNING elsewhere; one format with the rank in it."""
    level = logging.INFO if rank == 0 else logging.WARNING
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if rank else "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def init_distributed(run: RunConfig) -> ParallelState:
    """Initialise torch.distributed from torchrun's environment and build the process groups."""
    world_size = (
        dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    )
    timeout = datetime.timedelta(minutes=run.parallel.distributed_timeout_minutes)
    if world_size == 1 and not dist.is_initialized():
        return ParallelState.single()
    backend = run.parallel.distributed_backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("--distributed-backend nccl needs CUDA devices; use gloo on the CPU")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    layout = run.layout
    return ParallelState.initialize(
        layout.tensor_model_parallel_size,
        layout.pipeline_model_parallel_size,
        layout.virtual_pipeline_model_parallel_size,
        timeout,
    )


def set_random_seeds(seed: int, pstate: ParallelState, device: torch.device) -> RNGStatesTracker:
    """Seed python / numpy / torch (per pipeline stage, as Megatron) and the TP dropout stream."""
    stage_seed = seed + 100 * pstate.pp_rank
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(stage_seed)
    tracker = RNGStatesTracker(device)
    tracker.add(MODEL_PARALLEL_RNG, model_parallel_seed(stage_seed, pstate.tp_rank))
    return tracker


def initialize(run: RunConfig) -> Runtime:
    """Everything a process needs before building the model."""
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    setup_logging(rank)
    pstate = init_distributed(run)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    tracker = set_random_seeds(run.training.seed, pstate, device)
    tokenizer, padded = None, None
    if run.tokenizer is not None:
        from megatron.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(run.tokenizer)
        padded = pad_vocab_size(
            tokenizer.vocab_size, run.model.make_vocab_size_divisible_by, pstate.tp_size
        )
        logger.info(
            "tokenizer %s: %d ids, padded to %d",
            run.tokenizer.tokenizer_type,
            tokenizer.vocab_size,
            padded,
        )
    logger.info(
        "initialised %d process(es): TP %d, PP %d, DP %d on %s",
        pstate.layout.world_size,
        pstate.tp_size,
        pstate.pp_size,
        pstate.dp_size,
        device,
    )
    return Runtime(
        pstate=pstate,
        device=device,
        rng_tracker=tracker,
        tokenizer=tokenizer,
        padded_vocab_size=padded,
    )
