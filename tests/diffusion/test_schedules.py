"""Schedules: constructors against independent NumPy formulas, converters, τ."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.diffusion import schedules

CONSTRUCTORS = [schedules.linear, schedules.su_exponential, schedules.cosine]


def _jit_build(fn, T, **kw):
    return jax.jit(functools.partial(fn, T, **kw))()


# linear() needs T > 20 (its per-step variances scale as 1000/T; tested below).
@pytest.mark.parametrize(
    "fn,T",
    [(schedules.linear, 50), (schedules.linear, 1000)]
    + [(f, T) for f in CONSTRUCTORS[1:] for T in (1, 10, 1000)],
)
def test_invariants(x64, fn, T):
    s = _jit_build(fn, T)
    assert s.alpha_bar.shape == (T + 1,) and s.beta_bar.shape == (T + 1,)
    assert s.num_steps == T
    assert s.alpha_bar.dtype == jnp.float64
    assert float(s.alpha_bar[0]) == 1.0 and float(s.beta_bar[0]) == 0.0
    np.testing.assert_allclose(s.alpha_bar**2 + s.beta_bar**2, 1.0, rtol=1e-12)
    assert np.all(np.diff(np.asarray(s.alpha_bar)) < 0)
    assert np.all(np.asarray(s.alpha_bar) > 0)


def test_float32_default():
    s = schedules.linear(1000)
    assert s.alpha_bar.dtype == jnp.float32
    np.testing.assert_allclose(s.alpha_bar**2 + s.beta_bar**2, 1.0, rtol=1e-6)


def test_linear_matches_ho(x64):
    """Ho et al. 2020: β^Ho = linspace(1e-4, 0.02, 1000); ᾱ^Ho = cumprod(1 − β)."""
    s = _jit_build(schedules.linear, 1000)
    ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(s.alpha_bar[1:] ** 2, ac, rtol=1e-10)
    # Known value of Ho's schedule: ᾱ^Ho_T = 4.035e-5 (so Su's ᾱ_T ≈ e^{-5}).
    np.testing.assert_allclose(s.alpha_bar[-1] ** 2, 4.0358e-5, rtol=1e-4)
    assert abs(np.log(float(s.alpha_bar[-1])) + 5.0) < 0.1


def test_su_exponential_closed_form(x64):
    T = 1000
    s = _jit_build(schedules.su_exponential, T)
    t = np.arange(T + 1)
    np.testing.assert_allclose(s.alpha_bar, np.exp(-5 * t**2 / T**2), rtol=1e-12)
    np.testing.assert_allclose(
        s.beta_bar[1:], np.sqrt(1 - np.exp(-10 * t[1:] ** 2 / T**2)), rtol=1e-10
    )
    s2 = _jit_build(schedules.su_exponential, T, rate=2.0)
    np.testing.assert_allclose(s2.alpha_bar[-1], np.exp(-2.0), rtol=1e-12)


def test_su_discrete_is_close_to_exponential(x64):
    """Su (三): α_t = √(1 − 0.02t/T) gives ᾱ_t ≈ exp(−5t²/T²)."""
    T = 1000
    t = np.arange(1, T + 1)
    su = jax.jit(schedules.from_step_alphas)(np.sqrt(1 - 0.02 * t / T))
    ex = schedules.su_exponential(T)
    np.testing.assert_allclose(su.alpha_bar, ex.alpha_bar, atol=5e-3)


def test_cosine_matches_nichol_dhariwal(x64):
    T, off = 1000, 0.008
    s = _jit_build(schedules.cosine, T)
    f = np.cos(0.5 * np.pi * (np.arange(T + 1) / T + off) / (1 + off)) ** 2
    ac = f / f[0]
    # Away from t = T the β clip at 0.999 is inactive.
    np.testing.assert_allclose(s.alpha_bar[:-1] ** 2, ac[:-1], rtol=1e-9)
    assert float(s.alpha_bar[-1]) > 0


@pytest.mark.parametrize("fn", CONSTRUCTORS)
def test_converters_roundtrip(x64, fn):
    s = fn(200)
    for rebuilt in (
        jax.jit(schedules.from_ho_betas)(jax.jit(schedules.ho_betas)(s)),
        jax.jit(schedules.from_alphas_cumprod)(jax.jit(schedules.alphas_cumprod)(s)),
        jax.jit(schedules.from_step_alphas)(jax.jit(schedules.step_alphas)(s)[1:]),
        jax.jit(schedules.from_int_beta)(jax.jit(schedules.int_beta)(s)),
    ):
        np.testing.assert_allclose(rebuilt.alpha_bar, s.alpha_bar, rtol=1e-10)
        np.testing.assert_allclose(rebuilt.beta_bar, s.beta_bar, rtol=1e-8, atol=1e-12)
    a, b = jax.jit(schedules.step_alphas)(s), jax.jit(schedules.step_betas)(s)
    assert float(a[0]) == 1.0 and float(b[0]) == 0.0
    np.testing.assert_allclose(a**2 + b**2, 1.0, rtol=1e-12)


def test_notation_map_known_values(x64):
    """Ho's β for the linear schedule and the DDIM paper's α_t = ᾱ^Ho."""
    s = schedules.linear(1000)
    np.testing.assert_allclose(
        schedules.ho_betas(s), np.linspace(1e-4, 0.02, 1000), rtol=1e-9
    )
    ho = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(schedules.alphas_cumprod(s)[1:], ho, rtol=1e-10)
    # VP: e^{-B/2} = ᾱ and √(1 − e^{-B}) = β̄.
    big_b = schedules.int_beta(s)
    np.testing.assert_allclose(np.exp(-big_b / 2), s.alpha_bar, rtol=1e-12)


def test_sub_sequence_known_values():
    np.testing.assert_array_equal(
        schedules.sub_sequence(1000, 10, "uniform"), np.arange(0, 1001, 100)
    )
    np.testing.assert_array_equal(
        schedules.sub_sequence(1000, 10, "quadratic"), 10 * np.arange(11) ** 2
    )
    np.testing.assert_array_equal(schedules.sub_sequence(7, 7), np.arange(8))
    np.testing.assert_array_equal(schedules.sub_sequence(5, 1), [0, 5])


@pytest.mark.parametrize("kind", ["uniform", "quadratic"])
@pytest.mark.parametrize(
    "T,S",
    [
        (1000, 1),
        (1000, 10),
        (1000, 100),
        (1000, 999),
        (1000, 1000),
        (10, 10),
        (37, 5),
        (3, 2),
    ],
)
def test_sub_sequence_properties(kind, T, S):
    tau = schedules.sub_sequence(T, S, kind)
    assert tau.shape == (S + 1,)
    assert tau[0] == 0 and tau[-1] == T
    assert np.all(np.diff(tau) > 0)
    # usable as a static index inside jit
    s = schedules.su_exponential(T)
    got = jax.jit(lambda sc: sc.alpha_bar[jnp.asarray(tau)])(s)
    np.testing.assert_array_equal(got, np.asarray(s.alpha_bar)[tau])


def test_quadratic_is_denser_near_zero():
    u = schedules.sub_sequence(1000, 50, "uniform")
    q = schedules.sub_sequence(1000, 50, "quadratic")
    assert q[1] < u[1] and q[-1] - q[-2] > u[-1] - u[-2]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: schedules.linear(0), "T must be a positive int"),
        (lambda: schedules.linear(2.5), "T must be a positive int"),
        (lambda: schedules.linear(10), "beta_start"),
        (lambda: schedules.linear(100, beta_end=0.5), "beta_start"),
        (lambda: schedules.linear(100, beta_start=0.03), "beta_start"),
        (lambda: schedules.su_exponential(10, rate=-1.0), "rate"),
        (lambda: schedules.cosine(10, max_beta=1.5), "max_beta"),
        (lambda: schedules.cosine(10, s=-0.1), "s must be"),
        (lambda: schedules.sub_sequence(10, 0), "num_steps"),
        (lambda: schedules.sub_sequence(10, 11), "num_steps"),
        (lambda: schedules.sub_sequence(10, 2.0), "num_steps"),
        (lambda: schedules.sub_sequence(10, 5, "cubic"), "skip"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
