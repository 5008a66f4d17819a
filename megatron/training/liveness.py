"""Name the rank that was lost when a collective fails.

When a rank dies (killed, out of memory, node failure) or hangs, its peers' next collective
fails: at once with gloo ("Connection reset by peer", naming only an address), or after
--distributed-timeout-minutes. Neither error says which rank is gone, and the process groups are
unusable afterwards (torch's monitored_barrier fails on the same broken connections). The c10d
store (the rendezvous key-value server; torchrun's agent on node 0 hosts it) still answers: each
rank bumps a counter in it every few seconds from a daemon thread, and after a failure a survivor
waits a few beats and names the ranks whose counter stopped moving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Dict, Iterator, List, Optional

import torch.distributed as dist

logger = logging.getLogger(__name__)

_KEY = "megatron/alive/{}"
_COMM_HINTS = ("gloo", "nccl", "connection", "timed out", "timeout", "broken pipe", "peer")


def is_communication_error(err: BaseException) -> bool:
    """Whether an exception comes from a failed collective or point-to-point transfer."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(h in text for h in _COMM_HINTS)


class PeerLiveness:
    """Heartbeats of every rank in the c10d store.

    Args:
        store: a store client of this process (the default process group's, cloned so the
            heartbeat thread has its own connection).
        rank, world_size: this rank and the number of ranks.
        interval: seconds between heartbeats.
    """

    def __init__(self, store, rank: int, world_size: int, interval: float):
        self.store, self.rank, self.world_size, self.interval = store, rank, world_size, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="megatron-heartbeat", daemon=True)

    def start(self) -> "PeerLiveness":
        self.store.add(_KEY.format(self.rank), 1)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.add(_KEY.format(self.rank), 1)
            except Exception:  # noqa: BLE001 - the store went away: nothing left to report to
                return

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


def start_liveness(timeout_minutes: float) -> Optional[PeerLiveness]:
    """Start this rank's heartbeat (None with one process or without a store)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    interval = min(10.0, max(0.5, timeout_minutes * 60.0 / 4))
    try:
        return PeerLiveness(
            _store_client(), dist.get_rank(), dist.get_world_size(), interval
        ).start()
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
def report_lost_ranks(timeout_minutes: float) -> Iterator[None]:
    """Run the enclosed code with heartbeats; a communication error becomes one naming the lost
    ranks (the original error is chained). Other errors pass through unchanged."""
    liveness = start_liveness(timeout_minutes)
    try:
        yield
    except Exception as err:
        if liveness is None or not is_communication_error(err):
            raise
        diagnosed = lost_rank_error(err, liveness)
        if diagnosed is None:
            raise
        logger.error("%s", diagnosed)
        raise diagnosed from err
    finally:
        if liveness is not None:
            liveness.stop()
