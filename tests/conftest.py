"""Shared pytest setup: strict JAX flags, markers, the float64 fixture."""

import jax
import pytest

# Implicit rank promotion hides shape bugs; make it an error everywhere in tests.
jax.config.update("jax_numpy_rank_promotion", "raise")


def _has_accelerator() -> bool:
    return any(d.platform in ("gpu", "tpu") for d in jax.devices())


def pytest_collection_modifyitems(config, items):
    if _has_accelerator():
        return
    skip_gpu = pytest.mark.skip(reason="needs a GPU or TPU; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (restored afterwards)."""
    with jax.enable_x64(True):
        yield
