"""Name the rank that was lost when a collective fails, and notice when the job itself is gone.

When a rank dies (killed, out of memory, node failure) or hangs, its peers' next collective
fails: at once with gloo ("Connection reset by peer", naming only an address), or after
--distributed-timeout-minutes. Neither error says which rank is gone, and the process groups are
unusable afterwards (torch's monitored_barrier fails on the same broken connections). The c10d
store (the rendezvous key-value server; torchrun's agent on node 0 hosts it) still answers: each
rank bumps a counter in it every few seconds from a daemon thread, and after a failure a survivor
waits a few beats and names the ranks whose counter stopped moving. This covers the whole run from
the moment the process groups exist (dataset building and model set-up included), not only the
training loop.

The same thread watches the job: when the torchrun agent that started this process is gone (the
process has a new parent) or the store stops answering, `job_gone` says so, and the training loop
stops at the end of the iteration on every rank (instead of training on, orphaned, and saving
into a folder a new job may be using).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Dict, Iterator, List, Optional

import torch.distributed as dist

logger = logging.getLogger(__name__)

_KEY = "megatron/alive/{}"
_COMM_HINTS = ("gloo", "nccl", "connection", "timed out", "timeout", "broken pipe", "peer")


class JobGone(RuntimeError):
    """The torchrun agent or the rendezvous store of this job is gone: training stopped."""


def is_communication_error(err: BaseException) -> bool:
    """Whether an exception comes from a failed collective or point-to-point transfer."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(h in text for h in _COMM_HINTS)


class PeerLiveness:
    """Heartbeats of every rank in the c10d store, and a watch on the job around this process.

    Args:
        store: a store client of this process (the default process group's, cloned so the
            heartbeat thread has its own connection); None: no heartbeats (one process).
        rank, world_size: this rank and the number of ranks.
        interval: seconds between heartbeats (and between checks of the job).
        agent_pid: pid of the torchrun agent that started this process (its parent), or None
            when not started by torchrun.
    """

    def __init__(
        self, store, rank: int, world_size: int, interval: float, agent_pid: Optional[int] = None
    ):
        self.store, self.rank, self.world_size, self.interval = store, rank, world_size, interval
        self.agent_pid = agent_pid
        self.job_gone: Optional[str] = None
        """Why the job is gone (set by the watch thread), None while it is there."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="megatron-heartbeat", daemon=True)

    def start(self) -> "PeerLiveness":
        if self.store is not None:
            self.store.add(_KEY.format(self.rank), 1)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.job_gone = self.check_job()
            if self.job_gone is not None:
                logger.error(
                    "rank %d: %s; stopping at the end of this iteration", self.rank, self.job_gone
                )
                return

    def check_job(self) -> Optional[str]:
        """One heartbeat and one look at the job: why it is gone, or None."""
        if self.agent_pid is not None and os.getppid() != self.agent_pid:
            return (
                f"the torchrun agent (pid {self.agent_pid}) that started this process is gone "
                "(killed or crashed)"
            )
        if self.store is not None:
            try:
                self.store.add(_KEY.format(self.rank), 1)
            except Exception as err:  # noqa: BLE001 - any failure means the store is gone
                return (
                    f"the rendezvous store does not answer ({err}); the torchrun agent hosting it "
                    "(node 0, MASTER_ADDR) is probably gone"
                )
        return None

    def counters(self) -> Dict[int, int]:
        """Current heartbeat count of every rank (0: never started)."""
        return {r: int(self.store.add(_KEY.format(r), 0)) for r in range(self.world_size)}

    def lost_ranks(self, wait: Optional[float] = None) -> List[int]:
        """Ranks whose heartbeat does not advance within `wait` seconds (default 3 beats)."""
        before = self.counters()
        time.sleep(3 * self.interval if wait is None else wait)
        after = self.counters()
        return [r for r in range(self.world_size) if r != self.rank and after[r] <= before[r]]


def _store_client():
    store = dist.distributed_c10d._get_default_store()
    return store.clone() if hasattr(store, "clone") else store


def torchrun_agent_pid() -> Optional[int]:
    """The pid of the torchrun agent that started this process (its parent), or None."""
    return os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None


def start_liveness(timeout_minutes: float) -> Optional[PeerLiveness]:
    """Start this rank's heartbeat and job watch (None in a single process not run by torchrun).

    With several processes the heartbeats go to the default group's store; a process started by
    torchrun also watches its agent.
    """
    agent = torchrun_agent_pid()
    several = dist.is_initialized() and dist.get_world_size() > 1
    if not several and agent is None:
        return None
    interval = min(10.0, max(0.5, timeout_minutes * 60.0 / 4))
    rank = dist.get_rank() if several else 0
    world_size = dist.get_world_size() if several else 1
    try:
        store = _store_client() if several else None
        return PeerLiveness(store, rank, world_size, interval, agent).start()
    except Exception as err:  # noqa: BLE001 - diagnosis is optional; training goes on without it
        logger.warning("no liveness heartbeat (%s): a lost rank will not be named", err)
        return None


def lost_rank_error(err: BaseException, liveness: PeerLiveness) -> Optional[RuntimeError]:
    """A RuntimeError naming the lost ranks, or None when every rank is alive."""
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    try:
        lost = liveness.lost_ranks()
    except Exception:  # noqa: BLE001 - the store itself is gone with its host
        return RuntimeError(
            f"rank {liveness.rank}: a collective failed ({first_line}) and the rendezvous store "
            "is unreachable too: the node hosting it (node 0 / MASTER_ADDR) is probably lost"
        )
    if not lost:
        return None
    silent = 3 * liveness.interval
    return RuntimeError(
        f"rank {liveness.rank}: lost rank(s) {lost}: no heartbeat for {silent:.1f} s (killed, "
        f"crashed or hung; see their logs). The failed operation: {first_line}"
    )


@contextlib.contextmanager
def report_lost_ranks(timeout_minutes: float) -> Iterator[Optional[PeerLiveness]]:
    """Run the enclosed code with heartbeats; a communication error becomes one naming the lost
    ranks (the original error is chained). Other errors pass through unchanged. Yields the
    `PeerLiveness` (None in a single process not run by torchrun), whose `job_gone` the training
    loop checks."""
    liveness = start_liveness(timeout_minutes)
    try:
        yield liveness
    except Exception as err:
        if isinstance(err, JobGone) or liveness is None or liveness.store is None:
            raise
        if not is_communication_error(err):
            raise
        diagnosed = lost_rank_error(err, liveness)
        if diagnosed is None:
            raise
        logger.error("%s", diagnosed)
        raise diagnosed from err
    finally:
        if liveness is not None:
            liveness.stop()
