"""Tests for jaxlab.losses against the known values and invariants of
reference/losses.md (sections 13-15). Every public function runs under jax.jit.

Tolerances: float32 rtol 1e-5 / atol 1e-6, float64 rtol 1e-10 (style rule 21);
expected values come from closed forms evaluated here in NumPy float64, from
the reference's published numbers, or from independent implementations
(optax, brute-force enumeration, Newton's identities).
"""

import functools
import itertools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from jaxlab import losses

F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-10, atol=1e-12)


def jit_value_and_grad(fn, static=()):
    """jax.jit of (per-example losses, d sum(losses) / d logits): one compile."""

    def total(x, *args, **kwargs):
        out = fn(x, *args, **kwargs)
        return out.sum(), out

    grad_fn = jax.value_and_grad(total, has_aux=True)

    @functools.partial(jax.jit, static_argnames=static)
    def run(x, *args, **kwargs):
        (_, out), grad = grad_fn(x, *args, **kwargs)
        return out, grad

    return run


dense = jit_value_and_grad(losses.multilabel_crossentropy, ("scale", "margin"))
sparse = jit_value_and_grad(
    losses.sparse_multilabel_crossentropy, ("scale", "margin")
)
soft = jit_value_and_grad(losses.soft_multilabel_crossentropy, ("eps",))
nxm = jit_value_and_grad(losses.nxm_crossentropy, ("variant",))
topk = jit_value_and_grad(losses.topk_subset_crossentropy, ("k",))
probs = jax.jit(losses.multilabel_probs)
predict = jax.jit(losses.multilabel_predict)

S_REF = np.array([-1.0, 2.0, 0.5])
Y_REF = np.array([0, 1, 0])
T_OPT = np.array([0.1, 0.7, 0.4])


# --------------------------------------------------------------------------
# NumPy float64 references (closed forms from the reference, written here)
# --------------------------------------------------------------------------


def np_dense(s, y):
    """Section 5: log(1 + sum_neg e^s) + log(1 + sum_pos e^-s), per row."""
    s, y = np.asarray(s, np.float64), np.asarray(y) != 0
    zeros = np.zeros(s.shape[:-1] + (1,))
    neg = np.where(y, -np.inf, s)
    pos = np.where(y, -s, -np.inf)
    return logsumexp(np.concatenate([neg, zeros], -1), -1) + logsumexp(
        np.concatenate([pos, zeros], -1), -1
    )


def np_dense_grad(s, y):
    """Closed-form gradient of the dense loss."""
    s, y = np.asarray(s, np.float64), np.asarray(y) != 0
    e_neg = np.where(y, 0.0, np.exp(s))
    e_pos = np.where(y, np.exp(-s), 0.0)
    return e_neg / (1 + e_neg.sum(-1, keepdims=True)) - e_pos / (
        1 + e_pos.sum(-1, keepdims=True)
    )


def np_soft_grad(s, t):
    """Section 8 gradient: -t e^-s / (1 + sum t e^-s) + (1-t) e^s / (...)."""
    a, b = t * np.exp(-s), (1 - t) * np.exp(s)
    return -a / (1 + a.sum()) + b / (1 + b.sum())


def np_l1_grad(s, t):
    """Section 9 closed-form gradient of L1 (one [n, m] group)."""
    n, m = s.shape
    d = np.array(
        [
            1
            + sum(
                t[i, h] * np.exp(-s[i, h] + s[i, k])
                for i in range(n)
                for k in range(m)
                if k != h
            )
            for h in range(m)
        ]
    )
    g = np.zeros_like(s)
    for i in range(n):
        for j in range(m):
            others = sum(np.exp(s[i, k]) for k in range(m) if k != j)
            g[i, j] = -t[i, j] * np.exp(-s[i, j]) * others / d[j] + sum(
                t[i, h] * np.exp(-s[i, h]) * np.exp(s[i, j]) / d[h]
                for h in range(m)
                if h != j
            )
    return g


def np_circle(s, y, s0, gamma, margin):
    """Expanded pairwise form: log(1 + sum over (neg + {0}) x (pos + {0}) pairs)
    with margin m on class pairs and m/2 on threshold pairs (one example)."""
    s, y = np.asarray(s, np.float64), np.asarray(y) != 0
    neg, pos = s[~y], s[y]
    terms = [gamma * (si - sj + margin) for si in neg for sj in pos]
    terms += [gamma * (si - s0 + margin / 2) for si in neg]
    terms += [gamma * (s0 - sj + margin / 2) for sj in pos]
    return logsumexp([0.0] + terms)


def np_log_zk_newton(s, k):
    """log Z_k via Newton's identities k Z_k = sum_p (-1)^(p-1) Z_{k-p} S_p."""
    x = np.exp(np.asarray(s, np.float64))
    power_sums = [None] + [np.sum(x**p) for p in range(1, k + 1)]
    z = [1.0]
    for j in range(1, k + 1):
        z.append(
            sum((-1) ** (p - 1) * z[j - p] * power_sums[p] for p in range(1, j + 1))
            / j
        )
    return np.log(z[k])


