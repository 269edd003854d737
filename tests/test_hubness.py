"""Tests for jaxlab.hubness: exact k-occurrence, statistics, sampling, reduction.

References are independent: scikit-learn's brute-force neighbours, NumPy full
distance matrices with a stable argsort, scipy's skewness and log-gamma, and the
known values of reference/hubness.md.
"""

import functools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.special
import scipy.stats
from sklearn.neighbors import NearestNeighbors

from jaxlab import hubness

_STATIC = ("k", "include_self", "metric", "block_size", "check_finite")
KNN = jax.jit(hubness.knn, static_argnames=_STATIC)
K_OCC = jax.jit(hubness.k_occurrence, static_argnames=_STATIC)
GRAPH_K_OCC = jax.jit(hubness.graph_k_occurrence)
SKEW = jax.jit(hubness.skewness)
LOG_VOLUME = jax.jit(functools.partial(hubness.ball_cube_volume_ratio, log=True))

# ----------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------


def _np_sqdist(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _np_knn_from_matrix(d, k, include_self=False):
    """k smallest per row by a stable sort: ties go to the lower index."""
    d = np.array(d, np.float64)
    n = len(d)
    d[np.arange(n), np.arange(n)] = -np.inf if include_self else np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _np_cosdist(x):
    x = np.asarray(x, np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return 1.0 - u @ u.T


def _gauss(seed, n, d):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# ----------------------------------------------------------------------------
# k-occurrence
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "include_self,metric", [(False, "euclidean"), (True, "cosine")]
)
def test_sum_is_n_times_k(include_self, metric):
    x = _gauss(0, 257, 24)
    counts = K_OCC(x, k=6, include_self=include_self, metric=metric, block_size=50)
    counts = np.asarray(counts)
    assert counts.dtype == np.int32 and counts.shape == (257,)
    assert counts.sum() == 257 * 6
    if include_self:
        assert counts.min() >= 1


def test_matches_sklearn_self_excluded():
    x = _gauss(1, 400, 16)
    graph = KNN(x, k=5, block_size=128)
    nn = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(x)
    dist, ind = nn.kneighbors()
    np.testing.assert_array_equal(np.asarray(graph.indices), ind)
    # float32 x² + y² − 2xy: absolute error ~ eps·‖x‖² on squared distances.
    np.testing.assert_allclose(np.asarray(graph.distances), dist, rtol=1e-4, atol=1e-4)
    counts = np.asarray(GRAPH_K_OCC(graph.indices))
    np.testing.assert_array_equal(counts, np.bincount(ind.ravel(), minlength=400))


def test_matches_sklearn_self_included_as_official_notebook():
    # The Colab: NearestNeighbors(k).fit(W).kneighbors_graph(W).sum(axis=0).
    x = _gauss(2, 400, 16)
    counts = K_OCC(x, k=5, include_self=True, block_size=96)
    nn = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(x)
    ref = np.asarray(nn.kneighbors_graph(x).sum(axis=0)).ravel().astype(int)
    np.testing.assert_array_equal(np.asarray(counts), ref)


def test_matches_sklearn_cosine():
    x = _gauss(3, 300, 12)
    graph = KNN(x, k=4, metric="cosine", block_size=64)
    nn = NearestNeighbors(n_neighbors=4, algorithm="brute", metric="cosine").fit(x)
    dist, ind = nn.kneighbors()
    np.testing.assert_array_equal(np.asarray(graph.indices), ind)
    np.testing.assert_allclose(np.asarray(graph.distances), dist, atol=1e-5)


@pytest.mark.parametrize(
    "include_self,block_size", [(False, 200), (True, 16), (False, 23)]
)
def test_ties_broken_by_lower_index(include_self, block_size):
    # Points of {0, 1, 2}^3: many exact ties and duplicates (integer distances
    # are exact in float32), so the tie rule decides most neighbour lists.
    x = np.random.default_rng(4).integers(0, 3, (200, 3)).astype(np.float32)
    graph = KNN(x, k=7, include_self=include_self, block_size=block_size)
    ref = _np_knn_from_matrix(_np_sqdist(x, x), 7, include_self)
    np.testing.assert_array_equal(np.asarray(graph.indices), ref)


def test_block_size_invariance():
    x = _gauss(5, 300, 32)
    outs = [KNN(x, k=5, block_size=b) for b in (300, 64, 37)]
    for g in outs[1:]:
        np.testing.assert_array_equal(g.indices, outs[0].indices)
        np.testing.assert_allclose(g.distances, outs[0].distances, rtol=1e-5, atol=1e-5)


def test_float64_matches_sklearn(x64):
    x = np.random.default_rng(6).standard_normal((300, 8))
    graph = KNN(jnp.asarray(x), k=3, block_size=70)
    assert graph.distances.dtype == jnp.float64
    dist, ind = NearestNeighbors(n_neighbors=3, algorithm="brute").fit(x).kneighbors()
    np.testing.assert_array_equal(np.asarray(graph.indices), ind)
    np.testing.assert_allclose(np.asarray(graph.distances), dist, rtol=1e-10)


def test_graph_k_occurrence_jit():
    idx = jnp.array([[1, 2], [0, 2], [0, 1], [0, 2]], jnp.int32)
    counts = GRAPH_K_OCC(idx)
    np.testing.assert_array_equal(np.asarray(counts), [3, 2, 3, 0])


# ----------------------------------------------------------------------------
# Statistics and the volume ratio
# ----------------------------------------------------------------------------


def test_statistics_match_references():
    rng = np.random.default_rng(7)
    counts = rng.poisson(3.0, 500) * rng.integers(0, 3, 500)
    c = jnp.asarray(counts, jnp.int32)
    np.testing.assert_allclose(float(SKEW(c)), scipy.stats.skew(counts), rtol=1e-5)
    np.testing.assert_allclose(
        float(jax.jit(hubness.anti_hub_fraction)(c)), np.mean(counts == 0), rtol=1e-6
    )
    k = 3
    hubs = counts >= 2 * k
    np.testing.assert_allclose(
        float(jax.jit(functools.partial(hubness.hub_occurrence, k=k))(c)),
        counts[hubs].sum() / (len(counts) * k),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        float(jax.jit(hubness.robin_hood_index)(c)),
        0.5 * np.abs(counts - counts.mean()).sum() / counts.sum(),
        rtol=1e-5,
    )
    mask = jax.jit(functools.partial(hubness.hub_mask, threshold=6, strict=True))(c)
    np.testing.assert_array_equal(np.asarray(mask), counts > 6)
    mask = jax.jit(functools.partial(hubness.hub_mask, threshold=6))(c)
    np.testing.assert_array_equal(np.asarray(mask), counts >= 6)


def test_statistics_extreme_cases():
    n, k = 50, 4
    flat = jnp.full((n,), k, jnp.int32)
    assert float(hubness.skewness(flat)) == 0.0
    assert float(hubness.robin_hood_index(flat)) == 0.0
    assert float(hubness.anti_hub_fraction(flat)) == 0.0
    # One point takes every slot: Robin Hood index (N − 1)/N, hub occurrence 1.
    one = jnp.zeros((n,), jnp.int32).at[0].set(n * k)
    share = (n - 1) / n
    np.testing.assert_allclose(float(hubness.robin_hood_index(one)), share, rtol=1e-6)
    assert float(hubness.hub_occurrence(one, k)) == 1.0
    np.testing.assert_allclose(float(hubness.anti_hub_fraction(one)), share, rtol=1e-6)
    # Skewness of a single spike among N − 1 zeros: (N − 2)/√(N − 1).
    np.testing.assert_allclose(
        float(hubness.skewness(one)), (n - 2) / math.sqrt(n - 1), rtol=1e-5
    )


# Known values of reference/hubness.md §2.1, with the precision they are printed to.
_VOLUME_TABLE = [
    (2, "0.7854"),
    (3, "0.5236"),
    (5, "0.1645"),
    (10, "2.49e-3"),
    (20, "2.46e-8"),
    (100, "1.87e-70"),
]


def _half_ulp_rel(text):
    """Half a unit in the last printed digit, relative to the printed value."""
    mant = text.split("e")[0]
    decimals = len(mant.split(".")[1])
    return 0.5 * 10.0**-decimals / float(mant)


@pytest.mark.parametrize("n,text", _VOLUME_TABLE)
def test_volume_ratio_known_values(n, text):
    log_ratio = float(LOG_VOLUME(n))
    tol = _half_ulp_rel(text) + 1e-6  # + float32 rounding of the log
    assert abs(log_ratio - math.log(float(text))) <= tol


def test_volume_ratio_closed_forms_and_large_n(x64):
    f = jax.jit(hubness.ball_cube_volume_ratio)
    np.testing.assert_allclose(float(f(2)), math.pi / 4, rtol=1e-12)
    np.testing.assert_allclose(float(f(3)), math.pi / 6, rtol=1e-12)
    ns = np.array([1, 7, 100, 10_000])
    got = np.asarray(LOG_VOLUME(ns))
    ref = 0.5 * ns * np.log(np.pi) - scipy.special.gammaln(ns / 2 + 1) - ns * np.log(2)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(got)) and np.all(np.diff(got) < 0)


