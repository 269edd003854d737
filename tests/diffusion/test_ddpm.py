"""DDPM: q_sample, loss, posterior, predict_x0 and the sampler, on Gaussian data."""

import functools

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlab.diffusion import ddpm, gaussian, schedules

MU = np.array([0.5, -1.0, 0.0, 2.0])
SD = np.array([0.3, 1.0, 0.5, 0.2])


def _np_sched(sched):
    ab = np.asarray(sched.alpha_bar, np.float64)
    return ab, np.sqrt(1.0 - ab**2)


def test_q_sample_matches_its_marginal():
    """x_t | x_0 ~ N(ᾱ_t x_0, β̄_t²): per-coordinate moments within 4 SE."""
    sched = schedules.linear(1000)
    n = 50_000
    x0 = jnp.broadcast_to(jnp.asarray(MU, jnp.float32), (n, 4))
    t = jnp.array(300)
    xt, eps = jax.jit(ddpm.q_sample)(jr.key(0), sched, x0, t)
    ab, bb = float(sched.alpha_bar[300]), float(sched.beta_bar[300])
    np.testing.assert_allclose(xt, ab * x0 + bb * eps, rtol=1e-6, atol=1e-6)
    se = bb / np.sqrt(n)
    assert np.all(np.abs(np.asarray(xt.mean(0)) - ab * MU) < 4 * se)
    var_se = bb**2 * np.sqrt(2.0 / n)
    assert np.all(np.abs(np.asarray(xt.var(0)) - bb**2) < 4 * var_se)