def np_log_zk_brute(s, k):
    """log Z_k by enumerating all subsets, in log space."""
    s = np.asarray(s, np.float64)
    subsets = itertools.combinations(range(len(s)), k)
    return logsumexp([s[list(c)].sum() for c in subsets])


def random_case(seed, shape, positive_rate=0.3, logit_scale=3.0):
    """Gaussian logits (float32) and Bernoulli 0/1 labels, drawn with NumPy."""
    rng = np.random.default_rng(seed)
    s = (logit_scale * rng.standard_normal(shape)).astype(np.float32)
    y = (rng.random(shape) < positive_rate).astype(np.int32)
    return s, y


def softmax_rows(seed, shape, temperature=1.0):
    """Soft labels whose last axis sums to 1 (float64, NumPy)."""
    z = np.random.default_rng(seed).standard_normal(shape) / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def dense_to_ids(y, num_ids):
    """[..., C] 0/1 -> [..., num_ids] indices padded with -1 (NumPy)."""
    y = np.asarray(y)
    flat = y.reshape(-1, y.shape[-1])
    out = -np.ones((flat.shape[0], num_ids), np.int32)
    for r, row in enumerate(flat):
        idx = np.flatnonzero(row)
        out[r, : len(idx)] = idx
    return out.reshape(y.shape[:-1] + (num_ids,))


# --------------------------------------------------------------------------
# Canonical batch shared by many tests (one compile per function and dtype)
# --------------------------------------------------------------------------

B, C, K = 6, 40, 16


def canonical(dtype="float32"):
    s, y = random_case(2, (B, C), positive_rate=0.1)
    t = np.random.default_rng(21).random((B, C))
    return s.astype(dtype), y, t.astype(dtype), dense_to_ids(y, K)


# --------------------------------------------------------------------------
# Known values (reference section 13)
# --------------------------------------------------------------------------


def test_known_values_dense_sparse_soft_and_bce_bound():
    s, y = jnp.asarray(S_REF, jnp.float32), jnp.asarray(Y_REF)
    loss, grad = dense(s, y)
    np.testing.assert_allclose(loss, 1.2310586, **F32)
    np.testing.assert_allclose(grad, np_dense_grad(S_REF, Y_REF), **F32)
    bce = optax.sigmoid_binary_cross_entropy(s, y.astype(jnp.float32)).sum()
    np.testing.assert_allclose(bce, 1.4142667, **F32)
    assert loss <= bce
    np.testing.assert_allclose(sparse(s, jnp.array([1, -1]))[0], 1.2310586, **F32)
    np.testing.assert_allclose(soft(s, y.astype(jnp.float32))[0], 1.2310586, **F32)


def test_soft_optimum_known_value(x64):
    t = jnp.asarray(T_OPT)
    s = 0.5 * np.log(t / (1 - t))
    value, grad = soft(s, t)
    np.testing.assert_allclose(value, 1.6202202, rtol=1e-7)
    np.testing.assert_allclose(grad, 0.0, atol=1e-15)
    np.testing.assert_allclose(probs(s), t, **F64)


def test_soft_optimum_float32():
    t = jnp.asarray(T_OPT, jnp.float32)
    value, grad = soft(0.5 * np.log(t / (1 - t)), t)
    np.testing.assert_allclose(value, 1.6202202, **F32)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_soft_optimum_is_sigmoid_2s_for_random_targets(x64):
    _, _, t, _ = canonical("float64")
    t = 0.02 + 0.96 * t
    s = 0.5 * np.log(t / (1 - t))
    np.testing.assert_allclose(soft(s, t)[1], 0.0, atol=1e-14)
    np.testing.assert_allclose(soft(s, t)[1], np_soft_grad_rows(s, t), atol=1e-14)
    # Shifting every logit up by d > 0 makes every gradient positive: with
    # q = t e^-s = (1-t) e^s and Q = sum q, the sign of dL/ds_i is that of
    # e^{2d} (1 + Q e^-d) - (1 + Q e^d) = e^{2d} - 1 > 0.
    grad_off = soft(s + 0.3, t)[1]
    np.testing.assert_allclose(grad_off, np_soft_grad_rows(s + 0.3, t), **F64)
    assert np.all(grad_off > 0)


def np_soft_grad_rows(s, t):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    return np.stack([np_soft_grad(a, b) for a, b in zip(s, t)])


# --------------------------------------------------------------------------
# Dense / sparse / soft agree; general form
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_equals_closed_form_sparse_and_soft(dtype, x64):
    s, y, _, ids = canonical(dtype)
    tol = F64 if dtype == "float64" else F32
    value, grad = dense(s, y)
    np.testing.assert_allclose(value, np_dense(s, y), **tol)
    np.testing.assert_allclose(grad, np_dense_grad(s, y), **tol)
    for other_value, other_grad in (sparse(s, ids), soft(s, y.astype(dtype))):
        np.testing.assert_allclose(other_value, value, **tol)
        np.testing.assert_allclose(other_grad, grad, **tol)


def test_rank1_and_span_shaped_batches_reduce_class_axis_only():
    s1, y1 = random_case(0, (7,))
    np.testing.assert_allclose(dense(s1, y1)[0], np_dense(s1, y1), **F32)
    # GlobalPointer layout [B, heads, L*L]
    s, y = random_case(1, (2, 3, 64), positive_rate=0.05)
    out = dense(s, y)[0]
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, np_dense(s, y), **F32)
    np.testing.assert_allclose(sparse(s, dense_to_ids(y, 12))[0], out, **F32)


