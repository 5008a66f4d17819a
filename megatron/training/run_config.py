"""`RunConfig`: everything a training run is configured with, one typed config per concern.

`arguments.parse_args` builds and validates it from the command line; the rest of the application
(and the modules `parse_args` itself consults for its checks) read it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch

from megatron.core.optimizer.config import OptimizerConfig
from megatron.core.parallel_state import RankLayout
from megatron.core.transformer.config import TransformerConfig
from megatron.tokenizer.config import TokenizerConfig

from .config import (
    CheckpointConfig,
    DataConfig,
    DataEfficiencyFlags,
    LoggingConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    TrainingConfig,
)


@dataclasses.dataclass
class RunConfig:
    """Everything a training run is configured with, one object per concern."""

    transformer: TransformerConfig
    model: ModelConfig
    training: TrainingConfig
    scheduler: SchedulerConfig
    optimizer: OptimizerConfig
    checkpoint: CheckpointConfig
    parallel: ParallelConfig
    data: DataConfig
    tokenizer: Optional[TokenizerConfig]
    logging: LoggingConfig
    data_efficiency: DataEfficiencyFlags = dataclasses.field(default_factory=DataEfficiencyFlags)
    world_size: int = 1
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    """Values of options added by the script's extra_args_provider."""

    @property
    def data_parallel_size(self) -> int:
        """Model replicas: world size / (TP x PP)."""
        p = self.parallel
        return self.world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size)

    @property
    def layout(self) -> RankLayout:
        """The `RankLayout` the parallelism flags ask for (the process groups are built from it;
        after initialisation `Runtime.pstate.layout` is the one to read)."""
        p = self.parallel
        return RankLayout(
            self.world_size,
            p.tensor_model_parallel_size,
            p.pipeline_model_parallel_size,
            p.virtual_pipeline_size(self.transformer.num_layers),
        )

    def to_plain_dict(self) -> Dict[str, Any]:
        """Plain-data view (for checkpoints: loadable with weights_only=True)."""

        def plain(v):
            if isinstance(v, torch.dtype):
                return str(v).replace("torch.", "")
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = plain(dataclasses.asdict(v)) if dataclasses.is_dataclass(v) else plain(v)
        return out
