"""Row-sharded k-occurrence, kNN and kNN graph: 8 devices give the 1-device answer.

The 8-device checks run in one fresh process (the device count is fixed when JAX
starts); the in-process tests cover the same code path on a 1-device mesh, the
default-mesh lookup and bad meshes.
"""

import functools
import pathlib
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxlab import geodesic, hubness, parallel

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _subprocess import run_json

# Ties-free data: Gaussian points in 16-d, where the gap between a point's
# k-th and (k+1)-th squared distances is many orders of magnitude above float32
# round-off, so a different summation order cannot change a neighbour list.
# N = 203 is not divisible by 8 (padding path); N = 200 is (row-sharded output).
_SCRIPT = textwrap.dedent("""
    import functools, json
    import jax, numpy as np
    from jaxlab import geodesic, hubness, parallel

    mesh = parallel.make_mesh()
    out = {"devices": jax.device_count(), "mesh": dict(mesh.shape)}

    def spec(a):
        s = a.sharding
        return "replicated" if s.is_fully_replicated else str(s.spec)

    def both(fn, x, **kw):
        one = jax.jit(functools.partial(fn, **kw))(x)
        return one, jax.jit(functools.partial(fn, mesh=mesh, **kw))(x)

    # N = 203: not divisible by 8 (padded rows, replicated outputs).
    x = np.random.default_rng(203).standard_normal((203, 16)).astype(np.float32)
    block = -(-203 // 8)  # 1-device blocks get the per-device shape
    for include_self in (False, True):
        one, many = both(hubness.k_occurrence, x, k=5, include_self=include_self,
                         block_size=block)
        out[f"kocc_{include_self}"] = {"equal": bool(np.array_equal(one, many)),
                                       "sum": int(np.sum(many)), "spec": spec(many)}
    g1, g8 = both(hubness.knn, x, k=5, block_size=block)
    out["knn_203"] = {
        "indices_equal": bool(np.array_equal(g1.indices, g8.indices)),
        "max_rel_dist_diff": float(np.max(np.abs(
            np.asarray(g1.distances) - np.asarray(g8.distances))
            / np.asarray(g1.distances))),
        "spec": [spec(g8.distances), spec(g8.indices)]}
    a = geodesic.knn_graph(x, 4, block_size=block)  # cosine
    b = geodesic.knn_graph(x, 4, block_size=block, mesh=mesh)
    with parallel.use_mesh(mesh):  # the default mesh is picked up
        c = geodesic.knn_graph(x, 4, block_size=block)
    out["graph_203"] = {
        "equal": bool((a.matrix != b.matrix).nnz == 0
                      and np.array_equal(a.neighbors, b.neighbors)
                      and np.array_equal(a.distances, b.distances)),
        "default_mesh_equal": bool((a.matrix != c.matrix).nnz == 0),
        "nnz": int(b.matrix.nnz)}

    # N = 200: divisible by 8 (row-sharded outputs).
    x = np.random.default_rng(200).standard_normal((200, 16)).astype(np.float32)
    (i1, d1), (i8, d8) = both(geodesic.knn, x, k=5, metric="euclidean",
                              block_size=25)
    out["geo_knn_200"] = {"indices_equal": bool(np.array_equal(i1, i8)),
                          "dist_equal": bool(np.array_equal(d1, d8)),
                          "spec": [spec(i8), spec(d8)]}
    g8 = jax.jit(functools.partial(hubness.knn, k=5, block_size=25, mesh=mesh))(x)
    out["knn_200_spec"] = [spec(g8.distances), spec(g8.indices)]
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_devices():
    return run_json(_SCRIPT, devices=8)


def test_k_occurrence_on_8_devices_equals_one_device(eight_devices):
    out = eight_devices
    assert out["devices"] == 8 and out["mesh"] == {"data": 8}
    for include_self in (False, True):
        r = out[f"kocc_{include_self}"]
        assert r["equal"], include_self
        assert r["sum"] == 203 * 5  # Σ N_k = N·k in both conventions
        assert r["spec"] == "replicated"  # documented: counts replicated


def test_knn_on_8_devices_same_neighbours_and_documented_sharding(eight_devices):
    out = eight_devices
    r = out["knn_203"]
    assert r["indices_equal"]
    # The 1-device search ranks transposed tiles (each pair once), the
    # sharded one direct tiles, so d² = ‖x‖² + ‖y‖² − 2x·y may round
    # differently: |δ(d²)| <= D·eps32·(‖x‖² + ‖y‖² + 2|x·y|)
    # <= 16 · 1.2e-7 · 4 · 40 ≈ 3e-4 (‖x‖² < 40 here), and every listed
    # neighbour has d² > 2, so |δd| / d = |δ(d²)| / (2d²) < 1e-4.
    assert r["max_rel_dist_diff"] < 1e-4
    assert r["spec"] == ["replicated", "replicated"]  # N % 8 != 0
    assert out["knn_200_spec"] == [str(P("data"))] * 2  # N % 8 == 0


def test_geodesic_knn_and_graph_on_8_devices_are_bit_identical(eight_devices):
    out = eight_devices
    g = out["graph_203"]
    assert g["equal"] and g["default_mesh_equal"] and g["nnz"] > 0
    r = out["geo_knn_200"]
    assert r["indices_equal"] and r["dist_equal"]
    assert r["spec"] == [str(P("data"))] * 2


def _one_device_mesh():
    return parallel.make_mesh(1)


def test_one_device_mesh_path_matches_plain_path():
    # Small-integer points: squared distances are exact in float32 and full of
    # ties, so equal results need the same lower-index tie-break on both paths.
    ties = np.random.default_rng(5).integers(0, 3, (45, 3)).astype(np.float32)
    mesh = _one_device_mesh()
    kw = {"k": 6, "include_self": True, "block_size": 8}
    plain = jax.jit(functools.partial(hubness.k_occurrence, **kw))(ties)
    sharded = jax.jit(functools.partial(hubness.k_occurrence, mesh=mesh, **kw))(ties)
    np.testing.assert_array_equal(sharded, plain)
    assert int(sharded.sum()) == 45 * 6
    kw = {"k": 6, "block_size": 8}
    g1 = jax.jit(functools.partial(hubness.knn, **kw))(ties)
    g2 = jax.jit(functools.partial(hubness.knn, mesh=mesh, **kw))(ties)
    np.testing.assert_array_equal(g2.indices, g1.indices)
    np.testing.assert_array_equal(g2.distances, g1.distances)  # exact: integers
    x = np.random.default_rng(3).standard_normal((61, 8)).astype(np.float32)
    i1, d1 = jax.jit(functools.partial(geodesic.knn, k=4, block_size=16))(x)
    i2, d2 = jax.jit(functools.partial(geodesic.knn, k=4, block_size=16,
                                       mesh=mesh))(x)
    np.testing.assert_array_equal(i2, i1)
    np.testing.assert_array_equal(d2, d1)


def test_bad_mesh_raises():
    x = np.random.default_rng(4).standard_normal((20, 3)).astype(np.float32)
    other = Mesh(np.asarray(jax.devices()[:1]), ("model",))
    for fn in (hubness.k_occurrence, hubness.knn, geodesic.knn):
        with pytest.raises(ValueError, match="'data' axis"):
            fn(x, 3, mesh=other)
        with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh"):
            fn(x, 3, mesh="data=8")
    with pytest.raises(ValueError, match="'data' axis"):
        geodesic.knn_graph(x, 3, mesh=other)