def test_general_form_matches_pairwise_circle_loss(x64):
    s, y = random_case(4, (5, 8), positive_rate=0.4)
    s = s.astype(np.float64)
    s0 = np.random.default_rng(5).standard_normal(5)
    gamma, margin = 2.5, 0.4
    got, _ = dense(s, y, threshold=s0, scale=gamma, margin=margin)
    want = [np_circle(s[b], y[b], s0[b], gamma, margin) for b in range(5)]
    np.testing.assert_allclose(got, want, **F64)
    ids = jnp.asarray(dense_to_ids(y, 8))
    got_sparse, _ = sparse(s, ids, threshold=s0, scale=gamma, margin=margin)
    np.testing.assert_allclose(got_sparse, want, **F64)
    # gamma = 1, m = 0 is the threshold form of reference section 4:
    # log(e^s0 + sum_neg e^s) + log(e^-s0 + sum_pos e^-s).
    yb = np.asarray(y) != 0
    neg = np.concatenate([np.where(yb, -np.inf, s), s0[:, None]], -1)
    pos = np.concatenate([np.where(yb, -s, -np.inf), -s0[:, None]], -1)
    np.testing.assert_allclose(
        dense(s, y, threshold=s0)[0], logsumexp(neg, -1) + logsumexp(pos, -1), **F64
    )
    # The threshold receives a gradient (it may be learned): by symmetry of
    # the formula, d/ds0 = -sum_c dL/ds_c.
    g_s0 = jax.jit(
        jax.grad(lambda t: losses.multilabel_crossentropy(s, y, threshold=t).sum())
    )(s0)
    np.testing.assert_allclose(g_s0, -dense(s, y, threshold=s0)[1].sum(-1), **F64)


def test_sparse_counts_repeated_ids_once_and_ignores_padding():
    s, y, _, ids = canonical()
    doubled = np.concatenate([ids, ids[:, ::-1]], -1)
    value, grad = sparse(s, doubled)
    np.testing.assert_allclose(value, dense(s, y)[0], **F32)
    np.testing.assert_allclose(grad, dense(s, y)[1], **F32)


def test_sparse_without_ids_and_with_many_ids():
    s, y, _, _ = canonical()
    no_ids = np.zeros((B, 0), np.int32)
    np.testing.assert_allclose(
        sparse(s, no_ids)[0], dense(s, np.zeros_like(y))[0], **F32
    )
    # More ids than SPARSE_FUSED_MAX_IDS: the top_k path; confident positives.
    num_ids = losses.SPARSE_FUSED_MAX_IDS + 6
    s2, y2 = random_case(30, (3, 200), positive_rate=0.3)
    s2 = np.where(y2 == 1, s2 + 60.0, s2)
    ids2 = dense_to_ids(y2, num_ids)
    value, grad = sparse(s2, ids2)
    np.testing.assert_allclose(value, np_dense(s2, y2), **F32)
    np.testing.assert_allclose(grad, np_dense_grad(s2, y2), **F32)


