"""Tests of jaxlab.diffusion.sde against closed forms for Gaussian data.

Data x_0 ~ N(μ, diag(s²)); the exact score of p_t is the Gaussian oracle, so
every sampler must reproduce the data moments. Monte-Carlo tolerances are 4
standard errors plus, where a scheme is biased at finite N, its deterministic
bias computed here in float64 NumPy from the scheme's linear recursion for
Gaussian data (never by the code under test).
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlab.diffusion import sde as sde_lib

MU = np.array([0.3, -0.5])
S = np.array([0.5, 1.5])
EPS = 1e-3


# --------------------------------------------------------------------------- #
# Independent closed forms (float64 NumPy, written from reference/sde.md §2.3)
# --------------------------------------------------------------------------- #


def _int_beta(t, bmin=0.1, bmax=20.0):
    return bmin * t + 0.5 * (bmax - bmin) * t**2


def closed_form(name, t):
    """(ᾱ, β̄, f, g) of the paper's SDEs at time(s) t (defaults)."""
    t = np.asarray(t, np.float64)
    if name == "ve":
        smin, smax = 0.01, 50.0
        sig = smin * (smax / smin) ** t
        g = sig * np.sqrt(2 * np.log(smax / smin))
        return np.ones_like(t), np.sqrt(sig**2 - smin**2), np.zeros_like(t), g
    B = _int_beta(t)
    beta = 0.1 + 19.9 * t
    if name == "vp":
        return np.exp(-B / 2), np.sqrt(1 - np.exp(-B)), -beta / 2, np.sqrt(beta)
    return (
        np.exp(-B / 2),
        1 - np.exp(-B),
        -beta / 2,
        np.sqrt(beta * (1 - np.exp(-2 * B))),
    )


SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE()}


def _var(name, t, s):
    ab, bb, _, _ = closed_form(name, t)
    return ab**2 * s**2 + bb**2


def expected_moments(name, scheme, num_steps, mu, s, *, snr=0.0, denoise=True):
    """Mean and variance of a sampler's output for N(μ, s²) data (one dimension).

    The oracle score is linear, so every scheme maps Gaussians to Gaussians:
    propagate (mean, var) from the prior through the scheme's update and the
    Tweedie step. ``scheme`` is "em", "rd", "anc", "pf"; ``snr > 0`` adds one
    Langevin step per level with the large-batch step size
    ε = 2 a r² (E‖z‖/E‖s‖)² = 2 a r² v²/var.
    """
    prior_std = 50.0 if name == "ve" else 1.0
    mean, var = 0.0, prior_std**2
    ts = np.linspace(1.0, EPS, num_steps + 1)
    for t, r in zip(ts[:-1], ts[1:]):
        ab_t, bb_t, f, g = closed_form(name, t)
        ab_r, bb_r, _, _ = closed_form(name, r)
        v_t, m_t = ab_t**2 * s**2 + bb_t**2, ab_t * mu
        # s(x) = −(x − m_t)/v_t, so x' = a x + c + noise.
        if scheme == "em":
            dt = r - t
            a = 1 + (f + g**2 / v_t) * dt
            c = -(g**2) * m_t / v_t * dt
            noise = g**2 * (-dt)
        else:
            alpha = ab_t / ab_r
            b2 = bb_t**2 - alpha**2 * bb_r**2
            if scheme == "rd":
                a, c, noise = 2 - alpha - b2 / v_t, b2 * m_t / v_t, b2
            elif scheme == "pf":
                a, c, noise = 2 - alpha - 0.5 * b2 / v_t, 0.5 * b2 * m_t / v_t, 0.0
            else:
                a, c = (1 - b2 / v_t) / alpha, b2 * m_t / v_t / alpha
                noise = bb_r**2 * b2 / bb_t**2
        mean, var = a * mean + c, a**2 * var + noise
        if snr > 0:
            v_r, m_r = ab_r**2 * s**2 + bb_r**2, ab_r * mu
            step = 2 * (ab_t / ab_r) ** 2 * snr**2 * v_r**2 / var
            k = 1 - step / v_r
            mean, var = k * mean + (1 - k) * m_r, k**2 * var + 2 * step
    if denoise:
        ab, bb, _, _ = closed_form(name, EPS)
        v = ab**2 * s**2 + bb**2
        k = (1 - bb**2 / v) / ab
        mean, var = k * mean + bb**2 * ab * mu / v / ab, k**2 * var
    return mean, var


