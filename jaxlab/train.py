"""Functional training for Flax NNX models: a jitted pure step, a resumable fit loop.

The model is split once with ``nnx.split(model, trainable, ...)`` into a graph
definition, the trainable parameters and the rest (frozen parameters, batch
statistics, RNG counters). The train step is a pure function of those pytrees,
jitted with the state donated; the host loop only fetches batches, logs and
checkpoints. On a device mesh the batch is split over the ``data`` axis and the
state either replicated or, FSDP-style, split over the ``model`` axis
(:func:`place_state`, :mod:`jaxlab.parallel`).

Checkpoints are orbax checkpoints of the whole :class:`TrainState`, one folder
per step under ``workdir/checkpoints``. Each is sealed by a SHA-256 manifest
written after orbax commits it; a checkpoint whose files do not match its
manifest (corrupt, truncated, half-written) raises :class:`CheckpointError`
instead of being loaded. Re-running :func:`fit` into the same ``workdir``
resumes from the newest checkpoint; because batches (``batch_fn(step)``) and
keys (``fold_in(key, step)``) are functions of the step, a resumed run reaches
bit-identical parameters to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

__all__ = [
    "CheckpointError",
    "FitResult",
    "TrainState",
    "fit",
    "init_state",
    "latest_checkpoint",
    "make_train_step",
    "place_state",
    "restore_checkpoint",
    "save_checkpoint",
]

CKPT_DIR = "checkpoints"
PARAM_SHARDINGS = (None, "replicated", "fsdp")
_MANIFEST = "manifest.sha256.json"

LossFn = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, dict]]


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, incomplete, or belongs to another model."""


