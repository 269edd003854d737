"""Tests of jaxlab.diffusion.ode: the probability-flow ODE against closed forms.

For Gaussian data N(μ, s²) the exact flow is x_t − m_t = √(v_t/v_T)(x_T − m_T)
(``gaussian.ode_flow``); a Gaussian mixture gives a nonlinear score for the
round-trip and per-sample-step tests.
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlab.diffusion import ddim, gaussian, ode, schedules
from jaxlab.diffusion import sde as sde_lib

MU = jnp.array([[0.3, -0.5, 1.0]])
S = jnp.array([[0.5, 1.5, 0.2]])
SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE()}


def _prior_draws(sde, n, key):
    """Draws of the exact marginal p_T = N(m_T, v_T) of the Gaussian data."""
    ab, bb = sde.scales(sde.T)
    v = gaussian.marginal_var(ab, bb, S)
    return ab * MU + jnp.sqrt(v) * jr.normal(key, (n, 3), MU.dtype)


def mixture_score_fn(sde, a=1.2, s=0.4):
    """Exact score of p_t for data ½N(a·1, s²I) + ½N(−a·1, s²I) in 2-D."""
    centres = jnp.array([[a, a], [-a, -a]])

    def score(x, t):
        ab, bb = sde.scales(jnp.broadcast_to(t, x.shape[:1]))
        v = (ab**2 * s**2 + bb**2)[:, None]
        m = ab[:, None, None] * centres[None]  # [B, 2 comps, 2 dims]
        logits = -jnp.sum((x[:, None, :] - m) ** 2, -1) / (2 * v)
        w = jax.nn.softmax(logits, axis=-1)
        return -(x - jnp.einsum("bk,bkd->bd", w, m)) / v

    return score


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_flow_matches_closed_form(x64, name):
    """x_t − m_t = √(v_t/v_T)(x_T − m_T) to the solver tolerance.

    The embedded error estimate keeps each step's local error below
    tol·(1 + |x|); summed over the steps and amplified at most by the flow's
    growth factor max √(v_t/v_u) ≤ max(1, s) this bounds the global error.
    """
    sde, tol = SDES[name], 1e-8
    score = sde_lib.oracle_score_fn(sde, MU, S)
    z = _prior_draws(sde, 8, jr.key(0))
    ab_T, bb_T = sde.scales(sde.T)
    growth = max(1.0, float(jnp.max(S)))
    t1 = 0.3 if name == "vp" else 1e-3  # any end time: the flow is closed-form
    x, nfe = jax.jit(
        lambda z: ode.flow(score, sde, z, t0=sde.T, t1=t1, rtol=tol, atol=tol)
    )(z)
    ab, bb = sde.scales(t1)
    ref = gaussian.ode_flow(z, ab_T, bb_T, ab, bb, MU, S)
    steps = (np.asarray(nfe) - 1) / 6
    bound = growth * steps * tol * (1 + np.max(np.abs(np.asarray(x)), axis=1))
    err = np.max(np.abs(np.asarray(x - ref)), axis=1)
    assert np.all(err <= bound), (err, bound)


@pytest.mark.parametrize(
    "name,param", [("vp", "sigma"), ("ve", "sigma"), ("subvp", "log_sigma")]
)
def test_sigma_variables_match_closed_form(x64, name, param):
    """The DDIM / EDM form dx̃/dσ = ε̂ (and its log σ version) reproduces the
    closed-form flow. The controller bounds local errors of x̃ = x/ᾱ by
    tol·(1 + |x̃|); a deviation of x̃ at σ reaches the end scaled by
    ᾱ_end √((s² + σ_end²)/(s² + σ²)) ≤ 1 while |x̃_σ| ≤ |μ| + 5√(s² + σ²), so
    each step adds at most tol·(1 + |μ| + 5 max(s, 1)) (5 s.d. covers the
    8 prior draws) and the sum over the steps bounds the error."""
    sde, tol = SDES[name], 1e-8
    score = sde_lib.oracle_score_fn(sde, MU, S)
    z = _prior_draws(sde, 8, jr.key(0))
    ab_T, bb_T = sde.scales(sde.T)
    x, nfe = jax.jit(lambda z: ode.flow(score, sde, z, t0=sde.T, t1=1e-3, rtol=tol,
                                        atol=tol, param=param))(z)
    ref = gaussian.ode_flow(z, ab_T, bb_T, *sde.scales(1e-3), MU, S)
    steps = (np.asarray(nfe) - 1) / 6
    per_step = tol * (1 + float(jnp.max(jnp.abs(MU))) + 5 * max(1.0, float(S.max())))
    err = np.max(np.abs(np.asarray(x - ref)), axis=1)
    assert np.all(err <= steps * per_step), (err, steps * per_step)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp", "linear"])
def test_time_of_sigma_inverts_sigma_of_time(x64, name):
    """t(σ(t)) = t; the LinearSDE's numerical inverse equals VP's closed form."""
    vp = SDES["vp"]
    sde = SDES.get(name) or sde_lib.LinearSDE(
        lambda t: jnp.exp(-0.5 * vp.int_beta(t)),
        lambda t: jnp.sqrt(-jnp.expm1(-vp.int_beta(t))))
    ts = jnp.linspace(1e-4, 1.0, 7)
    back = jax.jit(lambda t: ode.time_of_sigma(sde, ode.sigma_of_time(sde, t)))(ts)
    np.testing.assert_allclose(np.asarray(back), np.asarray(ts), rtol=1e-9)
    if name == "linear":
        sig = ode.sigma_of_time(vp, ts)
        np.testing.assert_allclose(np.asarray(ode.time_of_sigma(sde, sig)),
                                   np.asarray(ode.time_of_sigma(vp, sig)), rtol=1e-9)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_fixed_step_solvers_converge_at_their_order(x64, solver, order):
    sde = SDES["vp"]
    score = sde_lib.oracle_score_fn(sde, MU, S)
    z = _prior_draws(sde, 4, jr.key(1))
    ab_T, bb_T = sde.scales(sde.T)
    ab, bb = sde.scales(1e-3)
    ref = gaussian.ode_flow(z, ab_T, bb_T, ab, bb, MU, S)
    errs = []
    for n in (64, 256):
        x, nfe = jax.jit(
            lambda z: ode.decode(score, sde, z, solver=solver, num_steps=n)  # noqa: B023
        )(z)
        assert np.all(np.asarray(nfe) == ode.nfe_from_steps(n, solver))
        errs.append(float(jnp.max(jnp.abs(x - ref))))
    slope = math.log(errs[0] / errs[1], 4)
    assert abs(slope - order) <= 0.3, slope


def test_vp_probability_flow_and_ddim_agree_as_steps_grow(x64):
    """DDIM (η = 0) is Euler's method for d(x/ᾱ) = ε d(β̄/ᾱ) on the VP schedule.

    With the discrete schedule ᾱ_i = e^{−B(i/1000)/2} and the oracle ε, DDIM
    with S steps converges at first order to the exact PF-ODE solution.
    """
    vp = SDES["vp"]
    grid = np.arange(1001) / 1000.0
    sched = schedules.from_int_beta(vp.int_beta(jnp.asarray(grid)))
    eps_fn = gaussian.eps_fn(sched, MU[0], S[0])
    score = sde_lib.oracle_score_fn(vp, MU, S)
    z = _prior_draws(vp, 6, jr.key(2))
    ref, _ = jax.jit(
        lambda z: ode.decode(score, vp, z, eps=0.0, rtol=1e-10, atol=1e-10)
    )(z)
    exact = gaussian.ode_flow(z, *vp.scales(1.0), 1.0, 0.0, MU, S)
    np.testing.assert_allclose(np.asarray(ref), np.asarray(exact), atol=1e-7)
    errs = []
    for steps in (10, 100, 1000):
        x = jax.jit(lambda z: ddim.decode(eps_fn, sched, z, num_steps=steps))(z)  # noqa: B023
        errs.append(float(jnp.max(jnp.abs(x - ref))))
    assert errs[0] > errs[1] > errs[2]
    assert np.log10(errs[1] / errs[2]) == pytest.approx(1.0, abs=0.3)


def test_per_sample_steps_nfe_and_round_trip(x64):
    """Per-sample adaptive steps, exact NFE counts, and encode → decode.

    ``ode.sample`` on a nonlinear (mixture) score: each sample takes its own
    steps, so its NFE equals that of decoding it alone; a counting callback in
    the score sees B × (max NFE − 1) + 1 calls (the vmapped loop runs until the
    slowest sample finishes, the others masked; the Tweedie step is one
    batched call). Round trip: decode(encode(x)) = x up to the summed local
    error budgets steps · tol · (1 + |x|).
    """
    sde, tol, B = SDES["vp"], 1e-8, 4
    base = mixture_score_fn(sde)
    calls = []

    def score(x, t):
        jax.debug.callback(lambda _: calls.append(1), t)
        return base(x, t)

    x, nfe = jax.jit(
        lambda k: ode.sample(k, score, sde, (B, 2), rtol=tol, atol=tol, denoise=True)
    )(jr.key(4))
    jax.block_until_ready(x)
    nfe = np.asarray(nfe)
    assert len(calls) == B * (nfe.max() - 1) + 1
    assert len(set(nfe.tolist())) > 1
    z = sde.prior_sample(jr.key(4), (B, 2), x.dtype)
    decode = jax.jit(lambda z: ode.decode(base, sde, z, rtol=tol, atol=tol))
    for i in range(B):
        xi, nfe_i = decode(z[i : i + 1])
        assert int(nfe_i[0]) + 1 == nfe[i]
        xi = sde_lib.tweedie_denoise(base, sde, xi, 1e-3)
        np.testing.assert_allclose(np.asarray(xi[0]), np.asarray(x[i]), atol=1e-12)

    data = jnp.array([[1.0, 1.5]])
    latent, nfe_e = jax.jit(lambda x: ode.encode(base, sde, x, rtol=tol, atol=tol))(
        data
    )
    back, nfe_d = decode(latent)
    steps = (int(nfe_e[0]) + int(nfe_d[0]) - 2) / 6
    err = float(jnp.max(jnp.abs(back - data)))
    assert err <= steps * tol * (1 + float(jnp.max(jnp.abs(data))))
    assert float(jnp.min(jnp.abs(latent - data))) > 0.01  # not a trivial identity


def test_bad_arguments_raise():
    vp = SDES["vp"]
    score = sde_lib.oracle_score_fn(vp, 0.0, 1.0)
    z = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="solver"):
        ode.decode(score, vp, z, solver="rk45")
    with pytest.raises(ValueError, match="error estimate"):
        ode.decode(score, vp, z, solver="euler")
    with pytest.raises(ValueError, match="rtol"):
        ode.decode(score, vp, z, rtol=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        ode.decode(score, vp, z, solver="euler", num_steps=0)
    with pytest.raises(ValueError, match="eps"):
        ode.encode(score, vp, z, eps=1.0)
    with pytest.raises(ValueError, match="param"):
        ode.decode(score, vp, z, param="edm")
    with pytest.raises(ValueError, match="log_sigma"):
        ode.decode(score, vp, z, param="log_sigma", eps=0.0)
    with pytest.raises(ValueError, match="differ"):
        ode.flow(score, vp, z, t0=0.5, t1=0.5)
    with pytest.raises(ValueError, match="t1"):
        ode.flow(score, vp, z, t0=0.5, t1=2.0)
    with pytest.raises(ValueError, match="sample shape"):
        ode.decode(lambda x, t: x[:, :1], vp, z)
    with pytest.raises(ValueError, match="shape"):
        ode.sample(jr.key(0), score, vp, (3,))