def assert_moments(x, mu, s, bias_mean, bias_var):
    """Per-dimension sample mean/var within 4 SE (+ the scheme's known bias)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    mean, var = x.mean(0), x.var(0, ddof=1)
    se_mean, se_var = s / math.sqrt(n), s**2 * math.sqrt(2.0 / (n - 1))
    assert np.all(np.abs(mean - mu) <= 4 * se_mean + np.abs(bias_mean)), (mean, mu)
    assert np.all(np.abs(var - s**2) <= 4 * se_var + np.abs(bias_var)), (var, s**2)


# --------------------------------------------------------------------------- #
# SDE definitions
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_coefficients_match_closed_forms(x64, name):
    sde = SDES[name]
    t = np.linspace(0.01, 1.0, 7)
    ab, bb, f, g = closed_form(name, t)
    got = jax.jit(lambda t: (*sde.scales(t), sde.drift_coef(t), sde.diffusion(t)))(t)
    for a, b in zip(got, (ab, bb, f, g)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_linear_sde_from_kernel_reproduces_f_and_g(x64, name):
    """Su's map f = d ln ᾱ/dt, g² = 2ᾱβ̄ d(β̄/ᾱ)/dt by autodiff gives each SDE."""
    ref = SDES[name]
    lin = sde_lib.LinearSDE(lambda t: ref.scales(t)[0], lambda t: ref.scales(t)[1])
    t = jnp.linspace(0.01, 1.0, 9)
    f = jax.jit(lin.drift_coef)(t)
    g = jax.jit(lin.diffusion)(t)
    np.testing.assert_allclose(
        np.asarray(f), np.asarray(ref.drift_coef(t)), rtol=1e-10, atol=1e-14
    )
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref.diffusion(t)), rtol=1e-10)
    x = jr.normal(jr.key(0), (9, 3))
    np.testing.assert_allclose(
        np.asarray(lin.drift(x, t)), np.asarray(ref.drift(x, t)), rtol=1e-10, atol=1e-14
    )


