"""Placing data on a device mesh with JAX's own SPMD machinery.

The train step and samplers are ordinary ``jax.jit`` functions; giving them a
batch sharded along its leading axis and replicated parameters is all it takes
for the compiler to run them data-parallel (gradients are reduced by XLA).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["DATA", "make_mesh", "replicate", "shard_batch"]

DATA = "data"


def make_mesh(num_devices: int | None = None, axis_names: Sequence[str] = (DATA,)) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` local devices (default: all).

    Args:
        num_devices: how many devices to use, 1 <= num_devices <= local count.
        axis_names: one axis name (the data axis by default).
    """
    devices = jax.local_devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
    if len(axis_names) != 1:
        raise ValueError(f"axis_names must name exactly one axis, got {tuple(axis_names)}")
    return Mesh(np.asarray(devices[:n]), tuple(axis_names))


def shard_batch(x, mesh: Mesh, axis: str = DATA):
    """Split every array of the pytree ``x`` along its leading axis over ``axis``.

    Raises:
        ValueError: a leading size is not divisible by the number of devices.
    """
    size = mesh.shape[axis]

    def put(a):
        if np.ndim(a) == 0 or np.shape(a)[0] % size:
            raise ValueError(
                f"batch leading size must be divisible by the {size} devices of mesh "
                f"axis {axis!r}, got shape {np.shape(a)}"
            )
        return jax.device_put(a, NamedSharding(mesh, P(axis)))

    return jax.tree.map(put, x)


def replicate(tree, mesh: Mesh):
    """Copy every array of ``tree`` to all devices of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, P()))
