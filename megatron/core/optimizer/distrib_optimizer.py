"""Distributed optimizer (--use-distributed-optimizer): fp32 master weights and optimizer state
sharded across the data-parallel group (ZeRO stage 1 with reduce-scattered gradients).

Each DP rank owns shard `dp_rank` of every bucket of the DDP buffers (see
`distributed.grad_buffer`). DDP reduce-scatters the gradients into those shards; this optimizer
builds one main tensor per (parameter, owned range) piece, steps only those, writes the result
into the owned range of the flat parameter buffer and all-gathers every bucket, so all ranks end
with the full updated parameters. The gradient norm and the inf check sum over the DP group as
well, since each rank sees different gradients.

`state_dict()` all-gathers the shards so every rank returns the same canonical, DP-size
independent state as the non-distributed optimizer; `load_state_dict()` takes each rank's slices
from it, so a checkpoint moves freely between DP sizes and between the two optimizers.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..distributed.ddp import DistributedDataParallel
from ..distributed.grad_buffer import GradBuffer, all_gather
from ..parallel_state import ParallelState
from .config import OptimizerConfig
from .optimizer import MegatronOptimizer, _Shard


class DistributedOptimizer(MegatronOptimizer):
    """Optimizer whose state is sharded across the DP group.

    Args:
        config: optimizer options.
        model_chunks: DistributedDataParallel chunks built with
            DDPConfig(use_distributed_optimizer=True).
        pstate: process groups (pstate.dp_group is the sharding group).
    """

    def __init__(
        self,
        config: OptimizerConfig,
        model_chunks: Sequence[torch.nn.Module],
        pstate: ParallelState,
    ):
        for i, chunk in enumerate(model_chunks):
            if not (
                isinstance(chunk, DistributedDataParallel)
                and chunk.config.use_distributed_optimizer
            ):
                raise ValueError(
                    f"--use-distributed-optimizer needs every model chunk wrapped in "
                    f"DistributedDataParallel with DDPConfig(use_distributed_optimizer=True); "
                    f"chunk {i} is {type(chunk).__name__}"
                    + ("" if not isinstance(chunk, DistributedDataParallel) else " without it")
                )
        super().__init__(config, model_chunks, pstate)

    def _build_shards(self) -> List[_Shard]:
        index = {p: i for i, (_, p) in enumerate(self.named_params)}
        shards = []
        for chunk in self.model_chunks:
            for buf in chunk.grad_buffers:
                for bucket in buf.buckets:
                    lo, hi = bucket.shard_range(chunk.dp_rank, chunk.dp_size)
                    for p in bucket.params:
                        start, end = buf.param_ranges[p]
                        a, b = max(lo, start), min(hi, end)
                        if a >= b:
                            continue
                        view = buf.param_data[a:b]
                        main = view.detach().float().clone() if self.mixed_precision else view
                        location = (chunk, buf, a, b)
                        shards.append(_Shard(index[p], p, a - start, b - start, main, location))
        # Model order (then position within the parameter) for a stable optimizer layout.
        return sorted(shards, key=lambda s: (s.index, s.start))

    # ---- step pieces --------------------------------------------------------------------------
    def _sharded_groups(self) -> Tuple:
        return (self.pstate.dp_group,)

    def _shard_grad(self, s: _Shard) -> torch.Tensor:
        _, buf, a, b = s.location
        return buf.grad_data[a:b]

    def _model_slice(self, s: _Shard) -> torch.Tensor:
        _, buf, a, b = s.location
        return buf.param_data[a:b]

    def _copy_main_to_model(self) -> None:
        if self.mixed_precision:
            for s in self.shards:
                self._model_slice(s).copy_(s.main)
        self.gather_model_params()

    def gather_model_params(self) -> None:
        """All-gather every bucket's parameter buffer from the owning ranks."""
        handles = []
        for chunk in self.model_chunks:
            for bucket in chunk.buckets:
                lo, hi = bucket.shard_range(chunk.dp_rank, chunk.dp_size)
                local = bucket.param_data[lo - bucket.offset : hi - bucket.offset]
                if chunk.dp_size > 1:
                    handles.append(all_gather(bucket.param_data, local, chunk.dp_group, True))
        for h in handles:
            h.wait()

    # ---- state dict ---------------------------------------------------------------------------
    def _full_tensors(self, field: Optional[str]) -> List[torch.Tensor]:
        """Gather `field` (None: master weights) of every parameter from all DP ranks."""
        flats: Dict[int, torch.Tensor] = {}  # id(GradBuffer) -> fp32 [buffer numel]
        for chunk in self.model_chunks:
            for buf in chunk.grad_buffers:
                flats[id(buf)] = torch.zeros(
                    buf.numel, dtype=torch.float32, device=buf.grad_data.device
                )
        for s in self.shards:
            _, buf, a, b = s.location
            t = s.main if field is None else self.optimizer.state[s.main][field]
            flats[id(buf)][a:b] = t.detach().reshape(-1)
        index = {p: i for i, (_, p) in enumerate(self.named_params)}
        out: List[Optional[torch.Tensor]] = [None] * len(self.named_params)
        for chunk in self.model_chunks:
            for buf in chunk.grad_buffers:
                flat = flats[id(buf)]
                self._gather_buffer(chunk, buf, flat)
                for p, (start, end) in buf.param_ranges.items():
                    out[index[p]] = flat[start:end].view(p.shape).clone()
        return out

    @staticmethod
    def _gather_buffer(chunk: DistributedDataParallel, buf: GradBuffer, flat: torch.Tensor) -> None:
        if chunk.dp_size == 1:
            return
        for bucket in buf.buckets:
            lo, hi = bucket.shard_range(chunk.dp_rank, chunk.dp_size)
            full = flat[bucket.offset : bucket.offset + bucket.numel]
            all_gather(full, flat[lo:hi], chunk.dp_group, False)
