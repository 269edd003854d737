"""Locating optional data packages without importing them."""

from __future__ import annotations

import importlib.util
import pathlib

SETUP_HINT = "run `make setup` (it installs the --no-deps data and model packages)"


class MissingDataError(ImportError):
    """An optional data/model package is not installed."""


def package_dir(name: str, pip_name: str) -> pathlib.Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            f"the package {pip_name!r} is not installed; {SETUP_HINT}"
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0])
