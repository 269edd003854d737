"""Tests for jaxlab.geodesic: kNN graphs, geodesic distances, scores, summaries."""

import warnings

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse import csgraph

from jaxlab import geodesic

KNN = jax.jit(geodesic.knn, static_argnames=("k", "metric", "block_size"))
SCORES = jax.jit(
    geodesic.geodesic_scores,
    static_argnames=("k", "metric", "symmetric", "center_mode", "method", "block_size"),
)
PAIRWISE = jax.jit(geodesic.pairwise_distances, static_argnames=("metric",))
DENSE = jax.jit(geodesic.dense_knn_weights, static_argnames=("symmetric",))
MIN_PLUS = jax.jit(geodesic.min_plus_distances, static_argnames=("num_iters",))
FLOYD = jax.jit(geodesic.floyd_warshall)


def _points(seed, n, d):
    return np.asarray(jr.normal(jr.key(seed), (n, d)))


def _np_distances(x, metric):
    """Independent NumPy reference: exact differences, arccos for the angle."""
    if metric == "euclidean":
        return np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.arccos(np.clip(u @ u.T, -1.0, 1.0))
    np.fill_diagonal(d, 0.0)  # arccos(1 − ε) ≈ √(2ε) would be the reference's error
    return d


def _all_pairs(graph):
    return csgraph.dijkstra(graph.matrix, directed=False)


# --------------------------------------------------------------------------- knn


def test_pairwise_distances_known_values(x64):
    x = jnp.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    chex.assert_trees_all_close(
        PAIRWISE(x, x, metric="euclidean"),
        jnp.array([[0.0, 3.0, 4.0], [3.0, 0.0, 5.0], [4.0, 5.0, 0.0]]),
        atol=1e-7,
    )
    y = jnp.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    d = PAIRWISE(y[:1], y, metric="cosine")
    chex.assert_trees_all_close(
        d, jnp.array([[0.0, np.pi / 2, np.pi, np.pi / 4]]), atol=1e-7
    )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_matches_brute_force(metric):
    x = _points(0, 203, 7)
    idx, dist = KNN(jnp.asarray(x), 6, metric=metric, block_size=50)
    ref = _np_distances(x.astype(np.float64), metric)
    np.fill_diagonal(ref, np.inf)
    ref_idx = np.argsort(ref, axis=1)[:, :6]
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)
    np.testing.assert_allclose(
        np.asarray(dist), np.take_along_axis(ref, ref_idx, 1), rtol=1e-5, atol=1e-6
    )
    # The tiling is an implementation detail: one block gives the same answer.
    idx1, _ = KNN(jnp.asarray(x), 6, metric=metric, block_size=1000)
    np.testing.assert_array_equal(np.asarray(idx1), ref_idx)


@pytest.mark.parametrize("symmetric", ["union", "mutual"])
def test_knn_graph_edges(symmetric):
    x = _points(1, 60, 4)
    k = 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = geodesic.knn_graph(x, k, metric="euclidean", symmetric=symmetric)
    ref = _np_distances(x.astype(np.float64), "euclidean")
    np.fill_diagonal(ref, np.inf)
    directed = np.zeros_like(ref, dtype=bool)
    np.put_along_axis(directed, np.argsort(ref, axis=1)[:, :k], True, axis=1)
    want = directed | directed.T if symmetric == "union" else directed & directed.T
    got = g.matrix.toarray() > 0
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(g.matrix.toarray()[want], ref[want], rtol=1e-5)
    assert g.report["num_edges"] == want.sum() // 2
    assert g.k == g.k_requested == k


