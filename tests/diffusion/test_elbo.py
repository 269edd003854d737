"""Tests of the DDPM variational bound (``ddpm.prior_kl``, ``vlb_term``, ``elbo_bpd``).

With the Gaussian oracle ε* on data N(μ, diag s²) every gap of the bound is a
Gaussian KL in closed form, so its expectation over the data is known exactly:

    E_x0[L(x0)] = H(data) + KL(q(x_T) ‖ N(0, I))
                  + Σ_{t≥1} E KL(q(x_{t−1} | x_t) ‖ p_θ(x_{t−1} | x_t)),

because q(x_{0:T}) = q(x_T) Π q(x_{t−1}|x_t). The oracle's reverse mean is the
exact E[x_{t−1} | x_t], so each step KL is a pure variance mismatch: the true
reverse variance is β̃_t² + c_t² V_t with c_t = ᾱ_{t−1}β_t²/β̄_t² (the x_0
coefficient of the posterior mean) and V_t = s²β̄_t²/v_t = Var[x_0 | x_t]. The
target below is computed from these formulas in NumPy, independently of the
code under test, and the tests compare Monte-Carlo means to it within 4
standard errors.
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import integrate, stats

from jaxlab.diffusion import ddpm, gaussian, schedules

MU = np.array([0.3, -0.5, 0.1])
S = np.array([0.5, 0.3, 0.2])
D = 3


def _expected_bound(sched):
    """E_x0[L] in nats for N(MU, S²) data and the oracle ε, σ_t = β̃_t (NumPy)."""
    ab = np.asarray(sched.alpha_bar, np.float64)
    bb = np.asarray(sched.beta_bar, np.float64)
    T = len(ab) - 1
    v = ab[:, None] ** 2 * S**2 + bb[:, None] ** 2  # marginal variances [T+1, D]
    a = ab[1:] / ab[:-1]  # per-step α_t, t = 1..T
    b2 = 1.0 - a**2  # per-step β_t² (ᾱ² + β̄² = 1)
    tilde2 = bb[:-1] ** 2 * b2 / bb[1:] ** 2  # β̃_t²
    c = ab[:-1] * b2 / bb[1:] ** 2
    V = S**2 * bb[1:, None] ** 2 / v[1:]  # Var[x0 | x_t]
    gap = 0.0
    for t in range(2, T + 1):
        r = c[t - 1] ** 2 * V[t - 1] / tilde2[t - 1]
        gap += np.sum(0.5 * (r - np.log1p(r)))
    ratio = V[0] / tilde2[1]  # decoder: q(x0|x1) = N(x̂0, V_1) vs N(x̂0, β̃_2²)
    gap += np.sum(0.5 * (ratio - 1.0 - np.log(ratio)))
    vT, mT = v[T], ab[T] * MU
    gap += np.sum(0.5 * (vT + mT**2 - 1.0 - np.log(vT)))
    entropy = np.sum(0.5 * np.log(2 * np.pi * np.e * S**2))
    return entropy + gap


def _data(n, key):
    return jnp.asarray(MU + S * np.asarray(jr.normal(key, (n, D))), jnp.float64)


def test_prior_kl_matches_numerical_integration(x64):
    sched = schedules.linear(50)
    x0 = jnp.array([[0.5, -1.0, 0.0], [2.0, 0.1, -0.3]])
    got = np.asarray(jax.jit(ddpm.prior_kl)(sched, x0))
    m_scale, sd = float(sched.alpha_bar[-1]), float(sched.beta_bar[-1])
    want = []
    for row in np.asarray(x0):
        total = 0.0
        for x in row:
            q = stats.norm(m_scale * x, sd)

            def integrand(u, q=q):
                return q.pdf(u) * (q.logpdf(u) - stats.norm.logpdf(u))

            total += integrate.quad(integrand, -12, 12, epsabs=1e-13)[0]
        want.append(total)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


def test_exact_and_monte_carlo_bounds_match_closed_form(x64):
    """Both estimators average to H(data) + the closed-form gaps (4 s.e.).

    The bound exceeds the data entropy (cross-entropy ≥ entropy), and the
    Monte-Carlo estimator L_T + T·mean_k L_{t_k−1} has the exact sum's mean,
    checked on the same x_0 by the paired difference.
    """
    sched = schedules.linear(100)
    eps_fn = gaussian.eps_fn(sched, jnp.asarray(MU), jnp.asarray(S))
    n = 400
    x0 = _data(n, jr.key(0))
    to_nats = D * math.log(2.0)
    exact = jax.jit(lambda k, x: ddpm.elbo_bpd(
        k, eps_fn, sched, x, decoder="gaussian", chunk=32))(jr.key(1), x0)
    mc = jax.jit(lambda k, x: ddpm.elbo_bpd(
        k, eps_fn, sched, x, decoder="gaussian", num_t=8))(jr.key(2), x0)
    exact, mc = np.asarray(exact) * to_nats, np.asarray(mc) * to_nats
    nll = -np.sum(stats.norm.logpdf(np.asarray(x0), MU, S), axis=1)
    target = _expected_bound(sched)
    entropy = np.sum(0.5 * np.log(2 * np.pi * np.e * S**2))
    assert target > entropy
    for est in (exact, mc):
        diff = est + (-nll) + entropy  # removes most of the data's variance
        se = diff.std(ddof=1) / math.sqrt(n)
        assert abs(diff.mean() - target) < 4 * se, (diff.mean(), target, se)
    paired = mc - exact
    assert abs(paired.mean()) < 4 * paired.std(ddof=1) / math.sqrt(n)
    # The exact sum is far less noisy than the 8-time Monte-Carlo estimate.
    assert exact.std() < mc.std()


def test_discrete_decoder_bins(x64):
    """Bin masses sum to 1 (edges ±∞) and narrow bins give p·w."""
    levels = np.linspace(-1.0, 1.0, 5)[:, None]
    logp = jax.jit(ddpm._discretized_gaussian_logp, static_argnums=(3, 4, 5))(
        jnp.asarray(levels), 0.3, 0.4, -1.0, 1.0, 5)
    assert float(jnp.sum(jnp.exp(logp))) == pytest.approx(1.0, abs=1e-12)
    # L_0 with 4097 levels: −log P(bin) = −log(p(x)·w) + O((w/σ_1)²(1 + z²)/24).
    sched = schedules.linear(100)
    eps_fn = gaussian.eps_fn(sched, jnp.asarray(MU), jnp.asarray(S))
    bins, w = 4097, 2.0 / 4096
    x0 = jnp.clip(_data(16, jr.key(3)), -0.9, 0.9)  # interior bins only
    x0 = jnp.round((x0 + 1.0) / w) * w - 1.0
    t1 = jnp.ones((16,), jnp.int32)

    def term(decoder):
        return jax.jit(lambda k, x: ddpm.vlb_term(
            k, eps_fn, sched, x, t1, decoder=decoder, num_bins=bins))(jr.key(4), x0)

    diff = np.asarray(term("discrete") - term("gaussian"))
    sigma1 = float(ddpm.posterior(sched, x0[:1], x0[:1], 2)[1][0])
    tol = D * (w / sigma1) ** 2 * (1 + 6.0**2) / 24  # |z| ≤ 6 for these draws
    np.testing.assert_allclose(diff, -D * math.log(w), atol=tol)


def test_step_kl_for_point_data_is_the_variance_mismatch(x64):
    """δ-data at μ: the oracle's x̂_0 = μ = x_0, so the means agree and
    L_{t−1} = D·[log(σ_t/β̃_t) + β̃_t²/(2σ_t²) − ½]: 0 for σ_t = β̃_t and the
    closed form with σ_t = β_t (NumPy, from the schedule) for ``"beta"``."""
    sched = schedules.linear(50)
    eps_fn = gaussian.eps_fn(sched, jnp.asarray(MU), 0.0)
    x0 = jnp.broadcast_to(jnp.asarray(MU), (4, D))
    ts = jnp.array([2, 7, 30, 50])
    f = jax.jit(lambda k, x, sig: ddpm.vlb_term(k, eps_fn, sched, x, ts, sigma=sig),
                static_argnums=2)
    ab, bb = np.asarray(sched.alpha_bar), np.asarray(sched.beta_bar)
    t = np.asarray(ts)
    b2 = 1.0 - (ab[t] / ab[t - 1]) ** 2
    tilde2 = bb[t - 1] ** 2 * b2 / bb[t] ** 2
    want = D * (0.5 * np.log(b2 / tilde2) + tilde2 / (2 * b2) - 0.5)
    # atol: float64 cancellation in log(σ/β̃) + β̃²/(2σ²) − ½ (terms of order 1).
    np.testing.assert_allclose(np.asarray(f(jr.key(5), x0, "beta")), want,
                               rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(np.asarray(f(jr.key(5), x0, "posterior")), 0.0,
                               atol=1e-9)


def test_bad_arguments_raise():
    sched = schedules.cosine(10)
    eps_fn = gaussian.eps_fn(sched, 0.0, 1.0)
    x0 = jnp.zeros((2, 3))
    key = jr.key(0)
    with pytest.raises(ValueError, match="sigma"):
        ddpm.elbo_bpd(key, eps_fn, sched, x0, sigma="large")
    with pytest.raises(ValueError, match="decoder"):
        ddpm.elbo_bpd(key, eps_fn, sched, x0, decoder="logistic")
    with pytest.raises(ValueError, match="num_bins"):
        ddpm.elbo_bpd(key, eps_fn, sched, x0, num_bins=1)
    with pytest.raises(ValueError, match="data_range"):
        ddpm.elbo_bpd(key, eps_fn, sched, x0, data_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="num_t"):
        ddpm.elbo_bpd(key, eps_fn, sched, x0, num_t=0)
    with pytest.raises(ValueError, match="chunk"):
        ddpm.elbo_bpd(key, eps_fn, sched, x0, chunk=0)
    with pytest.raises(ValueError, match="T >= 2"):
        ddpm.elbo_bpd(key, eps_fn, schedules.cosine(1), x0)
    with pytest.raises(ValueError, match="decoder"):
        ddpm.vlb_term(key, eps_fn, sched, x0, 1, decoder="x")
