"""Mesh helpers, and the train step on a batch sharded over 4 CPU devices."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxlab import parallel

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _subprocess import run_json

# Runs in a fresh process: the device count is fixed when JAX starts.
_SCRIPT = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, jax.random as jr, numpy as np, optax
    from flax import nnx
    from jaxlab import data, parallel, train
    from jaxlab.nn.mlp import MLP
    x, y = data.load_digits()
    x = x.reshape(len(x), -1)
    def loss_fn(m, batch, key):
        xb, yb = batch
        return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean(), {}
    out = {"devices": jax.device_count()}
    for name, mesh in [("single", None), ("sharded", parallel.make_mesh())]:
        model = MLP((64, 32, 10), rngs=nnx.Rngs(0))
        res = train.fit(jr.key(1), model, optax.adam(1e-2), loss_fn,
                        data.Batcher(jr.key(2), (x, y), 64), num_steps=20,
                        log_every=5, mesh=mesh)
        out[name] = [h["loss"] for h in res.history]
        if mesh is not None:
            batch = parallel.shard_batch(x[:64], mesh)
            out["batch_shards"] = len(batch.addressable_shards)
            w = res.state.params["layers"][0]["kernel"]
            out["params_replicated"] = w.sharding.is_fully_replicated
    print(json.dumps(out))
""")


def test_train_step_on_4_sharded_devices_matches_one_device():
    out = run_json(_SCRIPT, devices=4)
    assert out["devices"] == 4 and out["batch_shards"] == 4
    assert out["params_replicated"]
    # same math, different reduction order across devices: float32 round-off only
    np.testing.assert_allclose(out["sharded"], out["single"], rtol=1e-5, atol=1e-5)


def test_make_mesh_and_placement():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    x = parallel.shard_batch(np.ones((4 * mesh.size, 3)), mesh)
    assert x.shape == (4 * mesh.size, 3)
    r = parallel.replicate({"w": np.ones(3)}, mesh)
    assert r["w"].sharding.is_fully_replicated


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_devices"):
        parallel.make_mesh(jax.device_count() + 1)
    mesh = parallel.make_mesh()
    if mesh.size > 1:
        with pytest.raises(ValueError, match="divisible"):
            parallel.shard_batch(np.ones((mesh.size + 1, 2)), mesh)
    with pytest.raises(ValueError, match="divisible"):
        parallel.shard_batch(np.float32(1.0), mesh)


def test_mesh_spec_and_default_mesh():
    assert parallel.mesh_from_spec("1").size == 1
    assert parallel.mesh_from_spec("data=1").size == 1
    assert parallel.mesh_from_spec("all").size == jax.device_count()
    with pytest.raises(ValueError, match="device count"):
        parallel.mesh_from_spec("lots")
    mesh = parallel.make_mesh(1)
    assert parallel.default_mesh() is None
    with parallel.use_mesh(mesh):
        assert parallel.default_mesh() is mesh
    assert parallel.default_mesh() is None