@pytest.mark.parametrize("scale_pos", [30.0, 300.0, 1e4])
def test_sparse_accurate_when_positives_dominate(scale_pos):
    # The bert4keras #436 regime: the positives dominate the all-class sum.
    num_classes = 1000
    s = random_case(8, (4, num_classes), logit_scale=1.0)[0] - 3.0
    ids = np.array([[3, 10, 500, -1], [0, 1, 2, 3], [999, -1, -1, -1], [7, 8, -1, -1]])
    y = np.zeros((4, num_classes), np.int32)
    for r, row in enumerate(ids):
        y[r, row[row >= 0]] = 1
    s[y == 1] = scale_pos
    s_j = jnp.asarray(s)
    want = np_dense(s, y)
    # The textbook float32 evaluation all + log(1 - exp(aux - all)) breaks down.
    all_ = jax.nn.logsumexp(jnp.concatenate([s_j, jnp.zeros((4, 1))], -1), -1)
    aux = jax.nn.logsumexp(jnp.where(y == 1, s_j, -jnp.inf), -1)
    naive = all_ + jnp.log1p(-jnp.exp(aux - all_))
    assert not np.allclose(naive, want, rtol=1e-3)
    value, grad = sparse(s_j, jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(value, want, **F32)
    with np.errstate(over="ignore"):
        want_grad = np_dense_grad(s, y)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# n x m losses
# --------------------------------------------------------------------------

N, M = 5, 4


def np_l1(s, t):
    """L1 by its literal definition (one [n, m] group, float64)."""
    n, m = s.shape
    return sum(
        np.log1p(
            sum(
                t[i, j] * np.exp(-s[i, j] + s[i, k])
                for i in range(n)
                for k in range(m)
                if k != j
            )
        )
        for j in range(m)
    )


def np_l3(s, t):
    """L3 by its definition (one [n, m] group, float64)."""
    return np.sum(np.log1p(np.sum(t * np.exp(-s + s.mean(-1, keepdims=True)), 0)))


def test_nxm_m2_reduces_to_soft_loss(x64):
    s = 2 * np.random.default_rng(9).standard_normal((3, 6, 2))
    t = softmax_rows(10, (3, 6, 2))
    d = s[..., 0] - s[..., 1]
    np.testing.assert_allclose(
        nxm(s, t, variant="analog")[0], soft(d, t[..., 0])[0], **F64
    )
    np.testing.assert_allclose(
        nxm(s, t, variant="centered")[0], soft(d / 2, t[..., 0])[0], **F64
    )


def test_nxm_values_and_l1_gradient_match_closed_forms(x64):
    s = 2 * np.random.default_rng(13).standard_normal((N, M))
    t = softmax_rows(14, (N, M), 0.5)
    sn, tn = np.asarray(s), np.asarray(t)
    value, grad = nxm(s, t, variant="analog")
    np.testing.assert_allclose(value, np_l1(sn, tn), **F64)
    np.testing.assert_allclose(grad, np_l1_grad(sn, tn), **F64)
    np.testing.assert_allclose(nxm(s, t, variant="centered")[0], np_l3(sn, tn), **F64)


def test_nxm_l3_stationary_at_log_t_plus_row_constant_l1_not(x64):
    t = softmax_rows(11, (N, M))
    s = np.log(t) + 3 * np.random.default_rng(12).standard_normal((N, 1))
    np.testing.assert_allclose(nxm(s, t, variant="centered")[1], 0.0, atol=1e-12)
    g1 = nxm(s, t, variant="analog")[1]
    np.testing.assert_allclose(g1, np_l1_grad(np.asarray(s), np.asarray(t)), **F64)
    assert np.max(np.abs(g1)) > 1e-2


def test_nxm_confident_logits_finite_and_exact():
    s = random_case(15, (N, M), logit_scale=5e3)[0]
    t = np.array(jax.nn.one_hot(np.argmax(s, -1), M))
    t[0] = [0.2, 0.3, 0.4, 0.1]
    value, grad = nxm(jnp.asarray(s), jnp.asarray(t, jnp.float32))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # The definition evaluated in float64 log space.
    b = s.astype(np.float64)
    want = sum(
        logsumexp(
            [0.0]
            + [
                np.log(t[i, j]) - b[i, j] + b[i, k]
                for i in range(N)
                for k in range(M)
                if k != j and t[i, j] > 0
            ]
        )
        for j in range(M)
    )
    np.testing.assert_allclose(value, want, rtol=1e-5)


def test_nxm_hard_label_failure_of_l3():
    # Reference section 9: L3 ~ 0 although the target (class 0) is not the row
    # maximum, because s_i0 is far above the row mean; L1 is ~ s_i1 - s_i0.
    s = np.tile(np.float32([[20.0, 30.0, -60.0, -60.0]]), (N, 1))
    t = np.tile(np.float32([[1.0, 0.0, 0.0, 0.0]]), (N, 1))
    assert nxm(s, t, variant="centered")[0] < 1e-6
    l1 = nxm(s, t, variant="analog")[0]
    np.testing.assert_allclose(l1, 10 + np.log(N), rtol=1e-5)


# --------------------------------------------------------------------------
# Combinatorial top-k loss
# --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4])
def test_topk_matches_newton_and_enumeration(k, x64):
    s = np.random.default_rng(17).standard_normal(6)
    y = np.zeros(6, np.int32)
    y[[0, 2, 3, 5][:k]] = 1
    value, grad = topk(s, jnp.asarray(y), k=k)
    target = float(np.asarray(s)[y == 1].sum())
    np.testing.assert_allclose(value, np_log_zk_newton(s, k) - target, **F64)
    np.testing.assert_allclose(value, np_log_zk_brute(s, k) - target, **F64)
    # d log Z_k / d s_c = P(c in subset) = x_c e_{k-1}(x without c) / e_k(x).
    x = np.exp(np.asarray(s))
    marg = [
        x[c] * np.exp(np_log_zk_brute(np.delete(np.asarray(s), c), k - 1))
        for c in range(6)
    ] / np.exp(np_log_zk_brute(s, k))
    np.testing.assert_allclose(grad, marg - y, **F64)


def test_topk_newton_cancels_where_recursion_does_not(x64):
    # Spread-out scores: Newton's alternating sum loses every digit.
    s = np.array([30.0, 29.0, -5.0, -8.0, -40.0, 1.0])
    y = np.array([1, 1, 0, 1, 0, 1])
    brute = np_log_zk_brute(s, 4)
    got = topk(s, y, k=4)[0] + float(s[y == 1].sum())
    np.testing.assert_allclose(got, brute, **F64)
    with np.errstate(all="ignore"):
        newton = np_log_zk_newton(s, 4)
    assert not np.isclose(newton, brute, rtol=1e-6)


def test_topk_k1_is_softmax_ce_and_kc_is_zero():
    s, _ = random_case(18, (3, 8))
    label = np.array([1, 5, 7])
    onehot = np.eye(8, dtype=np.int32)[label]
    np.testing.assert_allclose(
        topk(s, onehot, k=1)[0],
        optax.softmax_cross_entropy_with_integer_labels(s, label),
        **F32,
    )
    np.testing.assert_allclose(topk(s, np.ones_like(onehot), k=8)[0], 0.0, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_topk_finite_and_exact_for_huge_logits(dtype):
    s = np.array([1e4, -1e4, 5e3, -3e3, 0.0, 2e3, -1e4, 9e3]).astype(jnp.dtype(dtype))
    y = np.array([1, 0, 0, 1, 0, 1, 0, 0])
    value, grad = topk(s, y, k=3)
    assert np.isfinite(value) and np.all(np.isfinite(np.asarray(grad, np.float32)))
    s64 = np.asarray(s, np.float64)  # the values representable in `dtype`
    want = np_log_zk_brute(s64, 3) - s64[np.asarray(y) == 1].sum()
    np.testing.assert_allclose(value, want, rtol=1e-6)


# --------------------------------------------------------------------------
# Invariances, masking, dtypes
# --------------------------------------------------------------------------


def test_class_permutation_invariance():
    s, y, t, ids = canonical()
    perm = np.random.default_rng(20).permutation(C)
    inv = np.argsort(perm)
    ids_perm = np.where(ids >= 0, inv[np.maximum(ids, 0)], -1)
    y3 = np.tile([1, 1, 1] + [0] * (C - 3), (B, 1))
    pairs = [
        (dense(s[:, perm], y[:, perm]), dense(s, y)),
        (soft(s[:, perm], t[:, perm]), soft(s, t)),
        (sparse(s[:, perm], ids_perm), sparse(s, ids)),
        (topk(s[:, perm], y3[:, perm], k=3), topk(s, y3, k=3)),
    ]
    for (v_perm, g_perm), (v, g) in pairs:
        np.testing.assert_allclose(v_perm, v, **F32)
        np.testing.assert_allclose(g_perm, g[:, perm], **F32)


def test_masked_classes_are_inert():
    s, y, t, _ = canonical()
    extra_s = np.tile(np.float32([1e4, -1e4, 0.0, 3.0, -7.0, 1e4]), (B, 1))
    extra_y = np.tile(np.int32([1, 0, 1, 0, 1, 1]), (B, 1))
    s2 = np.concatenate([s, extra_s], -1)
    y2 = np.concatenate([y, extra_y], -1)
    t2 = np.concatenate([t, 0.5 * extra_y], -1).astype(np.float32)
    mask = np.arange(C + 6)[None, :] < C  # broadcasts over the batch
    cases = [
        (dense(s2, y2, mask=mask), dense(s, y)),
        (sparse(s2, jnp.asarray(dense_to_ids(y2, K + 6)), mask=mask), dense(s, y)),
        (soft(s2, t2, mask=mask), soft(s, t)),
    ]
    for (v2, g2), (v, g) in cases:
        np.testing.assert_allclose(v2, v, **F32)
        np.testing.assert_allclose(g2[:, :C], g, **F32)
        np.testing.assert_array_equal(g2[:, C:], 0.0)


def test_extra_classes_at_minus_1e12_leave_loss_unchanged():
    s, y, _, _ = canonical()
    s2 = np.concatenate([s, np.full((B, 6), -1e12, np.float32)], -1)
    y2 = np.concatenate([y, np.zeros((B, 6), np.int32)], -1)
    np.testing.assert_allclose(dense(s2, y2)[0], dense(s, y)[0], **F32)
    np.testing.assert_allclose(
        soft(s2, y2.astype(np.float32))[0], dense(s, y)[0], **F32
    )


def test_soft_no_nan_at_hard_targets_with_masked_logits():
    # Reference section 15: t in {0, 1} with GlobalPointer-masked s = -1e7.
    s = np.float32([[-1e7, 2.0, -1e7, 0.5], [3.0, -1e7, -1.0, -1e7]])
    t = np.float32([[0.0, 1.0, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0]])
    value, grad = soft(s, t)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    keep = np.asarray(s) > -1e6
    want = [
        np.log1p(np.sum(t[b][keep[b]] * np.exp(-s[b][keep[b]])))
        + np.log1p(np.sum((1 - t[b][keep[b]]) * np.exp(s[b][keep[b]])))
        for b in range(2)
    ]
    np.testing.assert_allclose(value, want, **F32)


def _all_losses(x, y, ids, t, mask):
    """Every loss (value and gradient) on one input, in one compiled program."""
    fns = {
        "dense": lambda v: losses.multilabel_crossentropy(v, y, mask=mask),
        "dense_circle": lambda v: losses.multilabel_crossentropy(
            v, y, mask=mask, threshold=0.5, scale=4.0, margin=0.5
        ),
        "sparse": lambda v: losses.sparse_multilabel_crossentropy(v, ids, mask=mask),
        "soft": lambda v: losses.soft_multilabel_crossentropy(v, t, mask=mask),
        "soft_hard": lambda v: losses.soft_multilabel_crossentropy(
            v, y.astype(t.dtype), mask=mask
        ),
        "nxm_analog": lambda v: losses.nxm_crossentropy(
            v[:, :4].reshape(-1, 2, 2), jnp.full((v.shape[0], 2, 2), 0.5)
        ),
        "nxm_centered": lambda v: losses.nxm_crossentropy(
            v[:, :4].reshape(-1, 2, 2),
            jnp.full((v.shape[0], 2, 2), 0.5),
            variant="centered",
        ),
        "topk": lambda v: losses.topk_subset_crossentropy(v[:, :5], y[:, :5], 2),
    }
    out = {}
    for name, f in fns.items():
        value, vjp = jax.vjp(f, x)
        out[name] = (value, vjp(jnp.ones_like(value))[0])
    return out


all_losses = jax.jit(_all_losses)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_no_nan_or_inf_at_confident_or_masked_logits(dtype):
    s = np.array([[1e4, -1e4, 20.0, -20.0, 0.0, 1e4], [-1e4, -1e4, 3.0, 1e4, 1e4, 5.0]])
    y = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 1, 0, 1, 1]])
    mask = np.array([True, True, True, True, True, False])
    # Class 5 masked; its logit as given, as the dtype's minimum, or -inf.
    lowest = float(jnp.finfo(dtype).min)
    variants = [s, np.where(mask, s, lowest), np.where(mask, s, -np.inf)]
    x = np.concatenate(variants, 0).astype(jnp.dtype(dtype))
    y3 = np.tile(y, (3, 1))
    ids = dense_to_ids(y3, 4)
    t = (0.05 + 0.9 * y3).astype(jnp.dtype(dtype))
    out = all_losses(x, y3, ids, t, mask)
    for name, (value, grad) in out.items():
        assert value.dtype == jnp.result_type(dtype, jnp.float32), name
        assert grad.dtype == dtype, name
        assert np.all(np.isfinite(np.asarray(value, np.float64))), name
        assert np.all(np.isfinite(np.asarray(grad, np.float64))), name
    # Values are right too: the float64 closed form on the dtype-rounded
    # logits, masked class removed.
    want = np_dense(np.asarray(x, np.float64)[:, :5], y3[:, :5])
    np.testing.assert_allclose(out["dense"][0], want, rtol=1e-6)
    np.testing.assert_allclose(out["sparse"][0], want, rtol=1e-6)
    np.testing.assert_allclose(out["soft_hard"][0], want, rtol=1e-6)


