"""The experiment registry.

Every public module in this package is an experiment: it defines a frozen
dataclass ``Config`` with ``quick()`` and ``full()`` presets and
``run(config, out_dir) -> dict``. The module docstring's first line is its
description. Listing reads docstrings without importing the modules.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib
import pkgutil
import types
import typing

__all__ = ["ConfigError", "apply_overrides", "describe", "load", "names", "parse_value"]

_HERE = pathlib.Path(__file__).parent


class ConfigError(ValueError):
    """A bad experiment name or ``--set`` override."""


def names() -> list[str]:
    """All registered experiment names, sorted (``sanity`` first)."""
    found = [
        m.name for m in pkgutil.iter_modules([str(_HERE)]) if not m.name.startswith("_")
    ]
    return sorted(found, key=lambda n: (n != "sanity", n))


def describe(name: str) -> str:
    """The first line of the experiment module's docstring."""
    doc = ast.get_docstring(ast.parse((_HERE / f"{name}.py").read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no description)"


def load(name: str) -> types.ModuleType:
    """Import the experiment ``name`` and check that it follows the contract."""
    if name not in names():
        raise ConfigError(
            f"unknown experiment {name!r}; available: {', '.join(names())}"
        )
    module = importlib.import_module(f"{__name__}.{name}")
    cfg = getattr(module, "Config", None)
    if not (dataclasses.is_dataclass(cfg) and callable(getattr(module, "run", None))):
        raise ConfigError(
            f"experiment {name!r} must define a dataclass Config and run()"
        )
    return module


def apply_overrides(config, overrides: list[str]):
    """Return ``config`` with ``key=value`` overrides parsed by the field types."""
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in fields:
            raise ConfigError(
                f"unknown config key {key!r}; valid keys: {', '.join(sorted(fields))}"
            )
        changes[key] = parse_value(key, raw, hints[key])
    return dataclasses.replace(config, **changes)


def parse_value(key: str, raw: str, annotation):
    """Parse the text ``raw`` as a value of type ``annotation``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if raw.strip().lower() in ("none", "null", ""):
            return None
        (annotation,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        inner = args[0] if args else str
        parts = [p for p in raw.split(",") if p.strip()]
        return tuple(parse_value(key, p, inner) for p in parts)
    text = raw.strip()
    try:
        if annotation is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError:
        raise ConfigError(
            f"config key {key!r} expects {annotation.__name__}, got {raw!r}"
        ) from None
    raise ConfigError(f"config key {key!r} has unsupported type {annotation!r}")