def test_cli_mesh_override_is_validated(capsys):
    from jaxlab import cli

    assert cli.main(["run", "sanity", "--set", f"mesh={jax.device_count() + 1}"]) == 2
    assert "num_devices must be in" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    """`jaxlab run --distributed` in 2 local CPU processes = the 1-process run."""
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXLAB_PROGRESS": "0"}
    args = [
        "-m",
        "jaxlab",
        "run",
        "sanity",
        "--quick",
        "--set",
        "steps=20",
        "--set",
        "ckpt_every=10",
    ]
    dist = {
        **base,
        "JAXLAB_COORDINATOR": f"127.0.0.1:{_free_port()}",
        "JAXLAB_NUM_PROCESSES": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, *args, "--distributed", "--out", str(tmp_path / "dist")],
            env={**dist, "JAXLAB_PROCESS_ID": str(k)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    for proc in procs:  # generous limits: a loaded 2-core machine is slow, not wrong
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
    single = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")],
        env=base,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert single.returncode == 0, single.stderr[-2000:]

    def losses(path):
        return [h["loss"] for h in json.loads(path.read_text())["history"]]

    one = losses(tmp_path / "one" / "sanity" / "results.json")
    p0 = losses(tmp_path / "dist" / "sanity" / "results.json")
    p1 = losses(tmp_path / "dist" / "process_1" / "sanity" / "results.json")
    assert p0 == p1  # both processes hold the same replicated state
    np.testing.assert_allclose(p0, one, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Multi-axis meshes, FSDP placement and batch_map (1 device here; the 8-device
# equivalence checks are in tests/test_sharded.py)
# --------------------------------------------------------------------------


def test_fsdp_spec_picks_the_largest_divisible_dimension():
    P = jax.sharding.PartitionSpec
    assert parallel.fsdp_spec((3, 3, 8, 16), 2, min_size=0) == P(
        None, None, None, "model"
    )
    assert parallel.fsdp_spec((6, 4), 2, min_size=0) == P("model")
    assert parallel.fsdp_spec((8, 8), 4, min_size=0) == P(None, "model")  # tie: last
    assert parallel.fsdp_spec((7, 5), 2, min_size=0) == P()  # nothing divisible
    assert parallel.fsdp_spec((16,), 2) == P()  # below the default min_size
    assert parallel.fsdp_spec((2048,), 2) == P("model")
    assert parallel.fsdp_spec((64, 64), 1, min_size=0) == P()  # axis of size 1
    assert parallel.fsdp_spec((), 2, min_size=0) == P()
    with pytest.raises(ValueError, match="axis_size"):
        parallel.fsdp_spec((4,), 0)
    with pytest.raises(ValueError, match="min_size"):
        parallel.fsdp_spec((4,), 2, min_size=-1)


def test_multi_axis_mesh_spec():
    mesh = parallel.mesh_from_spec("data:1,model:1")
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {
        "data": 1,
        "model": 1,
    }
    assert dict(parallel.mesh_from_spec("data=-1,model=1").shape)["data"] == (
        jax.device_count()
    )
    with pytest.raises(ValueError, match="data:4,model:2"):
        parallel.mesh_from_spec("data:four,model:2")
    with pytest.raises(ValueError, match="'data' axis"):
        parallel.mesh_from_spec("model:1")
    with pytest.raises(ValueError, match="needs"):
        parallel.mesh_from_spec(f"data:{jax.device_count() + 1},model:1")
    with pytest.raises(ValueError, match="one size per"):
        parallel.make_mesh(axis_names=("data", "data"), shape=(1, 1))


def test_shard_params_places_every_leaf():
    mesh = parallel.mesh_from_spec("data:1,model:1")
    tree = {
        "w": np.ones((64, 32), np.float32),
        "b": np.zeros(3, np.float32),
        "key": jax.random.key(0),
    }
    placed = parallel.shard_params(tree, mesh, min_size=0)
    assert all(
        isinstance(a.sharding, jax.sharding.NamedSharding)
        for a in jax.tree.leaves(placed)
    )
    np.testing.assert_array_equal(placed["w"], tree["w"])
    with pytest.raises(ValueError, match="not an axis"):
        parallel.shard_params(tree, parallel.make_mesh(1))  # no model axis


def test_batch_map_is_row_wise_under_jit():
    import jax.numpy as jnp

    mesh = parallel.make_mesh(1)
    x = np.arange(12.0).reshape(4, 3)

    def fn(scale, x):
        return x * scale, jnp.sum(x, axis=1)

    mapped = jax.jit(parallel.batch_map(fn, mesh, batched=(False, True)))
    y, s = mapped(2.0, x)
    np.testing.assert_array_equal(y, 2.0 * x)
    np.testing.assert_array_equal(s, x.sum(1))
    assert parallel.batch_sharding(mesh).spec == jax.sharding.PartitionSpec("data")
    with pytest.raises(ValueError, match="batched has 1 flags"):
        parallel.batch_map(fn, mesh, batched=(True,))(2.0, x)
    with pytest.raises(ValueError, match="not an axis"):
        parallel.batch_map(fn, mesh, axis="model")
    with pytest.raises(ValueError, match="not an axis"):
        parallel.batch_sharding(mesh, "model")


def test_resolve_mesh_prefers_given_then_default_and_checks_axis():
    mesh = parallel.make_mesh()
    assert parallel.resolve_mesh(mesh) is mesh
    assert parallel.resolve_mesh(None) is parallel.default_mesh()
    with parallel.use_mesh(mesh):
        assert parallel.resolve_mesh(None) is mesh
    with pytest.raises(ValueError, match="jax.sharding.Mesh"):
        parallel.resolve_mesh("data")
    with pytest.raises(ValueError, match="'model' axis"):
        parallel.resolve_mesh(mesh, axis="model")
