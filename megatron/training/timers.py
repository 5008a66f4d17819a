"""Per-phase step timers (--log-timers-to-tensorboard), under Megatron's timer names.

Timed phases: `forward-backward` (the schedule), `optimizer` (the optimizer step with its
gradient clipping and loss scaling), `batch-generator` (reading and post-processing this rank's
micro-batches) and the pipeline exchanges (`forward-recv`, `forward-send`, `backward-recv`,
`backward-send`, `forward-send-backward-recv`, `backward-send-forward-recv`, ...). As Megatron
does, each is written to the metric sink as `<name>-time`: seconds per iteration, averaged over
the iterations since the last log line (global rank 0's timers; the sink exists there only).
"""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, Optional

from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator

_P2P_NAMES = {  # (send_next, send_prev, recv_prev, recv_next) -> Megatron's timer name
    (True, False, False, False): "forward-send",
    (False, False, True, False): "forward-recv",
    (False, True, False, False): "backward-send",
    (False, False, False, True): "backward-recv",
    (True, False, False, True): "forward-send-backward-recv",
    (False, True, True, False): "backward-send-forward-recv",
    (True, False, True, False): "forward-send-forward-recv",
    (False, True, False, True): "backward-send-backward-recv",
}
_P2P_ALL = "forward-backward-send-forward-backward-recv"


def p2p_timer_name(send_next: bool, send_prev: bool, recv_prev: bool, recv_next: bool) -> str:
    """Megatron's timer name of one pipeline exchange (which messages it sends and receives)."""
    return _P2P_NAMES.get((send_next, send_prev, recv_prev, recv_next), _P2P_ALL)


class StepTimers:
    """Accumulating wall-clock timers by name; `write` sends them to a sink and resets them."""

    def __init__(self):
        self.elapsed: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        """Time the body under `name` (times add up until the next `write`)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.elapsed[name] = self.elapsed.get(name, 0.0) + time.perf_counter() - start

    def iterate(self, name: str, iterator) -> Iterator:
        """`iterator`, with the time of each `next` counted under `name`."""
        while True:
            with self(name):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item

    def communicator(self, pstate, device) -> "TimedP2PCommunicator":
        """A pipeline communicator whose exchanges are timed here."""
        return TimedP2PCommunicator(self, pstate, device)

    def write(self, sink, step: int, iterations: int) -> None:
        """`<name>-time` (seconds per iteration over `iterations`) to `sink`; resets the timers."""
        for name, seconds in sorted(self.elapsed.items()):
            sink.scalar(f"{name}-time", seconds / max(iterations, 1), step)
        self.elapsed = {}


class TimedP2PCommunicator(P2PCommunicator):
    """The stage-to-stage communicator, timing each exchange under Megatron's name for it."""

    def __init__(self, timers: StepTimers, pstate, device):
        super().__init__(pstate, device)
        self.timers = timers

    def exchange(self, send_next=None, send_prev=None, recv_prev=False, recv_next=False, *a, **kw):
        kinds = (send_next is not None, send_prev is not None, bool(recv_prev), bool(recv_next))
        if not any(kinds):
            return super().exchange(send_next, send_prev, recv_prev, recv_next, *a, **kw)
        with self.timers(p2p_timer_name(*kinds)):
            return super().exchange(send_next, send_prev, recv_prev, recv_next, *a, **kw)


def maybe_timers(enabled: bool) -> Optional[StepTimers]:
    """StepTimers when --log-timers-to-tensorboard is on, else None."""
    return StepTimers() if enabled else None