def test_half_precision_matches_float64_closed_form():
    s, y, _, _ = canonical()
    for dtype in (jnp.float16, jnp.bfloat16):
        sd = s.astype(dtype)
        want = np_dense(np.asarray(sd, np.float64), y)
        value, grad = dense(sd, y)
        assert value.dtype == jnp.float32 and grad.dtype == dtype
        np.testing.assert_allclose(value, want, **F32)
        want_grad = np_dense_grad(np.asarray(sd, np.float64), y)
        # The gradient is rounded to the logits' dtype: at most eps / 2 relative,
        # or half the subnormal spacing absolute.
        finfo = jnp.finfo(dtype)
        np.testing.assert_allclose(
            np.asarray(grad, np.float64),
            want_grad,
            rtol=float(finfo.eps),
            atol=float(finfo.smallest_subnormal),
        )


def test_probs_and_predict():
    s = np.float32([[-1.0, 2.0, 0.5, 0.0], [3.0, -0.1, 0.2, 1.0]])
    np.testing.assert_allclose(probs(s), 1 / (1 + np.exp(-2 * np.asarray(s))), **F32)
    np.testing.assert_array_equal(predict(s), np.asarray(s) > 0)
    np.testing.assert_array_equal(predict(s), np.asarray(probs(s)) > 0.5)
    np.testing.assert_array_equal(
        predict(s, np.float32([0.4, 0.5])), s > np.float32([[0.4], [0.5]])
    )


