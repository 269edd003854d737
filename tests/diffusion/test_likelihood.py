"""Tests of jaxlab.diffusion.likelihood against closed-form Gaussian densities.

Data N(μ, Σ) with a full covariance (so the drift's Jacobian is not diagonal
and Hutchinson's estimator has genuine variance). The exact score of p_t is
−Σ_t⁻¹(x − ᾱμ) with Σ_t = ᾱ²Σ + β̄²I, and p_T is the exact marginal.
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from jaxlab.diffusion import likelihood
from jaxlab.diffusion import sde as sde_lib

D = 4
_A = np.array(
    [
        [1.0, 0.3, 0.0, -0.2],
        [0.3, 0.8, 0.25, 0.0],
        [0.0, 0.25, 0.6, 0.1],
        [-0.2, 0.0, 0.1, 0.5],
    ]
)
COV = _A @ _A.T + 0.1 * np.eye(D)
MU = np.array([0.3, -0.5, 1.0, 0.0])
LAM, U = np.linalg.eigh(COV)
SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE()}


def gaussian_model(sde):
    """(score_fn, log p_T) of the full-covariance Gaussian data under ``sde``."""
    u, lam, mu = (jnp.asarray(a, jnp.float32) for a in (U, LAM, MU))

    def score(x, t):
        ab, bb = sde.scales(jnp.broadcast_to(t, x.shape[:1]))
        var = ab[:, None] ** 2 * lam[None] + bb[:, None] ** 2
        return -(((x - ab[:, None] * mu[None]) @ u) / var) @ u.T

    def prior_logp(z):
        ab, bb = sde.scales(sde.T)
        var = ab**2 * lam + bb**2
        proj = (z - ab * mu[None]) @ u
        return -0.5 * jnp.sum(proj**2 / var[None], 1) - 0.5 * jnp.sum(
            jnp.log(2 * jnp.pi * var)
        )

    return score, prior_logp


def _data(n, key):
    z = np.asarray(jr.normal(key, (n, D)), np.float64)
    return jnp.asarray(MU + z @ np.linalg.cholesky(COV).T, jnp.float32)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_exact_log_likelihood_equals_gaussian_density(name):
    """|log p − log N(x; μ, Σ)| ≤ 1e-3 nats/dim (float32, rtol = atol = 1e-5).

    The ODE starts at ε = 1e-5, where Σ_ε = Σ + O(1e-5)·I: with λ_min(Σ) ≈ 0.1
    that shifts log p by < 1e-4 nats/dim, below the tolerance.
    """
    sde = SDES[name]
    score, prior = gaussian_model(sde)
    x = _data(8, jr.key(0))
    logp, nfe = jax.jit(
        lambda x: likelihood.log_likelihood(jr.key(1), score, sde, x, prior_logp=prior)
    )(x)
    ref = stats.multivariate_normal(MU, COV).logpdf(np.asarray(x, np.float64))
    assert np.max(np.abs(np.asarray(logp, np.float64) - ref)) / D <= 1e-3
    assert np.all(np.asarray(nfe) >= 7)


@pytest.mark.parametrize(
    "name,param", [("vp", "sigma"), ("subvp", "log_sigma"), ("ve", "sigma")]
)
def test_sigma_variables_give_the_same_exact_likelihood(name, param):
    """Solving in x̃ = x/ᾱ, σ = β̄/ᾱ (or log σ) with the D log ᾱ end terms gives
    log N(x; μ, Σ) to the same 1e-3 nats/dim as the t form (float32, 1e-5)."""
    sde = SDES[name]
    score, prior = gaussian_model(sde)
    x = _data(8, jr.key(0))
    logp, _ = jax.jit(lambda x: likelihood.log_likelihood(
        jr.key(1), score, sde, x, prior_logp=prior, param=param))(x)
    ref = stats.multivariate_normal(MU, COV).logpdf(np.asarray(x, np.float64))
    assert np.max(np.abs(np.asarray(logp, np.float64) - ref)) / D <= 1e-3


@pytest.mark.parametrize(
    "probe", ["rademacher", pytest.param("gaussian", marks=pytest.mark.slow)]
)
def test_hutchinson_estimator_is_unbiased(probe):
    """Mean over K probes = log N(x; μ, Σ) within 4 SE (+ the 1e-3 nats/dim of
    the exact ODE solution, checked above)."""
    sde, K = SDES["vp"], 200
    score, prior = gaussian_model(sde)
    x = jnp.broadcast_to(_data(1, jr.key(2)), (K, D))
    est, _ = jax.jit(
        lambda k, x: likelihood.log_likelihood(
            k, score, sde, x, estimator="hutchinson", probe=probe, prior_logp=prior
        )
    )(jr.key(4), x)
    est = np.asarray(est, np.float64)
    ref = stats.multivariate_normal(MU, COV).logpdf(np.asarray(x[0], np.float64))
    assert est.std() > 1e-3  # the estimator is genuinely random here
    assert abs(est.mean() - ref) <= 4 * est.std() / math.sqrt(K) + 1e-3 * D


def test_bits_per_dim_conventions():
    # A uniform density on the data box assigns each of the num_bins levels
    # probability 1/num_bins per dimension: exactly log2(num_bins) bits/dim.
    for lo, hi, bins in ((0.0, 1.0, 256), (-1.0, 1.0, 256), (-1.0, 1.0, 17)):
        logp = jnp.full((3,), -5 * math.log(hi - lo))
        bpd = jax.jit(
            lambda lp: likelihood.bits_per_dim(
                lp, 5, data_range=(lo, hi), num_bins=bins  # noqa: B023 (called at once)
            )
        )(logp)
        np.testing.assert_allclose(np.asarray(bpd), math.log2(bins), rtol=1e-6)
    # The offsets of reference/sde.md §2.7: +8 on [0, 1], +7 on [−1, 1].
    zero = jnp.zeros(())
    assert float(likelihood.bits_per_dim(zero, 10, data_range=(0, 1))) == 8.0
    assert float(likelihood.bits_per_dim(zero, 10, data_range=(-1, 1))) == 7.0


def test_dequantize_stays_in_the_level_bin():
    lo, hi, bins, n = -1.0, 1.0, 17, 20000
    k = jr.randint(jr.key(5), (n, 3), 0, bins)
    x = lo + k * (hi - lo) / (bins - 1)
    xc = jax.jit(
        lambda kk, x: likelihood.dequantize(kk, x, data_range=(lo, hi), num_bins=bins)
    )(jr.key(6), x)
    pos = (np.asarray(xc, np.float64) - lo) / ((hi - lo) / bins)
    np.testing.assert_array_equal(np.floor(pos), np.asarray(k))
    u = (pos - np.asarray(k)).ravel()
    assert abs(u.mean() - 0.5) <= 4 * math.sqrt(1 / 12 / u.size)
    assert np.all((np.asarray(xc) >= lo) & (np.asarray(xc) < hi))


def test_bad_arguments_raise():
    vp = SDES["vp"]
    score, _ = gaussian_model(vp)
    x = _data(2, jr.key(0))
    key = jr.key(0)
    with pytest.raises(ValueError, match="estimator"):
        likelihood.log_likelihood(key, score, vp, x, estimator="skilling")
    with pytest.raises(ValueError, match="probe"):
        likelihood.log_likelihood(
            key, score, vp, x, estimator="hutchinson", probe="sphere"
        )
    with pytest.raises(ValueError, match="error estimate"):
        likelihood.log_likelihood(key, score, vp, x, solver="euler")
    with pytest.raises(ValueError, match="atol"):
        likelihood.log_likelihood(key, score, vp, x, atol=-1.0)
    with pytest.raises(ValueError, match="eps"):
        likelihood.log_likelihood(key, score, vp, x, eps=-0.1)
    with pytest.raises(ValueError, match="param"):
        likelihood.log_likelihood(key, score, vp, x, param="lambda")
    with pytest.raises(ValueError, match="log_sigma"):
        likelihood.log_likelihood(key, score, vp, x, param="log_sigma", eps=0.0)
    with pytest.raises(ValueError, match="data_range"):
        likelihood.bits_per_dim(jnp.zeros(2), 4, data_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="num_bins"):
        likelihood.bits_per_dim(jnp.zeros(2), 4, num_bins=1)
    with pytest.raises(ValueError, match="num_dims"):
        likelihood.bits_per_dim(jnp.zeros(2), 0)
    with pytest.raises(ValueError, match="data_range"):
        likelihood.dequantize(key, x, data_range=(0.0,))
