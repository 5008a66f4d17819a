"""Run a function in N fresh processes joined by a gloo process group (CPU multi-rank tests).

    from tests.distributed.launcher import run_distributed

    def _body(rank, world_size, scale):        # module level: it is pickled by reference
        x = torch.full((2,), float(rank))
        torch.distributed.all_reduce(x)
        return x * scale

    results = run_distributed(_body, 2, 10.0)  # [rank 0's return value, rank 1's]

Each rank runs `fn(rank, world_size, *args)` after `init_process_group("gloo")` (MASTER_ADDR /
MASTER_PORT point at a free local TCP port) and returns a picklable value; the process group is
destroyed afterwards. A rank that raises makes `run_distributed` kill every rank and raise a
`RuntimeError` carrying that rank's traceback. A run that exceeds `timeout` seconds (a hang in a
collective, usually) kills every rank and raises `TimeoutError`.

Ranks are forked from a fork server that imported torch (and torch._dynamo, which torch.optim
pulls in) once per session, so a run starts in about a second instead of re-importing torch in
every rank; each rank uses one intra-op thread unless `num_threads` says otherwise.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import socket
import time
import traceback
from typing import Any, Callable, Dict, List


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank, world_size, port, args, num_threads, results) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world_size)
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(num_threads)
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # Plain pickle bytes: tensors are copied, no shared-memory file descriptors to leak.
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException:  # noqa: BLE001 - report everything, including KeyboardInterrupt
        results.put((rank, "error", traceback.format_exc()))


def _context():
    """A fork server that imported torch once: each run forks fresh ranks from it (fast; no
    OpenMP or process-group state of the caller is inherited, unlike plain fork)."""
    ctx = mp.get_context("forkserver")
    # torch._dynamo: torch.optim imports it on first use (seconds, sympy included).
    ctx.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo"])
    return ctx


def _kill(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=5)


_SECONDARY = ("Connection closed", "Connection reset", "Broken pipe", "Timed out")


def _raise_errors(errors: Dict[int, str], world_size: int, results, grace: float = 1.0) -> None:
    """Raise one RuntimeError for the failed ranks, root cause first: a rank that raised makes
    its peers fail in their next collective, so those errors are listed last."""
    end = time.monotonic() + grace
    while len(errors) < world_size and time.monotonic() < end:
        try:
            rank, status, payload = results.get(timeout=max(end - time.monotonic(), 0.01))
        except queue_mod.Empty:
            break
        if status == "error":
            errors[rank] = payload
    order = sorted(errors, key=lambda r: (any(m in errors[r] for m in _SECONDARY), r))
    first = order[0]
    others = "".join(
        f"\n--- rank {r} also failed: {errors[r].strip().splitlines()[-1]}" for r in order[1:]
    )
    raise RuntimeError(f"rank {first} of {world_size} raised:\n{errors[first]}{others}")


def _collect(procs, results, deadline: float, name) -> Dict[int, Any]:
    """Per-rank results; raises on a rank error, a silent death or the deadline."""
    out: Dict[int, Any] = {}
    while len(out) < len(procs):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(set(range(len(procs))) - set(out))
            raise TimeoutError(
                f"{name} did not finish in time on ranks {missing} (hung collective?); "
                "all ranks were killed"
            )
        try:
            rank, status, payload = results.get(timeout=min(remaining, 0.5))
        except queue_mod.Empty:
            dead = [r for r, p in enumerate(procs) if r not in out and p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(
                    f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode} "
                    "without reporting a result"
                ) from None
            continue
        if status == "error":
            _raise_errors({rank: payload}, len(procs), results)
        out[rank] = pickle.loads(payload)
    return out


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    num_threads: int = 1,
) -> List[Any]:
    """Run `fn(rank, world_size, *args)` on `world_size` gloo ranks; return their results.

    Args:
        fn: a module-level (picklable) function.
        world_size: number of processes.
        args: picklable extra arguments, the same for every rank.
        timeout: seconds before every rank is killed and TimeoutError is raised.
        num_threads: torch intra-op threads per rank (1 keeps small machines responsive).

    Returns:
        The return values, indexed by rank.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(fn, rank, world_size, port, args, num_threads, results),
            daemon=False,  # ranks may start their own workers (DataLoader); killed below
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    try:
        out = _collect(procs, results, time.monotonic() + timeout, getattr(fn, "__name__", fn))
    finally:
        _kill(procs)
    return [out[r] for r in range(world_size)]
