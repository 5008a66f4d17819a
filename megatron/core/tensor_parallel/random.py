"""Random-number streams for model parallelism and activation recomputation.

Two streams matter for dropout under tensor parallelism:
- the *default* stream (torch's global generator of the compute device) is identical on the TP
  ranks of a group, so dropout on replicated activations (hidden states) agrees across them;
- the *model-parallel* stream, seeded differently on each TP rank, is used for dropout on sharded
  activations (attention probabilities of this rank's heads), so shards get independent masks.

`RNGStatesTracker` holds named generator states and swaps one in with `fork(name)`. It is an
object owned by the model (no module-level tracker), saved in checkpoints with `get_states`.
`checkpoint` recomputes a function in backward with the RNG states of its forward, so dropout
masks of the recomputation equal those of the first pass.
"""

from __future__ import annotations

import contextlib
from typing import Dict

import torch

MODEL_PARALLEL_RNG = "model-parallel-rng"


def _device_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_device_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class RNGStatesTracker:
    """Named RNG states of the compute device, swapped in and out of the global generator."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._states: Dict[str, torch.Tensor] = {}

    def add(self, name: str, seed: int) -> None:
        """Register a stream seeded with `seed` (does not disturb the current global state)."""
        if name in self._states:
            raise ValueError(f"RNG stream {name!r} already exists")
        saved = _device_state(self.device)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        self._states[name] = _device_state(self.device)
        _set_device_state(saved, self.device)

    def has(self, name: str) -> bool:
        return name in self._states

    @contextlib.contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG):
        """Run the block on stream `name`; its advanced state is kept for the next fork."""
        if name not in self._states:
            raise KeyError(f"RNG stream {name!r} was never added; known: {sorted(self._states)}")
        saved = _device_state(self.device)
        _set_device_state(self._states[name], self.device)
        try:
            yield
        finally:
            self._states[name] = _device_state(self.device)
            _set_device_state(saved, self.device)

    def get_states(self) -> Dict[str, torch.Tensor]:
        """Copies of every stream's state (for checkpoints)."""
        return {k: v.clone() for k, v in self._states.items()}

    def set_states(self, states: Dict[str, torch.Tensor]) -> None:
        """Restore states saved by `get_states`."""
        self._states = {k: v.clone() for k, v in states.items()}


def model_parallel_seed(seed: int, tp_rank: int) -> int:
    """Seed of the model-parallel stream: distinct per TP rank (Megatron's seed + 2718 + rank)."""
    return seed + 2718 + tp_rank


class _Checkpoint(torch.autograd.Function):
    """Recompute `fn(*args)` in backward under the RNG states its forward saw."""

    @staticmethod
    def forward(ctx, fn, tracker, device, *args):
        ctx.fn, ctx.tracker, ctx.device = fn, tracker, device
        ctx.rng_state = _device_state(device)
        ctx.cpu_rng_state = torch.get_rng_state() if device.type == "cuda" else None
        ctx.tracker_states = tracker.get_states() if tracker is not None else None
        tensor_idx = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        ctx.tensor_idx = tensor_idx
        ctx.non_tensors = [None if torch.is_tensor(a) else a for a in args]
        ctx.save_for_backward(*[args[i] for i in tensor_idx])
        with torch.no_grad():
            return fn(*args)

    @staticmethod
    def backward(ctx, *grads):
        saved = list(ctx.saved_tensors)
        args = list(ctx.non_tensors)
        for i, t in zip(ctx.tensor_idx, saved):
            args[i] = t.detach().requires_grad_(t.requires_grad)
        # Replay the forward under the same streams, then restore the current ones.
        cur = _device_state(ctx.device)
        cur_cpu = torch.get_rng_state() if ctx.cpu_rng_state is not None else None
        cur_tracker = ctx.tracker.get_states() if ctx.tracker is not None else None
        _set_device_state(ctx.rng_state, ctx.device)
        if ctx.cpu_rng_state is not None:
            torch.set_rng_state(ctx.cpu_rng_state)
        if ctx.tracker is not None:
            ctx.tracker.set_states(ctx.tracker_states)
        try:
            with torch.enable_grad():
                outputs = ctx.fn(*args)
        finally:
            _set_device_state(cur, ctx.device)
            if cur_cpu is not None:
                torch.set_rng_state(cur_cpu)
            if ctx.tracker is not None:
                ctx.tracker.set_states(cur_tracker)
        if torch.is_tensor(outputs):
            outputs = (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grads) if torch.is_tensor(o) and o.requires_grad]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        input_grads = [None] * len(args)
        for i in ctx.tensor_idx:
            input_grads[i] = args[i].grad if args[i].requires_grad else None
        return (None, None, None, *input_grads)


def checkpoint(fn, tracker: RNGStatesTracker | None, *args):
    """Activation recomputation: keep only the inputs of `fn` and recompute it in backward.

    Dropout inside `fn` draws the same masks in the recomputation as in the first pass (the
    default stream and every tracker stream are rewound). Non-tensor arguments are passed through.
    `fn` must return a tensor or a tuple of tensors.
    """
    device = next((a.device for a in args if torch.is_tensor(a)), torch.device("cpu"))
    return _Checkpoint.apply(fn, tracker, device, *args)
