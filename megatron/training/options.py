"""Build argparse options from dataclasses, so every option is declared exactly once.

A dataclass field is an option: its name gives the flag (`num_layers` -> `--num-layers`), its type
annotation the parser type, its default the default, and the string literal right below it (the
field's docstring) the `--help` text. Validation stays in the dataclass's `__post_init__`, so the
command line, the DeepSpeed-style JSON and library users all go through the same checks.

`Flag` overrides the generated option of one field (another flag name, aliases, choices, a
boolean that the flag turns off).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any, Dict, Iterable, List, Optional, Sequence, Type


@dataclasses.dataclass
class Flag:
    """How one dataclass field appears on the command line.

    Attributes:
        name: flag name (default derived from the field name).
        aliases: extra flag names accepted for the same option (older spellings).
        choices: allowed values.
        invert: for a boolean field that defaults to True: the flag stores False.
        skip: the field is not a command-line option (set by other flags or derived).
        nargs: argparse nargs for list fields (default "+").
    """

    name: Optional[str] = None
    aliases: Sequence[str] = ()
    choices: Optional[Sequence[Any]] = None
    invert: bool = False
    skip: bool = False
    nargs: Optional[str] = None


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> Dict[str, str]:
    """{field name: docstring} of a dataclass and its bases (read from the source with ast)."""
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, nxt in zip(body, body[1:] + [None]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: Type,
    title: str,
    overrides: Optional[Dict[str, Flag]] = None,
    include: Optional[Iterable[str]] = None,
) -> List[str]:
    """Add one argument group with an option per field of `cls`; returns the dest names added.

    Args:
        parser: the parser to extend.
        cls: a dataclass whose fields carry docstrings.
        title: the group title shown in --help.
        overrides: per-field `Flag` adjustments.
        include: only these fields (default: all).
    """
    overrides = overrides or {}
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    added = []
    for f in dataclasses.fields(cls):
        if include is not None and f.name not in include:
            continue
        spec = overrides.get(f.name, Flag())
        if spec.skip or f.name.startswith("_"):
            continue
        name = spec.name or "--" + f.name.replace("_", "-")
        names = [name, *spec.aliases]
        help_text = docs.get(f.name, "")
        default = _default_of(f)
        tp = _unwrap_optional(hints[f.name])
        kwargs: Dict[str, Any] = {"dest": f.name, "help": help_text}
        if tp is bool:
            if spec.invert:
                kwargs.update(action="store_false", default=default)
            else:
                kwargs.update(action="store_true", default=default)
        elif typing.get_origin(tp) in (list, List):
            (item,) = typing.get_args(tp) or (str,)
            kwargs.update(type=_unwrap_optional(item), nargs=spec.nargs or "+", default=default)
        else:
            if tp not in (int, float, str):
                continue  # not representable on the command line (e.g. torch.dtype)
            kwargs.update(type=tp, default=default)
            if spec.choices is not None:
                kwargs["choices"] = list(spec.choices)
        if default is not None and not isinstance(default, bool) and help_text:
            kwargs["help"] = f"{help_text} (default: {default})"
        group.add_argument(*names, **kwargs)
        added.append(f.name)
    return added


def build_dataclass(cls: Type, namespace: argparse.Namespace, **extra):
    """Instantiate `cls` from the parsed values of its fields (plus `extra` overrides)."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in extra:
            values[f.name] = extra[f.name]
        elif hasattr(namespace, f.name):
            values[f.name] = getattr(namespace, f.name)
    return cls(**values)
