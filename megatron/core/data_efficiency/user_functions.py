"""Loading user functions named as "package.module:function" (custom metrics and schedules)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Type


def load_function(target: str, what: str, error: Type[Exception] = ValueError) -> Callable:
    """The callable named by `target` ("package.module:function"; dots after ':' walk attributes).

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
