"""Data parallelism: gradient buffers with bucketed, overlapped reduction, and the end-of-step
gradient finalisation (DP, sequence-parallel and tied-embedding reductions)."""

from .ddp import DDPConfig, DistributedDataParallel
from .finalize_model_grads import finalize_model_grads
from .grad_buffer import Bucket, GradBuffer

__all__ = [
    "Bucket",
    "DDPConfig",
    "DistributedDataParallel",
    "GradBuffer",
    "finalize_model_grads",
]
