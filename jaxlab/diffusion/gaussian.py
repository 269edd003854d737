r"""Closed-form oracle for data x_0 ~ N(μ, s²I) under any diffusion schedule.

With x_t = ᾱ x_0 + β̄ ε the marginal is N(m, v I) with m = ᾱμ and
v = ᾱ²s² + β̄², so every quantity a diffusion model learns is known exactly:

    ε*(x) = β̄ (x − m)/v,   ∇log p(x) = −(x − m)/v,   x̂_0 = (x − β̄ε*)/ᾱ.

Everything is written in terms of the *values* (ᾱ, β̄) so that continuous-time
code (score SDEs, probability-flow ODE) can reuse it; ``eps_fn`` binds it to a
discrete ``Schedule``. This is the oracle the tests of samplers use
(reference/ddim.md §6; style rule 20).

References:
    J. Su, 生成扩散模型漫谈 (四) https://kexue.fm/archives/9181 (Gaussian cases).
    J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models", 2021,
    arXiv 2010.02502, Eq. (12) (the step used by ``ddim_step_scale``).
"""

from collections.abc import Callable

import chex
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from jaxlab.diffusion import schedules


def marginal_mean(alpha_bar: ArrayLike, mu: ArrayLike) -> Array:
    r"""Mean m = ᾱ μ of q(x_t) for data N(μ, s²I).

    Args:
        alpha_bar: ᾱ at the time of interest (any shape broadcastable to ``mu``).
        mu: the data mean.

    Returns:
        ᾱ·μ.
    """
    return jnp.asarray(alpha_bar) * jnp.asarray(mu)


def marginal_var(alpha_bar: ArrayLike, beta_bar: ArrayLike, s: ArrayLike) -> Array:
    r"""Per-dimension variance v = ᾱ²s² + β̄² of q(x_t) for data N(μ, s²I)."""
    alpha_bar, beta_bar, s = map(jnp.asarray, (alpha_bar, beta_bar, s))
    return alpha_bar**2 * s**2 + beta_bar**2


def eps(
    x: Float[Array, "..."], alpha_bar: ArrayLike, beta_bar: ArrayLike,
    mu: ArrayLike, s: ArrayLike,
) -> Float[Array, "..."]:
    r"""Exact ε-predictor E[ε | x_t = x] = β̄ (x − ᾱμ)/(ᾱ²s² + β̄²).

    Style rule 20 / reference §6 ("Gaussian oracle"). ``alpha_bar``, ``beta_bar``,
    ``mu`` and ``s`` must broadcast against ``x`` (pass per-example times as
    ``[B, 1, ...]``).

    Args:
        x: points x_t.
        alpha_bar: ᾱ_t.
        beta_bar: β̄_t.
        mu: data mean.
        s: data standard deviation.

    Returns:
        ε*(x), same shape as ``x``.
    """
    return jnp.asarray(beta_bar) * (x - marginal_mean(alpha_bar, mu)) / marginal_var(
        alpha_bar, beta_bar, s
    )


def score(
    x: Float[Array, "..."], alpha_bar: ArrayLike, beta_bar: ArrayLike,
    mu: ArrayLike, s: ArrayLike,
) -> Float[Array, "..."]:
    r"""Exact score ∇_x log q(x_t = x) = −(x − ᾱμ)/(ᾱ²s² + β̄²) = −ε*/β̄.

    Args:
        x: points x_t.
        alpha_bar: ᾱ_t.
        beta_bar: β̄_t.
        mu: data mean.
        s: data standard deviation.

    Returns:
        The score, same shape as ``x``.
    """
    return -(x - marginal_mean(alpha_bar, mu)) / marginal_var(alpha_bar, beta_bar, s)


def log_density(
    x: Float[Array, "*B D"], alpha_bar: ArrayLike, beta_bar: ArrayLike,
    mu: ArrayLike, s: ArrayLike,
) -> Float[Array, "*B"]:
    r"""log q(x_t = x) = Σ_d log N(x_d; ᾱμ_d, ᾱ²s² + β̄²), summed over the last axis.

    Args:
        x: ``[..., D]`` points x_t (D = number of data dimensions).
        alpha_bar: ᾱ_t, broadcastable to ``x``.
        beta_bar: β̄_t, broadcastable to ``x``.
        mu: data mean, broadcastable to ``x``.
        s: data standard deviation, broadcastable to ``x``.

    Returns:
        ``[...]`` log-densities.
    """
    chex.assert_axis_dimension_gt(x, -1, 0)
    m = marginal_mean(alpha_bar, mu)
    v = marginal_var(alpha_bar, beta_bar, s)
    v = jnp.broadcast_to(v, jnp.broadcast_shapes(v.shape, x.shape))
    return jnp.sum(-0.5 * (x - m) ** 2 / v - 0.5 * jnp.log(2 * jnp.pi * v), axis=-1)


