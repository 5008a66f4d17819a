"""Forward/backward schedules over micro-batches (no pipelining, 1F1B, interleaved)."""

from .schedules import forward_backward_no_pipelining, get_forward_backward_func