def test_volume_ratio_float32_finite_in_log_space():
    got = float(hubness.ball_cube_volume_ratio(10_000, log=True))
    ref = 5000 * math.log(math.pi) - math.lgamma(5001) - 10_000 * math.log(2)
    assert math.isfinite(got)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


# ----------------------------------------------------------------------------
# The reference simulation (512-d Gaussian, N = 10,000, k = 5)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("include_self", [False, True])
def test_reference_simulation_512d(include_self):
    x = jr.normal(jr.key(0), (10_000, 512))
    counts = K_OCC(x, k=5, include_self=include_self)
    c = np.asarray(counts)
    assert c.sum() == 50_000
    assert float(hubness.skewness(counts)) > 5.0
    # Hub share: reference/hubness.md §4, 1.7–1.9% (Su, N_5 > 50, self excluded)
    # and 1.2–1.5% (Colab, self counted, >= 50); the band is 1.2–1.9%.
    share = np.mean(c > 50) if not include_self else np.mean(c >= 50)
    assert 0.012 <= share <= 0.019
    # Hubs lie nearer the centre: negative correlation of N_5 with ‖z‖.
    norms = np.linalg.norm(np.asarray(x), axis=1)
    assert np.corrcoef(c, norms)[0, 1] < -0.3


def test_hubness_grows_with_dimension_small_n():
    # Fast companion of the test above: same claim direction at N = 2,000.
    # At d = 2 the reference gives skewness 0.07; allow 4 standard errors of a
    # sample skewness, 4·√(6/N), on top.
    n = 2000
    bound = 0.07 + 4 * math.sqrt(6 / n)
    low = K_OCC(jr.normal(jr.key(1), (n, 2)), k=5)
    x = jr.normal(jr.key(2), (n, 512))
    high = K_OCC(x, k=5)
    assert abs(float(SKEW(low))) < bound
    assert float(SKEW(high)) > bound
    antihub = jax.jit(hubness.anti_hub_fraction)
    assert float(antihub(high)) > float(antihub(low))
    norms = np.linalg.norm(np.asarray(x), axis=1)
    assert np.corrcoef(np.asarray(high), norms)[0, 1] < 0