def ode_flow(
    x_from: Float[Array, "..."], ab_from: ArrayLike, bb_from: ArrayLike,
    ab_to: ArrayLike, bb_to: ArrayLike, mu: ArrayLike, s: ArrayLike,
) -> Float[Array, "..."]:
    r"""Exact probability-flow ODE map between two times for Gaussian data.

    The deterministic (η = 0 / probability-flow) ODE transports the marginal
    N(m_a, v_a) to N(m_b, v_b) linearly: x_b − m_b = √(v_b/v_a)(x_a − m_a)
    (reference §6, "ODE closed form").

    Args:
        x_from: points at the start time a.
        ab_from: ᾱ_a.
        bb_from: β̄_a.
        ab_to: ᾱ_b.
        bb_to: β̄_b.
        mu: data mean.
        s: data standard deviation.

    Returns:
        x_b, same shape as ``x_from``.
    """
    va = marginal_var(ab_from, bb_from, s)
    vb = marginal_var(ab_to, bb_to, s)
    return marginal_mean(ab_to, mu) + jnp.sqrt(vb / va) * (
        x_from - marginal_mean(ab_from, mu)
    )


def ddim_step_scale(
    ab_t: ArrayLike, bb_t: ArrayLike, ab_r: ArrayLike, bb_r: ArrayLike,
    sigma: ArrayLike, s: ArrayLike,
) -> Array:
    r"""Scale a of one generalized DDIM step t → r applied to the oracle ε*.

    With ε = ε* the step x_r = ᾱ_r x̂_0 + √(β̄_r² − σ²) ε + σz maps
    u = x_t − m_t to a·u + σz with

        a = (ᾱ_r ᾱ_t s² + β̄_t √(β̄_r² − σ²)) / v_t,

    hence Var_r = a² Var_t + σ² (reference §6, "Gaussian oracle").

    Args:
        ab_t: ᾱ_t.
        bb_t: β̄_t.
        ab_r: ᾱ_r.
        bb_r: β̄_r.
        sigma: the step's noise standard deviation σ ≤ β̄_r.
        s: data standard deviation.

    Returns:
        The scale a.
    """
    ab_t, bb_t, ab_r, bb_r, sigma, s = map(
        jnp.asarray, (ab_t, bb_t, ab_r, bb_r, sigma, s)
    )
    c = jnp.sqrt(jnp.maximum(bb_r**2 - sigma**2, 0.0))
    return (ab_r * ab_t * s**2 + bb_t * c) / marginal_var(ab_t, bb_t, s)


def eps_fn(
    sched: schedules.Schedule, mu: ArrayLike, s: ArrayLike
) -> Callable[[Array, Int[Array, " B"]], Array]:
    r"""The exact ε-predictor bound to a discrete schedule, as ``eps_fn(x, t)``.

    Args:
        sched: the schedule.
        mu: data mean, broadcastable to one example ``x[0]``.
        s: data standard deviation, broadcastable to one example.

    Returns:
        ``eps_fn(x, t)`` for ``x`` ``[B, ...]`` and integer ``t`` ``[B]`` (or a
        scalar), the sampler interface of ``ddpm`` / ``ddim``.
    """

    def fn(x, t):
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        tail = (1,) * (x.ndim - 1)
        ab = sched.alpha_bar[t].reshape(t.shape + tail)
        bb = sched.beta_bar[t].reshape(t.shape + tail)
        m = jnp.asarray(mu, x.dtype)
        m = m.reshape((1,) * (x.ndim - m.ndim) + m.shape)
        sd = jnp.asarray(s, x.dtype)
        sd = sd.reshape((1,) * (x.ndim - sd.ndim) + sd.shape)
        return eps(x, ab.astype(x.dtype), bb.astype(x.dtype), m, sd)

    return fn
