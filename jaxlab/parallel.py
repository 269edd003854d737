"""Placing data on a device mesh with JAX's own SPMD machinery.

The train step and samplers are ordinary ``jax.jit`` functions; giving them a
batch sharded along its leading axis and replicated parameters is all it takes
for the compiler to run them data-parallel (gradients are reduced by XLA).

The same code runs on several hosts: start every process with
:func:`initialize_distributed` (``jaxlab run ... --distributed``), after which
:func:`make_mesh` spans the devices of all processes and :func:`shard_batch`
builds global arrays from the batch every process computes identically.

What is sharded how:

- batches: leading axis split over the ``data`` mesh axis (``P("data")``);
- parameters and optimizer state: replicated (``P()``), or, FSDP-style
  (:func:`shard_params`), each large array split along one dimension over the
  ``model`` axis; the compiler inserts the all-gathers and reduce-scatters;
- samplers and likelihoods: ``jax.jit`` with the batch sharded (or
  ``out_shardings=batch_sharding(mesh)`` when the sampler draws x_T itself).
  JAX's default ``jax_threefry_partitionable`` random bits do not depend on the
  sharding, so the same key gives the same samples on any number of devices.

The diffrax workaround. An adaptive diffrax solve is a ``while_loop``; vmapped
over the batch and partitioned by the compiler it is correct, but the loop's
stopping test becomes an all-reduce over the global batch at every step, so all
devices step until the globally slowest example is done (diffrax #407: sharded
integration slower than pmap). :func:`batch_map` instead runs the vmapped solve
inside ``jax.shard_map`` so that each device runs its own ``while_loop`` over its
rows; ``check_vma=False`` is needed because diffrax's loop carry mixes
device-varying and replicated values, which the new ``jax.shard_map`` type check
rejects (diffrax #735/#738).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA",
    "MODEL",
    "batch_map",
    "batch_sharding",
    "default_mesh",
    "fsdp_spec",
    "initialize_distributed",
    "make_mesh",
    "mesh_from_spec",
    "replicate",
    "set_default_mesh",
    "resolve_mesh",
    "shard_batch",
    "shard_params",
    "use_mesh",
]

DATA = "data"
MODEL = "model"
FSDP_MIN_SIZE = 1024
_DEFAULT: list[Mesh | None] = [None]


def make_mesh(
    num_devices: int | None = None,
    axis_names: Sequence[str] = (DATA,),
    *,
    shape: Sequence[int] | None = None,
) -> Mesh:
    """A mesh over the first devices of all processes.

    Args:
        num_devices: for a 1-D mesh, how many devices to use,
            1 <= num_devices <= ``jax.device_count()`` (default: all).
        axis_names: the axis names (one, the data axis, unless ``shape`` is given).
        shape: optional size of every axis, e.g. ``(4, 2)`` with
            ``axis_names=("data", "model")``; uses the first ``prod(shape)``
            devices (``num_devices`` must then be ``None`` or equal to it).

    Raises:
        ValueError: the sizes do not fit the available devices.
    """
    devices = jax.devices()
    axis_names = tuple(axis_names)
    if shape is not None:
        shape = tuple(shape)
        if len(shape) != len(axis_names) or len(set(axis_names)) != len(axis_names):
            raise ValueError(
                f"shape {shape} must give one size per distinct axis name {axis_names}"
            )
        if any(not isinstance(n, (int, np.integer)) or n < 1 for n in shape):
            raise ValueError(f"shape must hold positive ints, got {shape}")
        total = math.prod(shape)
        if total > len(devices) or num_devices not in (None, total):
            raise ValueError(
                f"mesh shape {shape} needs {total} devices; num_devices must be in "
                f"[1, {len(devices)}] and equal to it, got num_devices={num_devices!r}"
            )
        return Mesh(np.asarray(devices[:total]).reshape(shape), axis_names)
    n = len(devices) if num_devices is None else num_devices
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= len(devices):
        raise ValueError(
            f"num_devices must be in [1, {len(devices)}], got {num_devices!r}"
        )
    if len(axis_names) != 1:
        raise ValueError(f"axis_names must name exactly one axis, got {axis_names}")
    return Mesh(np.asarray(devices[:n]), axis_names)


def mesh_from_spec(spec: str | int) -> Mesh:
    """Parse a mesh spec: ``"8"``, ``"data=8"``, ``"all"`` or ``"data:4,model:2"``.

    The multi-axis form names each axis with its size (``:`` or ``=``), e.g.
    ``"data:4,model:2"`` for 4-way data parallelism × 2-way FSDP parameter
    sharding (``jaxlab run ... --set mesh=data:4,model:2``). One size may be
    ``-1``: all remaining devices.
    """
    text = str(spec).strip()
    if "," in text or ":" in text:
        names, sizes = [], []
        for part in text.split(","):
            name, _, size = part.replace("=", ":").partition(":")
            try:
                sizes.append(int(size))
            except ValueError:
                raise ValueError(
                    f"mesh must look like 'data:4,model:2', got {spec!r}"
                ) from None
            names.append(name.strip())
        if sizes.count(-1) == 1:
            rest = math.prod(n for n in sizes if n != -1)
            sizes[sizes.index(-1)] = max(jax.device_count() // max(rest, 1), 1)
        if DATA not in names:
            raise ValueError(f"mesh must have a {DATA!r} axis, got {spec!r}")
        return make_mesh(axis_names=names, shape=sizes)
    if text.startswith(f"{DATA}="):
        text = text[len(DATA) + 1 :]
    if text == "all":
        return make_mesh()
    try:
        n = int(text)
    except ValueError:
        raise ValueError(
            f"mesh must be a device count, 'data=N', 'all' or 'data:N,model:M', "
            f"got {spec!r}"
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


def resolve_mesh(mesh: Mesh | None, axis: str = DATA) -> Mesh | None:
    """``mesh``, else :func:`default_mesh` (may be ``None``); it must have ``axis``.

    For functions that take an optional ``mesh=`` and split rows over ``axis``.

    Raises:
        ValueError: ``mesh`` is not a ``Mesh`` or lacks ``axis``.
    """
    if mesh is None:
        mesh = default_mesh()
    if mesh is None:
        return None
    if not isinstance(mesh, Mesh):
        raise ValueError(  # noqa: TRY004 (house style: ValueError for bad args)
            f"mesh must be a jax.sharding.Mesh or None, got {mesh!r}"
        )
    if axis not in mesh.axis_names:
        raise ValueError(
            f"mesh must have a {axis!r} axis to split rows over, got "
            f"axes {mesh.axis_names}"
        )
    return mesh


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


def batch_sharding(mesh: Mesh, axis: str = DATA) -> NamedSharding:
    """``NamedSharding(mesh, P(axis))``: rows split over ``axis``."""
    _check_axis(mesh, axis, "axis")
    return NamedSharding(mesh, P(axis))


def fsdp_spec(
    shape: Sequence[int],
    axis_size: int,
    axis: str = MODEL,
    *,
    min_size: int = FSDP_MIN_SIZE,
) -> P:
    """The FSDP partition of one array: its largest dim divisible by ``axis_size``.

    Arrays with fewer than ``min_size`` elements, or with no dimension
    divisible by ``axis_size``, are replicated (``P()``). Ties go to the
    last such dimension (the output features of a kernel).

    Args:
        shape: the array's shape.
        axis_size: the size of the mesh axis, >= 1.
        axis: the mesh axis name.
        min_size: the smallest number of elements worth sharding, >= 0.
    """
    if not isinstance(axis_size, (int, np.integer)) or axis_size < 1:
        raise ValueError(f"axis_size must be a positive int, got {axis_size!r}")
    if not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be an int >= 0, got {min_size!r}")
    shape = tuple(int(n) for n in shape)
    if axis_size == 1 or math.prod(shape) < max(min_size, 1):
        return P()
    best = None
    for dim, n in enumerate(shape):
        if n % axis_size == 0 and (best is None or n >= shape[best]):
            best = dim
    if best is None:
        return P()
    return P(*([None] * best + [axis]))


def shard_params(tree, mesh: Mesh, axis: str = MODEL, *, min_size: int = FSDP_MIN_SIZE):
    """Place every array of ``tree`` FSDP-style: split on ``axis``, else replicated.

    Each array is split along the dimension chosen by :func:`fsdp_spec`
    (replicated over every other mesh axis, e.g. ``data``). Applied to the
    parameters and the optimizer state (whose moments have the parameters'
    shapes, so they get the same partition), this is ZeRO-3 / FSDP: a jitted
    train step all-gathers each weight where it is used and reduce-scatters its
    gradient, as decided by the XLA SPMD partitioner (Rajbhandari et al. 2020,
    "ZeRO", §5; Xu et al. 2021, "GSPMD", §3.5 weight-update sharding).
    PRNG keys and scalars are replicated.

    Raises:
        ValueError: ``mesh`` has no axis ``axis``, or ``min_size`` < 0.
    """
    _check_axis(mesh, axis, "axis")
    size = mesh.shape[axis]

    def put(a):
        if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            spec = P()
        else:
            spec = fsdp_spec(np.shape(a), size, axis, min_size=min_size)
        return _global_array(a, NamedSharding(mesh, spec))

    return jax.tree.map(put, tree)


def batch_map(
    fn: Callable[..., Any],
    mesh: Mesh,
    *,
    axis: str = DATA,
    batched: Sequence[bool] | None = None,
) -> Callable[..., Any]:
    """Run a row-wise batched ``fn`` on each device's rows (``jax.shard_map``).

    ``fn(*args)`` must be row-wise: row i of every output depends only on row i
    of the batched arguments (and on the replicated ones), as for a vmapped
    per-example function such as ``ode.decode`` or ``ode.flow``. Each device
    then calls ``fn`` on its own rows, so an adaptive diffrax solve runs one
    ``while_loop`` per device that stops when the device's slowest example is
    done, with no cross-device communication (the compiler-partitioned
    alternative synchronizes all devices at every step). Random draws inside
    ``fn`` from a replicated key are *not* row-wise (each device would draw the
    same numbers for its local shape): draw them outside and pass them in.

    ``check_vma=False`` works around diffrax's ``while_loop`` carry mixing
    device-varying and replicated values (diffrax #735/#738).

    Args:
        fn: the batched function; its outputs are pytrees of ``[B, ...]`` arrays.
        mesh: the mesh.
        axis: the mesh axis that splits the rows.
        batched: one flag per positional argument, ``True`` (the default for
            all) when it is split along its leading axis, ``False`` when it is
            replicated (e.g. a key or a parameter pytree).

    Returns:
        A function with ``fn``'s signature; call it under ``jax.jit``. The
        leading sizes of batched arguments must be divisible by the axis size;
        outputs are sharded ``P(axis)``.
    """
    _check_axis(mesh, axis, "axis")

    def wrapped(*args):
        flags = (True,) * len(args) if batched is None else tuple(batched)
        if len(flags) != len(args):
            raise ValueError(
                f"batched has {len(flags)} flags but fn got {len(args)} arguments"
            )
        size = mesh.shape[axis]
        for flag, arg in zip(flags, args):
            for leaf in jax.tree.leaves(arg) if flag else ():
                if np.ndim(leaf) == 0 or np.shape(leaf)[0] % size:
                    raise ValueError(
                        f"batched argument leading size must be divisible by the "
                        f"{size} devices of mesh axis {axis!r}, got {np.shape(leaf)}"
                    )
        specs = tuple(P(axis) if flag else P() for flag in flags)
        return jax.shard_map(
            fn, mesh=mesh, in_specs=specs, out_specs=P(axis), check_vma=False
        )(*args)

    return wrapped


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
    if (
        process_id is not None
        and num_processes is not None
        and not 0 <= process_id < num_processes
    ):
        raise ValueError(
            f"process_id must be in [0, {num_processes}), got {process_id}"
        )
    if env.get("JAX_PLATFORMS", "").startswith("cpu") or not env.get("JAX_PLATFORMS"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _check_axis(mesh: Mesh, axis: str, name: str) -> None:
    """ValueError unless ``axis`` is an axis of ``mesh``."""
    if axis not in mesh.axis_names:
        raise ValueError(
            f"{name}={axis!r} is not an axis of the mesh {mesh.axis_names}"
        )


def _global_array(a, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` built from a value every process holds."""
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        data = _global_array(jr.key_data(a), sharding)
        return jr.wrap_key_data(data, impl=jr.key_impl(a))
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
