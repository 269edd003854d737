r"""Discrete noise schedules for DDPM / DDIM, in Su's notation.

A schedule holds, for t = 0..T, the signal coefficient ``alpha_bar[t]`` (ᾱ_t) and
the noise standard deviation ``beta_bar[t]`` (β̄_t) of the forward marginal

    x_t = ᾱ_t x_0 + β̄_t ε,   ᾱ_t² + β̄_t² = 1,   ᾱ_0 = 1, β̄_0 = 0.

These are *scale factors*, not variances: Ho et al.'s cumulative ᾱ^Ho and the
DDIM paper's α_t are ``alpha_bar**2``. The converters below implement the
notation map of ``reference/ddim.md`` §0 (Su / Ho / DDIM paper / score-SDE VP).

References:
    J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models", 2020.
    J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models", 2021,
    arXiv 2010.02502 (App. D.2 for sub-sequences).
    J. Su, 生成扩散模型漫谈 (三) https://kexue.fm/archives/9164 and (四)
    https://kexue.fm/archives/9181.
    A. Nichol, P. Dhariwal, "Improved DDPM", 2021, arXiv 2102.09672, Eq. (17).
"""

from typing import NamedTuple

import chex
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

SKIP_KINDS = ("uniform", "quadratic")


class Schedule(NamedTuple):
    """Signal and noise scales ᾱ_t, β̄_t for t = 0..T (a pytree of two arrays).

    Attributes:
        alpha_bar: ``[T + 1]`` signal coefficients, ``alpha_bar[0] == 1``.
        beta_bar: ``[T + 1]`` noise standard deviations, ``beta_bar[0] == 0``.
    """

    alpha_bar: Float[Array, " T1"]
    beta_bar: Float[Array, " T1"]

    @property
    def num_steps(self) -> int:
        """The number of diffusion steps T (static: read from the array shape)."""
        return self.alpha_bar.shape[0] - 1


# --------------------------------------------------------------------------- #
# Constructors
# --------------------------------------------------------------------------- #


def linear(T: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02):
    r"""Ho et al.'s linear schedule of per-step variances.

    β^Ho_t = linspace(β_start, β_end, T)·(1000/T), ᾱ_t = ∏_{s≤t} √(1 − β^Ho_s).
    At T = 1000 this is exactly Ho et al. (2020) §4; the 1000/T factor (Nichol &
    Dhariwal 2021, §3.2) keeps ᾱ_T ≈ e^{-5} for other T. Su's
    α_t = √(1 − 0.02 t/T) is the same schedule up to the 1e-4 offset.

    Args:
        T: number of steps, ≥ 1.
        beta_start: per-step variance at t = 1 for T = 1000.
        beta_end: per-step variance at t = T for T = 1000.

    Returns:
        A ``Schedule`` of length T + 1 (float32, or float64 with x64 enabled).
    """
    _check_T(T)
    scale = 1000.0 / T
    lo, hi = beta_start * scale, beta_end * scale
    if not (0.0 < lo <= hi < 1.0):
        raise ValueError(
            f"linear: need 0 < beta_start*1000/T <= beta_end*1000/T < 1, got "
            f"beta_start={beta_start}, beta_end={beta_end}, T={T}"
        )
    return _from_ho_betas_np(np.linspace(lo, hi, T, dtype=np.float64))


def su_exponential(T: int = 1000, *, rate: float = 5.0):
    r"""Su's continuous approximation ᾱ_t = exp(−rate·t²/T²) (rate = 5 by default).

    Su (三) §2.1: α_t = √(1 − 0.02t/T) gives ᾱ_T ≈ e^{−5} and
    ᾱ_t ≈ exp(−5t²/T²); ``rate`` selects a member of that family.
    β̄_t = √(1 − exp(−2·rate·t²/T²)), computed with ``expm1`` for accuracy.

    Args:
        T: number of steps, ≥ 1.
        rate: exponent at t = T, > 0.

    Returns:
        A ``Schedule`` of length T + 1.
    """
    _check_T(T)
    if not rate > 0:
        raise ValueError(f"su_exponential: rate must be > 0, got rate={rate}")
    s = np.arange(T + 1, dtype=np.float64) / T
    log_ab = -rate * s**2
    return _from_log_alpha_bar(log_ab)


