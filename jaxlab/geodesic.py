r"""Approximate geodesic distances over kNN graphs, and geodesic-scored summaries.

Contrastively trained sentence embeddings are reliable at short range only, yet
opinion summarization scores sentences by their (mostly large) distance to a
centre. J. Su, "从局部到全局：语义相似度的测地线距离" (kexue.fm/archives/9368,
2022) replaces the direct distance by the Isomap-style geodesic: the length of
the shortest path through a k-nearest-neighbour graph whose edges carry local
distances, and scores sentence t_i against the centre c by

    s(t_i, c) = 1 / d_geo(v(t_i), v(c)).

GeoSumm (arXiv 2209.07496, Findings of EMNLP 2023) uses such a geodesic
importance; its predecessor SemAE ranks sentences by Σ_heads KL(D_i ‖ mean D)
and extracts greedily under a 75-word budget, skipping sentences whose tf-idf
cosine to a chosen one exceeds 0.75.

Design (the sources give no k, symmetrization or smoothing): the kNN relation
is symmetrized by union (or mutual) and unreachable nodes are at distance +∞.
The kNN search runs on device in row blocks (block × all columns, ``lax.top_k``)
so no N×N matrix is ever materialized; the sparse graph and Dijkstra are a thin
host-side wrapper around ``scipy.sparse.csgraph``. For small N a jitted dense
min-plus (Bellman–Ford) / Floyd–Warshall path runs entirely on device.

Metrics: ``"euclidean"`` is ‖x − y‖; ``"cosine"`` is the angle between the
vectors, θ = arccos(cos(x, y)) ∈ [0, π]. The angle, unlike 1 − cos, is a metric
(it is the geodesic distance on the unit sphere), so d_geo ≥ θ with equality on
the complete graph; it ranks neighbours exactly as cosine similarity does.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.sparse as sp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int
from scipy.sparse import csgraph

from jaxlab import parallel

METRICS = ("cosine", "euclidean")
SYMMETRIC = ("union", "mutual")
SCORE_METHODS = ("geodesic", "cosine", "euclidean", "kl", "random")
SHORTEST_PATH_METHODS = ("dijkstra", "min_plus")
CENTER_MODES = ("node", "query")
REDUNDANCY_SIMILARITIES = ("tfidf", "embedding")
# Elements of one block of the on-device score matrix (64 MiB in float32).
BLOCK_ELEMENTS = 1 << 24
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


class KnnGraph(NamedTuple):
    """A symmetric kNN graph with its connectivity report.

    Attributes:
        matrix: scipy CSR array [N, N], symmetric, edge weight = base distance;
            absent entries are non-edges (explicit zeros are zero-length edges).
        neighbors: int [N, K] directed k nearest neighbours (self excluded).
        distances: float [N, K] their base distances, ascending per row.
        k: neighbours per node actually used.
        k_requested: neighbours per node the caller asked for.
        metric: "cosine" (angle) or "euclidean".
        symmetric: "union" or "mutual".
        n_components: number of connected components.
        labels: int [N] component label of every node.
    """

    matrix: sp.csr_array
    neighbors: np.ndarray
    distances: np.ndarray
    k: int
    k_requested: int
    metric: str
    symmetric: str
    n_components: int
    labels: np.ndarray

    @property
    def connected(self) -> bool:
        """Whether every node can reach every other node."""
        return self.n_components == 1

    @property
    def report(self) -> dict:
        """Connectivity report: sizes, k requested/used and components."""
        sizes = np.bincount(self.labels, minlength=self.n_components)
        n = int(self.matrix.shape[0])
        return {
            "num_nodes": n,
            "num_edges": int(self.matrix.nnz // 2),
            "k_requested": self.k_requested,
            "k_used": self.k,
            "metric": self.metric,
            "symmetric": self.symmetric,
            "n_components": self.n_components,
            "largest_component_fraction": float(sizes.max() / n),
            "connected": self.connected,
        }


class Summary(NamedTuple):
    """An extractive summary.

    Attributes:
        sentences: the chosen sentences, in selection (score) order.
        indices: int [S] their positions in the input.
        scores: float [S] their scores (higher = more central).
        num_words: total whitespace-separated words of the summary.
        all_scores: float [N] the scores of every input sentence.
    """

    sentences: list[str]
    indices: np.ndarray
    scores: np.ndarray
    num_words: int
    all_scores: np.ndarray


# ---------------------------------------------------------------------------
# Distances and the kNN graph
# ---------------------------------------------------------------------------


def pairwise_distances(
    x: Float[Array, "N D"], y: Float[Array, "M D"], *, metric: str = "cosine"
) -> Float[Array, "N M"]:
    r"""Dense base distances between two point sets (for small sets or blocks).

    euclidean: ‖x − y‖ = sqrt(max(‖x‖² + ‖y‖² − 2 x·y, 0));
    cosine:    θ = arccos(clip(x̂·ŷ, −1, 1)), x̂ = x / ‖x‖ (the angle: the
    geodesic metric of the unit sphere, monotone in cosine similarity).

    Args:
        x: [N, D] points.
        y: [M, D] points.
        metric: "cosine" or "euclidean".

    Returns:
        [N, M] distances.
    """
    _check_choice("metric", metric, METRICS)
    chex.assert_rank([x, y], 2)
    chex.assert_equal_shape_suffix([x, y], 1)
    if metric == "cosine":
        cos = _normalize(x) @ _normalize(y).T
        return jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sq = (
        jnp.sum(x * x, axis=1)[:, None]
        + jnp.sum(y * y, axis=1)[None, :]
        - 2.0 * (x @ y.T)
    )
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def knn(
    x: Float[Array, "N D"],
    k: int,
    *,
    metric: str = "cosine",
    block_size: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[Int[Array, "N K"], Float[Array, "N K"]]:
    r"""Exact k nearest neighbours of every point, tiled on device.

    Rows are processed in blocks of ``block_size`` against all N columns
    (one [block, N] score matrix at a time, ``lax.top_k``), so memory is
    O(N·k + block·N), never N×N. Neighbours are ranked by x̂·ŷ (cosine) or
    2 x·y − ‖y‖² (euclidean, = ‖x‖² − ‖x − y‖²); the K selected distances are
    then recomputed from differences, ‖x − y‖ or θ = 2 atan2(‖x̂ − ŷ‖, ‖x̂ + ŷ‖)
    (W. Kahan's numerically stable angle formula), so short edges keep full
    precision.

    With a ``mesh``, the rows are split over its ``"data"`` axis with
    ``jax.shard_map``: device d owns rows [d·m, (d + 1)·m), m = ⌈N / devices⌉
    (the last device's rows past N are padding, masked out as candidates and
    dropped from the output), all-gathers every device's rows as candidates
    and runs the same per-block search on its own rows. The neighbours are
    those of the single-device search (on ties-free data); the recomputed
    distances are bit-identical when the blocks have the same shape
    (``block_size`` = m on both sides) and otherwise agree to float rounding
    (XLA may vectorize the D-term sums of a different block shape differently).

    Args:
        x: [N, D] points, N ≥ 2.
        k: neighbours per point, 1 ≤ k ≤ N − 1 (static).
        metric: "cosine" or "euclidean" (static).
        block_size: rows per block (static); default keeps a block ≤ 2^24
            scores.
        mesh: device mesh with a ``"data"`` axis (static), or ``None`` for
            ``jaxlab.parallel.default_mesh()`` (single device when that is
            unset; read when the function is traced, so set it before the
            first call of a jitted wrapper).

    Returns:
        (neighbors int32 [N, K], distances [N, K]), ascending per row, self
        excluded. With a mesh both are row-sharded,
        ``NamedSharding(mesh, P("data"))``, when N is divisible by the size of
        the data axis, and replicated (``P()``) otherwise.
    """
    n = _check_points("x", x, min_points=2)
    _check_k(k, n - 1, "N - 1 (the number of other points)")
    _check_choice("metric", metric, METRICS)
    mesh = parallel.resolve_mesh(mesh)
    chex.assert_rank(x, 2)
    xs = jnp.asarray(x)
    if mesh is not None:
        return _sharded_knn(xs, n, k, metric, block_size, mesh)
    b = _block_rows(n, block_size)
    ref_sq = jnp.sum(xs * xs, axis=1)
    num_blocks = -(-n // b)
    rows = jnp.pad(xs, ((0, num_blocks * b - n), (0, 0)))
    rows = rows.reshape(num_blocks, b, xs.shape[1])
    starts = jnp.arange(num_blocks) * b

    def one_block(args):
        start, xb = args
        return _knn_block(xb, start + jnp.arange(b), xs, ref_sq, n, k, metric)

    idx, dist = lax.map(one_block, (starts, rows))
    idx = idx.reshape(num_blocks * b, k)[:n].astype(jnp.int32)
    dist = dist.reshape(num_blocks * b, k)[:n]
    return idx, dist


def knn_graph(
    x: Float[Array, "N D"],
    k: int,
    *,
    metric: str = "cosine",
    symmetric: str = "union",
    ensure_connected: bool = False,
    block_size: int | None = None,
    mesh: Mesh | None = None,
) -> KnnGraph:
    r"""Sparse symmetric kNN graph with base-distance edge weights (host side).

    Edge (i, j) exists if j ∈ kNN(i) or i ∈ kNN(j) ("union", the default
    proposed in reference §2) or if both hold ("mutual"); its weight is the
    base distance. The kNN search is :func:`knn` on device; the graph is a
    scipy CSR array. If the graph is disconnected and ``ensure_connected`` is
    False, a ``RuntimeWarning`` says so and geodesic distances between
    components are +∞. With ``ensure_connected=True``, k is doubled (capped at
    N − 1, where the graph is complete) until the graph is connected.

    Not jittable: it returns a scipy object. Its device part, :func:`knn`, is.

    Args:
        x: [N, D] points, N ≥ 2.
        k: neighbours per node, 1 ≤ k ≤ N − 1.
        metric: "cosine" (angle) or "euclidean".
        symmetric: "union" or "mutual".
        ensure_connected: raise k automatically until the graph is connected.
        block_size: rows per on-device block (see :func:`knn`).
        mesh: device mesh whose ``"data"`` axis splits the kNN search's rows
            (see :func:`knn`); ``None`` uses ``jaxlab.parallel.default_mesh()``.
            The result is the same graph.

    Returns:
        A :class:`KnnGraph` (CSR matrix plus connectivity report), on the host
        (numpy / scipy) whatever the mesh: the sharded search's rows are
        gathered by ``np.asarray``.
    """
    n = _check_points("x", x, min_points=2)
    _check_k(k, n - 1, "N - 1 (the number of other points)")
    _check_choice("metric", metric, METRICS)
    _check_choice("symmetric", symmetric, SYMMETRIC)
    # Resolved here, not inside the jitted search, so that the jit cache is
    # keyed on the mesh actually used.
    mesh = parallel.resolve_mesh(mesh)
    x = jnp.asarray(x)
    k_used = k
    while True:
        idx, dist = _knn_jit(
            x, k_used, metric=metric, block_size=block_size, mesh=mesh
        )
        idx, dist = np.asarray(idx), np.asarray(dist)
        matrix = _csr_from_knn(idx, dist, symmetric)
        n_comp, labels = csgraph.connected_components(matrix, directed=False)
        if n_comp == 1 or not ensure_connected or k_used >= n - 1:
            break
        k_used = min(2 * k_used, n - 1)
    if n_comp > 1:
        sizes = np.bincount(labels)
        warnings.warn(
            f"knn_graph: k={k_used} ({symmetric}) leaves the {n}-node graph in "
            f"{n_comp} connected components (largest {sizes.max()} nodes); "
            "geodesic distances between components are inf. Pass "
            "ensure_connected=True to raise k automatically.",
            RuntimeWarning,
            stacklevel=2,
        )
    return KnnGraph(
        matrix, idx, dist, int(k_used), int(k), metric, symmetric, int(n_comp), labels
    )


def dense_knn_weights(
    neighbors: Int[Array, "N K"],
    distances: Float[Array, "N K"],
    *,
    symmetric: str = "union",
) -> Float[Array, "N N"]:
    r"""Dense symmetric kNN weight matrix (small N): +∞ for non-edges, 0 diagonal.

    W_ij = d(i, j) if j ∈ kNN(i) or (union) / and (mutual) i ∈ kNN(j), else +∞;
    reference §5 ("knn_graph as a dense matrix with +∞ for non-edges").

    Args:
        neighbors: int [N, K] from :func:`knn`.
        distances: [N, K] from :func:`knn`.
        symmetric: "union" or "mutual" (static).

    Returns:
        [N, N] weights for :func:`floyd_warshall` / :func:`min_plus_distances`.
    """
    _check_choice("symmetric", symmetric, SYMMETRIC)
    chex.assert_rank([neighbors, distances], 2)
    chex.assert_equal_shape([neighbors, distances])
    n = neighbors.shape[0]
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], neighbors.shape)
    w = jnp.full((n, n), jnp.inf, distances.dtype)
    w = w.at[rows, neighbors].min(distances)
    w = jnp.minimum(w, w.T) if symmetric == "union" else jnp.maximum(w, w.T)
    return jnp.where(jnp.eye(n, dtype=bool), jnp.zeros((), w.dtype), w)


# ---------------------------------------------------------------------------
# Shortest paths
# ---------------------------------------------------------------------------


def geodesic_distances(
    graph: KnnGraph | sp.sparray | sp.spmatrix,
    sources: int | Sequence[int] | np.ndarray,
    *,
    nearest: bool = False,
    method: str = "dijkstra",
) -> np.ndarray:
    r"""Geodesic (shortest-path) distances from one or several source nodes.

    d_geo(s, j) = min over paths s = v_0, …, v_m = j of Σ_t w(v_t, v_{t+1}),
    the Isomap geodesic (Tenenbaum et al. 2000; Su 2022). "dijkstra"
    calls ``scipy.sparse.csgraph.dijkstra`` on the sparse graph (undirected);
    "min_plus" densifies the graph and runs the jitted on-device
    :func:`min_plus_distances` (small N only). Unreachable nodes get +∞.

    Not jittable: the graph is a scipy object (use :func:`min_plus_distances`
    or :func:`geodesic_scores` inside jit).

    Args:
        graph: a :class:`KnnGraph` or a symmetric scipy sparse [N, N] matrix
            whose stored entries are edges (explicit zeros included).
        sources: a node index, or a sequence of S node indices.
        nearest: return, for each node, the distance to its nearest source
            (multi-source Dijkstra) instead of one row per source.
        method: "dijkstra" (SciPy, host) or "min_plus" (JAX, device).

    Returns:
        float64 [N] for a single source or ``nearest=True``, else [S, N].
    """
    _check_choice("method", method, SHORTEST_PATH_METHODS)
    matrix = graph.matrix if isinstance(graph, KnnGraph) else graph
    if not sp.issparse(matrix):
        raise ValueError(
            f"graph must be a KnnGraph or a scipy sparse matrix, got "
            f"{type(graph).__name__}"
        )
    n = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] != n:
        raise ValueError(f"graph must be square [N, N], got shape {matrix.shape}")
    single = np.ndim(sources) == 0
    src = np.atleast_1d(np.asarray(sources))
    if src.size == 0 or not np.issubdtype(src.dtype, np.integer):
        raise ValueError(
            f"sources must be a node index or a non-empty sequence of integer "
            f"indices, got {sources!r}"
        )
    if src.min() < 0 or src.max() >= n:
        raise ValueError(f"sources must lie in [0, {n - 1}], got {sources!r}")
    if method == "dijkstra":
        dist = csgraph.dijkstra(matrix, directed=False, indices=src, min_only=nearest)
        return dist if nearest else (dist[0] if single else dist)
    coo = matrix.tocoo()
    w = np.full((n, n), np.inf)
    w[coo.row, coo.col] = coo.data
    w = np.minimum(w, w.T)
    np.fill_diagonal(w, 0.0)
    dist = np.asarray(_min_plus_jit(jnp.asarray(w), jnp.asarray(src)), np.float64)
    if nearest:
        return dist.min(axis=0)
    return dist[0] if single else dist


def min_plus_distances(
    weights: Float[Array, "N N"],
    sources: Int[Array, " S"],
    *,
    num_iters: int | None = None,
) -> Float[Array, "S N"]:
    r"""Single/multi-source shortest paths by repeated min-plus products (device).

    Bellman–Ford in min-plus algebra: d⁰ = e_s (0 at the source, +∞ elsewhere),
    d^{t+1}_j = min_i (d^t_i + W_ij); with W_jj = 0 this converges to the
    geodesic after at most N − 1 rounds (reference §5, "single-source
    Bellman–Ford from c"). Sources are processed one after another
    (``lax.map``), so memory is O(N²).

    Args:
        weights: [N, N] non-negative edge weights, +∞ for non-edges, 0 diagonal
            (e.g. :func:`dense_knn_weights`).
        sources: int [S] source nodes.
        num_iters: None (default) iterates until nothing changes
            (``lax.while_loop``; not reverse-differentiable); an int runs exactly
            that many rounds (``lax.fori_loop``; differentiable; exact once it
            is ≥ the number of edges on every shortest path).

    Returns:
        [S, N] distances; +∞ where unreachable.
    """
    if num_iters is not None:
        _check_positive_int("num_iters", num_iters)
    chex.assert_rank([weights, sources], [2, 1])
    n = weights.shape[0]
    chex.assert_shape(weights, (n, n))

    def relax(d):
        return jnp.min(d[:, None] + weights, axis=0)

    def one_source(s):
        d0 = jnp.where(jnp.arange(n) == s, 0.0, jnp.inf).astype(weights.dtype)
        if num_iters is not None:
            return lax.fori_loop(0, num_iters, lambda _, d: relax(d), d0)

        def cond(state):
            _, changed, it = state
            return changed & (it < n)

        def body(state):
            d, _, it = state
            new = relax(d)
            return new, jnp.any(new < d), it + 1

        d, _, _ = lax.while_loop(cond, body, (d0, jnp.array(True), 0))
        return d

    return lax.map(one_source, sources)


def floyd_warshall(weights: Float[Array, "N N"]) -> Float[Array, "N N"]:
    r"""All-pairs shortest paths, Floyd–Warshall in ``lax.fori_loop`` (device).

    D⁰ = W; D^{m+1}_ij = min(D^m_ij, D^m_im + D^m_mj) for m = 0 … N − 1
    (Floyd 1962; reference §5). O(N³) time, O(N²) memory; differentiable (the
    gradient of a path length w.r.t. W is the indicator of its edges).

    Args:
        weights: [N, N] non-negative edge weights, +∞ for non-edges, 0 diagonal.

    Returns:
        [N, N] geodesic distances; +∞ between disconnected nodes.
    """
    chex.assert_rank(weights, 2)
    n = weights.shape[0]
    chex.assert_shape(weights, (n, n))

    def body(m, d):
        col = lax.dynamic_slice_in_dim(d, m, 1, axis=1)
        row = lax.dynamic_slice_in_dim(d, m, 1, axis=0)
        return jnp.minimum(d, col + row)

    return lax.fori_loop(0, n, body, weights)


# ---------------------------------------------------------------------------
# Scoring against a centre
# ---------------------------------------------------------------------------


def mean_center(x: Float[Array, "N D"]) -> Float[Array, " D"]:
    r"""The centre c = (1/N) Σ_i x_i (the mean embedding; SemAE's P = mean D_i).

    Args:
        x: [N, D] embeddings.

    Returns:
        [D] mean embedding.
    """
    _check_points("x", x, min_points=1)
    chex.assert_rank(x, 2)
    return jnp.mean(x, axis=0)


def geodesic_scores(
    x: Float[Array, "N D"],
    center: Float[Array, " D"] | None = None,
    *,
    k: int = 10,
    metric: str = "cosine",
    symmetric: str = "union",
    center_mode: str = "node",
    method: str = "dijkstra",
    block_size: int | None = None,
) -> Float[Array, " N"]:
    r"""Geodesic scores s_i = 1 / d_geo(x_i, c) with the centre inserted as a node.

    The N points plus c form N + 1 nodes; edges carry base distances and d_geo
    is the shortest-path length from c (Su 2022: s(t_i, c) = 1/d(v(t_i), v(c));
    the sentences and the centre are nodes, each linked to its k nearest).
    ``center_mode`` fixes how c is linked (the sources are silent):

    - "node": c is an ordinary node of the kNN graph of all N + 1 points, then
      "union"/"mutual" symmetrization. A mean embedding is usually the nearest
      neighbour of most points (a hub), so with "union" it is adjacent to almost
      every point and, the base distance being a metric, d_geo(c, x_i) = d(c, x_i).
    - "query": the kNN graph of the N points alone (symmetrized), plus edges from
      c to its k nearest points; c never enters the points' neighbour lists.

    Either way the k best-scoring points are c's k nearest by the base metric
    (a direct edge is a shortest path), so geodesic ranks differ from the base
    ranking only beyond rank k. Unreachable nodes score 0 (d_geo = +∞); a point
    equal to c scores 1/tiny. Jittable with both methods: "dijkstra" runs SciPy
    on the host through ``jax.pure_callback``; "min_plus" stays on device
    (O(N²) memory).

    Args:
        x: [N, D] embeddings.
        center: [D] centre; default the mean embedding (:func:`mean_center`).
        k: neighbours per node, 1 ≤ k ≤ N ("node") or ≤ N − 1 ("query")
            (static).
        metric: "cosine" (angle) or "euclidean" (static).
        symmetric: "union" or "mutual" (static).
        center_mode: "node" or "query" (static).
        method: "dijkstra" or "min_plus" (static).
        block_size: rows per kNN block (static).

    Returns:
        [N] scores, higher = closer to the centre along the data manifold.
    """
    _check_choice("method", method, SHORTEST_PATH_METHODS)
    _check_choice("symmetric", symmetric, SYMMETRIC)
    _check_choice("center_mode", center_mode, CENTER_MODES)
    _check_choice("metric", metric, METRICS)
    if center_mode == "node":
        n = _check_points("x", x, min_points=1)
        _check_k(k, n, "N (the number of points besides the centre)")
    else:
        n = _check_points("x", x, min_points=2)
        _check_k(k, n - 1, "N - 1 (the centre is not a neighbour candidate)")
    chex.assert_rank(x, 2)
    c = mean_center(x) if center is None else center
    chex.assert_shape(c, (x.shape[1],))
    c = c.astype(x.dtype)
    if center_mode == "node":
        z = jnp.concatenate([x, c[None, :]], axis=0)
        idx, dist = knn(z, k, metric=metric, block_size=block_size)
        c_idx = jnp.zeros((0,), jnp.int32)
        c_dist = jnp.zeros((0,), dist.dtype)
    else:
        idx, dist = knn(x, k, metric=metric, block_size=block_size)
        xs, cs = (_normalize(x), _normalize(c)) if metric == "cosine" else (x, c)
        to_c = _edge_distance(xs, cs[None, :], metric)
        _, c_idx = lax.top_k(-to_c, k)
        c_idx = c_idx.astype(jnp.int32)
        c_dist = to_c[c_idx]
    if method == "dijkstra":
        d = _center_dijkstra_callback(idx, dist, c_idx, c_dist, symmetric, n)
    else:
        w = dense_knn_weights(idx, dist, symmetric=symmetric)
        if center_mode == "query":
            w = jnp.pad(w, ((0, 1), (0, 1)), constant_values=jnp.inf)
            w = w.at[n, n].set(0.0).at[n, c_idx].set(c_dist).at[c_idx, n].set(c_dist)
        d = min_plus_distances(w, jnp.array([n]))[0]
    return 1.0 / jnp.maximum(d[:n], jnp.finfo(d.dtype).tiny)


def cosine_scores(
    x: Float[Array, "N D"], center: Float[Array, " D"] | None = None
) -> Float[Array, " N"]:
    r"""Cosine-to-centre baseline: s_i = cos(x_i, c) = x̂_i · ĉ.

    Args:
        x: [N, D] embeddings.
        center: [D] centre; default the mean embedding.

    Returns:
        [N] cosine similarities in [−1, 1].
    """
    _check_points("x", x, min_points=1)
    chex.assert_rank(x, 2)
    c = mean_center(x) if center is None else center
    chex.assert_shape(c, (x.shape[1],))
    return _normalize(x) @ _normalize(c[None, :])[0]


def euclidean_scores(
    x: Float[Array, "N D"], center: Float[Array, " D"] | None = None
) -> Float[Array, " N"]:
    r"""Euclidean baseline: s_i = 1 / ‖x_i − c‖ (Su 2022's 1/d with d = ‖·‖).

    Args:
        x: [N, D] embeddings.
        center: [D] centre; default the mean embedding.

    Returns:
        [N] scores (1/tiny for a point equal to the centre).
    """
    _check_points("x", x, min_points=1)
    chex.assert_rank(x, 2)
    c = mean_center(x) if center is None else center
    chex.assert_shape(c, (x.shape[1],))
    d = jnp.sqrt(jnp.sum(jnp.square(x - c[None, :]), axis=1))
    return 1.0 / jnp.maximum(d, jnp.finfo(d.dtype).tiny)


def kl_scores(
    p: Float[Array, "N *H U"],
    center: Float[Array, "*H U"] | None = None,
    *,
    eps: float = 1e-12,
) -> Float[Array, " N"]:
    r"""KL-to-mean baseline for distribution-valued representations (SemAE).

    With per-head distributions D_i^h over U latent units and centre
    P^h = (1/N) Σ_i D_i^h, KL_i = Σ_h Σ_u D_i^h(u) log(D_i^h(u) / P^h(u))
    (SemAE's ranking, ascending KL; reference §3); the score is s_i = 1/KL_i,
    Su's 1/d with d = KL. Terms with D_i^h(u) = 0 contribute 0; ``eps`` guards
    the logarithms.

    Args:
        p: [N, U] or [N, H, U] non-negative rows summing to 1 over U.
        center: [U] or [H, U] centre distribution; default the mean of p.
        eps: floor inside the logarithms (> 0).

    Returns:
        [N] scores, higher = closer to the centre (1/tiny when KL = 0).
    """
    _check_real("eps", eps, minimum=0.0, strict=True)
    _check_points("p", p, min_points=1)
    if p.ndim not in (2, 3):
        raise ValueError(f"p must be [N, U] or [N, H, U], got shape {p.shape}")
    c = jnp.mean(p, axis=0) if center is None else center
    chex.assert_shape(c, p.shape[1:])
    terms = p * (jnp.log(jnp.maximum(p, eps)) - jnp.log(jnp.maximum(c, eps))[None])
    kl = jnp.sum(jnp.where(p > 0, terms, 0.0).reshape(p.shape[0], -1), axis=1)
    return 1.0 / jnp.maximum(kl, jnp.finfo(kl.dtype).tiny)


# ---------------------------------------------------------------------------
# Extractive summaries
# ---------------------------------------------------------------------------


def summarize(
    sentences: Sequence[str],
    embeddings: Float[Array, "N D"],
    *,
    budget_words: int = 75,
    method: str = "geodesic",
    redundancy: float = 0.75,
    k: int = 10,
    metric: str = "cosine",
    symmetric: str = "union",
    center_mode: str = "node",
    center: Float[Array, " D"] | None = None,
    similarity: str = "tfidf",
    min_words: int = 2,
    key: jax.Array | None = None,
) -> Summary:
    r"""Greedy extractive summary under a word budget with redundancy filtering.

    Sentences are ranked by score (descending) and taken greedily; a sentence
    is skipped if it has fewer than ``min_words`` words, would push the summary
    over ``budget_words``, or has similarity > ``redundancy`` to an already
    chosen sentence (SemAE's extraction: 75 words, tf-idf cosine 0.75, ≥ 2
    tokens; reference §3); "geodesic" never picks a sentence unreachable from
    the centre (score 0), so its summary can fall short of the budget.
    Scores: "geodesic" 1/d_geo to the centre
    (:func:`geodesic_scores`), "cosine" cos to the centre, "euclidean"
    1/‖x − c‖, "kl" 1/KL to the mean distribution (``embeddings`` must then be
    distributions), "random" uniform scores drawn from ``key``.

    Host function (strings in, strings out); the scoring runs jitted.

    Args:
        sentences: N sentences.
        embeddings: [N, D] their embeddings (or [N, U] distributions for "kl").
        budget_words: maximum total words (whitespace-separated), ≥ 1.
        method: "geodesic", "cosine", "euclidean", "kl" or "random".
        redundancy: similarity threshold in (0, 1]; 1 disables the filter.
        k: kNN neighbours for "geodesic", 1 ≤ k ≤ N.
        metric: base metric for "geodesic".
        symmetric: kNN symmetrization for "geodesic" ("union" or "mutual").
        center_mode: how the centre joins the graph for "geodesic" ("node" or
            "query", see :func:`geodesic_scores`).
        center: [D] centre; default the mean embedding.
        similarity: "tfidf" (SemAE) or "embedding" (cosine of embeddings) for
            the redundancy filter.
        min_words: minimum words of a chosen sentence, ≥ 1.
        key: PRNG key, required for (and only used by) ``method="random"``.

    Returns:
        A :class:`Summary` with the chosen sentences, indices and scores.
    """
    _check_choice("method", method, SCORE_METHODS)
    _check_choice("similarity", similarity, REDUNDANCY_SIMILARITIES)
    _check_positive_int("budget_words", budget_words)
    _check_positive_int("min_words", min_words)
    if not 0.0 < redundancy <= 1.0:
        raise ValueError(f"redundancy must be in (0, 1], got {redundancy!r}")
    if isinstance(sentences, str):
        raise ValueError(  # noqa: TRY004 (house style: ValueError for bad args)
            "sentences must be a sequence of strings, got one string"
        )
    sentences = list(sentences)
    n = _check_points("embeddings", embeddings, min_points=1)
    if len(sentences) != n:
        raise ValueError(
            f"sentences and embeddings must have the same length, got "
            f"{len(sentences)} sentences and {n} embeddings"
        )
    if method == "random" and key is None:
        raise ValueError("method='random' needs key=jax.random.key(...)")
    emb = jnp.asarray(embeddings)
    if method == "geodesic":
        _check_choice("center_mode", center_mode, CENTER_MODES)
        k_max = n if center_mode == "node" else n - 1
        _check_k(k, k_max, "N (node) or N - 1 (query), N = number of sentences")
        scores = _geodesic_scores_jit(
            emb,
            center,
            k=k,
            metric=metric,
            symmetric=symmetric,
            center_mode=center_mode,
        )
    elif method == "cosine":
        scores = _cosine_scores_jit(emb, center)
    elif method == "euclidean":
        scores = _euclidean_scores_jit(emb, center)
    elif method == "kl":
        scores = _kl_scores_jit(emb, center)
    else:
        scores = jr.uniform(key, (n,))
    scores = np.asarray(scores, np.float64)
    if similarity == "tfidf":
        feats = _tfidf(sentences)
    else:
        feats = np.asarray(_normalize(emb), np.float64)
    words = np.array([len(s.split()) for s in sentences])
    chosen: list[int] = []
    total = 0
    for i in np.argsort(-scores, kind="stable"):
        if method == "geodesic" and scores[i] == 0.0:
            break  # unreachable from the centre (d_geo = inf): no evidence
        if words[i] < min_words or total + words[i] > budget_words:
            continue
        if chosen and float(np.max(feats[chosen] @ feats[i])) > redundancy:
            continue
        chosen.append(int(i))
        total += int(words[i])
    idx = np.array(chosen, dtype=np.int64)
    return Summary([sentences[i] for i in idx], idx, scores[idx], total, scores)


def summary_metrics(
    embeddings: Float[Array, "N D"],
    selected: Bool[Array, " N"],
    labels: Float[Array, " N"] | None = None,
) -> dict[str, Array]:
    r"""Reference-free summary quality (no gold summaries needed).

    With unit embeddings ê_i and the summary S:
    coverage = (1/N) Σ_i max_{j∈S} ê_i·ê_j (how well every input sentence is
    represented; NaN for an empty summary); redundancy = mean_{i<j ∈ S} ê_i·ê_j
    (0 for |S| < 2);
    with binary labels (1 = positive): label_share = mean_{j∈S} y_j,
    label_share_all = mean_i y_i and sentiment_error = |label_share −
    label_share_all| (sentiment fidelity; NaN for an empty summary).

    Args:
        embeddings: [N, D] embeddings of all input sentences.
        selected: bool [N] membership of the summary.
        labels: optional [N] binary labels.

    Returns:
        dict of scalars: coverage, redundancy, num_selected and, with labels,
        label_share, label_share_all, sentiment_error.
    """
    _check_points("embeddings", embeddings, min_points=1)
    chex.assert_rank([embeddings, selected], [2, 1])
    chex.assert_axis_dimension(selected, 0, embeddings.shape[0])
    e = _normalize(embeddings)
    sim = e @ e.T
    sel = selected.astype(bool)
    m = jnp.sum(sel)
    best = jnp.max(jnp.where(sel[None, :], sim, -jnp.inf), axis=1)
    coverage = jnp.where(m > 0, jnp.mean(best), jnp.nan)
    pair = sel[:, None] & sel[None, :] & ~jnp.eye(sel.shape[0], dtype=bool)
    red = jnp.sum(jnp.where(pair, sim, 0.0)) / jnp.maximum(m * (m - 1), 1)
    out = {"coverage": coverage, "redundancy": red, "num_selected": m}
    if labels is not None:
        chex.assert_shape(labels, selected.shape)
        y = labels.astype(e.dtype)
        share = jnp.where(
            m > 0, jnp.sum(jnp.where(sel, y, 0.0)) / jnp.maximum(m, 1), jnp.nan
        )
        share_all = jnp.mean(y)
        out |= {
            "label_share": share,
            "label_share_all": share_all,
            "sentiment_error": jnp.abs(share - share_all),
        }
    return out


# ---------------------------------------------------------------------------
# Manifolds with known geodesics (tests and experiments)
# ---------------------------------------------------------------------------


def swiss_roll(
    key: jax.Array, n: int, *, noise: float = 0.0
) -> tuple[Float[Array, "N 3"], Float[Array, "N 2"]]:
    r"""Uniform-in-t Swiss roll with its intrinsic (isometric) coordinates.

    t ~ U[1.5π, 4.5π], h ~ U[0, 21] (scikit-learn's ``make_swiss_roll``),
    x = (t cos t, h, t sin t) (+ noise). The spiral's arc length is
    σ(t) = ½ (t √(1 + t²) + asinh t), since ‖dx/dt‖² = 1 + t²; the roll is a
    flat developable surface and (σ, h) fills a rectangle, so the true geodesic
    distance is ‖(σ_i, h_i) − (σ_j, h_j)‖.

    Args:
        key: PRNG key.
        n: number of points, ≥ 1 (static).
        noise: standard deviation of isotropic Gaussian noise, ≥ 0.

    Returns:
        (points [N, 3], intrinsic coordinates [N, 2]).
    """
    _check_positive_int("n", n)
    _check_real("noise", noise, minimum=0.0, strict=False)
    t_key, h_key, e_key = jr.split(key, 3)
    t = 1.5 * jnp.pi * (1.0 + 2.0 * jr.uniform(t_key, (n,)))
    h = 21.0 * jr.uniform(h_key, (n,))
    x = jnp.stack([t * jnp.cos(t), h, t * jnp.sin(t)], axis=1)
    x = x + noise * jr.normal(e_key, x.shape, x.dtype)
    arc = 0.5 * (t * jnp.sqrt(1.0 + t * t) + jnp.arcsinh(t))
    return x, jnp.stack([arc, h], axis=1)


def sphere(key: jax.Array, n: int, *, dim: int = 3) -> Float[Array, "N dim"]:
    r"""n points uniform on the unit sphere S^{dim−1} (normalized Gaussians).

    The true geodesic between points is the angle arccos(x·y), i.e.
    ``pairwise_distances(x, x, metric="cosine")``.

    Args:
        key: PRNG key.
        n: number of points, ≥ 1 (static).
        dim: ambient dimension, ≥ 2 (static).

    Returns:
        [N, dim] unit vectors.
    """
    _check_positive_int("n", n)
    if not (isinstance(dim, int | np.integer) and dim >= 2):
        raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
    return _normalize(jr.normal(key, (n, dim)))


def random_features(
    key: jax.Array,
    x: Float[Array, "N D"],
    *,
    num_features: int = 384,
    scale: float = 1.0,
) -> Float[Array, "N F"]:
    r"""Random Fourier features φ(x) = √(2/F) cos(W x + b) of a Gaussian kernel.

    W ~ N(0, scale² I), b ~ U[0, 2π]; E[φ(x)·φ(y)] = exp(−scale² ‖x − y‖² / 2)
    (Rahimi & Recht 2007, Eq. 2 and Claim 1). The embedding is locally an
    isometry up to the factor ``scale`` but its similarity saturates to ≈ 0 for
    distant points: a model of embeddings that are reliable only at short
    range (Su 2022 §1).

    Args:
        key: PRNG key.
        x: [N, D] points.
        num_features: F ≥ 1 (static).
        scale: kernel inverse length scale, > 0.

    Returns:
        [N, F] features.
    """
    _check_positive_int("num_features", num_features)
    _check_real("scale", scale, minimum=0.0, strict=True)
    _check_points("x", x, min_points=1)
    chex.assert_rank(x, 2)
    w_key, b_key = jr.split(key)
    w = scale * jr.normal(w_key, (x.shape[1], num_features), x.dtype)
    b = 2.0 * jnp.pi * jr.uniform(b_key, (num_features,), x.dtype)
    return jnp.sqrt(2.0 / num_features) * jnp.cos(x @ w + b[None, :])


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _normalize(x):
    """Rows scaled to unit norm (zero rows stay zero)."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)


def _edge_distance(a, b, metric):
    """Exact distances between broadcast rows a, b (differences, no matmul)."""
    if metric == "euclidean":
        return jnp.sqrt(jnp.sum(jnp.square(a - b), axis=-1))
    minus = jnp.sqrt(jnp.sum(jnp.square(a - b), axis=-1))
    plus = jnp.sqrt(jnp.sum(jnp.square(a + b), axis=-1))
    return 2.0 * jnp.arctan2(minus, plus)


def _csr_from_knn(idx, dist, symmetric):
    """Symmetric CSR array from directed kNN lists (union or mutual)."""
    n, k = idx.shape
    i = np.repeat(np.arange(n, dtype=np.int64), k)
    j = idx.reshape(-1).astype(np.int64)
    w = dist.reshape(-1).astype(np.float64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keys, first, counts = np.unique(lo * n + hi, return_index=True, return_counts=True)
    if symmetric == "mutual":
        keep = counts == 2
        keys, first = keys[keep], first[keep]
    a, b, data = keys // n, keys % n, w[first]
    rows = np.concatenate([a, b])
    cols = np.concatenate([b, a])
    return sp.csr_array((np.concatenate([data, data]), (rows, cols)), shape=(n, n))


def _center_dijkstra_callback(idx, dist, c_idx, c_dist, symmetric, n):
    """Dijkstra from the centre on the host, callable under jit and vmap.

    XLA may run the callback on a thread where a context-local
    ``jax.enable_x64`` is off; JAX then canonicalizes float64 operands and
    results to float32 there. float64 arrays therefore cross the boundary as
    their raw bits (uint32 pairs) and are reassembled on the other side.
    """
    wide = dist.dtype == jnp.float64

    def host(i, w, ci, cw):
        if wide:
            w, cw = (np.ascontiguousarray(a).view(np.float64)[..., 0] for a in (w, cw))
        d = _host_center_dijkstra(i, w, ci, cw, symmetric=symmetric, n=n)
        return d.view(np.uint32).reshape(n + 1, 2) if wide else d

    if wide:
        dist, c_dist = (lax.bitcast_convert_type(a, jnp.uint32) for a in (dist, c_dist))
        out = jax.ShapeDtypeStruct((n + 1, 2), jnp.uint32)
    else:
        out = jax.ShapeDtypeStruct((n + 1,), dist.dtype)
    d = jax.pure_callback(host, out, idx, dist, c_idx, c_dist, vmap_method="sequential")
    return lax.bitcast_convert_type(d, jnp.float64) if wide else d


def _host_center_dijkstra(idx, dist, c_idx, c_dist, *, symmetric, n):
    """Host callback: Dijkstra from the centre (node n) over the kNN graph.

    ``idx``/``dist`` list neighbours of all nodes ([N + 1, K], "node" mode) or of
    the N points only ([N, K], "query" mode, with the centre's edges in
    ``c_idx``/``c_dist``).
    """
    idx, dist = np.asarray(idx), np.asarray(dist)
    graph = _csr_from_knn(idx, dist, symmetric).tocoo()
    rows, cols, data = [graph.row], [graph.col], [graph.data]
    c_idx = np.asarray(c_idx, np.int64)
    if c_idx.size:
        c_dist = np.asarray(c_dist, np.float64)
        rows += [np.full(c_idx.size, n), c_idx]
        cols += [c_idx, np.full(c_idx.size, n)]
        data += [c_dist, c_dist]
    matrix = sp.csr_array(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n + 1, n + 1),
    )
    d = csgraph.dijkstra(matrix, directed=False, indices=n)
    if np.isinf(d).any():
        warnings.warn(
            f"geodesic_scores: {int(np.isinf(d).sum())} of {n} points are "
            f"unreachable from the centre with k={idx.shape[1]} ({symmetric}); "
            "they score 0. Raise k to connect the graph.",
            RuntimeWarning,
            stacklevel=2,
        )
    return np.ascontiguousarray(d, dtype=dist.dtype)


def _tfidf(sentences):
    """L2-normalized tf-idf rows (raw counts, smooth idf = ln((1+n)/(1+df)) + 1)."""
    docs = [_TOKEN.findall(s.lower()) for s in sentences]
    vocab = {w: t for t, w in enumerate(sorted({w for d in docs for w in d}))}
    tf = np.zeros((len(docs), max(len(vocab), 1)))
    for r, d in enumerate(docs):
        for w in d:
            tf[r, vocab[w]] += 1.0
    df = np.count_nonzero(tf, axis=0)
    tfidf = tf * (np.log((1.0 + len(docs)) / (1.0 + df)) + 1.0)[None, :]
    norm = np.linalg.norm(tfidf, axis=1, keepdims=True)
    return tfidf / np.maximum(norm, np.finfo(np.float64).tiny)


def _knn_block(xb, row_ids, xs, ref_sq, n_valid, k, metric):
    """k nearest candidates of the query rows ``xb`` (global ids ``row_ids``).

    Candidates are the rows of ``xs``; those at index ≥ ``n_valid`` (padding)
    and each query's own row are excluded. For cosine, ``xb`` and ``xs`` are the
    raw rows: they are normalized here for the scores, and again per selected
    pair for the distances, so a distance depends only on its two rows and
    not on how XLA fuses a whole-array normalization (bit-identical results
    on one device or many). Returns (indices, distances), the distances
    recomputed from differences and sorted ascending.
    """
    cols = jnp.arange(xs.shape[0])
    if metric == "cosine":
        score = _normalize(xb) @ _normalize(xs).T
    else:
        score = 2.0 * (xb @ xs.T) - ref_sq[None, :]
    excluded = (row_ids[:, None] == cols[None, :]) | (cols[None, :] >= n_valid)
    score = jnp.where(excluded, -jnp.inf, score)
    _, idx = lax.top_k(score, k)
    a, b = xb[:, None, :], xs[idx]
    if metric == "cosine":
        a, b = _normalize(a), _normalize(b)
    dist = _edge_distance(a, b, metric)
    order = jnp.argsort(dist, axis=1)
    return (
        jnp.take_along_axis(idx, order, axis=1),
        jnp.take_along_axis(dist, order, axis=1),
    )


def _sharded_knn(xs, n, k, metric, block_size, mesh):
    """Row-sharded :func:`knn` (``jax.shard_map``, candidates all-gathered)."""
    axis = parallel.DATA
    ndev = mesh.shape[axis]
    per = -(-n // ndev)
    total = per * ndev
    b = min(per, _block_rows(total, block_size))
    local = -(-per // b) * b
    xs = jnp.pad(xs, ((0, total - n), (0, 0)))

    def per_device(own):
        cand = lax.all_gather(own, axis, tiled=True)
        ref_sq = jnp.sum(cand * cand, axis=1)
        first = lax.axis_index(axis) * per
        blocks = jnp.pad(own, ((0, local - per), (0, 0)))
        blocks = blocks.reshape(local // b, b, own.shape[1])
        starts = first + jnp.arange(local // b) * b

        def one_block(args):
            start, xb = args
            return _knn_block(xb, start + jnp.arange(b), cand, ref_sq, n, k, metric)

        idx, dist = lax.map(one_block, (starts, blocks))
        return idx.reshape(local, k)[:per], dist.reshape(local, k)[:per]

    idx, dist = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(axis),), out_specs=(P(axis), P(axis))
    )(xs)
    idx, dist = idx[:n].astype(jnp.int32), dist[:n]
    spec = P(axis) if n % ndev == 0 else P()
    sharding = NamedSharding(mesh, spec)
    return (
        lax.with_sharding_constraint(idx, sharding),
        lax.with_sharding_constraint(dist, sharding),
    )


def _block_rows(n, block_size):
    """Rows per kNN block: the caller's, or the most that keep ≤ BLOCK_ELEMENTS."""
    if block_size is None:
        return int(min(n, max(1, BLOCK_ELEMENTS // n)))
    _check_positive_int("block_size", block_size)
    return int(min(n, block_size))


def _check_points(name, x, *, min_points):
    """Raise ValueError unless x is [N, ...] with N ≥ min_points; return N."""
    shape = np.shape(x)
    if len(shape) < 2:
        raise ValueError(f"{name} must be [N, D], got shape {shape}")
    if shape[0] < min_points or any(s == 0 for s in shape[1:]):
        raise ValueError(
            f"{name} must have at least {min_points} point(s) of non-zero "
            f"dimension, got shape {shape}"
        )
    return int(shape[0])


def _check_k(k, k_max, what):
    """Raise ValueError unless 1 ≤ k ≤ k_max (a Python int)."""
    if not isinstance(k, int | np.integer) or isinstance(k, bool):
        raise ValueError(f"k must be a Python int, got {k!r}")  # noqa: TRY004
    if not 1 <= k <= k_max:
        raise ValueError(f"k must satisfy 1 <= k <= {what} = {k_max}, got k={k}")


def _check_positive_int(name, value):
    """Raise ValueError unless value is an int ≥ 1."""
    if (
        not isinstance(value, int | np.integer)
        or isinstance(value, bool)
        or value < 1
    ):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_real(name, value, *, minimum, strict):
    """Raise ValueError unless a concrete number is > (strict) or ≥ minimum.

    Traced values (a hyperparameter passed through jit) cannot be checked.
    """
    if isinstance(value, jax.core.Tracer):
        return
    ok = np.ndim(value) == 0 and (
        value > minimum if strict else value >= minimum
    )
    if not ok:
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be a number {op} {minimum}, got {value!r}")


def _check_choice(name, value, allowed):
    """Raise ValueError unless value is one of allowed."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


_knn_jit = jax.jit(knn, static_argnames=("k", "metric", "block_size", "mesh"))
_min_plus_jit = jax.jit(min_plus_distances, static_argnames=("num_iters",))
_geodesic_scores_jit = jax.jit(
    geodesic_scores,
    static_argnames=(
        "k", "metric", "symmetric", "center_mode", "method", "block_size"
    ),
)
_cosine_scores_jit = jax.jit(cosine_scores)
_euclidean_scores_jit = jax.jit(euclidean_scores)
_kl_scores_jit = jax.jit(kl_scores)