def test_q_sample_of_gaussian_data_has_the_oracle_marginal():
    sched = schedules.cosine(1000)
    n = 50_000
    k0, k1 = jr.split(jr.key(1))
    x0 = MU[None] + SD[None] * jr.normal(k0, (n, 4))
    t = jr.randint(jr.key(2), (n,), 1, 1001)
    t = t.at[: n // 2].set(700)  # half at one time, half anywhere
    xt, _ = jax.jit(ddpm.q_sample)(k1, sched, x0, t)
    ab, bb = _np_sched(sched)
    m, v = ab[700] * MU, ab[700] ** 2 * SD**2 + bb[700] ** 2
    got = np.asarray(xt[: n // 2])
    se = np.sqrt(v / (n // 2))
    assert np.all(np.abs(got.mean(0) - m) < 4 * se)
    assert np.all(np.abs(got.var(0) - v) < 4 * v * np.sqrt(2.0 / (n // 2)))


def test_predict_x0_inverts_q_sample(x64):
    sched = schedules.linear(1000)
    x0 = jr.normal(jr.key(3), (8, 3, 3, 1), jnp.float64)
    t = jnp.arange(1, 1000, 125)
    xt, eps = ddpm.q_sample(jr.key(4), sched, x0, t)
    np.testing.assert_allclose(
        jax.jit(ddpm.predict_x0)(sched, xt, t, eps), x0, rtol=1e-8, atol=1e-8
    )


def test_loss_with_oracle_has_closed_form_expectation():
    """E‖ε − ε*‖²/D = E_t[1 − β̄_t²/v_t] (conditional variance of ε given x_t)."""
    sched = schedules.linear(1000)
    n = 40_000
    x0 = MU[None] + SD[None] * jr.normal(jr.key(5), (n, 4))
    fn = gaussian.eps_fn(sched, MU, SD)
    losses = jax.jit(functools.partial(ddpm.loss, eps_fn=fn))(
        jr.key(6), sched=sched, x0=x0
    )
    chex.assert_shape(losses, (n,))
    ab, bb = _np_sched(sched)
    v = ab[1:, None] ** 2 * SD[None] ** 2 + bb[1:, None] ** 2
    expected = np.mean(1.0 - bb[1:, None] ** 2 / v)
    se = float(losses.std()) / np.sqrt(n)
    assert abs(float(losses.mean()) - expected) < 4 * se
    # a zero predictor has expected loss E‖ε‖²/D = 1
    zero = jax.jit(lambda k: ddpm.loss(k, lambda x, t: jnp.zeros_like(x), sched, x0))
    l0 = zero(jr.key(7))
    assert abs(float(l0.mean()) - 1.0) < 4 * float(l0.std()) / np.sqrt(n)


def test_loss_is_differentiable():
    sched = schedules.linear(100)
    x0 = jr.normal(jr.key(8), (16, 2, 2, 1))

    def f(w):
        return ddpm.loss(jr.key(9), lambda x, t: w * x, sched, x0).mean()

    g = jax.jit(jax.grad(f))(0.5)
    assert np.isfinite(float(g))


def test_posterior_is_gaussian_conditioning(x64):
    """Compare with conditioning the joint of (x_{t-1}, x_t | x_0) directly."""
    sched = schedules.linear(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    ac = np.concatenate([[1.0], np.cumprod(1 - betas)])  # Ho's ᾱ
    t = jnp.array([1, 2, 500, 1000])
    x0 = jr.normal(jr.key(10), (4, 3), jnp.float64)
    xt = jr.normal(jr.key(11), (4, 3), jnp.float64)
    mean, std = jax.jit(ddpm.posterior)(sched, xt, x0, t)
    for i, ti in enumerate(np.asarray(t)):
        cov = np.sqrt(1 - betas[ti - 1]) * (1 - ac[ti - 1])  # Cov(x_{t-1}, x_t)
        var_t = 1 - ac[ti]
        resid = xt[i] - np.sqrt(ac[ti]) * x0[i]
        m = np.sqrt(ac[ti - 1]) * x0[i] + cov / var_t * resid
        var = (1 - ac[ti - 1]) - cov**2 / var_t
        np.testing.assert_allclose(mean[i], m, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            std[i], np.sqrt(max(var, 0.0)), rtol=1e-6, atol=1e-12
        )
    assert float(std[0]) == 0.0  # t = 1: the posterior is δ(x_0)
    np.testing.assert_allclose(mean[0], x0[0], rtol=1e-12)


def _ddpm_exact_slope_and_var(sched, s, kind):
    """Exact recursion for the oracle: u_{t-1} = a_t u_t + σ_t z (u = x − m)."""
    ab, bb = _np_sched(sched)
    slope, var = 1.0, 1.0
    for t in range(sched.num_steps, 0, -1):
        alpha = ab[t] / ab[t - 1]
        b2 = 1 - alpha**2
        v = ab[t] ** 2 * s**2 + bb[t] ** 2
        a = (1 - b2 / v) / alpha
        sig2 = bb[t - 1] ** 2 * b2 / bb[t] ** 2 if kind == "posterior" else b2 * (t > 1)
        slope, var = a * slope, a * a * var + sig2
    return slope, var


@pytest.mark.parametrize("kind", ["posterior", "beta"])
def test_sample_variance_is_the_exact_recursion(x64, kind):
    """With the oracle the sampler is affine in x_T: its slope equals ∏ a_t to
    float precision; its total variance matches the recursion within 4 SE."""
    sched = schedules.linear(200)
    mu, s = 0.3, 0.5
    fn = gaussian.eps_fn(sched, mu, s)
    slope, var = _ddpm_exact_slope_and_var(sched, s, kind)

    def run(x_T):
        return ddpm.sample(jr.key(0), fn, sched, (3, 1), sigma=kind, x_T=x_T)

    x_T = jr.normal(jr.key(5), (3, 1), jnp.float64)
    _, tangent = jax.jit(lambda x: jax.jvp(run, (x,), (jnp.ones_like(x),)))(x_T)
    np.testing.assert_allclose(tangent, slope, rtol=1e-12)

    n = 40_000
    x = jax.jit(
        functools.partial(ddpm.sample, eps_fn=fn, sched=sched, shape=(n, 1), sigma=kind)
    )(jr.key(1))
    ab, _ = _np_sched(sched)
    u = np.asarray(x[:, 0]) - mu
    mean_u = -slope * ab[-1] * mu  # x_T ~ N(0, 1) rather than N(m_T, v_T)
    assert abs(u.mean() - mean_u) < 4 * np.sqrt(var / n)
    assert abs(u.var() - var) < 4 * var * np.sqrt(2.0 / n)


@pytest.mark.parametrize("kind", ["posterior", "beta"])
def test_sample_matches_gaussian_data(kind):
    """Samples of N(μ, s²) match μ and s within 4 standard errors (cosine, T=1000)."""
    sched = schedules.cosine(1000)
    n = 4000
    fn = gaussian.eps_fn(sched, MU, SD)
    x = jax.jit(lambda k: ddpm.sample(k, fn, sched, (n, 4), sigma=kind))(jr.key(2))
    x = np.asarray(x, np.float64)
    assert np.all(np.abs(x.mean(0) - MU) < 4 * SD / np.sqrt(n))
    assert np.all(np.abs(x.std(0) - SD) < 4 * SD / np.sqrt(2 * n))


def test_su_exact_cases(x64):
    """Su (三): δ_0 data is recovered exactly; for N(0, I) data σ_t = β_t is exact."""
    sched = schedules.linear(1000)
    fn0 = gaussian.eps_fn(sched, 0.0, 0.0)
    x = jax.jit(lambda k: ddpm.sample(k, fn0, sched, (64, 3)))(jr.key(3))
    np.testing.assert_allclose(x, 0.0, atol=1e-8)
    # N(0, I): ε* = β̄ x, so each step is exactly x_{t-1} ~ N(α_t x_t, β_t²):
    # the variance stays 1 until the last, noise-free step leaves α_1² = 1 − β_1².
    _, var = _ddpm_exact_slope_and_var(sched, 1.0, "beta")
    np.testing.assert_allclose(var, 1.0 - 1e-4, rtol=1e-10)
    fn1 = gaussian.eps_fn(sched, 0.0, 1.0)
    n = 20_000
    y = jax.jit(lambda k: ddpm.sample(k, fn1, sched, (n, 2), sigma="beta"))(jr.key(4))
    assert np.all(np.abs(np.asarray(y.var(0)) - 1.0) < 4 * np.sqrt(2.0 / n))


def test_bad_arguments():
    sched = schedules.linear(100)
    fn = gaussian.eps_fn(sched, 0.0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        ddpm.sample(jr.key(0), fn, sched, (4, 2), sigma="ddim")
    with pytest.raises(ValueError, match="eps_fn"):
        ddpm.sample(jr.key(0), lambda x, t: x[:, :1], sched, (4, 2))
    with pytest.raises(ValueError, match="shape"):
        ddpm.sample(jr.key(0), fn, sched, (4, 0))
    with pytest.raises(ValueError, match="shape"):
        ddpm.sample(jr.key(0), fn, sched, "4x2")
    with pytest.raises(ValueError, match="x_T"):
        ddpm.sample(jr.key(0), fn, sched, (4, 2), x_T=jnp.zeros((4, 3)))