# ----------------------------------------------------------------------------
# Hub sampling and truncation
# ----------------------------------------------------------------------------


def _gauss_sampler(dim):
    return lambda key, n: jr.normal(key, (n, dim))


@pytest.mark.parametrize("include_self,strict", [(False, True), (True, False)])
def test_hub_sample_returns_the_hubs_of_each_round(include_self, strict):
    dim, pool, k, t, num = 64, 600, 5, 14, 40
    sample_fn = _gauss_sampler(dim)
    key = jr.key(3)
    f = jax.jit(
        functools.partial(
            hubness.hub_sample,
            sample_fn=sample_fn,
            num=num,
            pool=pool,
            k=k,
            threshold=t,
            include_self=include_self,
            strict=strict,
            block_size=256,
        )
    )
    z, rounds = f(key)
    z, rounds = np.asarray(z), int(rounds)
    assert z.shape == (num, dim) and np.all(np.isfinite(z))
    # Independent reference: redraw each round and count with scikit-learn.
    kept = []
    for r in range(rounds):
        zr = np.asarray(sample_fn(jr.fold_in(key, r), pool))
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(zr)
        if include_self:
            counts = np.asarray(nn.kneighbors_graph(zr).sum(axis=0)).ravel()
        else:
            ind = nn.kneighbors(return_distance=False)
            counts = np.bincount(ind.ravel(), minlength=pool)
        keep = counts > t if strict else counts >= t
        kept.append(zr[keep])
    # The last round was needed, and the hubs come back in the order found.
    assert sum(len(h) for h in kept[:-1]) < num <= sum(len(h) for h in kept)
    kept = np.concatenate(kept)
    np.testing.assert_allclose(z, kept[:num], rtol=1e-6)


