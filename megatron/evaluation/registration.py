"""Registers the `megatron_de` model with lm-evaluation-harness.

lm-evaluation-harness 0.4.x finds models only in its own registry (no entry points). The
startup hook `megatron_de_lm_eval_hook` (installed as a .pth file) calls `register_megatron_de`
right after `lm_eval.models` is imported, which is when lm_eval fills that registry;
`python -m megatron.evaluation.lm_eval_cli` calls it directly.
"""

from __future__ import annotations

NAME = "megatron_de"
TARGET = "megatron.evaluation.lm_eval_model:MegatronDELM"


def register_megatron_de() -> None:
    """Add `megatron_de` to lm_eval's model registry (a lazy "module:class" placeholder where
    the registry supports them, else the class itself); does nothing when it is there."""
    from lm_eval.api import registry

    if hasattr(registry, "model_registry"):  # 0.4.12 and later: lazy placeholders
        if NAME not in registry.model_registry:
            registry.model_registry.register(NAME, target=TARGET)
        return
    if NAME not in registry.MODEL_REGISTRY:  # earlier 0.4.x: a plain dict of classes
        from .lm_eval_model import MegatronDELM

        registry.MODEL_REGISTRY[NAME] = MegatronDELM
