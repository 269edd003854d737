"""The functional train step, the fit loop, checkpoints and resumption."""

import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlab import data, train
from jaxlab.nn.mlp import MLP


def _problem(num=96, dim=6):
    """A least-squares regression with a known exact solution."""
    key_x, key_w = jr.split(jr.key(0))
    x = np.asarray(jr.normal(key_x, (num, dim)))
    w = np.asarray(jr.normal(key_w, (dim, 1)))
    return x, x @ w


def _mse(model, batch, key):
    xb, yb = batch
    noise = 0.0 * jr.normal(key, ())  # uses the key, so key plumbing is exercised
    err = model(xb) - yb
    return jnp.mean(err**2) + noise, {"max_err": jnp.max(jnp.abs(err))}


def _fit(workdir, **kwargs):
    x, y = _problem()
    model = MLP((6, 16, 1), rngs=nnx.Rngs(0))
    batches = data.Batcher(jr.key(1), (x, y), 32)
    return train.fit(
        jr.key(2),
        model,
        optax.adam(1e-2),
        _mse,
        batches,
        num_steps=kwargs.pop("num_steps", 24),
        workdir=workdir,
        log_every=4,
        **kwargs,
    )


def test_fit_decreases_loss_and_logs_history():
    result = _fit(None, num_steps=60)
    steps = [h["step"] for h in result.history]
    assert steps == list(range(4, 61, 4))
    assert result.history[-1]["loss"] < 0.2 * result.history[0]["loss"]
    assert int(result.state.step) == 60
    assert set(result.history[0]) == {"step", "loss", "max_err"}


def test_resume_is_bit_identical(tmp_path):
    full = _fit(tmp_path / "a", ckpt_every=5)
    partial = _fit(tmp_path / "b", ckpt_every=5, stop_after=13)  # "killed" at step 13
    assert int(partial.state.step) == 13
    ckpts = sorted(p.name for p in (tmp_path / "b" / train.CKPT_DIR).glob("step_*"))
    assert ckpts == ["step_00000005", "step_00000010"]  # keeps the newest two
    resumed = _fit(tmp_path / "b", ckpt_every=5)
    assert int(resumed.state.step) == 24
    chex.assert_trees_all_equal(nnx.state(resumed.model), nnx.state(full.model))
    chex.assert_trees_all_equal(resumed.state.opt_state, full.state.opt_state)
    assert resumed.history == full.history


def test_rerun_of_finished_run_does_not_train(tmp_path):
    first = _fit(tmp_path, ckpt_every=8)
    again = _fit(tmp_path, ckpt_every=8)
    chex.assert_trees_all_equal(nnx.state(again.model), nnx.state(first.model))
    assert again.history == first.history


def _latest(tmp_path) -> pathlib.Path:
    return train.latest_checkpoint(tmp_path / train.CKPT_DIR)


def test_corrupt_checkpoint_is_reported_not_loaded(tmp_path):
    _fit(tmp_path, ckpt_every=8, stop_after=16)
    latest = _latest(tmp_path)
    victim = max(
        (p for p in latest.rglob("*") if p.is_file() and "manifest" not in p.name),
        key=lambda p: p.stat().st_size,
    )
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    with pytest.raises(train.CheckpointError, match="corrupt"):
        _fit(tmp_path, ckpt_every=8)


def test_half_written_checkpoint_is_reported(tmp_path):
    _fit(tmp_path, ckpt_every=8, stop_after=16)
    (_latest(tmp_path) / "manifest.sha256.json").unlink()  # crash before sealing
    with pytest.raises(train.CheckpointError, match="incomplete"):
        _fit(tmp_path, ckpt_every=8)


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    _fit(tmp_path, ckpt_every=8, stop_after=8)
    x, y = _problem()
    other = MLP((6, 32, 1), rngs=nnx.Rngs(0))
    with pytest.raises(train.CheckpointError, match="does not fit"):
        train.fit(
            jr.key(2),
            other,
            optax.adam(1e-2),
            _mse,
            data.Batcher(jr.key(1), (x, y), 32),
            num_steps=24,
            workdir=tmp_path,
        )


def test_history_survives_resume(tmp_path):
    _fit(tmp_path, ckpt_every=8, stop_after=16)
    saved = json.loads((_latest(tmp_path) / "history.json").read_text())
    assert [h["step"] for h in saved] == [4, 8, 12, 16]


class _Frozen(nnx.Variable):
    """A variable type the optimizer must not touch."""


class _PartlyFrozen(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((3,)))
        self.base = _Frozen(jnp.full((3,), 2.0))

    def __call__(self, x):
        return x * self.w[None, :] * self.base[None, :]


def test_trainable_filter_freezes_the_rest():
    x = np.ones((8, 3), np.float32)
    model = _PartlyFrozen()

    def loss_fn(m, batch, key):
        return jnp.mean((m(batch) - 1.0) ** 2), {}

    result = train.fit(
        jr.key(0),
        model,
        optax.sgd(0.05),
        loss_fn,
        lambda s: x,
        num_steps=30,
        trainable=nnx.Param,
        log_every=10,
    )
    np.testing.assert_array_equal(np.asarray(result.model.base[...]), 2.0)
    # loss = mean((2 w_j - 1)^2) over 8x3 entries: dL/dw_j = (8/3)(w_j - 1/2), so SGD
    # contracts w_j - 1/2 by (1 - 0.05 * 8/3) per step, starting from w_j = 1.
    expected = 0.5 + 0.5 * (1 - 0.05 * 8 / 3) ** 30
    np.testing.assert_allclose(np.asarray(result.model.w[...]), expected, rtol=1e-5)


