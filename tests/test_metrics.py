"""Fréchet distance: closed forms for Gaussians."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

from jaxlab import metrics


def test_commuting_covariances_closed_form(x64):
    # For diagonal covariances d² = |Δμ|² + Σ (σ1 - σ2)² exactly.
    mu1, mu2 = jnp.array([0.0, 1.0, 2.0]), jnp.array([1.0, 1.0, 0.0])
    s1, s2 = jnp.array([1.0, 2.0, 0.5]), jnp.array([2.0, 2.0, 1.5])
    d = jax.jit(metrics.frechet_distance_from_stats)(
        mu1, jnp.diag(s1**2), mu2, jnp.diag(s2**2)
    )
    # |Δμ|² = 1 + 0 + 4, Σ(σ1 - σ2)² = 1 + 0 + 1
    np.testing.assert_allclose(d, (1 + 0 + 4) + (1 + 0 + 1), rtol=1e-10)


def test_general_covariances_match_scipy_sqrtm(x64):
    k1, k2 = jr.split(jr.key(0))
    a, b = jr.normal(k1, (5, 5)), jr.normal(k2, (5, 5))
    c1, c2 = a @ a.T + 0.1 * jnp.eye(5), b @ b.T
    mu = jnp.zeros(5)
    ref = np.trace(
        c1 + c2 - 2 * scipy.linalg.sqrtm(np.asarray(c1) @ np.asarray(c2)).real
    )
    np.testing.assert_allclose(
        metrics.frechet_distance_from_stats(mu, c1, mu, c2), ref, rtol=1e-8
    )


def test_sample_distance_is_zero_for_identical_sets_and_jits():
    x = jr.normal(jr.key(1), (200, 4))
    assert abs(float(jax.jit(metrics.frechet_distance)(x, x))) < 1e-4
    y = x + 3.0
    # a pure shift moves only the means: d² = 4 · 3² = 36
    np.testing.assert_allclose(metrics.frechet_distance(x, y), 36.0, rtol=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="feature dims"):
        metrics.frechet_distance(jnp.ones((4, 3)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.gaussian_stats(jnp.ones((1, 3)))