# ------------------------------------------------------------- metric properties


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_geodesic_metric_properties(x64, metric):
    x = _points(2, 60, 5)
    g = geodesic.knn_graph(x, 4, metric=metric, ensure_connected=True)
    d = _all_pairs(g)
    base = _np_distances(x, metric)
    tol = 1e-10
    assert np.all(np.isfinite(d))
    assert np.all(d >= base - tol * (1 + base))  # d_geo ≥ base distance
    np.testing.assert_allclose(d, d.T, rtol=1e-13)  # symmetric (summation order)
    tri = d[:, :, None] + d[None, :, :]  # tri[i, m, j] = d_im + d_mj
    assert np.all(d[:, None, :] <= tri + tol * (1 + tri))  # triangle inequality
    np.testing.assert_array_equal(np.diag(d), 0.0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_complete_graph_equals_base_metric(x64, metric):
    x = _points(3, 25, 3)
    g = geodesic.knn_graph(x, 24, metric=metric)
    d = _all_pairs(g)
    np.testing.assert_allclose(d, _np_distances(x, metric), rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(
        PAIRWISE(jnp.asarray(x), jnp.asarray(x), metric=metric),
        jnp.asarray(d),
        rtol=1e-10,
        atol=1e-7,  # sqrt of the float64 rounding of ‖x‖² + ‖y‖² − 2x·y at i = j
    )


def test_equality_on_collinear_data(x64):
    t = np.sort(np.asarray(jr.uniform(jr.key(4), (30,)))) * 10
    direction = np.array([1.0, -2.0, 0.5]) / np.sqrt(5.25)
    g = geodesic.knn_graph(t[:, None] * direction[None, :], 1, metric="euclidean",
                           ensure_connected=True)
    np.testing.assert_allclose(
        _all_pairs(g), np.abs(t[:, None] - t[None, :]), rtol=1e-12, atol=1e-12
    )
    # On a great-circle arc the angle is additive: d_geo = |φ_i − φ_j| exactly.
    phi = np.sort(np.asarray(jr.uniform(jr.key(5), (30,)))) * 3.0
    arc = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], axis=1)
    g = geodesic.knn_graph(arc, 2, metric="cosine", ensure_connected=True)
    np.testing.assert_allclose(
        _all_pairs(g), np.abs(phi[:, None] - phi[None, :]), rtol=1e-10, atol=1e-12
    )


# ---------------------------------------------------------- known manifolds


def _circle_error(n):
    # Jittered grid: gaps in [h/2, 3h/2] with h = 2π/n, so at most two points on
    # one side are closer than the next point on the other: k = 4 joins them.
    u = np.asarray(jr.uniform(jr.key(n), (n,)))
    phi = 2 * np.pi * (np.arange(n) + 0.5 * u) / n
    x = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    g = geodesic.knn_graph(x, 4, metric="euclidean")
    diff = np.abs(phi[:, None] - phi[None, :])
    arc = np.minimum(diff, 2 * np.pi - diff)
    # Every edge joins points at most r apart along the circle; a chord of arc a
    # is 2 sin(a/2) ≥ a (1 − a²/24), so any path is ≥ arc (1 − r²/24).
    coo = g.matrix.tocoo()
    r = arc[coo.row, coo.col].max()
    assert r < np.pi / 2
    # Consecutive points are joined, so d_geo ≤ Σ chords of the gaps ≤ arc.
    order = np.argsort(phi)
    assert np.all(g.matrix[order, np.roll(order, -1)] > 0)
    d = geodesic.geodesic_distances(g, np.arange(n))
    off = ~np.eye(n, dtype=bool)
    assert np.all(d <= arc * (1 + 1e-12) + 1e-12)
    assert np.all(d >= arc * (1 - r * r / 24) - 1e-12)
    return np.max(1 - d[off] / arc[off]), r


def test_circle_geodesic_converges_to_arc_length(x64):
    err_small, r_small = _circle_error(100)
    err_large, r_large = _circle_error(400)
    assert err_large < err_small
    assert err_small <= r_small**2 / 24 and err_large <= r_large**2 / 24


def _swiss_roll_error(n, k):
    x, uv = geodesic.swiss_roll(jr.key(7), n)
    uv = np.asarray(uv)
    g = geodesic.knn_graph(x, k, metric="euclidean", ensure_connected=True)
    src = np.arange(20)
    d = geodesic.geodesic_distances(g, src)
    true = np.linalg.norm(uv[src][:, None, :] - uv[None, :, :], axis=-1)
    # Lower bound (no derivation-free tolerance): the spiral's curvature is at
    # most κ = (t² + 2)/(1 + t²)^{3/2} at t = 1.5π, and a curve of curvature ≤ κ
    # has chord ≥ a (1 − κ² a²/24) over arc a (Schur), so d_geo ≥ true (1 − κ²r²/24)
    # with r the longest intrinsic edge.
    t0 = 1.5 * np.pi
    kappa = (t0**2 + 2) / (1 + t0**2) ** 1.5
    coo = g.matrix.tocoo()
    r = np.linalg.norm(uv[coo.row] - uv[coo.col], axis=1).max()
    assert kappa * r < np.pi  # no edge short-circuits two layers of the roll
    assert np.all(d >= true * (1 - (kappa * r) ** 2 / 24) - 1e-9)
    far = true > 5.0
    return np.mean(np.abs(d[far] - true[far]) / true[far])