def test_linear_sde_from_vp_alpha_bar_exact(x64):
    """The issue's check: ᾱ = e^{−B/2}, β̄ = √(1 − ᾱ²) gives f = −β/2, g² = β."""
    lin = sde_lib.LinearSDE(
        lambda t: jnp.exp(-0.5 * _int_beta(t)),
        lambda t: jnp.sqrt(1.0 - jnp.exp(-_int_beta(t))),
    )
    t = jnp.linspace(0.05, 1.0, 5)
    beta = 0.1 + 19.9 * np.asarray(t)
    np.testing.assert_allclose(np.asarray(lin.drift_coef(t)), -beta / 2, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(lin.diffusion(t)) ** 2, beta, rtol=1e-10)
    assert lin.prior_std == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_discretized_chain_matches_closed_form_kernel(name):
    """N = 1000 discrete steps x ← x + f_i + G_i z have the kernel N(ᾱx_0, β̄²)."""
    sde, n, N = SDES[name], 10000, 1000
    x0 = jnp.broadcast_to(jnp.array([[1.0, -2.0]]), (n, 2))
    ts = jnp.linspace(0.0, 1.0, N + 1)[1:]

    @jax.jit
    def chain(key):
        def body(x, inp):
            t, k = inp
            f, g = sde.discretize(x, t, 1.0 / N)
            x = x + f + g[:, None] * jr.normal(k, x.shape)
            return x, x[:, 0]

        return jax.lax.scan(body, x0, (ts, jr.split(key, N)))

    x1, path = chain(jr.key(1))
    for t, xs in ((0.5, np.asarray(path[N // 2 - 1])), (1.0, np.asarray(x1[:, 1]))):
        ab, bb, _, _ = closed_form(name, t)
        x0v = 1.0 if t == 0.5 else -2.0
        assert abs(xs.mean() - ab * x0v) <= 4 * bb / math.sqrt(n)
        assert abs(xs.var(ddof=1) - bb**2) <= 4 * bb**2 * math.sqrt(2 / (n - 1))


def test_discretize_is_euler_maruyama_to_first_order(x64):
    """f_i = f(t)x Δt + O(Δt²) and G_i² = g(t)² Δt + O(Δt²)."""
    sde = SDES["vp"]
    x = jnp.ones((1, 1))
    errs = []
    for dt in (1e-2, 1e-3):
        f, g = sde.discretize(x, 0.5, dt)
        errs.append(
            (
                abs(float(f[0, 0]) - float(sde.drift_coef(0.5)) * dt),
                abs(float(g[0]) ** 2 - float(sde.diffusion(0.5)) ** 2 * dt),
            )
        )
    for k in range(2):
        assert math.log10(errs[0][k] / errs[1][k]) == pytest.approx(2.0, abs=0.3)


def test_marginal_prior_sample_and_logp(x64):
    from scipy import stats

    x0 = jnp.array([[1.0, -2.0], [0.5, 0.0]])
    t = jnp.array([0.2, 0.9])
    for name, sde in SDES.items():
        mean, std = sde.marginal(x0, t)
        ab, bb, _, _ = closed_form(name, np.asarray(t))
        np.testing.assert_allclose(
            np.asarray(mean), ab[:, None] * np.asarray(x0), rtol=1e-12
        )
        np.testing.assert_allclose(np.asarray(std), bb, rtol=1e-12)
        z = sde.prior_sample(jr.key(2), (4000, 3))
        sd = 50.0 if name == "ve" else 1.0
        assert abs(float(jnp.std(z)) - sd) <= 4 * sd * math.sqrt(0.5 / 12000)
        ref = stats.norm.logpdf(np.asarray(z[:5]), scale=sd).sum(1)
        np.testing.assert_allclose(np.asarray(sde.prior_logp(z[:5])), ref, rtol=1e-12)
    # The same functions under jit (one SDE passed as a static pytree argument).
    ve = SDES["ve"]
    mean, std = jax.jit(lambda s, x, t: s.marginal(x, t))(ve, x0, t)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(x0), rtol=1e-12)
    z = jax.jit(lambda k: ve.prior_sample(k, (4000, 3)))(jr.key(2))
    np.testing.assert_allclose(
        np.asarray(jax.jit(ve.prior_logp)(z[:5])),
        stats.norm.logpdf(np.asarray(z[:5]), scale=50.0).sum(1),
        rtol=1e-12,
    )


# --------------------------------------------------------------------------- #
# DSM loss
# --------------------------------------------------------------------------- #


def _quad(fn, a, b, n=200001):
    t = np.linspace(a, b, n)
    return np.trapezoid(fn(t), t)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_dsm_loss_oracle_floor(name):
    """E[loss] at the exact score = E_t[ᾱ²s²/v_t] (the DSM irreducible floor)."""
    sde, n = SDES[name], 40000
    mu, s = 0.3, 0.5
    x0 = mu + s * jr.normal(jr.key(3), (n, 1))
    score = sde_lib.oracle_score_fn(sde, mu, s)
    losses = jax.jit(lambda k, x: sde_lib.dsm_loss(k, score, sde, x))(jr.key(4), x0)
    losses = np.asarray(losses, np.float64)

    def floor(t):
        ab, _, _, _ = closed_form(name, t)
        return ab**2 * s**2 / _var(name, t, s)

    expected = _quad(floor, 1e-5, 1.0) / (1.0 - 1e-5)
    assert abs(losses.mean() - expected) <= 4 * losses.std() / math.sqrt(n)


@pytest.mark.parametrize("weighting", [False, True])
def test_dsm_loss_weightings(weighting):
    """Point-mass data, score = kernel score + a: per-example loss is λ(t)·a²·(…)."""
    sde, n, a = SDES["vp"], 40000, 0.7
    x0 = jnp.full((n, 2), 0.4)

    def score(x, t):
        ab, bb = sde.scales(t)
        return -(x - ab[:, None] * 0.4) / bb[:, None] ** 2 + a

    loss = jax.jit(
        lambda k: sde_lib.dsm_loss(k, score, sde, x0, likelihood_weighting=weighting)
    )
    losses = np.asarray(loss(jr.key(5)), np.float64)

    def lam(t):
        ab, bb, _, g = closed_form("vp", t)
        return (g**2 if weighting else bb**2) * a**2

    expected = _quad(lam, 1e-5, 1.0) / (1.0 - 1e-5)
    assert abs(losses.mean() - expected) <= 4 * losses.std() / math.sqrt(n)


def test_eps_wrapper_gives_ddpm_loss():
    """With s = −ε_θ/β̄ the unweighted DSM loss is E‖ε_θ − z‖² = 1 + c² for ε_θ ≡ c."""
    sde, n, c = SDES["ve"], 40000, 0.6
    score = sde_lib.eps_score_fn(lambda x, t: jnp.full_like(x, c), sde)
    x0 = jnp.zeros((n, 1))
    loss = jax.jit(lambda k: sde_lib.dsm_loss(k, score, sde, x0))
    losses = np.asarray(loss(jr.key(6)))
    assert abs(losses.mean() - (1 + c**2)) <= 4 * losses.std() / math.sqrt(n)


def test_dsm_loss_gradient_vanishes_at_oracle():
    """d/da E[loss(a·s*)] is 0 at a = 1 (the oracle minimizes) and < 0 at a = 0.5."""
    sde, n, mu, s = SDES["vp"], 20000, 0.3, 0.5
    x0 = mu + s * jr.normal(jr.key(7), (n, 1, 1))
    keys = jr.split(jr.key(8), n)
    oracle = sde_lib.oracle_score_fn(sde, mu, s)

    def per_example(a, k, x):
        return sde_lib.dsm_loss(k, lambda x, t: a * oracle(x, t), sde, x)[0]

    grad = jax.jit(jax.vmap(jax.grad(per_example), in_axes=(None, 0, 0)))
    g1 = np.asarray(grad(1.0, keys, x0), np.float64)
    g_half = np.asarray(grad(0.5, keys, x0), np.float64)
    assert abs(g1.mean()) <= 4 * g1.std() / math.sqrt(n)
    assert g_half.mean() < -4 * g_half.std() / math.sqrt(n)


# --------------------------------------------------------------------------- #
# Reverse-time SDE (diffrax) and predictor–corrector sampling
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "name,solver,noise_scale",
    [("vp", "euler", 1.0), ("subvp", "sra1", 1.0), ("ve", "heun", 0.5)],
)
def test_reverse_sde_recovers_data_moments(name, solver, noise_scale):
    sde, n, N = SDES[name], 4000, 200
    oracle = sde_lib.oracle_score_fn(sde, MU, S)
    calls = []

    def score(x, t):  # counts the (batched) score evaluations
        jax.debug.callback(lambda _: calls.append(1), t)
        return oracle(x, t)

    sample = jax.jit(
        lambda k: sde_lib.sample_reverse_sde(
            k, score, sde, (n, 2), solver=solver, num_steps=N, noise_scale=noise_scale
        )
    )
    x = jax.block_until_ready(sample(jr.key(9)))
    assert len(calls) == sde_lib.reverse_sde_nfe(N, solver=solver)
    # Bias allowance: the Euler–Maruyama recursion at the same N (higher-order
    # schemes and λ < 1 have a smaller weak error on this linear problem).
    bias = [expected_moments(name, "em", N, m, s) for m, s in zip(MU, S)]
    bias_mean = np.array([b[0] for b in bias]) - MU
    bias_var = np.array([b[1] for b in bias]) - S**2
    assert_moments(x, MU, S, bias_mean, bias_var)


@pytest.mark.parametrize(
    "name,predictor,corrector",
    [
        ("vp", "reverse_diffusion", "langevin"),
        ("ve", "ancestral", "langevin"),
        ("subvp", "ancestral", "none"),
        ("ve", "euler_maruyama", "none"),
        ("vp", "probability_flow", "none"),
    ],
)
def test_pc_sampler_recovers_data_moments(name, predictor, corrector):
    sde, n, N, snr = SDES[name], 10000, 500, 0.16
    # Isotropic data with the corrector: its batch-mean step size then has the
    # closed form used by ``expected_moments``.
    s_data = np.full(2, 0.5) if corrector == "langevin" else S
    score = sde_lib.oracle_score_fn(sde, MU, s_data)
    sample = jax.jit(
        lambda k: sde_lib.pc_sample(
            k,
            score,
            sde,
            (n, 2),
            predictor=predictor,
            corrector=corrector,
            snr=snr,
            num_steps=N,
        )
    )
    x = sample(jr.key(10))
    scheme = {
        "reverse_diffusion": "rd",
        "ancestral": "anc",
        "euler_maruyama": "em",
        "probability_flow": "pf",
    }
    r = snr if corrector == "langevin" else 0.0
    ref = [
        expected_moments(name, scheme[predictor], N, m, s, snr=r)
        for m, s in zip(MU, s_data)
    ]
    assert_moments(
        x,
        MU,
        s_data,
        np.array([b[0] for b in ref]) - MU,
        np.array([b[1] for b in ref]) - s_data**2,
    )


def test_langevin_corrector_leaves_marginal_invariant():
    """From exact N(m_t, v_t) draws, Langevin steps keep the law up to O(r²).

    With the large-batch step ε = 2r²v the exact law after M steps is N(m, v_M),
    v_{k+1} = (1 − ε/v)² v_k + 2ε: one step moves v by ε²/v = 4r⁴v and the
    chain's stationary variance is v/(1 − r²) (unadjusted Langevin bias).
    """
    sde, n, t, snr, M = SDES["vp"], 20000, 0.5, 0.16, 10
    mu, s = np.array([0.3, -0.5, 1.0, 0.0]), 0.7
    ab, bb, _, _ = closed_form("vp", t)
    m, v = ab * mu, ab**2 * s**2 + bb**2
    x = jnp.asarray(m + np.sqrt(v) * np.asarray(jr.normal(jr.key(11), (n, 4))))
    score = sde_lib.oracle_score_fn(sde, mu, s)

    @jax.jit
    def run(x, key):
        def body(x, k):
            return sde_lib.langevin_step(k, score, x, t, snr=snr), None

        return jax.lax.scan(body, x, jr.split(key, M))[0]

    out = np.asarray(run(x, jr.key(12)), np.float64)
    # ‖s‖ = ‖x − m‖/v and E‖x − m‖ = √v E‖z‖ for isotropic data: ε = 2r²v.
    step = 2 * snr**2 * v
    vm = v.copy()
    for _ in range(M):
        vm = (1 - step / v) ** 2 * vm + 2 * step
    assert np.all(np.abs(out.mean(0) - m) <= 4 * np.sqrt(vm / n))
    assert np.all(np.abs(out.var(0, ddof=1) - vm) <= 4 * vm * math.sqrt(2 / (n - 1)))
    # Invariance of N(m_t, v_t) up to the stationary bias v·r²/(1 − r²).
    tol = 4 * v * math.sqrt(2 / (n - 1)) + v * snr**2 / (1 - snr**2)
    assert np.all(np.abs(out.var(0, ddof=1) - v) <= tol)


def test_pc_nfe_counts_match_score_calls():
    calls = []
    sde = SDES["vp"]
    base = sde_lib.oracle_score_fn(sde, 0.0, 1.0)

    def score(x, t):
        jax.debug.callback(lambda _: calls.append(1), t)
        return base(x, t)

    out = jax.jit(
        lambda k: sde_lib.pc_sample(
            k, score, sde, (1, 2), num_steps=4, num_corrector_steps=2
        )
    )(jr.key(0))
    jax.block_until_ready(out)
    assert len(calls) == sde_lib.pc_nfe(4, num_corrector_steps=2) == 13


def test_bad_hyperparameters_raise():
    vp = SDES["vp"]
    score = sde_lib.oracle_score_fn(vp, 0.0, 1.0)
    key = jr.key(0)
    with pytest.raises(ValueError, match="sigma_min"):
        sde_lib.VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min"):
        sde_lib.VPSDE(beta_min=0.0)
    with pytest.raises(ValueError, match="beta_min"):
        sde_lib.SubVPSDE(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="T must"):
        sde_lib.VPSDE(T=-1.0)
    with pytest.raises(ValueError, match="callables"):
        sde_lib.LinearSDE(1.0, lambda t: t)
    with pytest.raises(ValueError, match="alpha_bar"):
        sde_lib.LinearSDE(lambda t: jnp.zeros_like(t), lambda t: t)
    with pytest.raises(ValueError, match="predictor"):
        sde_lib.pc_sample(key, score, vp, (2, 2), predictor="leapfrog")
    with pytest.raises(ValueError, match="corrector"):
        sde_lib.pc_sample(key, score, vp, (2, 2), corrector="hmc")
    with pytest.raises(ValueError, match="both"):
        sde_lib.pc_sample(key, score, vp, (2, 2), predictor="none", corrector="none")
    with pytest.raises(ValueError, match="snr"):
        sde_lib.pc_sample(key, score, vp, (2, 2), snr=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        sde_lib.pc_sample(key, score, vp, (2, 2), num_steps=0)
    with pytest.raises(ValueError, match="eps"):
        sde_lib.pc_sample(key, score, vp, (2, 2), eps=0.0)
    with pytest.raises(ValueError, match="solver"):
        sde_lib.sample_reverse_sde(key, score, vp, (2, 2), solver="rk4")
    with pytest.raises(ValueError, match="noise_scale"):
        sde_lib.sample_reverse_sde(key, score, vp, (2, 2), noise_scale=0.0)
    with pytest.raises(ValueError, match="shape"):
        sde_lib.pc_sample(key, score, vp, (4,))
    with pytest.raises(ValueError, match="sample shape"):
        sde_lib.pc_sample(key, lambda x, t: x[:, :1], vp, (2, 2))
    with pytest.raises(ValueError, match="eps"):
        sde_lib.dsm_loss(key, score, vp, jnp.zeros((2, 2)), eps=1.5)
    with pytest.raises(ValueError, match="dt"):
        vp.discretize(jnp.zeros((2, 2)), 0.5, -0.1)