def test_hub_sample_rounds_needed_and_central_clustering():
    dim, pool, num = 256, 1000, 60
    sample_fn = _gauss_sampler(dim)
    z, rounds = hubness.hub_sample(
        jr.key(4), sample_fn, num, pool=pool, k=5, threshold=20
    )
    z = np.asarray(z)
    # Fewer rounds would not have been enough (each round keeps all its hubs).
    k_occ = jax.jit(lambda key: hubness.k_occurrence(sample_fn(key, pool), 5))
    per_round = [
        int(np.sum(np.asarray(k_occ(jr.fold_in(jr.key(4), r))) >= 20))
        for r in range(int(rounds))
    ]
    assert sum(per_round[:-1]) < num <= sum(per_round)
    # Hubs sit nearer the centre than random draws: mean norm below that of
    # N(0, I) latents, E‖z‖ ≈ √(d − 1/2), by more than 4 standard errors.
    norms = np.linalg.norm(z, axis=1)
    log_ratio = math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2)
    mean_norm = math.sqrt(2) * math.exp(log_ratio)
    assert norms.mean() + 4 * norms.std(ddof=1) / math.sqrt(num) < mean_norm


def test_hub_sample_cap_leaves_nan_rows():
    z, rounds = jax.jit(
        functools.partial(
            hubness.hub_sample,
            sample_fn=_gauss_sampler(8),
            num=5,
            pool=50,
            threshold=49,
            max_rounds=3,
        )
    )(jr.key(5))
    assert int(rounds) == 3
    assert np.isnan(np.asarray(z)).all()


def test_truncate():
    sample_fn = _gauss_sampler(16)
    key = jr.key(6)
    w = np.asarray(sample_fn(key, 100))
    center = jnp.linspace(-1.0, 1.0, 16)
    got = jax.jit(
        functools.partial(
            hubness.truncate, sample_fn=sample_fn, num=100, psi=0.7, center=center
        )
    )(key)
    c = np.asarray(center)
    np.testing.assert_allclose(np.asarray(got), c + 0.7 * (w - c), rtol=1e-5, atol=1e-6)
    # Batch-mean centre (the Colab): the mean is kept, the spread scaled by ψ.
    got = np.asarray(hubness.truncate(key, sample_fn, 100, 0.7))
    np.testing.assert_allclose(got.mean(0), w.mean(0), atol=1e-5)
    np.testing.assert_allclose(got.std(0), 0.7 * w.std(0), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(hubness.truncate(key, sample_fn, 100, 1.0)), w, rtol=1e-6, atol=1e-6
    )


# ----------------------------------------------------------------------------
# Hubness reduction
# ----------------------------------------------------------------------------


def _np_mp(x):
    d = np.sqrt(_np_sqdist(x, x))
    n = len(d)
    off = ~np.eye(n, dtype=bool)
    mu = np.array([d[i, off[i]].mean() for i in range(n)])
    sd = np.array([d[i, off[i]].std() for i in range(n)])
    fa = scipy.stats.norm.cdf((d - mu[:, None]) / sd[:, None])
    fb = scipy.stats.norm.cdf((d - mu[None, :]) / sd[None, :])
    return fa + fb - fa * fb


def _np_ls(x, scale_k):
    d2 = _np_sqdist(x, x)
    ranked = np.sort(d2 + np.diag(np.full(len(d2), np.inf)), axis=1)
    sigma = np.sqrt(ranked[:, scale_k - 1])
    return 1.0 - np.exp(-d2 / (sigma[:, None] * sigma[None, :]))


def _np_csls(x, csls_k):
    cos = 1.0 - _np_cosdist(x)
    c = cos - np.diag(np.full(len(cos), np.inf))
    r = np.sort(c, axis=1)[:, ::-1][:, :csls_k].mean(1)
    return r[:, None] + r[None, :] - 2 * cos


@pytest.mark.parametrize(
    "name,fn,ref",
    [
        ("mp", hubness.mutual_proximity, _np_mp),
        (
            "ls",
            functools.partial(hubness.local_scaling, scale_k=4),
            functools.partial(_np_ls, scale_k=4),
        ),
        (
            "csls",
            functools.partial(hubness.csls, csls_k=6),
            functools.partial(_np_csls, csls_k=6),
        ),
    ],
)
def test_reduction_matches_numpy(name, fn, ref, x64):
    x = np.random.default_rng(8).standard_normal((150, 20))
    graph = jax.jit(functools.partial(fn, k=5, block_size=40))(jnp.asarray(x))
    sec = ref(x)
    ind = _np_knn_from_matrix(sec, 5)
    np.testing.assert_array_equal(np.asarray(graph.indices), ind, err_msg=name)
    np.testing.assert_allclose(
        np.asarray(graph.distances),
        np.take_along_axis(sec, ind, 1),
        rtol=1e-8,
        atol=1e-12,
        err_msg=name,
    )


