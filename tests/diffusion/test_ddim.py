"""DDIM: marginal preservation, exact variance recursion, ODE convergence order,
Gaussian sampling, determinism, inversion, σ̂, slerp and argument errors."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlab.diffusion import ddim, ddpm, gaussian, schedules

MU = np.array([0.5, -1.0, 0.0, 2.0])
SD = np.array([0.3, 1.0, 0.5, 0.2])


def _np_sched(sched):
    ab = np.asarray(sched.alpha_bar, np.float64)
    return ab, np.sqrt(1.0 - ab**2)


def _exact_recursion(sched, tau, s, eta, sigma="eta"):
    """Reference §6: u → a u + σ z per step, a = (ᾱ_r ᾱ_t s² + β̄_t c)/v_t.

    Written here from the reference (not from the library) in float64 NumPy.
    Returns (slope = ∏ a, variance of u_0 for u_T ~ N(0, 1)).
    """
    ab, bb = _np_sched(sched)
    slope, var = 1.0, 1.0
    for t, r in zip(tau[::-1][:-1], tau[::-1][1:]):
        step_var = 1.0 - ab[t] ** 2 / ab[r] ** 2
        sig1 = bb[r] / bb[t] * np.sqrt(step_var)
        if sigma == "eta":
            sig = eta * sig1
            c = np.sqrt(bb[r] ** 2 - sig**2)
        else:
            sig = np.sqrt(step_var) if r > 0 else 0.0
            c = np.sqrt(bb[r] ** 2 - sig1**2)
        a = (ab[r] * ab[t] * s**2 + bb[t] * c) / (ab[t] ** 2 * s**2 + bb[t] ** 2)
        slope, var = a * slope, a * a * var + sig**2
    return slope, var


PAIRS = np.array([(1000, 999), (1000, 0), (900, 100), (500, 499), (37, 3), (1, 0)])


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_one_step_preserves_the_marginal(eta):
    """x_t ~ q(x_t | x_0), then one step t → r with the true ε: x_r has moments
    (ᾱ_r x_0, β̄_r²) for every η and any pair t > r (reference §6)."""
    sched = schedules.linear(1000)
    n = 50_000
    x0 = jnp.broadcast_to(jnp.asarray(MU, jnp.float32), (n, 4))
    ab, bb = _np_sched(sched)

    @jax.jit
    def one_pair(key, t, r):
        k_q, k_step = jr.split(key)
        xt, eps = ddpm.q_sample(k_q, sched, x0, t)
        return ddim.step(
            k_step,
            xt,
            eps,
            sched.alpha_bar[t],
            sched.beta_bar[t],
            sched.alpha_bar[r],
            sched.beta_bar[r],
            eta=eta,
        )

    for i, (t, r) in enumerate(PAIRS):
        got = np.asarray(one_pair(jr.key(i), t, r), np.float64)
        if r == 0:  # the last step returns x̂_0 = x_0 exactly (up to float32)
            np.testing.assert_allclose(got, x0, atol=1e-4)
            continue
        se_mean = bb[r] / np.sqrt(n)
        assert np.all(np.abs(got.mean(0) - ab[r] * MU) < 4 * se_mean + 1e-6), (t, r)
        se_var = bb[r] ** 2 * np.sqrt(2 / n)
        assert np.all(np.abs(got.var(0) - bb[r] ** 2) < 4 * se_var), (t, r)


def test_sigma_eta_in_ddim_paper_notation(x64):
    """σ_η = η √((1 − α_r)/(1 − α_t)) √(1 − α_t/α_r) with the DDIM paper's α = ᾱ²
    (Eq. 16; reference §0 notation map); zero at r = 0 and at η = 0."""
    sched = schedules.cosine(1000)
    alpha = np.asarray(sched.alpha_bar, np.float64) ** 2  # DDIM paper's α_t
    f = jax.jit(ddim.sigma_eta)
    for t, r in [(1000, 900), (500, 499), (20, 3), (7, 0)]:
        for eta in (0.0, 0.4, 1.0):
            want = (
                eta
                * np.sqrt((1 - alpha[r]) / (1 - alpha[t]))
                * np.sqrt(1 - alpha[t] / alpha[r])
            )
            got = f(
                sched.alpha_bar[t],
                sched.beta_bar[t],
                sched.alpha_bar[r],
                sched.beta_bar[r],
                eta,
            )
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


def test_deterministic_step_is_exact_interpolation(x64):
    """η = 0 with the true ε gives x_r = ᾱ_r x_0 + β̄_r ε exactly."""
    sched = schedules.cosine(1000)
    x0 = jr.normal(jr.key(0), (16, 4), jnp.float64)
    xt, eps = ddpm.q_sample(jr.key(1), sched, x0, jnp.array(800))
    xr = jax.jit(ddim.step)(
        None,
        xt,
        eps,
        sched.alpha_bar[800],
        sched.beta_bar[800],
        sched.alpha_bar[50],
        sched.beta_bar[50],
    )
    np.testing.assert_allclose(
        xr, sched.alpha_bar[50] * x0 + sched.beta_bar[50] * eps, rtol=1e-10
    )


@pytest.mark.parametrize(
    "S,skip", [(1, "uniform"), (10, "quadratic"), (200, "uniform")]
)
def test_eta0_output_variance_equals_exact_recursion(x64, S, skip):
    """At η = 0 the sampler is affine in x_T, so its output variance is slope²·Var(x_T):
    the slope (by forward-mode AD) equals ∏ a to float precision."""
    sched = schedules.linear(1000)
    s = 0.4
    fn = gaussian.eps_fn(sched, 0.2, s)
    tau = schedules.sub_sequence(1000, S, skip)
    slope, var = _exact_recursion(sched, tau, s, 0.0)

    def run(x_T):
        return ddim.sample(
            jr.key(0), fn, sched, (3, 1), num_steps=S, skip=skip, x_T=x_T
        )

    x_T = jr.normal(jr.key(1), (3, 1), jnp.float64)
    _, tangent = jax.jit(lambda x: jax.jvp(run, (x,), (jnp.ones_like(x),)))(x_T)
    np.testing.assert_allclose(tangent, slope, rtol=1e-10)
    np.testing.assert_allclose(tangent[0, 0] ** 2, var, rtol=1e-10)
    # few-step DDIM under-disperses (a ≤ √(v_r/v_t), reference §6)
    assert var <= s**2 + 1e-12


@pytest.mark.parametrize("eta,sigma", [(0.5, "eta"), (1.0, "eta"), (0.0, "hat")])
def test_stochastic_output_variance_matches_recursion(x64, eta, sigma):
    """η > 0 and σ̂: slope exact; total variance within 4 SE of the recursion."""
    sched = schedules.linear(1000)
    s, mu, S = 0.4, 0.2, 20
    fn = gaussian.eps_fn(sched, mu, s)
    tau = schedules.sub_sequence(1000, S)
    slope, var = _exact_recursion(sched, tau, s, eta, sigma)
    kw = dict(num_steps=S, eta=eta, sigma=sigma)

    def run(x_T):
        return ddim.sample(jr.key(0), fn, sched, (3, 1), x_T=x_T, **kw)

    x_T = jr.normal(jr.key(1), (3, 1), jnp.float64)
    _, tangent = jax.jit(lambda x: jax.jvp(run, (x,), (jnp.ones_like(x),)))(x_T)
    np.testing.assert_allclose(tangent, slope, rtol=1e-10)
    n = 40_000
    x = jax.jit(lambda k: ddim.sample(k, fn, sched, (n, 1), **kw))(jr.key(2))
    ab, _ = _np_sched(sched)
    u = np.asarray(x[:, 0]) - mu
    assert abs(u.mean() + slope * ab[-1] * mu) < 4 * np.sqrt(var / n)
    assert abs(u.var() - var) < 4 * var * np.sqrt(2.0 / n)


def test_sigma_hat_adds_more_noise_and_eta1_is_ddpm(x64):
    """σ̂ injects more variance than η = 1 at few steps (the source of its collapse
    in DDIM Table 1); η = 1 at S = T has the DDPM (posterior σ) slope exactly."""
    sched = schedules.linear(1000)
    s = 0.4
    tau10 = schedules.sub_sequence(1000, 10)
    _, var_hat = _exact_recursion(sched, tau10, s, 0.0, "hat")
    _, var_ddpm = _exact_recursion(sched, tau10, s, 1.0, "eta")
    assert var_hat > 2 * var_ddpm
    fn = gaussian.eps_fn(sched, 0.0, s)
    n = 20_000
    x = jax.jit(lambda k: ddim.sample(k, fn, sched, (n, 1), num_steps=10, sigma="hat"))(
        jr.key(3)
    )
    assert float(x.var()) > var_ddpm + 4 * var_hat * np.sqrt(2.0 / n)

    x_T = jr.normal(jr.key(4), (2, 1), jnp.float64)
    tangent = {}
    for name, run in {
        "ddim": lambda x: ddim.sample(
            jr.key(5), fn, sched, (2, 1), num_steps=1000, eta=1.0, x_T=x
        ),
        "ddpm": lambda x: ddpm.sample(jr.key(5), fn, sched, (2, 1), x_T=x),
    }.items():
        tangent[name] = jax.jit(lambda x, r=run: jax.jvp(r, (x,), (jnp.ones_like(x),)))(
            x_T
        )[1]
    np.testing.assert_allclose(tangent["ddim"], tangent["ddpm"], rtol=1e-10)


def test_eta0_converges_to_the_exact_ode_flow_at_first_order(x64):
    """Deterministic DDIM is Euler for d(x/ᾱ)/dσ̄ = ε (DDIM Eq. 14): the error to
    the closed-form flow x_0 = μ + s(x_T − m_T)/√v_T halves as S doubles."""
    sched = schedules.linear(1000)
    mu, s = 0.5, 0.3
    fn = gaussian.eps_fn(sched, mu, s)
    x_T = jr.normal(jr.key(6), (64, 1), jnp.float64)
    exact = gaussian.ode_flow(
        x_T, sched.alpha_bar[-1], sched.beta_bar[-1], 1.0, 0.0, mu, s
    )
    steps = np.array([25, 50, 100, 200])
    errs = []
    for S in steps:
        out = jax.jit(functools.partial(ddim.decode, fn, sched, num_steps=int(S)))(x_T)
        errs.append(float(jnp.max(jnp.abs(out - exact))))
    order = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(order - 1.0) < 0.3, (errs, order)
    assert errs[-1] < errs[0] / 4


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_samples_match_gaussian_data(eta):
    """DDIM samples of N(μ, s²) at S = T match μ and s within 4 standard errors."""
    sched = schedules.cosine(1000)
    n = 4000
    fn = gaussian.eps_fn(sched, MU, SD)
    x = jax.jit(lambda k: ddim.sample(k, fn, sched, (n, 4), num_steps=1000, eta=eta))(
        jr.key(7)
    )
    x = np.asarray(x, np.float64)
    assert np.all(np.abs(x.mean(0) - MU) < 4 * SD / np.sqrt(n))
    assert np.all(np.abs(x.std(0) - SD) < 4 * SD / np.sqrt(2 * n))


def test_eta0_is_bit_deterministic():
    sched = schedules.linear(1000)
    fn = gaussian.eps_fn(sched, 0.3, 0.5)
    f = jax.jit(lambda k, x: ddim.sample(k, fn, sched, (32, 2), num_steps=20, x_T=x))
    x_T = jr.normal(jr.key(8), (32, 2))
    a, b = f(jr.key(0), x_T), f(jr.key(0), x_T)
    c = f(jr.key(123), x_T)  # the step keys are irrelevant at η = 0
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(a), np.asarray(c))
    d = jax.jit(lambda x: ddim.decode(fn, sched, x, num_steps=20))(x_T)
    assert np.array_equal(np.asarray(a), np.asarray(d))
    g = jax.jit(lambda k: ddim.sample(k, fn, sched, (32, 2), num_steps=20))
    assert np.array_equal(np.asarray(g(jr.key(1))), np.asarray(g(jr.key(1))))
    # with η > 0 the step keys matter
    h = jax.jit(
        lambda k: ddim.sample(k, fn, sched, (32, 2), num_steps=20, eta=1.0, x_T=x_T)
    )
    assert not np.array_equal(np.asarray(h(jr.key(0))), np.asarray(h(jr.key(1))))


@pytest.mark.parametrize("skip", ["uniform", "quadratic"])
def test_encode_decode_error_shrinks_with_S(x64, skip):
    sched = schedules.linear(1000)
    mu, s = 0.5, 0.3
    fn = gaussian.eps_fn(sched, mu, s)
    x0 = mu + s * jr.normal(jr.key(9), (256, 1), jnp.float64)
    errs = []
    for S in (10, 20, 50, 100):
        kw = dict(num_steps=S, skip=skip)
        z = jax.jit(functools.partial(ddim.encode, fn, sched, **kw))(x0)
        rec = jax.jit(functools.partial(ddim.decode, fn, sched, **kw))(z)
        errs.append(float(jnp.mean((rec - x0) ** 2)))
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < errs[0] / 10
    # the encoding approaches the exact flow x_T = m_T + √(v_T/s²)(x_0 − μ)
    exact = gaussian.ode_flow(
        x0, 1.0, 0.0, sched.alpha_bar[-1], sched.beta_bar[-1], mu, s
    )
    z = ddim.encode(fn, sched, x0, num_steps=200, skip=skip)
    assert float(jnp.max(jnp.abs(z - exact))) < 0.05 * float(jnp.max(jnp.abs(exact)))


def test_compile_is_independent_of_num_steps():
    """The samplers are one lax.scan: the traced program has the same size for any S."""
    sched = schedules.linear(1000)
    fn = gaussian.eps_fn(sched, 0.0, 1.0)
    sizes = {}
    for S in (10, 1000):
        jaxpr = jax.make_jaxpr(
            lambda k, S=S: ddim.sample(k, fn, sched, (4, 2), num_steps=S, eta=0.5)
        )(jr.key(0))
        sizes[S] = len(jaxpr.jaxpr.eqns)
    assert sizes[10] == sizes[1000]


def test_slerp():
    z1 = jr.normal(jr.key(10), (5000, 8))
    z2 = jr.normal(jr.key(11), (5000, 8))
    f = jax.jit(ddim.slerp, static_argnames="kind")
    np.testing.assert_allclose(f(z1, z2, 0.0), z1, atol=1e-6)
    np.testing.assert_allclose(f(z1, z2, 1.0), z2, atol=1e-6)
    # Su's form keeps independent N(0, I) latents exactly N(0, I): variance 1.
    z = f(z1, z2, 0.3)
    n = z.size
    assert abs(float(z.var()) - 1.0) < 4 * np.sqrt(2.0 / n)
    # geometric slerp stays on the sphere between unit vectors
    u1, u2 = z1[0] / jnp.linalg.norm(z1[0]), z2[0] / jnp.linalg.norm(z2[0])
    for lam in (0.0, 0.25, 0.5, 1.0):
        np.testing.assert_allclose(
            jnp.linalg.norm(f(u1, u2, lam, kind="geometric")), 1.0, rtol=1e-5
        )
    mid = f(u1, u2, 0.5, kind="geometric")
    np.testing.assert_allclose(mid, (u1 + u2) / jnp.linalg.norm(u1 + u2), atol=1e-5)
    with pytest.raises(ValueError, match="kind"):
        ddim.slerp(z1, z2, 0.5, kind="linear")


def test_bad_arguments():
    sched = schedules.linear(100)
    fn = gaussian.eps_fn(sched, 0.0, 1.0)
    key = jr.key(0)
    cases = [
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=101), "num_steps"),
        (dict(num_steps=10.0), "num_steps"),
        (dict(num_steps=10, eta=-0.1), "eta"),
        (dict(num_steps=10, eta=float("nan")), "eta"),
        (dict(num_steps=10, skip="cubic"), "skip"),
        (dict(num_steps=10, sigma="beta"), "sigma"),
        (dict(num_steps=10, x_T=jnp.zeros((4, 3))), "x_T"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            ddim.sample(key, fn, sched, (4, 2), **kw)
    with pytest.raises(ValueError, match="eps_fn"):
        ddim.sample(key, lambda x, t: x[:, :1], sched, (4, 2), num_steps=10)
    with pytest.raises(ValueError, match="eps_fn"):
        ddim.decode(lambda x, t: x.sum(0), sched, jnp.zeros((4, 2)), num_steps=10)
    with pytest.raises(ValueError, match="num_steps"):
        ddim.encode(fn, sched, jnp.zeros((4, 2)), num_steps=200)
    with pytest.raises(ValueError, match="key may be None"):
        ddim.step(
            None, jnp.zeros((2, 1)), jnp.zeros((2, 1)), 0.5, 0.8, 0.9, 0.4, eta=0.5
        )
