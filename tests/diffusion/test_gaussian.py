"""The Gaussian oracle against independent derivations (autodiff, scipy, MC)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from jaxlab.diffusion import gaussian, schedules

MU, S = 0.7, 0.4


@pytest.mark.parametrize("ab", [1.0, 0.8, 0.3, 0.01])
def test_log_density_matches_scipy_and_score_is_its_gradient(x64, ab):
    bb = np.sqrt(1 - ab**2)
    x = jr.normal(jr.key(0), (5, 3), jnp.float64) * 2
    mu = jnp.array([[0.7, -1.0, 0.0]])  # explicit broadcast (rank promotion raises)
    s = jnp.array([[0.4, 1.0, 2.0]])
    logp = jax.jit(gaussian.log_density)(x, ab, bb, mu, s)
    ref = stats.norm.logpdf(
        np.asarray(x), ab * np.asarray(mu), np.sqrt(ab**2 * np.asarray(s) ** 2 + bb**2)
    ).sum(-1)
    np.testing.assert_allclose(logp, ref, rtol=1e-12)
    grad = jax.grad(lambda y: gaussian.log_density(y, ab, bb, mu, s).sum())(x)
    np.testing.assert_allclose(
        jax.jit(gaussian.score)(x, ab, bb, mu, s), grad, rtol=1e-12
    )
    # ε* = −β̄·score (Tweedie); checked against the autodiff gradient.
    np.testing.assert_allclose(
        jax.jit(gaussian.eps)(x, ab, bb, mu, s), -bb * grad, rtol=1e-12, atol=1e-15
    )


def test_marginal_moments(x64):
    np.testing.assert_allclose(jax.jit(gaussian.marginal_mean)(0.5, MU), 0.5 * MU)
    np.testing.assert_allclose(
        jax.jit(gaussian.marginal_var)(0.6, 0.8, S), 0.36 * S**2 + 0.64, rtol=1e-14
    )


def test_eps_is_the_conditional_expectation():
    """E[ε | x_t] = ε*(x_t): the residual ε − ε* has mean 0 and is uncorrelated
    with x_t (the defining property of the regression), 4 standard errors."""
    n = 200_000
    ab, bb = 0.6, 0.8
    k0, k1 = jr.split(jr.key(1))
    x0 = MU + S * jr.normal(k0, (n,))
    e = jr.normal(k1, (n,))
    xt = ab * x0 + bb * e
    r = e - jax.jit(gaussian.eps)(xt, ab, bb, MU, S)
    assert abs(float(r.mean())) < 4 * float(r.std()) / np.sqrt(n)
    prod = r * (xt - xt.mean())
    assert abs(float(prod.mean())) < 4 * float(prod.std()) / np.sqrt(n)


def test_ode_flow_solves_the_probability_flow_ode(x64):
    """d(x/ᾱ)/dσ̄ = ε*(x) with σ̄ = β̄/ᾱ (DDIM Eq. 14), checked by forward-mode AD."""
    x_a = jnp.array([-1.0, 0.2, 3.0])
    ab_a = 0.3
    bb_a = np.sqrt(1 - ab_a**2)

    def coefs(sig):
        ab = 1 / jnp.sqrt(1 + sig**2)
        return ab, sig * ab

    def y(sig):
        ab, bb = coefs(sig)
        return gaussian.ode_flow(x_a, ab_a, bb_a, ab, bb, MU, S) / ab

    for sig in (0.1, 1.0, 5.0):
        _, dy = jax.jvp(y, (jnp.float64(sig),), (jnp.float64(1.0),))
        ab, bb = coefs(sig)
        x = jax.jit(gaussian.ode_flow)(x_a, ab_a, bb_a, ab, bb, MU, S)
        np.testing.assert_allclose(dy, gaussian.eps(x, ab, bb, MU, S), rtol=1e-10)
    # identity at equal times, and x_0 = μ + s(x_T − m_T)/√v_T.
    np.testing.assert_allclose(
        gaussian.ode_flow(x_a, ab_a, bb_a, ab_a, bb_a, MU, S), x_a, rtol=1e-14
    )
    x0 = gaussian.ode_flow(x_a, ab_a, bb_a, 1.0, 0.0, MU, S)
    np.testing.assert_allclose(
        x0, MU + S * (x_a - ab_a * MU) / np.sqrt(ab_a**2 * S**2 + bb_a**2), rtol=1e-12
    )


@pytest.mark.parametrize("sigma_frac", [0.0, 0.5, 1.0])
def test_ddim_step_scale_is_the_derivative_of_the_step(x64, sigma_frac):
    """a = ∂x_r/∂x_t of x_r = ᾱ_r (x − β̄_t ε*)/ᾱ_t + √(β̄_r² − σ²) ε* (DDIM Eq. 12)."""
    ab_t, ab_r = 0.2, 0.7
    bb_t, bb_r = np.sqrt(1 - ab_t**2), np.sqrt(1 - ab_r**2)
    sig = sigma_frac * bb_r

    def x_r(x):
        e = gaussian.eps(x, ab_t, bb_t, MU, S)
        return ab_r * (x - bb_t * e) / ab_t + np.sqrt(bb_r**2 - sig**2) * e

    a = jax.grad(x_r)(jnp.float64(0.3))
    np.testing.assert_allclose(
        jax.jit(gaussian.ddim_step_scale)(ab_t, bb_t, ab_r, bb_r, sig, S),
        a,
        rtol=1e-12,
    )


def test_eps_fn_binds_schedule_per_example(x64):
    sched = schedules.cosine(100)
    mu = jnp.array([[0.5], [-1.0]])  # per-pixel mean of a [2, 1] "image"
    fn = gaussian.eps_fn(sched, mu, S)
    x = jr.normal(jr.key(0), (4, 2, 1), jnp.float64)
    t = jnp.array([1, 10, 50, 100])
    out = jax.jit(fn)(x, t)
    for i in range(4):
        ab, bb = sched.alpha_bar[t[i]], sched.beta_bar[t[i]]
        np.testing.assert_allclose(
            out[i], bb * (x[i] - ab * mu) / (ab**2 * S**2 + bb**2), rtol=1e-12
        )
    # a scalar t is broadcast to the batch
    np.testing.assert_allclose(fn(x, 10), fn(x, jnp.full((4,), 10)), rtol=0)
