"""Small helpers shared across the library: stable seeds, loading user functions by name,
unwrapping wrapped models."""

from __future__ import annotations

import hashlib
import importlib
from typing import Any, Callable, Type


def stable_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from (seed, name), identical on every machine and Python run."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def load_function(target: str, what: str, error: Type[Exception] = ValueError) -> Callable:
    """The callable named by `target` ("package.module:function"; dots after ':' walk attributes).

    Used for user-supplied custom metrics and schedules.

    Args:
        target: the name to resolve.
        what: how the error messages name the function (e.g. "metric function", "custom schedule").
        error: the exception class raised on failure (a ValueError subclass).
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise error(f"{what} {target!r}: use 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"{what} {target!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{what} {target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{what} {target!r} is a {type(obj).__name__}, not callable")
    return obj


def unwrap_model(model: Any) -> Any:
    """The module inside wrappers that keep it as `.module` (DistributedDataParallel)."""
    while hasattr(model, "module"):
        model = model.module
    return model