def test_swiss_roll_geodesic_converges(x64):
    # Isomap consistency needs k to grow with N (with fixed k the zig-zag
    # stretch of a 2-D kNN graph does not vanish).
    err_small = _swiss_roll_error(500, 6)
    err_large = _swiss_roll_error(2000, 12)
    assert err_large < err_small


# ---------------------------------------------------------- implementations agree


@pytest.mark.parametrize("symmetric", ["union", "mutual"])
def test_min_plus_and_floyd_warshall_equal_dijkstra(x64, symmetric):
    x = jnp.asarray(_points(8, 70, 3))
    idx, dist = KNN(x, 3, metric="euclidean")
    w = DENSE(idx, dist, symmetric=symmetric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = geodesic.knn_graph(x, 3, metric="euclidean", symmetric=symmetric)
    ref = _all_pairs(g)
    np.testing.assert_allclose(np.asarray(FLOYD(w)), ref, rtol=1e-12)
    src = jnp.array([0, 5, 69])
    np.testing.assert_allclose(
        np.asarray(MIN_PLUS(w, src)), ref[[0, 5, 69]], rtol=1e-12
    )
    np.testing.assert_allclose(
        geodesic.geodesic_distances(g, [0, 5, 69], method="min_plus"),
        ref[[0, 5, 69]],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        geodesic.geodesic_distances(g, [0, 5, 69], nearest=True),
        ref[[0, 5, 69]].min(axis=0),
        rtol=1e-12,
    )


def test_min_plus_float32_and_fixed_iterations():
    x = jnp.asarray(_points(9, 50, 3))
    idx, dist = KNN(x, 4, metric="euclidean")
    w = DENSE(idx, dist)
    g = geodesic.knn_graph(x, 4, metric="euclidean", ensure_connected=True)
    ref = geodesic.geodesic_distances(g, 0)
    np.testing.assert_allclose(np.asarray(MIN_PLUS(w, jnp.array([0]))[0]), ref,
                               rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(MIN_PLUS(w, jnp.array([0]), num_iters=49)[0]), ref, rtol=1e-5
    )


def test_shortest_path_gradient_is_path_indicator(x64):
    # Path graph 0-1-2-3 plus a long chord 0-3: d(0, 3) = w01 + w12 + w23.
    inf = jnp.inf
    w = jnp.array(
        [[0.0, 1.0, inf, 5.0], [1.0, 0.0, 1.0, inf], [inf, 1.0, 0.0, 1.0],
         [5.0, inf, 1.0, 0.0]]
    )
    grad_fw = jax.grad(lambda v: FLOYD(v)[0, 3])(w)
    grad_mp = jax.grad(lambda v: MIN_PLUS(v, jnp.array([0]), num_iters=3)[0, 3])(w)
    for grad in (grad_fw, grad_mp):
        on_path = np.asarray(grad[0, 1] + grad[1, 0] + grad[1, 2] + grad[2, 1]
                             + grad[2, 3] + grad[3, 2])
        np.testing.assert_allclose(on_path, 3.0)
        assert float(grad[0, 3] + grad[3, 0]) == 0.0


def test_disconnected_graph(x64):
    x = np.concatenate([_points(10, 20, 3), _points(11, 15, 3) + 100.0])
    with pytest.warns(RuntimeWarning, match="2 connected components"):
        g = geodesic.knn_graph(x, 3, metric="euclidean")
    assert not g.connected and g.n_components == 2
    assert g.report["largest_component_fraction"] == 20 / 35
    d = geodesic.geodesic_distances(g, 0)
    assert np.all(np.isfinite(d[:20])) and np.all(np.isinf(d[20:]))
    idx, dist = KNN(jnp.asarray(x), 3, metric="euclidean")
    d_mp = np.asarray(MIN_PLUS(DENSE(idx, dist), jnp.array([0]))[0])
    np.testing.assert_allclose(d_mp, d, rtol=1e-12)
    chex.assert_trees_all_close(FLOYD(DENSE(idx, dist))[0], jnp.asarray(d))
    # Asked to, knn_graph raises k until the graph is connected.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        g2 = geodesic.knn_graph(x, 3, metric="euclidean", ensure_connected=True)
    assert g2.connected and g2.k > 3 and g2.k_requested == 3
    assert np.all(np.isfinite(geodesic.geodesic_distances(g2, 0)))
    # A centre inside the first cluster cannot reach the second: scores are 0.
    with pytest.warns(RuntimeWarning, match="unreachable from the centre"):
        s = np.asarray(SCORES(jnp.asarray(x), jnp.asarray(x[0]), k=3,
                              metric="euclidean"))
    assert np.all(s[:20] > 0) and np.all(s[20:] == 0)
    s_mp = SCORES(jnp.asarray(x), jnp.asarray(x[0]), k=3, metric="euclidean",
                  method="min_plus")
    np.testing.assert_allclose(np.asarray(s_mp), s, rtol=1e-12)


# ---------------------------------------------------------------- scores


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_geodesic_scores_match_graph_with_centre(x64, metric):
    x = _points(12, 40, 4)
    c = x.mean(axis=0)
    s_d = np.asarray(SCORES(jnp.asarray(x), k=5, metric=metric))
    s_m = np.asarray(SCORES(jnp.asarray(x), k=5, metric=metric, method="min_plus"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = geodesic.knn_graph(np.concatenate([x, c[None]]), 5, metric=metric)
    want = 1.0 / geodesic.geodesic_distances(g, 40)[:40]
    np.testing.assert_allclose(s_d, want, rtol=1e-12)
    np.testing.assert_allclose(s_m, want, rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(SCORES(jnp.asarray(x), jnp.asarray(c), k=5, metric=metric)),
        want, rtol=1e-12)


def test_geodesic_scores_on_complete_graph_are_base_scores(x64):
    x = jnp.asarray(_points(13, 30, 4))
    c = jnp.array([0.3, -0.2, 0.1, 0.5])
    s = SCORES(x, c, k=30, metric="euclidean")
    want = 1.0 / np.linalg.norm(np.asarray(x) - np.asarray(c)[None], axis=1)
    np.testing.assert_allclose(np.asarray(s), want, rtol=1e-10)
    chex.assert_trees_all_close(jax.jit(geodesic.euclidean_scores)(x, c), s,
                                rtol=1e-10)
    s_cos = SCORES(x, c, k=30, metric="cosine")
    cos = jax.jit(geodesic.cosine_scores)(x, c)
    np.testing.assert_allclose(np.asarray(s_cos), 1.0 / np.arccos(np.asarray(cos)),
                               rtol=1e-10)
    u = np.asarray(x) / np.linalg.norm(np.asarray(x), axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(cos), u @ (np.asarray(c) / np.linalg.norm(c)),
                               rtol=1e-12)


def test_geodesic_scores_vmap():
    x = jr.normal(jr.key(14), (3, 25, 4))
    s = jax.vmap(lambda a: geodesic.geodesic_scores(a, k=4))(x)
    s0 = SCORES(x[0], k=4)
    chex.assert_shape(s, (3, 25))
    chex.assert_trees_all_close(s[0], s0)


def test_geodesic_beats_cosine_on_saturating_embedding(x64):
    # Sphere points seen through a short-range (RBF random-feature) embedding:
    # cosine saturates for far pairs, the kNN geodesic recovers the ranking.
    key_s, key_f = jr.split(jr.key(15))
    p = geodesic.sphere(key_s, 400)
    e = geodesic.random_features(key_f, p, num_features=384, scale=4.0)
    centre = p[0]
    true = np.arccos(np.clip(np.asarray(p) @ np.asarray(centre), -1, 1))[1:]
    s_geo = np.asarray(SCORES(e[1:], e[0], k=10, metric="cosine"))
    s_cos = np.asarray(jax.jit(geodesic.cosine_scores)(e[1:], e[0]))

    def spearman(a, b):
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        return np.corrcoef(ra, rb)[0, 1]

    rho_geo, rho_cos = spearman(-s_geo, true), spearman(-s_cos, true)
    assert rho_geo > rho_cos
    assert rho_geo > 0.9


def test_kl_scores_closed_form(x64):
    p = jnp.array([[0.5, 0.5], [1.0, 0.0]])
    kl = np.array([0.5 * np.log(4 / 3), np.log(4 / 3)])  # centre (0.75, 0.25)
    np.testing.assert_allclose(np.asarray(jax.jit(geodesic.kl_scores)(p)), 1 / kl,
                               rtol=1e-12)
    # Heads add up: two identical heads double KL.
    ph = jnp.stack([p, p], axis=1)
    np.testing.assert_allclose(np.asarray(jax.jit(geodesic.kl_scores)(ph)),
                               1 / (2 * kl), rtol=1e-12)
    q = jnp.array([0.5, 0.5])
    np.testing.assert_allclose(
        np.asarray(jax.jit(geodesic.kl_scores)(p, q))[1], 1 / np.log(2), rtol=1e-12)


def test_mean_center_and_summary_metrics(x64):
    e = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    chex.assert_trees_all_close(
        jax.jit(geodesic.mean_center)(e), jnp.array([0.25, 0.5])
    )
    sel = jnp.array([True, True, False, False])
    y = jnp.array([1, 0, 1, 1])
    m = jax.jit(geodesic.summary_metrics)(e, sel, y)
    h = 1 / np.sqrt(2)
    # Best matches: 1, 1, max(h, h), max(-1, 0) -> coverage (2 + h + 0) / 4.
    np.testing.assert_allclose(float(m["coverage"]), (2 + h) / 4, rtol=1e-12)
    np.testing.assert_allclose(float(m["redundancy"]), 0.0, atol=1e-15)
    np.testing.assert_allclose(float(m["label_share"]), 0.5)
    np.testing.assert_allclose(float(m["label_share_all"]), 0.75)
    np.testing.assert_allclose(float(m["sentiment_error"]), 0.25)
    m2 = jax.jit(geodesic.summary_metrics)(e, jnp.array([True, False, True, False]))
    np.testing.assert_allclose(float(m2["redundancy"]), h, rtol=1e-12)
    assert int(m2["num_selected"]) == 2
    m0 = jax.jit(geodesic.summary_metrics)(e, jnp.zeros(4, bool), y)
    assert np.isnan(float(m0["coverage"])) and int(m0["num_selected"]) == 0
    assert np.isnan(float(m0["sentiment_error"]))


# ---------------------------------------------------------------- summaries


def test_summarize_budget_redundancy_and_order():
    sentences = [
        "the acting is superb and moving",  # 0: most central
        "the acting is superb and moving",  # 1: duplicate of 0 -> redundant
        "a slow plot drags the second half down",  # 2
        "great",  # 3: one word, below min_words
        "an overlong sprawling and very tiresome epic of many words indeed",  # 4
        "music and photography are lovely",  # 5
    ]
    c = jnp.array([1.0, 0.0])
    angles = jnp.array([0.0, 0.01, 0.3, 0.05, 0.2, 0.6])
    e = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    s = geodesic.summarize(sentences, e, budget_words=16, method="cosine", center=c)
    # Ranked 0,1,3,4,2,5: 1 redundant, 3 too short, 4 (11 words) over budget.
    assert list(s.indices) == [0, 2]
    assert s.sentences == [sentences[0], sentences[2]]
    assert s.num_words == 14  # within the 16-word budget
    np.testing.assert_allclose(s.scores, np.cos([0.0, 0.3]), rtol=1e-6)
    # Without the filter the duplicate comes second.
    s1 = geodesic.summarize(sentences, e, budget_words=16, method="cosine",
                            center=c, redundancy=1.0, similarity="embedding")
    assert list(s1.indices[:2]) == [0, 1]
    # Budget large enough for everything except the one-word sentence.
    s2 = geodesic.summarize(sentences, e, budget_words=1000, method="euclidean",
                            center=c)
    assert sorted(s2.indices) == [0, 2, 4, 5]


def test_summarize_methods():
    x = _points(16, 30, 6)
    sentences = [f"review number w{i} says things" for i in range(30)]
    for method in ("geodesic", "cosine", "euclidean"):
        s = geodesic.summarize(sentences, x, budget_words=20, method=method, k=5)
        assert s.num_words == 20 and len(s.indices) == 4
        assert np.all(np.diff(s.scores) <= 0)
    s_geo = geodesic.summarize(sentences, x, budget_words=20, k=5)
    want = np.asarray(SCORES(jnp.asarray(x), k=5))
    np.testing.assert_array_equal(s_geo.indices, np.argsort(-want)[:4])
    np.testing.assert_allclose(s_geo.all_scores, want, rtol=1e-6)
    r1 = geodesic.summarize(sentences, x, method="random", key=jr.key(0))
    r2 = geodesic.summarize(sentences, x, method="random", key=jr.key(0))
    np.testing.assert_array_equal(r1.indices, r2.indices)
    p = np.asarray(jax.nn.softmax(jnp.asarray(x), axis=1))
    s_kl = geodesic.summarize(sentences, p, budget_words=10, method="kl")
    want_kl = np.asarray(jax.jit(geodesic.kl_scores)(jnp.asarray(p)))
    assert s_kl.indices[0] == np.argmax(want_kl)


# ---------------------------------------------------------------- generators


def test_swiss_roll_intrinsic_coordinates(x64):
    x, uv = jax.jit(geodesic.swiss_roll, static_argnames="n")(jr.key(17), 50)
    x, uv = np.asarray(x), np.asarray(uv)
    t = np.hypot(x[:, 0], x[:, 2])
    np.testing.assert_allclose(x[:, 1], uv[:, 1])
    # Arc length from 1.5π by the trapezoid rule on the chord polygon.
    for ti, si in zip(t[:5], uv[:5, 0]):
        grid = np.linspace(1.5 * np.pi, ti, 20001)
        pts = np.stack([grid * np.cos(grid), grid * np.sin(grid)], axis=1)
        length = np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1))
        s0 = 0.5 * (1.5 * np.pi * np.sqrt(1 + (1.5 * np.pi) ** 2)
                    + np.arcsinh(1.5 * np.pi))
        np.testing.assert_allclose(si - s0, length, rtol=1e-6)


def test_sphere_and_random_features(x64):
    p = jax.jit(geodesic.sphere, static_argnames=("n", "dim"))(jr.key(18), 4000, dim=3)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p), axis=1), 1.0, rtol=1e-12)
    # Uniform on S²: each coordinate has mean 0 and variance 1/3.
    assert np.all(np.abs(np.asarray(p).mean(axis=0)) < 4 * np.sqrt(1 / 3 / 4000))
    pts = jnp.array([[0.0, 0.0], [0.1, 0.0], [0.3, 0.2], [1.0, 1.0]])
    f = jax.jit(geodesic.random_features, static_argnames=("num_features", "scale"))(
        jr.key(19), pts, num_features=16384, scale=2.0)
    gram = np.asarray(f @ f.T)
    sq = np.sum((np.asarray(pts)[:, None] - np.asarray(pts)[None]) ** 2, axis=-1)
    # Each feature product has variance ≤ 3/2, so 4 standard errors = 4√(1.5/F).
    np.testing.assert_array_less(np.abs(gram - np.exp(-4.0 * sq / 2)),
                                 4 * np.sqrt(1.5 / 16384))


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs():
    x = jnp.asarray(_points(20, 10, 3))
    with pytest.raises(ValueError, match="k must satisfy"):
        geodesic.knn(x, 10)  # k ≥ N
    with pytest.raises(ValueError, match="k must satisfy"):
        geodesic.knn_graph(x, 0)
    with pytest.raises(ValueError, match="k must be a Python int"):
        geodesic.knn(x, 2.5)
    with pytest.raises(ValueError, match="k must satisfy"):
        geodesic.geodesic_scores(x, k=11)
    with pytest.raises(ValueError, match="at least 2 point"):
        geodesic.knn_graph(jnp.zeros((0, 3)), 1)
    with pytest.raises(ValueError, match="at least 1 point"):
        geodesic.geodesic_scores(jnp.zeros((0, 3)), k=1)
    with pytest.raises(ValueError, match=r"must be \[N, D\]"):
        geodesic.knn(jnp.zeros(5), 1)
    with pytest.raises(ValueError, match="metric must be one of"):
        geodesic.knn(x, 2, metric="manhattan")
    with pytest.raises(ValueError, match="symmetric must be one of"):
        geodesic.knn_graph(x, 2, symmetric="max")
    with pytest.raises(ValueError, match="block_size must be"):
        geodesic.knn(x, 2, block_size=0)
    g = geodesic.knn_graph(x, 3, ensure_connected=True)
    with pytest.raises(ValueError, match="sources must lie in"):
        geodesic.geodesic_distances(g, 10)
    with pytest.raises(ValueError, match="non-empty sequence"):
        geodesic.geodesic_distances(g, [])
    with pytest.raises(ValueError, match="method must be one of"):
        geodesic.geodesic_distances(g, 0, method="bfs")
    with pytest.raises(ValueError, match="graph must be"):
        geodesic.geodesic_distances(np.zeros((3, 3)), 0)
    with pytest.raises(ValueError, match="square"):
        geodesic.geodesic_distances(sp.csr_array(np.ones((2, 3))), 0)
    sentences = [f"sentence number {i}" for i in range(10)]
    with pytest.raises(ValueError, match="same length"):
        geodesic.summarize(sentences[:9], x)
    with pytest.raises(ValueError, match="at least 1 point"):
        geodesic.summarize([], jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match="budget_words"):
        geodesic.summarize(sentences, x, budget_words=0)
    with pytest.raises(ValueError, match="redundancy"):
        geodesic.summarize(sentences, x, redundancy=1.5)
    with pytest.raises(ValueError, match="needs key"):
        geodesic.summarize(sentences, x, method="random")
    with pytest.raises(ValueError, match="method must be one of"):
        geodesic.summarize(sentences, x, method="lexrank")
    with pytest.raises(ValueError, match="k must satisfy"):
        geodesic.summarize(sentences, x, k=11)
    with pytest.raises(ValueError, match="one string"):
        geodesic.summarize("one sentence", x[:1])
    with pytest.raises(ValueError, match="num_iters"):
        geodesic.min_plus_distances(jnp.zeros((3, 3)), jnp.array([0]), num_iters=0)
    with pytest.raises(ValueError, match="eps"):
        geodesic.kl_scores(jnp.ones((2, 2)) / 2, eps=0.0)
    with pytest.raises(ValueError, match="noise"):
        geodesic.swiss_roll(jr.key(0), 10, noise=-1.0)
    with pytest.raises(ValueError, match="scale"):
        geodesic.random_features(jr.key(0), x, scale=0.0)
    with pytest.raises(AssertionError):
        geodesic.geodesic_scores(x, jnp.zeros(4), k=2)  # centre of the wrong size