@pytest.mark.parametrize(
    "fn",
    [hubness.mutual_proximity, hubness.local_scaling, hubness.csls],
    ids=["mutual_proximity", "local_scaling", "csls"],
)
def test_reduction_lowers_skewness_512d(fn):
    x = jr.normal(jr.key(9), (2000, 512))
    base = float(SKEW(K_OCC(x, k=10)))
    graph = jax.jit(functools.partial(fn, k=10))(x)
    counts = GRAPH_K_OCC(graph.indices)
    assert int(counts.sum()) == 2000 * 10
    reduced = float(SKEW(counts))
    assert reduced < base / 2, (base, reduced)


# ----------------------------------------------------------------------------
# Precision and recall
# ----------------------------------------------------------------------------


def _np_inside(q, ref, k):
    d_ref = np.sort(_np_sqdist(ref, ref) + np.diag(np.full(len(ref), np.inf)), axis=1)
    radius = d_ref[:, k - 1]
    return np.mean((_np_sqdist(q, ref) <= radius[None, :]).any(axis=1))


def test_precision_recall_matches_numpy():
    rng = np.random.default_rng(10)
    real = rng.standard_normal((300, 6)).astype(np.float32)
    fake = (1.3 * rng.standard_normal((250, 6)) + 0.4).astype(np.float32)
    p, r = jax.jit(functools.partial(hubness.precision_recall, k=3, block_size=64))(
        real, fake
    )
    assert float(p) == pytest.approx(_np_inside(fake, real, 3), abs=1 / 250)
    assert float(r) == pytest.approx(_np_inside(real, fake, 3), abs=1 / 300)


def test_precision_recall_extremes():
    x = _gauss(11, 200, 5)
    pr = jax.jit(hubness.precision_recall)
    p, r = pr(x, x)
    assert float(p) == 1.0 and float(r) == 1.0
    p, r = pr(x, x + 100.0)
    assert float(p) == 0.0 and float(r) == 0.0


# ----------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------


def test_bad_inputs_raise():
    x = _gauss(12, 20, 4)
    with pytest.raises(ValueError, match=r"k must be an int with 1 <= k < N=20"):
        hubness.k_occurrence(x, 20)
    with pytest.raises(ValueError, match="k must be"):
        hubness.k_occurrence(x, 0)
    with pytest.raises(ValueError, match="2-D"):
        hubness.k_occurrence(x[0], 3)
    with pytest.raises(ValueError, match="2-D"):
        hubness.knn(x[None], 3)
    with pytest.raises(ValueError, match="metric must be one of"):
        hubness.knn(x, 3, metric="manhattan")
    with pytest.raises(ValueError, match="block_size"):
        hubness.knn(x, 3, block_size=0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        hubness.ball_cube_volume_ratio(0)
    with pytest.raises(ValueError, match="psi must be in"):
        hubness.truncate(jr.key(0), _gauss_sampler(4), 3, 1.5)
    with pytest.raises(ValueError, match="threshold must satisfy"):
        hubness.hub_sample(jr.key(0), _gauss_sampler(4), 3, pool=50, threshold=50)
    with pytest.raises(ValueError, match=r"must return \[50, D\]"):
        hubness.hub_sample(
            jr.key(0), lambda key, n: jnp.zeros((n,)), 3, pool=50, threshold=10
        )
    with pytest.raises(ValueError, match="hub_size"):
        hubness.hub_occurrence(jnp.ones(5, jnp.int32), 2, hub_size=0.0)
    with pytest.raises(ValueError, match="scale_k"):
        hubness.local_scaling(x, 3, scale_k=20)


def test_nan_rows_raise_eagerly_and_under_jit():
    x = np.asarray(_gauss(13, 30, 4))
    x[[3, 17]] = np.nan
    with pytest.raises(
        ValueError,
        match=r"2 row\(s\) with NaN or infinite entries "
        r"\(first: \[3, 17\]\)",
    ):
        hubness.k_occurrence(x, 3)
    with pytest.raises(Exception, match=r"row\(s\) with NaN or infinite entries"):
        jax.block_until_ready(K_OCC(x, k=3))
    with pytest.raises(ValueError, match="NaN"):
        hubness.mutual_proximity(x, 3)