def test_train_step_is_jitted_pure_function():
    x, y = _problem()
    model = MLP((6, 16, 1), rngs=nnx.Rngs(0))
    graphdef, state = train.init_state(model, optax.sgd(0.1))
    step = train.make_train_step(graphdef, _mse, optax.sgd(0.1))
    new_state, metrics = step(state, (x[:32], y[:32]), jr.key(0))
    assert int(new_state.step) == 1
    assert metrics["loss"].shape == ()
    # the manual SGD update matches the step
    params0 = nnx.state(model, nnx.Param)
    grads = jax.grad(
        lambda p: _mse(nnx.merge(graphdef, p, state.rest), (x[:32], y[:32]), jr.key(0))[
            0
        ]
    )(params0)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params0, grads)
    chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_steps": 0}, "num_steps"),
        ({"ckpt_every": 0}, "ckpt_every"),
        ({"stop_after": 99}, "stop_after"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _fit(None, **kwargs)


def test_nan_loss_stops_training():
    x = np.full((8, 3), np.nan, np.float32)
    model = MLP((3, 1), rngs=nnx.Rngs(0))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train.fit(
            jr.key(0),
            model,
            optax.sgd(0.1),
            lambda m, b, k: (jnp.mean(m(b)), {}),
            lambda s: x,
            num_steps=4,
            log_every=1,
        )


def test_param_sharding_is_validated():
    from jaxlab import parallel

    with pytest.raises(ValueError, match="param_sharding must be one of"):
        _fit(None, param_sharding="zero3")
    with pytest.raises(ValueError, match="needs a mesh with a 'model' axis"):
        _fit(None, param_sharding="fsdp")
    with pytest.raises(ValueError, match="needs a mesh with a 'model' axis"):
        _fit(None, param_sharding="fsdp", mesh=parallel.make_mesh(1))


def test_fsdp_on_a_trivial_mesh_equals_plain_training(tmp_path):
    from jaxlab import parallel

    mesh = parallel.mesh_from_spec("data:1,model:1")
    plain = _fit(None, num_steps=8)
    fsdp = _fit(
        tmp_path, num_steps=8, mesh=mesh, param_sharding="fsdp", fsdp_min_size=0
    )
    chex.assert_trees_all_close(
        nnx.state(fsdp.model), nnx.state(plain.model), rtol=1e-6, atol=1e-7
    )
    resumed = _fit(
        tmp_path, num_steps=8, mesh=mesh, param_sharding="fsdp", fsdp_min_size=0
    )  # restores the sealed final checkpoint
    chex.assert_trees_all_equal(nnx.state(resumed.model), nnx.state(fsdp.model))


def test_place_state_layouts():
    from jaxlab import parallel

    _, state = train.init_state(MLP((6, 16, 1), rngs=nnx.Rngs(0)), optax.adam(1e-2))
    same, shardings = train.place_state(state, None)
    assert same is state and shardings is None
    mesh = parallel.mesh_from_spec("data:1,model:1")
    placed, shardings = train.place_state(
        state, mesh, param_sharding="fsdp", fsdp_min_size=0
    )
    assert isinstance(shardings, train.TrainState)
    assert all(
        isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(shardings)
    )
    chex.assert_trees_all_equal(placed.params, state.params)
    with pytest.raises(ValueError, match="param_sharding must be one of"):
        train.place_state(state, mesh, param_sharding="model")
    with pytest.raises(ValueError, match="must have a 'data' axis"):
        train.place_state(
            state, jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("model",))
        )
    with pytest.raises(ValueError, match="min_size"):
        train.place_state(state, mesh, param_sharding="fsdp", fsdp_min_size=-1)


def test_fit_reuses_its_compiled_step_across_calls():
    x, y = _problem()
    optimizer = optax.adam(1e-2)
    batches = data.Batcher(jr.key(1), (x, y), 32)
    results = []
    for seed in (0, 1):  # two models of the same structure, same optimizer object
        model = MLP((6, 16, 1), rngs=nnx.Rngs(seed))
        results.append(train.fit(jr.key(2), model, optimizer, _mse, batches,
                                 num_steps=8, log_every=4))
    graphdef, _ = train.init_state(results[0].model, optimizer)
    step = train.make_train_step(graphdef, _mse, optimizer)
    assert step is train.make_train_step(graphdef, _mse, optimizer)
    assert step._cache_size() == 1  # compiled once for both fits
    other = train.make_train_step(graphdef, _mse, optax.sgd(0.1))
    assert other is not step
    # Different seeds still train different models: the cache shares code only.
    w0 = jax.tree.leaves(nnx.state(results[0].model, nnx.Param))
    w1 = jax.tree.leaves(nnx.state(results[1].model, nnx.Param))
    assert any(not np.array_equal(a, b) for a, b in zip(w0, w1))
