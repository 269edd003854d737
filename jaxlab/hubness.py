r"""Hubness in high dimensions: exact tiled k-occurrence, statistics, hub sampling.

Implements ``reference/hubness.md``: J. Su, "Hubness in the curse of
dimensionality" (kexue.fm/archives/9147, 2022) and Liang, Wu, Lai & Qin,
"Exploring and Exploiting Hubness Priors for High-Quality GAN Latent Sampling"
(ICML 2022, arXiv 2206.06014), plus the hubness measures of scikit-hubness
(Feldbauer et al., ICBK 2018), the reductions of Schnitzer et al. (JMLR 2012)
and CSLS (Conneau et al., ICLR 2018), and the k-NN precision/recall of
Kynkäänniemi et al. (NeurIPS 2019).

Every neighbour search here is exact and brute force, computed in tiles of
``block_size × block_size`` distances so that memory is O(N·k + block_size²)
and never an N×N matrix. All the distances used are symmetric, so each
unordered pair of tiles is computed once and serves both of its row blocks.

Tie-breaking: among equal distances the lower index wins, i.e. neighbours are
the k smallest pairs (distance, index) in lexicographic order, exactly what a
stable argsort of each row gives.

Sharding (``mesh=``): ``knn`` and ``k_occurrence`` can split the query rows
over the ``data`` axis of a device mesh with ``jax.shard_map``. Each device
all-gathers the candidate points and keeps a running top-k of its own rows over
``block_size``-column tiles (working set O(N·D/devices + N·D + block² + N·k) per
device: the gathered candidates plus one tile); k_occurrence then scatter-adds
each device's neighbour lists into a length-N count vector and ``psum``s them.
Candidates are visited in increasing index order, so the tie-break (and the
result) is the single-device one. N need not divide the device count: the rows
are padded with masked points that are never anyone's neighbour, then dropped.

Nothing here imports Flax. Shape/metric/size/mesh arguments are static under
``jax.jit``.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax
from jax.scipy.special import gammaln, ndtr
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

from jaxlab import parallel

METRICS = ("euclidean", "cosine")
# 512: the [B, B] tiles and their top-k buffers stay ~6 MB in float32 (XLA temp
# 5.9 MB at N = 10,000, against 21.7 MB for 1024) at the same speed on CPU.
DEFAULT_BLOCK_SIZE = 512


class KNNGraph(NamedTuple):
    """A k-nearest-neighbour graph: row i lists the k neighbours of point i.

    Attributes:
        distances: ``[N, K]`` distances (or secondary distances after a
            hubness reduction), ascending along each row.
        indices: ``[N, K]`` int32 neighbour indices.
    """

    distances: Float[Array, "N K"]
    indices: Int[Array, "N K"]


# ----------------------------------------------------------------------------
# Neighbour search
# ----------------------------------------------------------------------------


def knn(
    x: Float[Array, "N D"],
    k: int,
    *,
    include_self: bool = False,
    metric: str = "euclidean",
    block_size: int = DEFAULT_BLOCK_SIZE,
    check_finite: bool = True,
    mesh: Mesh | None = None,
) -> KNNGraph:
    r"""Exact k-nearest-neighbour graph of a point set with itself, tiled.

    Euclidean distances are ranked by their squares, computed as
    ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j (Su 2022, the chunked code of post 9147);
    cosine distance is 1 − x̂_i·x̂_j with x̂ = x / ‖x‖ (zero rows stay zero).

    Args:
        x: ``[N, D]`` points (a batch-coupled set, not a batch of examples).
        k: neighbours per point, ``1 <= k < N``.
        include_self: ``False`` (Su's convention): a point is never its own
            neighbour and row i holds the k nearest *other* points.
            ``True`` (the official Colab, which queries the fitted set with
            scikit-learn's ``kneighbors_graph``): row i holds i itself first,
            then its k − 1 nearest others.
        metric: ``"euclidean"`` or ``"cosine"``.
        block_size: rows per tile; memory is O(N·k + block_size²).
        check_finite: raise if ``x`` has a NaN or infinite entry (an eager
            ``ValueError``, or under ``jit`` a runtime error carrying the same
            message).
        mesh: a device mesh with a ``"data"`` axis: the query rows are split
            over it (``jax.shard_map``, candidates all-gathered). ``None``
            uses ``jaxlab.parallel.default_mesh()`` (set by ``use_mesh`` or
            ``jaxlab run --set mesh=...``; read when traced, so set it before
            the first call of a jitted wrapper), and without one runs on one
            device. Same neighbours as the single-device search on ties-free
            data; the distances agree to float rounding (the single-device
            search ranks transposed tiles).

    Returns:
        ``KNNGraph`` with ``[N, k]`` distances (Euclidean, not squared, or
        cosine) and int32 indices, nearest first; ties go to the lower index.
        With a mesh, both arrays are row-sharded,
        ``NamedSharding(mesh, P("data"))``, when N is divisible by the size of
        the data axis, and replicated (``P()``) otherwise.
    """
    n = _check_search(x, k, metric, block_size)
    mesh = parallel.resolve_mesh(mesh)
    x = _as_float(x)
    if check_finite:
        _check_finite_rows(x, "x", mesh)
    rows = _metric_rows(x, metric)
    if mesh is None:
        vals, idx = _sym_topk(
            rows, n, k, _metric_tile(metric), block_size, include_self
        )
    else:
        vals, idx = _sharded_topk(
            rows, n, k, _metric_tile(metric), block_size, include_self, mesh
        )
    dist = -vals
    if include_self:
        # The self entry was forced in with score +inf; its distance is zero.
        dist = jnp.where(idx == jnp.arange(n)[:, None], 0.0, dist)
    if metric == "euclidean":
        dist = jnp.sqrt(jnp.maximum(dist, 0.0))
    if mesh is not None:
        dist, idx = _constrain_rows((dist, idx), n, mesh)
    return KNNGraph(dist, idx)


def k_occurrence(
    x: Float[Array, "N D"],
    k: int,
    *,
    include_self: bool = False,
    metric: str = "euclidean",
    block_size: int = DEFAULT_BLOCK_SIZE,
    check_finite: bool = True,
    mesh: Mesh | None = None,
) -> Int[Array, " N"]:
    r"""Exact k-occurrence N_k(x_i) = |{j : x_i ∈ kNN_k(x_j)}|.

    Su (2022), section "Hub值" (reference/hubness.md §2.3): with self excluded,
    N_k(x_i) = |{j ≠ i : x_i ∈ kNN_k(x_j)}|. With ``include_self=True`` every
    neighbour list holds the point itself plus k − 1 others (the official
    Colab's ``kneighbors_graph(W).sum(0)``), so every count is ≥ 1. In both
    conventions Σ_i N_k(x_i) = N·k exactly.

    Args:
        x: ``[N, D]`` points.
        k: neighbours per point, ``1 <= k < N``.
        include_self: the counting convention (see ``knn``).
        metric: ``"euclidean"`` or ``"cosine"``.
        block_size: rows per tile; memory is O(N·k + block_size²).
        check_finite: raise on NaN or infinite entries (see ``knn``).
        mesh: device mesh with a ``"data"`` axis (see ``knn``); each device
            finds its rows' neighbours, scatter-adds them into N counts, and
            the per-device counts are summed with ``psum``.

    Returns:
        ``[N]`` int32 counts; with a mesh, replicated on every device
        (``NamedSharding(mesh, P())``).
    """
    n = _check_search(x, k, metric, block_size)
    mesh = parallel.resolve_mesh(mesh)
    if mesh is None:
        graph = knn(
            x,
            k,
            include_self=include_self,
            metric=metric,
            block_size=block_size,
            check_finite=check_finite,
        )
        return graph_k_occurrence(graph.indices)
    x = _as_float(x)
    if check_finite:
        _check_finite_rows(x, "x", mesh)
    rows = _metric_rows(x, metric)
    counts = _sharded_topk(
        rows, n, k, _metric_tile(metric), block_size, include_self, mesh,
        counts=True,
    )
    return lax.with_sharding_constraint(counts, NamedSharding(mesh, P()))


def graph_k_occurrence(indices: Int[Array, "N K"]) -> Int[Array, " N"]:
    """k-occurrence of a neighbour graph: how often each point is listed.

    Args:
        indices: ``[N, K]`` neighbour indices into the same N points (e.g.
            ``knn(...).indices`` or a hubness-reduced graph).

    Returns:
        ``[N]`` int32 counts, summing to N·K.
    """
    chex.assert_rank(indices, 2)
    n = indices.shape[0]
    ones = jnp.ones(indices.size, jnp.int32)
    return jax.ops.segment_sum(ones, indices.reshape(-1), num_segments=n)


# ----------------------------------------------------------------------------
# Hubness statistics
# ----------------------------------------------------------------------------


def skewness(counts: Array) -> Array:
    r"""Hubness as the skewness of the k-occurrence distribution.

    S_{N_k} = E[(N_k − μ)³] / σ³ with population moments (Radovanović et al.,
    JMLR 2010, Eq. 1; reference/hubness.md §2.3; ``scipy.stats.skew`` with
    ``bias=True``). A constant distribution has no asymmetry and gives 0.

    Args:
        counts: ``[N]`` k-occurrences (any numeric dtype).

    Returns:
        Scalar float skewness.
    """
    chex.assert_rank(counts, 1)
    c = _as_float(counts)
    dev = c - jnp.mean(c)
    m2 = jnp.mean(dev**2)
    m3 = jnp.mean(dev**3)
    safe = jnp.where(m2 > 0, m2, 1.0)
    return jnp.where(m2 > 0, m3 / safe**1.5, 0.0)


def anti_hub_fraction(counts: Array) -> Array:
    """Share of anti-hubs, points that are nobody's neighbour (N_k = 0).

    scikit-hubness ``antihub_occurrence`` (Feldbauer et al., ICBK 2018).

    Args:
        counts: ``[N]`` k-occurrences.

    Returns:
        Scalar float in [0, 1].
    """
    chex.assert_rank(counts, 1)
    return jnp.mean((counts == 0).astype(_float_dtype()))


def hub_occurrence(counts: Array, k: int, *, hub_size: float = 2.0) -> Array:
    r"""Share of all N·k neighbour slots taken by hubs.

    Hubs are points with N_k ≥ hub_size·k, and the measure is
    Σ_{hubs} N_k / (N·k) (scikit-hubness ``hub_occurrence``, Feldbauer et al.,
    ICBK 2018).

    Args:
        counts: ``[N]`` k-occurrences of a k-NN graph.
        k: the neighbourhood size the counts were made with.
        hub_size: hub threshold as a multiple of k (> 0).

    Returns:
        Scalar float in [0, 1].
    """
    chex.assert_rank(counts, 1)
    _check_positive_int(k, "k")
    if not hub_size > 0:
        raise ValueError(f"hub_size must be > 0, got {hub_size!r}")
    c = _as_float(counts)
    hubs = c >= hub_size * k
    return jnp.sum(jnp.where(hubs, c, 0.0)) / (counts.shape[0] * k)


def robin_hood_index(counts: Array) -> Array:
    r"""Robin Hood (Hoover) index of the k-occurrence distribution.

    H = ½ Σ_i |N_k(x_i) − μ| / Σ_i N_k(x_i): the share of all neighbour slots
    that would have to be moved for every point to occur equally often
    (Feldbauer et al., ICBK 2018, Sec. 3). 0 means no hubness, 1 − 1/N the
    maximum.

    Args:
        counts: ``[N]`` k-occurrences.

    Returns:
        Scalar float in [0, 1).
    """
    chex.assert_rank(counts, 1)
    c = _as_float(counts)
    total = jnp.sum(c)
    return 0.5 * jnp.sum(jnp.abs(c - jnp.mean(c))) / jnp.where(total > 0, total, 1.0)


def hub_mask(
    counts: Array, threshold: float, *, strict: bool = False
) -> Bool[Array, " N"]:
    """Hubs by a k-occurrence threshold: N_k ≥ t, or N_k > t when ``strict``.

    The reference's text (and the official Colab) use ≥; Su's code keeps
    ``s > t`` (reference/hubness.md §3).

    Args:
        counts: ``[N]`` k-occurrences.
        threshold: t.
        strict: use > instead of ≥.

    Returns:
        ``[N]`` boolean mask.
    """
    chex.assert_rank(counts, 1)
    return counts > threshold if strict else counts >= threshold


def ball_cube_volume_ratio(n, *, log: bool = False) -> Array:
    r"""Volume of the unit n-ball over its bounding cube [−1, 1]^n.

    V_n / 2^n = π^{n/2} / (Γ(n/2 + 1) 2^n) (reference/hubness.md §2.1),
    evaluated in log space as (n/2) log π − log Γ(n/2 + 1) − n log 2 so that
    it stays finite for large n (about −10⁴·… for n = 10,000).

    Args:
        n: dimension(s), a positive integer or an array of them.
        log: return the natural log of the ratio instead of the ratio (the
            ratio itself underflows to 0 beyond n ≈ 60 in float32).

    Returns:
        Array of ratios (or log-ratios) with the shape of ``n``.
    """
    if isinstance(n, (int, np.integer)) and n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    nf = _as_float(jnp.asarray(n))
    log_ratio = 0.5 * nf * jnp.log(jnp.pi) - gammaln(0.5 * nf + 1.0) - nf * jnp.log(2.0)
    return log_ratio if log else jnp.exp(log_ratio)


# ----------------------------------------------------------------------------
# Latent sampling
# ----------------------------------------------------------------------------


def hub_sample(
    key: chex.PRNGKey,
    sample_fn: Callable[[chex.PRNGKey, int], Float[Array, "N D"]],
    num: int,
    *,
    pool: int = 10_000,
    k: int = 5,
    threshold: float = 50,
    include_self: bool = False,
    strict: bool = False,
    metric: str = "euclidean",
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_rounds: int = 1000,
) -> tuple[Float[Array, "M D"], Int[Array, ""]]:
    r"""Hubness-prior latent sampling by rejection (Liang et al. 2022).

    Each round r draws ``pool`` latents z = sample_fn(fold_in(key, r), pool),
    computes their exact k-occurrence N_k within the round and keeps the hubs
    (N_k ≥ t, or > t when ``strict``); rounds repeat until ``num`` latents are
    kept (reference/hubness.md §3; the official Colab uses pool 10,000, k = 5,
    t = 50 with ``include_self=True``; Su uses ``include_self=False,
    strict=True``). Every round has the same shape, so the whole loop is one
    ``lax.while_loop`` and compiles once.

    Args:
        key: PRNG key.
        sample_fn: ``sample_fn(key, n) -> [n, D]`` latents (Z space, or W
            space through a mapping network).
        num: latents to return (M).
        pool: latents drawn per round (N), > k.
        k: neighbourhood size.
        threshold: hub threshold t, 0 <= t < pool.
        include_self: counting convention (see ``k_occurrence``).
        strict: keep N_k > t instead of N_k ≥ t.
        metric: ``"euclidean"`` or ``"cosine"``.
        block_size: tile size of the k-occurrence.
        max_rounds: cap on rounds; rows still unfilled then are NaN.

    Returns:
        ``(latents [num, D], rounds)``: hubs in the order they were found, and
        the number of rounds used (int32; ``rounds == max_rounds`` with NaN rows
        means the cap was hit).
    """
    _check_positive_int(num, "num")
    _check_positive_int(pool, "pool")
    _check_k(k, pool, "k")
    _check_positive_int(max_rounds, "max_rounds")
    _check_choice(metric, METRICS, "metric")
    _check_block_size(block_size)
    if not 0 <= threshold < pool:
        raise ValueError(
            f"threshold must satisfy 0 <= threshold < pool={pool} (no count can "
            f"reach pool), got {threshold!r}"
        )
    shape = jax.eval_shape(lambda k: sample_fn(k, pool), key)
    if len(shape.shape) != 2 or shape.shape[0] != pool:
        raise ValueError(
            f"sample_fn(key, {pool}) must return [{pool}, D] latents, "
            f"got shape {shape.shape}"
        )
    dim = shape.shape[1]
    dtype = shape.dtype

    def cond(carry):
        _, filled, rounds = carry
        return (filled < num) & (rounds < max_rounds)

    def body(carry):
        buf, filled, rounds = carry
        z = sample_fn(jr.fold_in(key, rounds), pool)
        counts = k_occurrence(
            z,
            k,
            include_self=include_self,
            metric=metric,
            block_size=block_size,
            check_finite=False,
        )
        keep = hub_mask(counts, threshold, strict=strict)
        (sel,) = jnp.nonzero(keep, size=pool, fill_value=0)
        found = jnp.sum(keep.astype(jnp.int32))
        slot = filled + jnp.arange(pool)
        ok = (jnp.arange(pool) < found) & (slot < num)
        # Out-of-range slots are dropped: fixed shapes, no host round trip.
        buf = buf.at[jnp.where(ok, slot, num)].set(z[sel], mode="drop")
        return buf, jnp.minimum(filled + found, num), rounds + 1

    buf0 = jnp.full((num, dim), jnp.nan, dtype)
    buf, _, rounds = lax.while_loop(
        cond, body, (buf0, jnp.int32(0), jnp.int32(0))
    )
    return buf, rounds


def truncate(
    key: chex.PRNGKey,
    sample_fn: Callable[[chex.PRNGKey, int], Float[Array, "N D"]],
    num: int,
    psi: float,
    *,
    center: Float[Array, " D"] | None = None,
) -> Float[Array, "M D"]:
    r"""Truncation-trick baseline w' = w̄ + ψ (w − w̄).

    StyleGAN's truncation trick (Karras et al. 2019, Sec. 3.2 "truncation
    trick in W"; reference/hubness.md §3), argued by Liang et al. (2022) to be
    a crude version of the hubs' central clustering.

    Args:
        key: PRNG key.
        sample_fn: ``sample_fn(key, n) -> [n, D]`` latents.
        num: latents to return.
        psi: ψ in [0, 1]; 1 is plain sampling, 0 collapses onto w̄.
        center: w̄. ``None`` uses the batch mean of the ``num`` draws (the
            official Colab); pass zeros for Z ~ N(0, I) or a large-sample mean
            of W.

    Returns:
        ``[num, D]`` truncated latents.
    """
    _check_positive_int(num, "num")
    if not 0.0 <= psi <= 1.0:
        raise ValueError(f"psi must be in [0, 1], got {psi!r}")
    w = sample_fn(key, num)
    chex.assert_rank(w, 2)
    chex.assert_axis_dimension(w, 0, num)
    if center is None:
        center = jnp.mean(w, axis=0)
    chex.assert_shape(center, (w.shape[1],))
    return center[None, :] + psi * (w - center[None, :])


# ----------------------------------------------------------------------------
# Hubness reduction (each returns a corrected neighbour graph)
# ----------------------------------------------------------------------------


def mutual_proximity(
    x: Float[Array, "N D"],
    k: int,
    *,
    metric: str = "euclidean",
    block_size: int = DEFAULT_BLOCK_SIZE,
    check_finite: bool = True,
) -> KNNGraph:
    r"""k-NN graph under Gaussian mutual proximity (MP with independent Gaussians).

    Each point's distances to all N − 1 others are modelled as N(μ_x, σ_x²);
    MP(x, y) = P(X > d_xy) P(Y > d_xy), and the secondary distance is
    1 − MP = F_x + F_y − F_x F_y with F_x = Φ((d_xy − μ_x)/σ_x) (Schnitzer,
    Flexer, Schedl & Widmer, "Local and global scaling reduce hubs in space",
    JMLR 13, 2012, Sec. 3.2; written with CDFs so that near neighbours keep
    float32 precision). μ and σ use all pairs (exact, in one tiled pass).

    Args:
        x: ``[N, D]`` points.
        k: neighbours per point, ``1 <= k < N``; self is excluded.
        metric: base distance, ``"euclidean"`` or ``"cosine"``.
        block_size: rows per tile.
        check_finite: raise on NaN or infinite entries.

    Returns:
        ``KNNGraph`` of MP distances in [0, 1] and indices.
    """
    n = _check_search(x, k, metric, block_size)
    if n < 3:
        raise ValueError(f"mutual_proximity needs N >= 3 points, got N={n}")
    x = _as_float(x)
    if check_finite:
        _check_finite_rows(x, "x")
    rows = _metric_rows(x, metric)
    base = _base_distance_tile(metric)
    s1, s2 = _sym_row_sums(rows, n, base, block_size)
    mu = s1 / (n - 1)
    sd = jnp.sqrt(jnp.maximum(s2 / (n - 1) - mu**2, 0.0))
    sd = jnp.maximum(sd, jnp.finfo(sd.dtype).tiny)

    def tile(a, b):
        d = base(a, b)
        fa = ndtr((d - a["mu"][:, None]) / a["sd"][:, None])
        fb = ndtr((d - b["mu"][None, :]) / b["sd"][None, :])
        return fa + fb - fa * fb

    rows = {**rows, "mu": mu, "sd": sd}
    vals, idx = _sym_topk(rows, n, k, tile, block_size, False)
    return KNNGraph(-vals, idx)


def local_scaling(
    x: Float[Array, "N D"],
    k: int,
    *,
    scale_k: int = 5,
    metric: str = "euclidean",
    block_size: int = DEFAULT_BLOCK_SIZE,
    check_finite: bool = True,
) -> KNNGraph:
    r"""k-NN graph under local scaling.

    LS(x, y) = 1 − exp(−d_xy² / (σ_x σ_y)) with σ_x the distance from x to its
    ``scale_k``-th nearest neighbour (Schnitzer et al., JMLR 2012, Sec. 3.1,
    after Zelnik-Manor & Perona 2005; computed as −expm1 for precision).

    Args:
        x: ``[N, D]`` points.
        k: neighbours per point, ``1 <= k < N``; self is excluded.
        scale_k: neighbour rank defining σ, ``1 <= scale_k < N``.
        metric: base distance, ``"euclidean"`` or ``"cosine"``.
        block_size: rows per tile.
        check_finite: raise on NaN or infinite entries.

    Returns:
        ``KNNGraph`` of LS distances in [0, 1] and indices.
    """
    n = _check_search(x, k, metric, block_size)
    _check_k(scale_k, n, "scale_k")
    x = _as_float(x)
    if check_finite:
        _check_finite_rows(x, "x")
    rows = _metric_rows(x, metric)
    base = _base_distance_tile(metric)
    vals, _ = _sym_topk(rows, n, scale_k, _metric_tile(metric), block_size, False)
    sigma = _to_distance(-vals[:, -1], metric)
    sigma = jnp.maximum(sigma, jnp.finfo(sigma.dtype).tiny)

    def tile(a, b):
        d = base(a, b)
        return -jnp.expm1(-(d**2) / (a["sigma"][:, None] * b["sigma"][None, :]))

    rows = {**rows, "sigma": sigma}
    vals, idx = _sym_topk(rows, n, k, tile, block_size, False)
    return KNNGraph(-vals, idx)


def csls(
    x: Float[Array, "N D"],
    k: int,
    *,
    csls_k: int = 10,
    block_size: int = DEFAULT_BLOCK_SIZE,
    check_finite: bool = True,
) -> KNNGraph:
    r"""k-NN graph under cross-domain similarity local scaling (CSLS).

    CSLS(x, y) = 2 cos(x, y) − r(x) − r(y), with r(x) the mean cosine
    similarity of x to its ``csls_k`` nearest neighbours (Conneau, Lample,
    Ranzato, Denoyer & Jégou, "Word translation without parallel data",
    ICLR 2018, Sec. 2.3, with source and target the same set). Neighbours
    maximise CSLS; the returned distance is −CSLS(x, y).

    Args:
        x: ``[N, D]`` points (cosine geometry).
        k: neighbours per point, ``1 <= k < N``; self is excluded.
        csls_k: neighbourhood of the penalty r, ``1 <= csls_k < N``.
        block_size: rows per tile.
        check_finite: raise on NaN or infinite entries.

    Returns:
        ``KNNGraph`` of −CSLS values (in [−2, 2]; smaller is nearer) and
        indices.
    """
    n = _check_points(x, "x")
    _check_k(k, n, "k")
    _check_k(csls_k, n, "csls_k")
    _check_block_size(block_size)
    x = _as_float(x)
    if check_finite:
        _check_finite_rows(x, "x")
    rows = _metric_rows(x, "cosine")
    vals, _ = _sym_topk(rows, n, csls_k, _metric_tile("cosine"), block_size, False)
    r = jnp.mean(1.0 + vals, axis=1)  # vals = −(1 − cos)

    def tile(a, b):
        cos = 1.0 - _cosine_tile(a, b)
        return a["r"][:, None] + b["r"][None, :] - 2.0 * cos

    rows = {**rows, "r": r}
    vals, idx = _sym_topk(rows, n, k, tile, block_size, False)
    return KNNGraph(-vals, idx)


# ----------------------------------------------------------------------------
# Sample-quality hook: k-NN manifold precision and recall
# ----------------------------------------------------------------------------


def precision_recall(
    real: Float[Array, "N D"],
    fake: Float[Array, "M D"],
    *,
    k: int = 3,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[Array, Array]:
    r"""Improved precision and recall with k-NN manifold estimates.

    Kynkäänniemi, Karras, Laine, Lehtinen & Aila, "Improved precision and
    recall metric for assessing generative models" (NeurIPS 2019), Eqs. 1–3:
    f(φ, Φ) = 1 if ‖φ − φ'‖ ≤ ‖φ' − NN_k(φ', Φ)‖ for some φ' ∈ Φ (else 0);
    precision = mean over fakes of f(φ_g, Φ_r), recall = mean over reals of
    f(φ_r, Φ_g). The k-th neighbour excludes the point itself.

    Args:
        real: ``[N, D]`` real features.
        fake: ``[M, D]`` generated features.
        k: neighbourhood size of the manifold balls, ``1 <= k < min(N, M)``.
        block_size: rows per tile.

    Returns:
        ``(precision, recall)`` scalar floats in [0, 1].
    """
    n = _check_points(real, "real")
    m = _check_points(fake, "fake")
    chex.assert_equal_shape_suffix([real, fake], 1)
    _check_k(k, min(n, m), "k")
    _check_block_size(block_size)
    real, fake = _as_float(real), _as_float(fake)
    r_real = _kth_sq_radius(real, k, block_size)
    r_fake = _kth_sq_radius(fake, k, block_size)
    precision = jnp.mean(_inside_any_ball(fake, real, r_real, block_size))
    recall = jnp.mean(_inside_any_ball(real, fake, r_fake, block_size))
    return precision, recall


# ----------------------------------------------------------------------------
# Private helpers
# ----------------------------------------------------------------------------


def _float_dtype():
    """The default float dtype (float64 under x64, else float32)."""
    return jnp.result_type(float)


def _as_float(a):
    """Cast a non-float array to the default float dtype."""
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(_float_dtype())
    return a


def _check_search(x, k, metric, block_size) -> int:
    """Validate the arguments every k-NN search shares; returns N."""
    n = _check_points(x, "x")
    _check_k(k, n, "k")
    _check_choice(metric, METRICS, "metric")
    _check_block_size(block_size)
    return n


def _check_points(x, name):
    """Validate a ``[N, D]`` point set and return N."""
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {shape}")
    if shape[0] < 2 or shape[1] < 1:
        raise ValueError(f"{name} needs N >= 2 points and D >= 1, got shape {shape}")
    return shape[0]


def _check_positive_int(v, name):
    """Raise unless v is a positive Python int."""
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _check_k(k, n, name):
    """Raise unless 1 <= k < n."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k < n:
        raise ValueError(f"{name} must be an int with 1 <= {name} < N={n}, got {k!r}")


def _check_choice(v, allowed, name):
    """Raise unless v is one of the allowed strings."""
    if v not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {v!r}")


def _check_block_size(block_size):
    """Raise unless block_size is a positive int."""
    _check_positive_int(block_size, "block_size")


def _raise_if_bad_rows(bad_rows, name):
    """Host-side check: raise naming the first non-finite rows."""
    bad_rows = np.asarray(bad_rows)
    if bad_rows.any():
        first = np.flatnonzero(bad_rows)[:5].tolist()
        raise ValueError(
            f"{name} has {int(bad_rows.sum())} row(s) with NaN or infinite "
            f"entries (first: {first}); k-NN needs finite points"
        )


def _check_finite_rows(x, name, mesh=None):
    """Raise on non-finite rows: eagerly if concrete, else via a host callback."""
    bad = ~jnp.all(jnp.isfinite(x), axis=1)
    if mesh is not None:
        # The callback runs on one device; replicating first avoids a
        # resharding of a row-sharded mask to a single device.
        bad = lax.with_sharding_constraint(bad, NamedSharding(mesh, P()))
    if isinstance(bad, jax.core.Tracer):
        jax.debug.callback(functools.partial(_raise_if_bad_rows, name=name), bad)
    else:
        _raise_if_bad_rows(bad, name)


def _metric_rows(x, metric):
    """Per-row data the distance tiles need (x itself is never copied)."""
    if metric == "cosine":
        norm = jnp.linalg.norm(x, axis=1)
        return {"x": x, "inv": 1.0 / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)}
    return {"x": x, "sq": jnp.sum(x * x, axis=1)}


def _cosine_tile(a, b):
    """1 − cos between the rows of two blocks, normalised on the fly."""
    dots = a["x"] @ b["x"].T
    return 1.0 - dots * a["inv"][:, None] * b["inv"][None, :]


def _sqeuclidean_tile(a, b):
    """‖a‖² + ‖b‖² − 2 a·b between the rows of two blocks."""
    return a["sq"][:, None] + b["sq"][None, :] - 2.0 * (a["x"] @ b["x"].T)


def _metric_tile(metric):
    """Tile of the ranking distance: squared Euclidean or cosine distance."""
    return _cosine_tile if metric == "cosine" else _sqeuclidean_tile


def _to_distance(ranked, metric):
    """Ranking distance to the metric's distance (sqrt for Euclidean)."""
    if metric == "euclidean":
        return jnp.sqrt(jnp.maximum(ranked, 0.0))
    return ranked


def _base_distance_tile(metric):
    """Tile of the metric's distance (Euclidean, not squared, or cosine)."""
    ranked = _metric_tile(metric)
    return lambda a, b: _to_distance(ranked(a, b), metric)


def _blocks(n, block):
    """Static block layout: (count, first row of each block, overlap of each).

    Blocks are ``block`` rows read in place with ``lax.dynamic_slice`` (no padded
    copy of x). The last block starts at n − block, so it can overlap the one
    before by ``shift`` rows; those rows and columns are masked out.
    """
    nb = -(-n // block)
    starts = np.minimum(np.arange(nb) * block, n - block)
    return nb, starts, np.arange(nb) * block - starts


def _read_block(rows, start, block):
    """Rows [start, start + block) of every leaf."""
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, block), rows)


def _sym_scan(rows, n, block_size, tile_fn, init, update):
    """Visit each unordered pair of row blocks (i <= j) once.

    The [B, B] tile of block i against block j updates the state rows of block
    j with its transpose, then those of block i with the tile. On the diagonal
    the transposed half sees no valid column, which leaves the rows unchanged,
    so each candidate enters once. Pairs go in row-major order (i ascending,
    then j ascending), so every row meets its candidate blocks in increasing
    index order, which is what makes the lower-index tie-break exact. (The two
    updates stay separate calls: a vmapped ``lax.top_k`` over a 3-D operand is
    lowered to a full sort on CPU, ~50× slower.) Memory: the state, O(N·k),
    plus a few [B, B] tiles.
    """
    block = min(block_size, n)
    nb, starts, shifts = _blocks(n, block)
    starts_arr = jnp.asarray(starts, jnp.int32)
    shifts_arr = jnp.asarray(shifts, jnp.int32)
    ii, jj = np.triu_indices(nb)

    def body(state, ij):
        i, j = ij[0], ij[1]
        tile = tile_fn(_read_block(rows, starts_arr[i], block),
                       _read_block(rows, starts_arr[j], block))
        diag = i == j
        pos = jnp.arange(block)
        valid_i = pos >= shifts_arr[i]
        valid_j = pos >= shifts_arr[j]
        sj = update(_take(state, j), tile.T, starts_arr[i], valid_i & ~diag, False,
                    block)
        state = _put(state, j, sj)
        si = update(_take(state, i), tile, starts_arr[j], valid_j, diag, block)
        return _put(state, i, si), None

    init = jax.tree.map(lambda a: a.reshape(nb, block, *a.shape[1:]), init(nb * block))
    state, _ = lax.scan(body, init, jnp.stack([ii, jj], axis=1).astype(jnp.int32))
    # Slot r of block b holds row starts[b] + r; the overlap slots are dropped.
    keep = np.concatenate([b * block + np.arange(shifts[b], block) for b in range(nb)])
    return jax.tree.map(lambda a: a.reshape(nb * block, *a.shape[2:])[keep], state)


def _take(tree, i):
    """Block i of every leaf."""
    return jax.tree.map(lambda a: a[i], tree)


def _put(tree, i, values):
    """Replace block i of every leaf."""
    return jax.tree.map(lambda a, v: a.at[i].set(v), tree, values)


def _sym_topk(rows, n, k, tile_fn, block_size, include_self):
    """Top-k smallest tile values per row, as (−values [N, k], indices [N, k])."""
    dtype = jax.tree.leaves(rows)[0].dtype

    def init(npad):
        return (
            jnp.full((npad, k), -jnp.inf, dtype),
            jnp.full((npad, k), -1, jnp.int32),
        )

    def update(state, tile, col_start, col_valid, diag, block):
        vals, idx = state
        score = -tile
        eye = jnp.eye(block, dtype=bool) & diag
        score = jnp.where(eye, jnp.inf if include_self else -jnp.inf, score)
        score = jnp.where(col_valid[None, :], score, -jnp.inf)
        cols = col_start + jnp.arange(block, dtype=jnp.int32)
        all_vals = jnp.concatenate([vals, score], axis=1)
        all_idx = jnp.concatenate(
            [idx, jnp.broadcast_to(cols[None, :], score.shape)], axis=1
        )
        # lax.top_k returns equal values lower position first; running entries
        # precede the new block and hold lower indices, so ties go to the
        # lower index.
        top, pos = lax.top_k(all_vals, k)
        return top, jnp.take_along_axis(all_idx, pos, axis=1)

    return _sym_scan(rows, n, block_size, tile_fn, init, update)


def _pad_rows(tree, size):
    """Zero-pad the leading axis of every leaf to ``size`` rows."""
    return jax.tree.map(
        lambda a: jnp.pad(a, [(0, size - a.shape[0])] + [(0, 0)] * (a.ndim - 1)),
        tree,
    )


def _sharded_topk(rows, n, k, tile_fn, block_size, include_self, mesh, *,
                  counts=False):
    """Row-sharded top-k over all-gathered candidates (``jax.shard_map``).

    Device d owns rows [d·m, (d + 1)·m), m = ⌈N / devices⌉ (rows ≥ N are
    zero padding). It all-gathers every device's rows as candidates and, per
    block of its own rows, scans the candidate blocks in increasing index order
    keeping a running top-k (running entries first, so ties go to the lower
    index as in ``_sym_topk``). Padded candidates score −inf and are never
    chosen. Returns ``(−values [N, k], indices [N, k])``, or with ``counts``
    the k-occurrence: each device scatter-adds its valid rows' neighbours into
    N counts and the devices' counts are ``psum``med (replicated).
    """
    axis = parallel.DATA
    ndev = mesh.shape[axis]
    per = -(-n // ndev)
    total = per * ndev
    br = min(block_size, per)
    local = -(-per // br) * br
    bc = min(block_size, total)
    ncand = -(-total // bc) * bc
    dtype = jax.tree.leaves(rows)[0].dtype
    fill = jnp.inf if include_self else -jnp.inf

    def per_device(own):
        cand = jax.tree.map(lambda a: lax.all_gather(a, axis, tiled=True), own)
        cand = _pad_rows(cand, ncand)
        own = _pad_rows(own, local)
        first = lax.axis_index(axis) * per

        def row_block(start):
            qb = _read_block(own, start, br)
            qid = first + start + jnp.arange(br, dtype=jnp.int32)

            def step(state, c0):
                vals, idx = state
                cid = c0 + jnp.arange(bc, dtype=jnp.int32)
                score = -tile_fn(qb, _read_block(cand, c0, bc))
                score = jnp.where(qid[:, None] == cid[None, :], fill, score)
                score = jnp.where(cid[None, :] < n, score, -jnp.inf)
                all_vals = jnp.concatenate([vals, score], axis=1)
                all_idx = jnp.concatenate(
                    [idx, jnp.broadcast_to(cid[None, :], score.shape)], axis=1
                )
                top, pos = lax.top_k(all_vals, k)
                return (top, jnp.take_along_axis(all_idx, pos, axis=1)), None

            init = (
                jnp.full((br, k), -jnp.inf, dtype),
                jnp.full((br, k), -1, jnp.int32),
            )
            starts = jnp.arange(ncand // bc, dtype=jnp.int32) * bc
            state, _ = lax.scan(step, init, starts)
            return state

        vals, idx = lax.map(row_block, jnp.arange(local // br, dtype=jnp.int32) * br)
        vals, idx = vals.reshape(local, k)[:per], idx.reshape(local, k)[:per]
        if not counts:
            return vals, idx
        valid = (first + jnp.arange(per)) < n
        weight = jnp.broadcast_to(valid[:, None], idx.shape).astype(jnp.int32)
        own_counts = jax.ops.segment_sum(
            weight.reshape(-1),
            jnp.where(valid[:, None], idx, 0).reshape(-1),
            num_segments=n,
        )
        return lax.psum(own_counts, axis)

    out_specs = P() if counts else (P(axis), P(axis))
    # check_vma=False: the scan carry starts replicated (constants) and becomes
    # device-varying, which the shard_map type check would reject.
    out = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(axis),), out_specs=out_specs,
        check_vma=False,
    )(_pad_rows(rows, total))
    if counts:
        return out
    vals, idx = out
    return vals[:n], idx[:n]


def _constrain_rows(tree, n, mesh):
    """Row-shard on the data axis when N divides evenly, else replicate."""
    spec = P(parallel.DATA) if n % mesh.shape[parallel.DATA] == 0 else P()
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda a: lax.with_sharding_constraint(a, sharding), tree)


def _sym_row_sums(rows, n, dist_tile, block_size):
    """Σ_j d(i, j) and Σ_j d(i, j)² over all j ≠ i, tiled."""
    dtype = jax.tree.leaves(rows)[0].dtype

    def init(npad):
        return jnp.zeros((npad,), dtype), jnp.zeros((npad,), dtype)

    def update(state, tile, col_start, col_valid, diag, block):
        s1, s2 = state
        keep = col_valid[None, :] & ~(jnp.eye(block, dtype=bool) & diag)
        t = jnp.where(keep, tile, 0.0)
        return s1 + jnp.sum(t, axis=1), s2 + jnp.sum(t * t, axis=1)

    return _sym_scan(rows, n, block_size, dist_tile, init, update)


def _kth_sq_radius(x, k, block_size):
    """Squared Euclidean distance from each point to its k-th other neighbour."""
    n = x.shape[0]
    rows = _metric_rows(x, "euclidean")
    vals, _ = _sym_topk(rows, n, k, _metric_tile("euclidean"), block_size, False)
    return jnp.maximum(-vals[:, -1], 0.0)


def _inside_any_ball(q, ref, ref_sq_radius, block_size):
    """Per query: is ‖q − ref_j‖² <= r_j² for some j? Tiled over both sets."""
    nq, nr = q.shape[0], ref.shape[0]
    bq, br = min(block_size, nq), min(block_size, nr)
    nbq, q_starts, q_shifts = _blocks(nq, bq)
    nbr, r_starts, r_shifts = _blocks(nr, br)
    qrows = {"x": q, "sq": jnp.sum(q * q, axis=1)}
    rrows = {"x": ref, "sq": jnp.sum(ref * ref, axis=1), "r": ref_sq_radius}
    r_starts_arr = jnp.asarray(r_starts, jnp.int32)
    r_shifts_arr = jnp.asarray(r_shifts, jnp.int32)

    def per_query_block(q_start):
        qb = _read_block(qrows, q_start, bq)

        def step(hit, j):
            rb = _read_block(rrows, r_starts_arr[j], br)
            valid = jnp.arange(br) >= r_shifts_arr[j]
            inside = (_sqeuclidean_tile(qb, rb) <= rb["r"][None, :]) & valid[None, :]
            return hit | jnp.any(inside, axis=1), None

        hit, _ = lax.scan(step, jnp.zeros((bq,), bool), jnp.arange(nbr))
        return hit

    hits = lax.map(per_query_block, jnp.asarray(q_starts, jnp.int32))
    keep = np.concatenate([b * bq + np.arange(q_shifts[b], bq) for b in range(nbq)])
    return hits.reshape(-1)[keep].astype(_float_dtype())