@pytest.mark.parametrize("symmetric", ["union", "mutual"])
def test_query_mode_matches_explicit_graph(x64, symmetric):
    x = _points(21, 40, 4)
    c = np.array([0.2, -0.1, 0.4, 0.3])
    k = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = geodesic.knn_graph(x, k, metric="cosine", symmetric=symmetric)
        s_d = np.asarray(SCORES(jnp.asarray(x), jnp.asarray(c), k=k,
                                symmetric=symmetric, center_mode="query"))
    s_m = np.asarray(SCORES(jnp.asarray(x), jnp.asarray(c), k=k, symmetric=symmetric,
                            center_mode="query", method="min_plus"))
    # The same graph built by hand: the points' graph plus c -> its k nearest.
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    to_c = np.arccos(np.clip(u @ (c / np.linalg.norm(c)), -1, 1))
    near = np.argsort(to_c)[:k]
    m = sp.lil_array((41, 41))
    m[:40, :40] = g.matrix.toarray()
    m[40, near] = to_c[near]
    m[near, 40] = to_c[near]
    want = 1.0 / csgraph.dijkstra(m.tocsr(), directed=False, indices=40)[:40]
    np.testing.assert_allclose(s_d, want, rtol=1e-10)
    np.testing.assert_allclose(s_m, want, rtol=1e-10)


@pytest.mark.parametrize("center_mode", ["node", "query"])
def test_top_k_geodesic_equals_top_k_base(x64, center_mode):
    # A direct edge is a shortest path for a metric, and every non-neighbour of c
    # is farther than its k-th neighbour: the k best scores rank as cosine does.
    x = jnp.asarray(_points(22, 50, 6))
    k = 6
    s = np.asarray(SCORES(x, k=k, center_mode=center_mode))
    cos = np.asarray(jax.jit(geodesic.cosine_scores)(x))
    np.testing.assert_array_equal(np.argsort(-s)[:k], np.argsort(-cos)[:k])
    np.testing.assert_allclose(np.sort(1 / s)[:k], np.sort(np.arccos(cos))[:k],
                               rtol=1e-10)


def test_summarize_never_picks_unreachable_sentences():
    x = np.concatenate([_points(23, 8, 3), _points(24, 8, 3) + 50.0])
    sentences = [f"snippet w{i} about the film" for i in range(16)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = geodesic.summarize(sentences, x, budget_words=1000, k=2,
                               metric="euclidean", center=x[0], center_mode="query")
    assert np.all(s.all_scores[8:] == 0) and np.all(s.all_scores[:8] > 0)
    assert sorted(s.indices) == list(range(8))
