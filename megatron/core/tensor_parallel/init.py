"""Layout-independent parameter initialisation.

Each parameter is generated in full from a generator seeded by (seed, its global name) and then
sliced to this rank's shard, so the same seed gives the same model whatever the TP / PP layout
(a TP=2 shard equals the matching slice of the TP=1 weight, a layer on pipeline stage 2 equals
the same layer of a one-stage model). The initial weights are also independent of the global
RNG stream, which stays free for dropout.

Vocabulary-sized tensors marked by `layers.mark_vocab_padding` generate only their real rows
(a [vocab, ...] tensor) and zero the padding rows, so the real rows do not depend on the padded
size either (it grows with TP: --make-vocab-size-divisible-by x TP).
"""

from __future__ import annotations

from typing import Iterable, Tuple

import torch

from megatron.core.utils import stable_seed


def full_shape(param: torch.Tensor, tp_size: int) -> Tuple[int, ...]:
    """Shape of the unsharded tensor a TP shard belongs to."""
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return tuple(shape)


def shard_of(full: torch.Tensor, param: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's slice of `full` for a parameter marked by `mark_tensor_parallel`."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    chunks = full.chunk(stride * tp_size, dim=dim)
    return torch.cat([chunks[s * tp_size + tp_rank] for s in range(stride)], dim=dim)


def initialize_parameters(
    named_params: Iterable[Tuple[str, torch.nn.Parameter]],
    seed: int,
    tp_rank: int = 0,
    tp_size: int = 1,
    generator_device: str = "cpu",
) -> None:
    """Fill every parameter that has an `init_kind` attribute (see `layers.set_init`).

    Args:
        named_params: (global name, parameter) pairs; the name must not depend on the layout
            (use global layer numbers).
        seed: --seed.
        generator_device: where the full tensors are generated ("cpu" is what
            --use-cpu-initialization means; results are identical for a given device type).
    """
    with torch.no_grad():
        for name, p in named_params:
            kind = getattr(p, "init_kind", None)
            if kind is None:
                continue
            if kind == "zeros":
                p.zero_()
                continue
            if kind == "ones":
                p.fill_(1.0)
                continue
            if kind != "normal":
                raise ValueError(f"unknown init kind {kind!r} of {name}")
            gen = torch.Generator(device=generator_device)
            # A copy of another parameter (the tied output layer on the last pipeline stage)
            # names the original through init_key so both start equal.
            gen.manual_seed(stable_seed(seed, getattr(p, "init_key", None) or name))
            full = torch.empty(full_shape(p, tp_size), dtype=torch.float32, device=generator_device)
            real = getattr(p, "real_rows", None) or full.shape[0]
            full[real:].zero_()  # vocabulary padding (mark_vocab_padding)
            full[:real].normal_(0.0, p.init_std, generator=gen)
            p.copy_(shard_of(full, p, tp_rank, tp_size).to(p.device, p.dtype))