def test_vmap_composes_with_jit():
    s, y, _, ids = canonical()
    out = jax.jit(jax.vmap(losses.sparse_multilabel_crossentropy))(s, ids)
    np.testing.assert_allclose(out, dense(s, y)[0], **F32)


# --------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------


def test_bad_labels_raise_when_concrete():
    s = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="labels must contain only 0 and 1"):
        losses.multilabel_crossentropy(s, jnp.array([[0, 2, 1], [0, 0, 1]]))
    with pytest.raises(ValueError, match="targets must lie in"):
        losses.soft_multilabel_crossentropy(s, jnp.array([[0.0, 1.2, 0.5]] * 2))
    with pytest.raises(ValueError, match="targets must lie in"):
        losses.soft_multilabel_crossentropy(s, jnp.array([[0.0, -0.1, 0.5]] * 2))
    match = r"label_ids must be class indices in \[0, 3\)"
    with pytest.raises(ValueError, match=match):
        losses.sparse_multilabel_crossentropy(s, jnp.array([[0, 3], [1, -1]]))
    with pytest.raises(ValueError, match="got -2"):
        losses.sparse_multilabel_crossentropy(s, jnp.array([[0, -2], [1, -1]]))
    with pytest.raises(ValueError, match="exactly k=2 ones"):
        losses.topk_subset_crossentropy(s, jnp.array([[1, 1, 0], [1, 0, 0]]), 2)
    with pytest.raises(ValueError, match="labels must contain only 0 and 1"):
        losses.topk_subset_crossentropy(s, jnp.array([[2, 0, 0], [1, 0, 0]]), 1)
    with pytest.raises(ValueError, match="targets must lie in"):
        losses.nxm_crossentropy(s, jnp.array([[1.5, -0.5, 0.0]] * 2))
    with pytest.raises(ValueError, match="rows .* must sum to 1"):
        losses.nxm_crossentropy(s, jnp.array([[0.5, 0.2, 0.0]] * 2))
    # Labels closed over by a jitted function are concrete: still checked.
    bad = jnp.array([[0, 2, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="labels must contain only 0 and 1"):
        jax.jit(lambda x: losses.multilabel_crossentropy(x, bad))(s)
    bad_ids = jnp.array([[0, 5]] * 2)
    with pytest.raises(ValueError, match="label_ids must be class indices"):
        jax.jit(lambda x: losses.sparse_multilabel_crossentropy(x, bad_ids))(s)


def test_bad_labels_give_nan_rows_under_jit():
    s = jnp.zeros((2, 3))
    out = jax.jit(losses.multilabel_crossentropy)(s, jnp.array([[0, 2, 1], [0, 0, 1]]))
    assert np.isnan(out[0]) and np.isfinite(out[1])
    out = jax.jit(losses.soft_multilabel_crossentropy)(
        s, jnp.array([[0.0, 1.2, 0.5], [0.0, 1.0, 0.5]])
    )
    assert np.isnan(out[0]) and np.isfinite(out[1])
    ids = jnp.array([[0, 3], [1, -1]])
    out = jax.jit(losses.sparse_multilabel_crossentropy)(s, ids)
    assert np.isnan(out[0]) and np.isfinite(out[1])
    out = jax.jit(losses.topk_subset_crossentropy, static_argnums=2)(
        s, jnp.array([[1, 1, 0], [1, 0, 0]]), 2
    )
    assert np.isfinite(out[0]) and np.isnan(out[1])
    out = jax.jit(losses.nxm_crossentropy)(
        jnp.zeros((2, 2, 3)),
        jnp.array([[[0.5, 0.2, 0.3]] * 2, [[0.5, 0.2, 0.0]] * 2]),
    )
    assert np.isfinite(out[0]) and np.isnan(out[1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, y: losses.multilabel_crossentropy(s, y, scale=0.0), "scale must be"),
        (lambda s, y: losses.multilabel_crossentropy(s, y, scale=np.inf), "scale must"),
        (lambda s, y: losses.multilabel_crossentropy(s, y, margin=-1.0), "margin must"),
        (
            lambda s, y: losses.sparse_multilabel_crossentropy(
                s, jnp.array([[0], [1]]), scale=-2.0
            ),
            "scale must",
        ),
        (lambda s, y: losses.soft_multilabel_crossentropy(s, y * 1.0, eps=0.0), "eps"),
        (lambda s, y: losses.soft_multilabel_crossentropy(s, y * 1.0, eps=0.5), "eps"),
        (lambda s, y: losses.nxm_crossentropy(s, y * 1.0, variant="mean"), "variant"),
        (lambda s, y: losses.topk_subset_crossentropy(s, y, 0), "k must be in"),
        (lambda s, y: losses.topk_subset_crossentropy(s, y, 4), "k must be in"),
        (lambda s, y: losses.topk_subset_crossentropy(s, y, 1.0), "k must be a"),
        (lambda s, y: losses.multilabel_crossentropy(s, y, mask=jnp.ones(4)), "mask"),
        (
            lambda s, y: losses.multilabel_crossentropy(s, y, threshold=jnp.ones(3)),
            "threshold must be",
        ),
        (lambda s, y: losses.nxm_crossentropy(s[:, :1], y[:, :1] * 1.0), "m >= 2"),
        (lambda s, y: losses.multilabel_crossentropy(jnp.zeros(()), 0), "class axis"),
    ],
)
def test_bad_hyperparameters_raise(call, match):
    s = jnp.zeros((2, 3))
    y = jnp.array([[0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=match):
        call(s, y)


def test_shape_mismatch_is_caught():
    with pytest.raises(AssertionError):
        losses.multilabel_crossentropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(AssertionError):
        losses.sparse_multilabel_crossentropy(jnp.zeros((2, 3)), jnp.zeros((3, 1), int))
    with pytest.raises(AssertionError):
        losses.sparse_multilabel_crossentropy(jnp.zeros((2, 3)), jnp.zeros((2, 1)))


# --------------------------------------------------------------------------
# Property tests over random shapes (a few examples in CI, many with -m slow)
# --------------------------------------------------------------------------


def _property_settings(max_examples):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@st.composite
def multilabel_batches(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    s = draw(
        hnp.arrays(
            np.float64,
            shape,
            elements=st.floats(-30, 30, allow_nan=False, allow_subnormal=False),
        )
    )
    y = draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 1)))
    perm = draw(st.permutations(range(shape[-1])))
    return s, y, np.asarray(perm)


def _check_dense_sparse_soft_bce_permutation(batch):
    s, y, perm = batch
    with jax.enable_x64(True):
        sj, yj = jnp.asarray(s), jnp.asarray(y)
        ref = np_dense(s, y)
        value, grad = dense(sj, yj)
        np.testing.assert_allclose(value, ref, **F64)
        np.testing.assert_allclose(grad, np_dense_grad(s, y), **F64)
        ids = jnp.asarray(dense_to_ids(y, y.shape[-1]))
        # Values only (one compile each per random shape).
        sparse_value = jax.jit(losses.sparse_multilabel_crossentropy)(sj, ids)
        soft_value = jax.jit(losses.soft_multilabel_crossentropy)(sj, yj * 1.0)
        np.testing.assert_allclose(sparse_value, ref, **F64)
        np.testing.assert_allclose(soft_value, ref, **F64)
        np.testing.assert_allclose(dense(sj[..., perm], yj[..., perm])[0], ref, **F64)
        bce = np.sum(np.logaddexp(0, -s) * y + np.logaddexp(0, s) * (1 - y), axis=-1)
        assert np.all(ref <= bce + 1e-12)


def _check_nxm(n, m, seed):
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        t = softmax_rows(seed, (n, m))
        s = np.log(t) + rng.standard_normal((n, 1))
        np.testing.assert_allclose(nxm(s, t, variant="centered")[1], 0.0, atol=1e-12)
        s_rand = rng.standard_normal((n, m))
        sn, tn = np.asarray(s_rand), np.asarray(t)
        value, grad = nxm(s_rand, t, variant="analog")
        np.testing.assert_allclose(value, np_l1(sn, tn), **F64)
        np.testing.assert_allclose(grad, np_l1_grad(sn, tn), **F64)
        l3 = nxm(s_rand, t, variant="centered")[0]
        np.testing.assert_allclose(l3, np_l3(sn, tn), **F64)


NXM_SHAPES = (st.integers(1, 4), st.integers(2, 5), st.integers(0, 2**31 - 1))


@_property_settings(3)
@given(multilabel_batches())
def test_property_dense_sparse_soft_bce_permutation(batch):
    _check_dense_sparse_soft_bce_permutation(batch)


@_property_settings(3)
@given(*NXM_SHAPES)
def test_property_nxm_closed_forms_and_l3_stationarity(n, m, seed):
    _check_nxm(n, m, seed)


@pytest.mark.slow
@_property_settings(60)
@given(multilabel_batches())
def test_property_dense_sparse_soft_bce_permutation_many(batch):
    _check_dense_sparse_soft_bce_permutation(batch)


@pytest.mark.slow
@_property_settings(40)
@given(*NXM_SHAPES)
def test_property_nxm_closed_forms_and_l3_stationarity_many(n, m, seed):
    _check_nxm(n, m, seed)


# --------------------------------------------------------------------------
# The `multilabel` experiment: its task and a smoke run
# --------------------------------------------------------------------------


def test_multilabel_task_labels_match_the_composed_digits():
    import dataclasses

    import jax.random as jr

    from jaxlab import data
    from jaxlab.experiments import multilabel

    config = dataclasses.replace(multilabel.Config.quick(), num_train=2000)
    images, digits = data.load_digits()
    images = images[..., 0]
    probs = np.arange(1, 11) ** -config.zipf
    probs = probs / probs.sum()
    x, y = multilabel._canvases(jr.key(0), config, images, digits, probs, 2000)
    g, slots = config.grid, config.grid**2
    assert y.shape == (2000, slots * 10) and y.shape[1] >= 50
    tiles = x.reshape(2000, g, 8, g, 8).transpose(0, 1, 3, 2, 4)
    tiles = tiles.reshape(2000, slots, 64)
    flat = images.reshape(len(images), 64)
    background = float(images.min())
    for n in range(50):
        for k in range(slots):
            on = np.flatnonzero(y[n, k * 10 : (k + 1) * 10])
            if len(on) == 0:
                assert np.all(tiles[n, k] == background)
            else:
                (d,) = on  # exactly one digit per filled slot, a real image of it
                assert np.any(np.all(flat[digits == d] == tiles[n, k], axis=1))
    # Positives per example ~ Binomial(slots, fill_prob): within 4 standard errors.
    counts = y.sum(1)
    p_fill = config.fill_prob
    mean, var = slots * p_fill, slots * p_fill * (1 - p_fill)
    assert abs(counts.mean() - mean) < 4 * np.sqrt(var / len(counts))
    assert counts.mean() <= 3
    # Zipf label imbalance: the digit marginals follow `probs` (4 standard errors).
    digit_freq = y.reshape(2000, slots, 10).sum((0, 1)) / counts.sum()
    se = np.sqrt(probs * (1 - probs) / counts.sum())
    np.testing.assert_array_less(np.abs(digit_freq - probs), 4 * se)


@pytest.mark.slow
def test_multilabel_experiment_smoke(tmp_path):
    import dataclasses
    import json

    from jaxlab.experiments import multilabel

    config = dataclasses.replace(
        multilabel.Config.quick(), num_seeds=2, num_train=600, num_test=300,
        steps=20, pos_weights=(5.0,), nxm_softness=(0.0,), nxm_steps=20,
    )
    results = multilabel.run(config, tmp_path)
    report = (tmp_path / "report.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3."):
        assert heading in report
    for name in ("f1_comparison", "reliability", "nxm_accuracy"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert len(results["comparison"]["scores"]["multi-label CE (s > 0)"]) == 2