def cosine(T: int = 1000, *, s: float = 0.008, max_beta: float = 0.999):
    r"""Nichol & Dhariwal's cosine schedule, Eq. (17) of arXiv 2102.09672.

    ᾱ^Ho(t) = f(t)/f(0) with f(t) = cos²(π/2 · (t/T + s)/(1 + s)); per-step
    variances 1 − ᾱ^Ho_t/ᾱ^Ho_{t−1} are clipped at ``max_beta`` so that ᾱ_T > 0.
    In Su's notation ᾱ_t = √ᾱ^Ho_t.

    Args:
        T: number of steps, ≥ 1.
        s: small offset, ≥ 0.
        max_beta: clip of the per-step variance, in (0, 1).

    Returns:
        A ``Schedule`` of length T + 1.
    """
    _check_T(T)
    if not s >= 0:
        raise ValueError(f"cosine: s must be >= 0, got s={s}")
    if not 0 < max_beta < 1:
        raise ValueError(f"cosine: max_beta must be in (0, 1), got {max_beta}")
    u = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos(0.5 * np.pi * (u + s) / (1 + s)) ** 2
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, max_beta)
    return _from_ho_betas_np(betas)


# --------------------------------------------------------------------------- #
# Notation converters (reference/ddim.md §0)
# --------------------------------------------------------------------------- #


def from_ho_betas(betas) -> Schedule:
    r"""Schedule from Ho's per-step variances β^Ho_1..β^Ho_T.

    ᾱ_t = ∏_{s≤t} √(1 − β^Ho_s) (Su's α_t = √(1 − β^Ho_t)), β̄_t = √(1 − ᾱ_t²).

    Args:
        betas: ``[T]`` per-step variances in [0, 1).

    Returns:
        The ``Schedule``; ᾱ_0 = 1 is prepended.
    """
    betas = jnp.asarray(betas)
    chex.assert_rank(betas, 1)
    log_ab = 0.5 * jnp.cumsum(jnp.log1p(-betas))
    return _from_log_alpha_bar(jnp.concatenate([jnp.zeros((1,), log_ab.dtype), log_ab]))


def from_alphas_cumprod(alphas_cumprod) -> Schedule:
    r"""Schedule from Ho's ᾱ^Ho_t (= the DDIM paper's α_t), t = 0..T.

    ᾱ_t (Su) = √ᾱ^Ho_t, β̄_t = √(1 − ᾱ^Ho_t).

    Args:
        alphas_cumprod: ``[T + 1]`` cumulative products with ``alphas_cumprod[0]
            == 1``.

    Returns:
        The ``Schedule``.
    """
    ac = jnp.asarray(alphas_cumprod)
    chex.assert_rank(ac, 1)
    return Schedule(alpha_bar=jnp.sqrt(ac), beta_bar=jnp.sqrt(1.0 - ac))


def from_step_alphas(alphas) -> Schedule:
    r"""Schedule from Su's per-step signal scales α_1..α_T: ᾱ_t = ∏_{s≤t} α_s.

    Args:
        alphas: ``[T]`` per-step scales in (0, 1].

    Returns:
        The ``Schedule``; ᾱ_0 = 1 is prepended.
    """
    alphas = jnp.asarray(alphas)
    chex.assert_rank(alphas, 1)
    log_ab = jnp.cumsum(jnp.log(alphas))
    return _from_log_alpha_bar(jnp.concatenate([jnp.zeros((1,), log_ab.dtype), log_ab]))


def from_int_beta(int_beta) -> Schedule:
    r"""Schedule from the VP-SDE integral B(t) = ∫_0^t β (Song et al. 2021).

    ᾱ = e^{−B/2}, β̄ = √(1 − e^{−B}) (reference §0, last column).

    Args:
        int_beta: ``[T + 1]`` values of B at the grid times, ``int_beta[0] == 0``.

    Returns:
        The ``Schedule``.
    """
    b = jnp.asarray(int_beta)
    chex.assert_rank(b, 1)
    return _from_log_alpha_bar(-0.5 * b)


def alphas_cumprod(sched: Schedule) -> Float[Array, " T1"]:
    """Ho's ᾱ^Ho_t = the DDIM paper's α_t = ``alpha_bar**2``, t = 0..T."""
    return sched.alpha_bar**2