class TrainState(NamedTuple):
    """Everything a train step reads and writes.

    Attributes:
        step: int32 scalar, number of completed steps.
        params: the trainable variables (an ``nnx.State``).
        opt_state: the optax state for ``params``.
        rest: every other variable of the model (frozen params, statistics, RNG).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rest: Any


class FitResult(NamedTuple):
    """What :func:`fit` returns: the trained model, logged metrics, final state."""

    model: nnx.Module
    history: list
    state: TrainState


def init_state(
    model: nnx.Module, optimizer: optax.GradientTransformation, trainable=nnx.Param
) -> tuple[Any, TrainState]:
    """Split ``model`` and initialise the optimizer on its trainable part.

    The state holds copies of the model's arrays, so donating it to the train
    step leaves ``model`` usable.

    Returns:
        ``(graphdef, state)``.
    """
    graphdef, params, rest = nnx.split(model, trainable, ...)
    params, rest = jax.tree.map(lambda a: a.copy(), (params, rest))
    if not jax.tree.leaves(params):
        raise ValueError(f"trainable={trainable!r} selects no variables of the model")
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rest)
    return graphdef, state


def make_train_step(
    graphdef,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    trainable=nnx.Param,
    *,
    state_sharding=None,
):
    """Build ``step(state, batch, key) -> (state, metrics)``, jitted, state donated.

    ``loss_fn(model, batch, key)`` returns ``(scalar loss, dict of scalar
    metrics)``. The step key is ``fold_in(key, state.step)``, so the same base
    key can be passed at every step. Only ``state.params`` is differentiated;
    ``state.rest`` is carried through (and updated if the model mutates it).

    Data parallelism needs nothing here: given a batch sharded on the ``data``
    axis, the compiler partitions the step and all-reduces the gradients.
    ``state_sharding`` (a :class:`TrainState` of ``NamedSharding``, e.g. the
    shardings of an FSDP-placed state, see :func:`jaxlab.parallel.shard_params`)
    pins the gradients and the new state to that layout, so every step returns
    its state laid out as it came in (gradients reduce-scattered, not
    all-reduced, under FSDP).

    Steps are cached: the same ``(graphdef, loss_fn, optimizer, trainable,
    state_sharding)`` returns the same jitted function, so calling :func:`fit`
    again with the same objects (e.g. once per seed) does not recompile.
    """
    try:
        cache_key = (graphdef, loss_fn, optimizer, trainable,
                     jax.tree.structure(state_sharding),
                     tuple(jax.tree.leaves(state_sharding)))
        hash(cache_key)
    except TypeError:  # an unhashable filter or loss: build a fresh step
        cache_key = None
    if cache_key is not None and cache_key in _STEP_CACHE:
        _STEP_CACHE.move_to_end(cache_key)
        return _STEP_CACHE[cache_key]
    step = _build_train_step(graphdef, loss_fn, optimizer, trainable, state_sharding)
    if cache_key is not None:
        _STEP_CACHE[cache_key] = step
        if len(_STEP_CACHE) > _STEP_CACHE_SIZE:
            _STEP_CACHE.popitem(last=False)
    return step


_STEP_CACHE: OrderedDict = OrderedDict()
_STEP_CACHE_SIZE = 32


def _build_train_step(graphdef, loss_fn, optimizer, trainable, state_sharding):
    """The jitted step of :func:`make_train_step` (uncached)."""

    def step(state: TrainState, batch, key: jax.Array):
        step_key = jr.fold_in(key, state.step)

        def compute(params):
            model = nnx.merge(graphdef, params, state.rest)
            loss, metrics = loss_fn(model, batch, step_key)
            _, _, new_rest = nnx.split(model, trainable, ...)
            return loss, (metrics, new_rest)

        (loss, (metrics, rest)), grads = jax.value_and_grad(compute, has_aux=True)(
            state.params
        )
        if state_sharding is not None:
            grads = jax.lax.with_sharding_constraint(grads, state_sharding.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **metrics}
        new_state = TrainState(state.step + 1, params, opt_state, rest)
        if state_sharding is not None:
            new_state = jax.lax.with_sharding_constraint(new_state, state_sharding)
        return new_state, metrics

    return jax.jit(step, donate_argnums=0)


def fit(
    key: jax.Array,
    model: nnx.Module,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    batch_fn: Callable[[int], Any],
    *,
    num_steps: int,
    workdir: str | os.PathLike | None = None,
    ckpt_every: int = 500,
    log_every: int = 50,
    desc: str = "train",
    trainable=nnx.Param,
    stop_after: int | None = None,
    eval_fn: Callable[[nnx.Module, int], dict] | None = None,
    eval_every: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    param_sharding: str | None = None,
    fsdp_min_size: int = 1024,
) -> FitResult:
    """Train ``model`` for ``num_steps`` steps, resuming from ``workdir`` if possible.

    Args:
        key: base PRNG key; step ``s`` uses ``fold_in(key, s)``.
        model: the NNX module (not modified; the trained copy is returned).
        optimizer: an optax transformation for the trainable variables.
        loss_fn: ``(model, batch, key) -> (loss, metrics)``.
        batch_fn: ``step -> batch``, deterministic in ``step`` (see
            :class:`jaxlab.data.Batcher`).
        num_steps: total number of steps of the run (not of this call).
        workdir: folder for checkpoints and ``history.json``; ``None`` trains
            without checkpoints.
        ckpt_every: checkpoint period in steps; the last step is always saved.
        log_every: period of the metrics recorded in ``history``.
        desc: progress-bar label.
        trainable: NNX filter of the variables the optimizer updates.
        stop_after: stop (without saving) once this many steps are done, as if
            the process were killed; for testing resumption.
        eval_fn: optional ``(model, step) -> dict`` merged into the history.
        eval_every: period of ``eval_fn`` (default: ``log_every``).
        mesh: optional device mesh: the batch is sharded along its leading
            axis and the state replicated (see :mod:`jaxlab.parallel`).
            Default: :func:`jaxlab.parallel.default_mesh` (set by
            ``jaxlab run ... --set mesh=N``), else a single device.
        param_sharding: ``"replicated"`` (parameters and optimizer state on
            every device) or ``"fsdp"`` (each array with at least
            ``fsdp_min_size`` elements split over the mesh's ``model`` axis,
            :func:`jaxlab.parallel.shard_params`). Default: ``"fsdp"`` when
            the mesh has a ``model`` axis of size > 1
            (``--set mesh=data:4,model:2``), else ``"replicated"``.
        fsdp_min_size: smallest array (in elements) that FSDP splits.

    Returns:
        :class:`FitResult` with the trained model, the history (a list of dicts
        with ``step``, ``loss`` and the metrics) and the final :class:`TrainState`.
    """
    for name, value in (
        ("num_steps", num_steps),
        ("ckpt_every", ckpt_every),
        ("log_every", log_every),
    ):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if stop_after is not None and not 0 <= stop_after <= num_steps:
        raise ValueError(
            f"stop_after must be in [0, num_steps={num_steps}], got {stop_after}"
        )
    from . import parallel

    mesh = mesh if mesh is not None else parallel.default_mesh()
    _check_placement(mesh, param_sharding)
    eval_every = eval_every or log_every

    graphdef, state = init_state(model, optimizer, trainable)
    history: list[dict] = []
    ckpt_root = pathlib.Path(workdir) / CKPT_DIR if workdir is not None else None
    if ckpt_root is not None:
        found = latest_checkpoint(ckpt_root)
        if found is not None:
            state, history = restore_checkpoint(found, state)
    state, state_sharding = place_state(
        state, mesh, param_sharding=param_sharding, fsdp_min_size=fsdp_min_size
    )
    train_step = make_train_step(
        graphdef, loss_fn, optimizer, trainable, state_sharding=state_sharding
    )
    start = int(state.step)
    end = num_steps if stop_after is None else stop_after
    history = [h for h in history if h["step"] <= start]

    from tqdm.auto import tqdm

    show = os.environ.get("JAXLAB_PROGRESS", "1") != "0"
    bar = tqdm(
        total=num_steps,
        initial=start,
        desc=desc,
        disable=not show or None,
        dynamic_ncols=True,
        leave=False,
    )
    try:
        for step in range(start, end):
            batch = batch_fn(step)
            if mesh is not None:
                batch = parallel.shard_batch(batch, mesh)
            state, metrics = train_step(state, batch, key)
            done = step + 1
            bar.update(1)
            record = None
            if done % log_every == 0 or done == num_steps:
                record = {"step": done, **_to_floats(metrics)}
                bar.set_postfix(loss=f"{record['loss']:.4g}")
            if eval_fn is not None and (done % eval_every == 0 or done == num_steps):
                extra = _to_floats(
                    eval_fn(nnx.merge(graphdef, state.params, state.rest), done)
                )
                record = {**(record or {"step": done}), **extra}
            if record is not None:
                if not np.isfinite(record.get("loss", 0.0)):
                    raise FloatingPointError(
                        f"{desc}: loss is {record['loss']} at step {done}"
                    )
                history.append(record)
            if ckpt_root is not None and (done % ckpt_every == 0 or done == num_steps):
                save_checkpoint(ckpt_root, state, history)
    finally:
        bar.close()
    trained = nnx.merge(graphdef, state.params, state.rest)
    return FitResult(trained, history, state)


def place_state(
    state: TrainState,
    mesh: jax.sharding.Mesh | None,
    *,
    param_sharding: str | None = None,
    fsdp_min_size: int = 1024,
) -> tuple[TrainState, TrainState | None]:
    """Put a :class:`TrainState` on ``mesh``: replicated, or FSDP on the ``model`` axis.

    For train loops that call :func:`make_train_step` themselves (as
    :func:`fit` does): ``state, shardings = place_state(state, mesh)`` then
    ``make_train_step(..., state_sharding=shardings)`` and
    ``parallel.shard_batch(batch, mesh)`` for every batch.

    Args:
        state: the state (host or single-device arrays).
        mesh: the mesh; ``None`` leaves the state as it is.
        param_sharding: ``"replicated"``, ``"fsdp"`` (parameters and optimizer
            state split by :func:`jaxlab.parallel.shard_params`; step and
            ``rest`` replicated) or ``None``: ``"fsdp"`` when the mesh has a
            ``model`` axis of size > 1, else ``"replicated"``.
        fsdp_min_size: smallest array (in elements) that FSDP splits.

    Returns:
        ``(placed state, its shardings as a TrainState of NamedSharding)``;
        the shardings are ``None`` when ``mesh`` is ``None``.
    """
    from . import parallel

    _check_placement(mesh, param_sharding)
    if mesh is None:
        return state, None
    if param_sharding is None:
        fsdp = mesh.shape.get(parallel.MODEL, 1) > 1
        param_sharding = "fsdp" if fsdp else "replicated"
    if param_sharding == "fsdp":
        params, opt_state = parallel.shard_params(
            (state.params, state.opt_state), mesh, min_size=fsdp_min_size
        )
        state = TrainState(
            parallel.replicate(state.step, mesh),
            params,
            opt_state,
            parallel.replicate(state.rest, mesh),
        )
    else:
        state = parallel.replicate(state, mesh)
    return state, jax.tree.map(lambda a: a.sharding, state)


def _check_placement(mesh, param_sharding) -> None:
    """ValueError for a bad ``param_sharding`` or a mesh that cannot carry it."""
    from . import parallel

    if param_sharding not in PARAM_SHARDINGS:
        raise ValueError(
            f"param_sharding must be one of {PARAM_SHARDINGS}, got {param_sharding!r}"
        )
    if mesh is not None and parallel.DATA not in mesh.axis_names:
        raise ValueError(
            f"mesh must have a {parallel.DATA!r} axis, got {mesh.axis_names}"
        )
    if param_sharding == "fsdp" and (
        mesh is None or parallel.MODEL not in mesh.axis_names
    ):
        raise ValueError(
            f"param_sharding='fsdp' needs a mesh with a {parallel.MODEL!r} axis, got "
            f"{None if mesh is None else mesh.axis_names}"
        )


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def save_checkpoint(
    root: str | os.PathLike, state: TrainState, history: list, *, keep: int = 2
) -> pathlib.Path:
    """Save ``state`` and ``history`` as ``root/step_XXXXXXXX`` and seal it.

    Orbax writes to a temporary folder and renames it when complete; the
    manifest of SHA-256 digests is written after that, so a checkpoint without
    a valid manifest is never taken for a finished one. Older checkpoints
    beyond the newest ``keep`` are deleted only after the new one is sealed.
    """
    root = pathlib.Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    step = int(state.step)
    path = root / f"step_{step:08d}"
    if path.exists():  # a leftover from a crash before sealing; replace it
        shutil.rmtree(path)
    checkpointer = _checkpointer()
    checkpointer.save(path, {"leaves": _pack(state)})
    checkpointer.wait_until_finished()
    (path / "history.json").write_text(json.dumps(history))
    manifest = {"step": step, "files": _digests(path)}
    tmp = path / (_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path / _MANIFEST)
    for old in sorted(root.glob("step_*"))[:-keep]:
        if old != path:
            shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(root: str | os.PathLike) -> pathlib.Path | None:
    """The newest checkpoint folder under ``root``, or ``None`` if there is none."""
    root = pathlib.Path(root)
    if not root.is_dir():
        return None
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    return steps[-1] if steps else None


def restore_checkpoint(
    path: str | os.PathLike, like: TrainState
) -> tuple[TrainState, list]:
    """Load a sealed checkpoint into the structure of ``like``.

    Raises:
        CheckpointError: the manifest is missing or does not match the files,
            or the saved arrays do not fit ``like`` (another model/optimizer).
    """
    path = pathlib.Path(path).absolute()
    manifest_path = path / _MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(
            f"checkpoint {path} is incomplete (no manifest: the save was interrupted); "
            "delete that folder to resume from an earlier checkpoint, "
            "or use a new output dir"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} has an unreadable manifest: {err}"
        ) from err
    actual = _digests(path)
    if actual != manifest.get("files"):
        bad = sorted(set(actual.items()) ^ set(manifest.get("files", {}).items()))
        names = sorted({name for name, _ in bad})[:5]
        raise CheckpointError(
            f"checkpoint {path} is corrupt: files differ from its manifest "
            f"({', '.join(names)}); "
            "delete that folder to resume from an earlier checkpoint, "
            "or use a new output dir"
        )
    leaves_like, treedef = jax.tree.flatten(like)
    template = {"leaves": [_abstract(x) for x in leaves_like]}
    try:
        restored = _checkpointer().restore(path, template)
    except Exception as err:  # orbax raises many types for shape/structure mismatch
        raise CheckpointError(
            f"checkpoint {path} does not fit this model/optimizer: {err}"
        ) from err
    leaves = [
        _unpack(saved, ref) for saved, ref in zip(restored["leaves"], leaves_like)
    ]
    history = json.loads((path / "history.json").read_text())
    return jax.tree.unflatten(treedef, leaves), history


def _checkpointer():
    """An orbax checkpointer; in a multi-process job each process saves its own copy.

    Every process holds the whole (replicated) state and writes to its own
    output folder, so no cross-process barrier is needed.

    The step folder is created synchronously. With orbax's default (created
    in the background), each save publishes "directory created" signals in the
    job-wide key-value store under a key built from a per-process operation
    counter (``awaitable_signals_contract_1/...``); two processes saving their
    own copies use the same key, one deletes it while the other still waits,
    and that process hangs until the 5-minute coordination timeout. We wait
    for every save to finish anyway (:func:`save_checkpoint`), so the
    background creation bought nothing.
    """
    import orbax.checkpoint as ocp

    sync_dirs = ocp.options.AsyncOptions(create_directories_asynchronously=False)
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer(async_options=sync_dirs)
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"jaxlab{me}"
    )
    return ocp.StandardCheckpointer(
        async_options=sync_dirs, multiprocessing_options=options
    )


def _pack(state: TrainState) -> list:
    """State leaves as host arrays; typed PRNG keys become their raw key data."""
    out = []
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jr.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            # FSDP across processes: gather the shards so every process saves
            # the whole array (its own copy, see _checkpointer).
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        out.append(np.asarray(leaf))
    return out


def _abstract(leaf):
    """Shape/dtype template for restoring one leaf."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jr.key_data(leaf)
    return np.zeros(leaf.shape, leaf.dtype)


def _unpack(saved, ref):
    """Inverse of :func:`_pack` for one leaf, checked against the expected leaf."""
    if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key):
        return jr.wrap_key_data(jnp.asarray(saved), impl=jr.key_impl(ref))
    saved = np.asarray(saved)
    if saved.shape != ref.shape or saved.dtype != ref.dtype:
        raise CheckpointError(
            f"checkpoint does not fit this model/optimizer: saved array "
            f"{saved.shape}/{saved.dtype}, model expects {ref.shape}/{ref.dtype}"
        )
    return jnp.asarray(saved)


def _digests(path: pathlib.Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` except the manifest, by relative name."""
    out = {}
    for file in sorted(path.rglob("*")):
        if file.is_file() and not file.name.startswith(_MANIFEST):
            out[str(file.relative_to(path))] = hashlib.sha256(
                file.read_bytes()
            ).hexdigest()
    return out


def _to_floats(metrics: dict) -> dict:
    """Device scalars to Python floats (one host transfer for the dict)."""
    host = jax.device_get(metrics)
    return {k: float(np.asarray(v)) for k, v in host.items()}
