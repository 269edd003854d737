"""Placing data on a device mesh with JAX's own SPMD machinery.

The train step and samplers are ordinary ``jax.jit`` functions; giving them a
batch sharded along its leading axis and replicated parameters is all it takes
for the compiler to run them data-parallel (gradients are reduced by XLA).

The same code runs on several hosts: start every process with
:func:`initialize_distributed` (``jaxlab run ... --distributed``), after which
:func:`make_mesh` spans the devices of all processes and :func:`shard_batch`
builds global arrays from the batch every process computes identically.
"""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA",
    "default_mesh",
    "initialize_distributed",
    "make_mesh",
    "mesh_from_spec",
    "replicate",
    "set_default_mesh",
    "shard_batch",
    "use_mesh",
]

DATA = "data"
_DEFAULT: list[Mesh | None] = [None]


def make_mesh(num_devices: int | None = None, axis_names: Sequence[str] = (DATA,)) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices of all processes (default: all).

    Args:
        num_devices: how many devices to use, 1 <= num_devices <= ``jax.device_count()``.
        axis_names: one axis name (the data axis by default).
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices!r}")
    if len(axis_names) != 1:
        raise ValueError(f"axis_names must name exactly one axis, got {tuple(axis_names)}")
    return Mesh(np.asarray(devices[:n]), tuple(axis_names))


def mesh_from_spec(spec: str | int) -> Mesh:
    """Parse ``"8"``, ``"data=8"`` or ``"all"`` into a data mesh."""
    text = str(spec).strip()
    if text.startswith(f"{DATA}="):
        text = text[len(DATA) + 1 :]
    if text == "all":
        return make_mesh()
    try:
        n = int(text)
    except ValueError:
        raise ValueError(
            f"mesh must be a device count, 'data=N' or 'all', got {spec!r}"
        ) from None
    return make_mesh(n)


def set_default_mesh(mesh: Mesh | None) -> None:
    """Make ``mesh`` the mesh that :func:`jaxlab.train.fit` uses when given none."""
    _DEFAULT[0] = mesh


def default_mesh() -> Mesh | None:
    """The mesh set by :func:`set_default_mesh` (``None``: single device)."""
    return _DEFAULT[0]


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
    """Temporarily set the default mesh."""
    previous = _DEFAULT[0]
    _DEFAULT[0] = mesh
    try:
        yield mesh
    finally:
        _DEFAULT[0] = previous


def shard_batch(x, mesh: Mesh, axis: str = DATA):
    """Split every array of the pytree ``x`` along its leading axis over ``axis``.

    Every process passes the same global batch; each keeps only the rows of its
    own devices, so this also works across hosts.

    Raises:
        ValueError: a leading size is not divisible by the number of devices.
    """
    size = mesh.shape[axis]

    def put(a):
        if isinstance(a, jax.Array) and a.sharding == NamedSharding(mesh, P(axis)):
            return a
        if np.ndim(a) == 0 or np.shape(a)[0] % size:
            raise ValueError(
                f"batch leading size must be divisible by the {size} devices of mesh "
                f"axis {axis!r}, got shape {np.shape(a)}"
            )
        return _global_array(a, NamedSharding(mesh, P(axis)))

    return jax.tree.map(put, x)


def replicate(tree, mesh: Mesh):
    """Copy every array of ``tree`` to all devices of ``mesh`` (all processes)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: _global_array(a, sharding), tree)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process JAX job (``jax.distributed.initialize``).

    Arguments default to the environment variables ``JAXLAB_COORDINATOR``
    (``host:port``), ``JAXLAB_NUM_PROCESSES`` and ``JAXLAB_PROCESS_ID``; when
    none is set, JAX auto-detects the cluster (SLURM, TPU pods, ...). On the
    CPU backend cross-process collectives use gloo.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAXLAB_COORDINATOR")
    if num_processes is None and "JAXLAB_NUM_PROCESSES" in env:
        num_processes = int(env["JAXLAB_NUM_PROCESSES"])
    if process_id is None and "JAXLAB_PROCESS_ID" in env:
        process_id = int(env["JAXLAB_PROCESS_ID"])
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if env.get("JAX_PLATFORMS", "").startswith("cpu") or not env.get("JAX_PLATFORMS"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _global_array(a, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` built from a value every process holds."""
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        data = _global_array(jr.key_data(a), sharding)
        return jr.wrap_key_data(data, impl=jr.key_impl(a))
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
