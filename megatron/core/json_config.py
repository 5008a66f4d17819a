"""Strict conversion between JSON objects and config dataclasses.

Config dataclasses (the curriculum, random-LTD and DeepSpeed data-efficiency blocks) declare their
JSON keys as fields. `from_dict` builds one from a parsed JSON object: an unknown key raises
`ConfigError` naming its path and the closest valid key, a value of the wrong type raises with its
path, and each dataclass's `__post_init__` validates the values. A dataclass may map older key
spellings to fields with a class attribute `JSON_KEY_ALIASES = {"old": "new"}` (a warning is
logged). `to_plain_dict` is the inverse (for checkpoints and logs).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from typing import Any, Dict, List, Union

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An invalid data-efficiency configuration; the message names the key path and the fix."""


def json_field(
    default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING, json_key=True
):
    """A dataclass field; `json_key=False` keeps it out of the JSON (code-only fields)."""
    meta = {"json": json_key}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_choice(name: str, value: Any, choices) -> None:
    """Raise ConfigError naming the closest choice when `value` is not one of `choices`."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}{hint}")


def disable_child(parent_enabled: bool, child: Any, parent_name: str, child_name: str) -> None:
    """Parent flags win: a disabled parent turns its child off (and says so)."""
    if child.enabled and not parent_enabled:
        logger.info(
            "%s.enabled is true but %s.enabled is false: %s is off",
            child_name,
            parent_name,
            child_name,
        )
        child.enabled = False


def to_plain_dict(obj: Any) -> Any:
    """A config dataclass as plain dicts/lists/scalars with the JSON key names (no code-only
    fields such as the metric name or a custom callable)."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_plain_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("json", True)
        }
    if isinstance(obj, dict):
        return {k: to_plain_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain_dict(v) for v in obj]
    return obj


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _convert(tp: Any, value: Any, path: str) -> Any:
    """`value` checked against the annotation `tp` (JSON types), converted where lossless."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__} {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1.1e5 written by a launcher's printf
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"{path}: expected {_TYPE_NAMES.get(tp, tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def _unknown_key(key: str, valid: List[str], path: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{path}: unknown key {key!r}{hint} (valid keys: {sorted(valid)})")


def from_dict(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a JSON object with strict key and type checks.

    Raises:
        ConfigError: unknown key (with the closest valid one), wrong type, or a value that the
            dataclass's validation rejects; the message starts with the key path.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.metadata.get("json", True)]
    aliases = getattr(cls, "JSON_KEY_ALIASES", {})
    kwargs = {}
    for key, value in data.items():
        if key in aliases:
            new = aliases[key]
            logger.warning("%s.%s is the old name of %s.%s", path, key, path, new)
            key = new
        if key not in valid:
            raise _unknown_key(key, valid, path)
        kwargs[key] = _convert(hints[key], value, f"{path}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
