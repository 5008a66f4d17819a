"""Forward/backward schedules over micro-batches (no pipelining, 1F1B, interleaved)."""

from .schedules import (
    broadcast_from_last_stage,
    forward_backward_no_pipelining,
    forward_backward_pipelining_with_interleaving,
    forward_backward_pipelining_without_interleaving,
    get_forward_backward_func,
)

__all__ = [
    "broadcast_from_last_stage",
    "forward_backward_no_pipelining",
    "forward_backward_pipelining_with_interleaving",
    "forward_backward_pipelining_without_interleaving",
    "get_forward_backward_func",
]
