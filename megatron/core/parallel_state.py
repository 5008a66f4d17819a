"""Process groups for tensor (TP), pipeline (PP) and data (DP) parallelism.

Rank layout follows Megatron: tensor-parallel rank varies fastest, then data-parallel, then
pipeline-parallel:

    rank = pp_rank * (tp * dp) + dp_rank * tp + tp_rank

`RankLayout` is the pure arithmetic (no processes, testable for any world size);
`ParallelState` holds the torch.distributed groups of one rank and is passed explicitly to every
piece of the library that communicates. The layout (TP, PP and virtual-PP sizes) lives here and
nowhere else: models check that their configuration fits it and take the index of their model
chunk as an argument. There is no module-level or mutable state: two models with two different
layouts can live in one process.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch


@dataclasses.dataclass(frozen=True)
class RankLayout:
    """Pure rank arithmetic of a TP x DP x PP grid.

    Args:
        world_size: total number of ranks.
        tensor_model_parallel_size: ranks that split each layer (--tensor-model-parallel-size).
        pipeline_model_parallel_size: pipeline stages (--pipeline-model-parallel-size).
        virtual_pipeline_model_parallel_size: model chunks per stage for the interleaved schedule
            (None: not interleaved).
    """

    world_size: int
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None

    def __post_init__(self) -> None:
        tp, pp, ws = (
            self.tensor_model_parallel_size,
            self.pipeline_model_parallel_size,
            self.world_size,
        )
        if ws < 1 or tp < 1 or pp < 1:
            raise ValueError(f"sizes must be positive: world {ws}, TP {tp}, PP {pp}")
        if ws % (tp * pp) != 0:
            raise ValueError(
                f"world size {ws} is not divisible by --tensor-model-parallel-size {tp} x "
                f"--pipeline-model-parallel-size {pp} = {tp * pp}; choose sizes whose product "
                f"divides the number of processes"
            )
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None and (vpp < 1 or (vpp > 1 and pp < 2)):
            raise ValueError(
                f"virtual pipeline size {vpp} needs --pipeline-model-parallel-size > 1 (got {pp})"
            )

    @property
    def data_parallel_size(self) -> int:
        """Number of model replicas."""
        return self.world_size // (
            self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        )

    def coords(self, rank: int) -> Dict[str, int]:
        """{'tp': .., 'dp': .., 'pp': ..} of a global rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside [0, {self.world_size})")
        tp, dp = self.tensor_model_parallel_size, self.data_parallel_size
        return {"tp": rank % tp, "dp": (rank // tp) % dp, "pp": rank // (tp * dp)}

    def rank_of(self, tp: int, dp: int, pp: int) -> int:
        """Global rank at the given coordinates."""
        return (
            pp * self.tensor_model_parallel_size * self.data_parallel_size
            + dp * self.tensor_model_parallel_size
            + tp
        )

    def _groups_varying(self, axis: str) -> List[List[int]]:
        sizes = {
            "tp": self.tensor_model_parallel_size,
            "dp": self.data_parallel_size,
            "pp": self.pipeline_model_parallel_size,
        }
        others = [a for a in ("tp", "dp", "pp") if a != axis]
        groups = []
        # Iterate the fixed axes slowest-first so group order matches rank order.
        for o1 in range(sizes[others[1]]):
            for o0 in range(sizes[others[0]]):
                fixed = {others[0]: o0, others[1]: o1}
                groups.append([self.rank_of(**{**fixed, axis: i}) for i in range(sizes[axis])])
        return sorted(groups)

    def tensor_parallel_groups(self) -> List[List[int]]:
        """Ranks that share one layer's shards (contiguous blocks of TP ranks)."""
        return self._groups_varying("tp")

    def data_parallel_groups(self) -> List[List[int]]:
        """Ranks that hold the same model shard (gradients are all-reduced among them)."""
        return self._groups_varying("dp")

    def pipeline_parallel_groups(self) -> List[List[int]]:
        """Ranks that form one pipeline (ordered by stage)."""
        return self._groups_varying("pp")

    def model_parallel_groups(self) -> List[List[int]]:
        """Ranks that together hold one full model replica (TP x PP), for norms and inf checks."""
        groups = []
        for dp in range(self.data_parallel_size):
            groups.append(
                sorted(
                    self.rank_of(tp, dp, pp)
                    for pp in range(self.pipeline_model_parallel_size)
                    for tp in range(self.tensor_model_parallel_size)
                )
            )
        return groups

    def embedding_groups(self) -> List[List[int]]:
        """First and last stage of each pipeline (tied word embeddings are synchronised there)."""
        return [sorted({g[0], g[-1]}) for g in self.pipeline_parallel_groups()]

    def position_embedding_groups(self) -> List[List[int]]:
        """First stage of each pipeline."""
        return [[g[0]] for g in self.pipeline_parallel_groups()]


class ParallelState:
    """The process groups of one rank. Build with `ParallelState.initialize` (collective: every
    rank of the default group must call it with the same sizes) or `ParallelState.single()`.

    Groups are None when the corresponding size is 1 and there is nothing to communicate; the
    mappings in `tensor_parallel` treat None as a no-op.
    """

    def __init__(
        self, layout: RankLayout, rank: int, groups: Dict[str, object], ranks: Dict[str, List[int]]
    ):
        self.layout = layout
        self.rank = rank
        self._groups = groups
        self._ranks = ranks
        c = layout.coords(rank)
        self.tp_rank, self.dp_rank, self.pp_rank = c["tp"], c["dp"], c["pp"]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def single(cls) -> "ParallelState":
        """State of a one-process run (no groups at all)."""
        layout = RankLayout(1)
        return cls(layout, 0, {}, {k: [0] for k in ("tp", "dp", "pp", "mp", "embd", "pos_embd")})

    @classmethod
    def initialize(
        cls,
        tensor_model_parallel_size: int = 1,
        pipeline_model_parallel_size: int = 1,
        virtual_pipeline_model_parallel_size: Optional[int] = None,
        timeout=None,
    ) -> "ParallelState":
        """Create every group of the grid (all ranks must call this in the same order)."""
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialised; call init_process_group first"
            )
        layout = RankLayout(
            dist.get_world_size(),
            tensor_model_parallel_size,
            pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size,
        )
        rank = dist.get_rank()
        kinds = {
            "tp": layout.tensor_parallel_groups(),
            "dp": layout.data_parallel_groups(),
            "pp": layout.pipeline_parallel_groups(),
            "mp": layout.model_parallel_groups(),
            "embd": layout.embedding_groups(),
            "pos_embd": layout.position_embedding_groups(),
        }
        groups, ranks = {}, {}
        for kind, all_groups in kinds.items():
            for group_ranks in all_groups:
                kwargs = {"timeout": timeout} if timeout is not None else {}
                # new_group is collective over the default group: every rank creates every group.
                group = dist.new_group(group_ranks, **kwargs) if len(group_ranks) > 1 else None
                if rank in group_ranks:
                    groups[kind], ranks[kind] = group, group_ranks
        return cls(layout, rank, groups, ranks)

    # ---- groups -------------------------------------------------------------------------------
    @property
    def tp_group(self):
        """Tensor-parallel group (None when TP = 1)."""
        return self._groups.get("tp")

    @property
    def dp_group(self):
        """Data-parallel group (None when DP = 1)."""
        return self._groups.get("dp")

    @property
    def pp_group(self):
        """Pipeline group (None when PP = 1)."""
        return self._groups.get("pp")

    @property
    def mp_group(self):
        """Model-parallel group TP x PP (None when both are 1)."""
        return self._groups.get("mp")

    @property
    def embedding_group(self):
        """First + last pipeline stage (None unless this rank is in one with PP > 1)."""
        return self._groups.get("embd")

    @property
    def pp_ranks(self) -> List[int]:
        """Global ranks of this rank's pipeline, ordered by stage."""
        return self._ranks["pp"]

    @property
    def embedding_ranks(self) -> List[int]:
        """Global ranks of this rank's embedding group."""
        return self._ranks.get("embd", [])

    # ---- sizes and positions ------------------------------------------------------------------
    @property
    def tp_size(self) -> int:
        return self.layout.tensor_model_parallel_size

    @property
    def pp_size(self) -> int:
        return self.layout.pipeline_model_parallel_size

    @property
    def dp_size(self) -> int:
        return self.layout.data_parallel_size

    @property
    def vpp_size(self) -> Optional[int]:
        return self.layout.virtual_pipeline_model_parallel_size

    def is_pipeline_first_stage(self, vp_rank: Optional[int] = None) -> bool:
        """Whether this rank's model chunk `vp_rank` holds the first stage of the model.

        vp_rank None asks about the rank (the first pipeline rank), whichever chunk.
        """
        return self.pp_rank == 0 and vp_rank in (None, 0)

    def is_pipeline_last_stage(self, vp_rank: Optional[int] = None) -> bool:
        """Whether this rank's model chunk `vp_rank` holds the last stage of the model.

        vp_rank None asks about the rank (the last pipeline rank), whichever chunk.
        """
        if vp_rank is not None and vp_rank != (self.vpp_size or 1) - 1:
            return False
        return self.pp_rank == self.pp_size - 1

    def is_in_embedding_group(self) -> bool:
        """First or last stage (holds a copy of the word embeddings)."""
        return self.rank in self.embedding_ranks

    def next_pipeline_rank(self) -> int:
        """Global rank of the next stage (wraps around)."""
        return self.pp_ranks[(self.pp_rank + 1) % self.pp_size]

    def prev_pipeline_rank(self) -> int:
        """Global rank of the previous stage (wraps around)."""
        return self.pp_ranks[(self.pp_rank - 1) % self.pp_size]

    def __repr__(self) -> str:
        return (
            f"ParallelState(rank={self.rank}, tp={self.tp_rank}/{self.tp_size}, "
            f"dp={self.dp_rank}/{self.dp_size}, pp={self.pp_rank}/{self.pp_size})"
        )


def get_device() -> torch.device:
    """The device this process computes on: its CUDA device when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