def ho_betas(sched: Schedule) -> Float[Array, " T"]:
    r"""Ho's per-step variances β^Ho_t = 1 − ᾱ_t²/ᾱ_{t−1}², t = 1..T."""
    a = step_alphas(sched)[1:]
    return 1.0 - a**2


def step_alphas(sched: Schedule) -> Float[Array, " T1"]:
    r"""Su's per-step signal scales α_t = ᾱ_t/ᾱ_{t−1}, indexed t = 0..T (α_0 = 1)."""
    ab = sched.alpha_bar
    return jnp.concatenate([jnp.ones((1,), ab.dtype), ab[1:] / ab[:-1]])


def step_betas(sched: Schedule) -> Float[Array, " T1"]:
    r"""Su's per-step noise scales β_t = √(1 − α_t²), indexed t = 0..T (β_0 = 0)."""
    a = step_alphas(sched)
    return jnp.sqrt(jnp.maximum(1.0 - a**2, 0.0))


def int_beta(sched: Schedule) -> Float[Array, " T1"]:
    r"""The VP-SDE integral B(t) = −2 log ᾱ_t at the grid times."""
    return -2.0 * jnp.log(sched.alpha_bar)


def sub_sequence(T: int, S: int, kind: str = "uniform") -> np.ndarray:
    r"""Sampling sub-sequence τ_0 = 0 < τ_1 < … < τ_S = T (DDIM App. D.2).

    ``"uniform"``: τ_i = ⌊c·i⌋ with c = T/S. ``"quadratic"``: τ_i = ⌊c·i²⌋ with
    c = T/S², raised where needed to τ_{i−1} + 1 so that the times stay distinct
    (this only touches the first few steps and keeps τ_S = T whenever S ≤ T).
    The DDIM paper used quadratic τ for CIFAR10 (ermongroup/ddim #3).

    Args:
        T: number of steps of the schedule, ≥ 1 (a Python int).
        S: number of sampling steps, 1 ≤ S ≤ T.
        kind: ``"uniform"`` or ``"quadratic"``.

    Returns:
        A static NumPy int array ``[S + 1]``, strictly increasing from 0 to T.
    """
    _check_T(T)
    if not isinstance(S, (int, np.integer)) or not 1 <= S <= T:
        raise ValueError(f"num_steps (S) must be an int in [1, T={T}], got {S!r}")
    if kind not in SKIP_KINDS:
        raise ValueError(f"skip/kind must be one of {SKIP_KINDS}, got {kind!r}")
    i = np.arange(S + 1, dtype=np.int64)
    if kind == "uniform":
        return (i * T) // S
    tau = (i**2 * T) // (S * S)
    for k in range(1, S + 1):
        tau[k] = max(tau[k], tau[k - 1] + 1)
    return tau


# --------------------------------------------------------------------------- #
# Private helpers
# --------------------------------------------------------------------------- #


def _from_ho_betas_np(betas: np.ndarray) -> Schedule:
    """``from_ho_betas`` computed in float64 NumPy (constructors are static)."""
    log_ab = 0.5 * np.cumsum(np.log1p(-betas))
    return _from_log_alpha_bar(np.concatenate([[0.0], log_ab]))


def _from_log_alpha_bar(log_ab) -> Schedule:
    """Schedule from log ᾱ_t; β̄ via expm1 to keep precision near t = 0.

    NumPy input is evaluated in float64 before the cast to the JAX default float,
    so that float32 schedules carry no accumulated rounding.
    """
    if isinstance(log_ab, np.ndarray):
        log_ab = log_ab.astype(np.float64)
        return Schedule(
            alpha_bar=jnp.asarray(np.exp(log_ab)),
            beta_bar=jnp.asarray(np.sqrt(-np.expm1(2.0 * log_ab))),
        )
    log_ab = jnp.asarray(log_ab)
    return Schedule(
        alpha_bar=jnp.exp(log_ab),
        beta_bar=jnp.sqrt(-jnp.expm1(2.0 * log_ab)),
    )


def _check_T(T) -> None:
    """Raise if T is not a positive Python int."""
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be a positive int, got T={T!r}")
