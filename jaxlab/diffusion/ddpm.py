r"""DDPM: forward sampling, the ε-MSE loss, the posterior and the ancestral sampler.

Notation (Su; see ``schedules``): x_t = ᾱ_t x_0 + β̄_t ε; the per-step scales
between two times r < t are α = ᾱ_t/ᾱ_r and β² = 1 − α² = β̄_t² − α²β̄_r². All
functions accept integer times ``t`` of shape ``[B]`` (one per example) or a
scalar; ``eps_fn(x, t)`` is called with ``t`` broadcast to ``[B]``.

References:
    J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    NeurIPS 2020 (Eqs. 4, 7, 11, 14; Algorithms 1–2).
    J. Su, 生成扩散模型漫谈 (三) https://kexue.fm/archives/9164 (posterior,
    σ_t choices) — reference/ddim.md §2.1–2.4.
"""

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from jaxlab.diffusion import schedules

SIGMA_KINDS = ("posterior", "beta")

EpsFn = Callable[[Array, Int[Array, " B"]], Array]


def q_sample(
    key: PRNGKeyArray, sched: schedules.Schedule, x0: Float[Array, "B ..."],
    t: Int[Array, " B"],
) -> tuple[Float[Array, "B ..."], Float[Array, "B ..."]]:
    r"""Draw x_t ~ q(x_t | x_0) = N(ᾱ_t x_0, β̄_t² I) (Ho Eq. 4; Su (三) §2.1).

    Args:
        key: PRNG key for ε.
        sched: the schedule.
        x0: ``[B, ...]`` clean data.
        t: ``[B]`` (or scalar) integer times in 0..T.

    Returns:
        ``(x_t, eps)`` with x_t = ᾱ_t x_0 + β̄_t ε, both shaped like ``x0``.
    """
    _check_sched(sched)
    t = _batch_t(t, x0)
    noise = jr.normal(key, x0.shape, x0.dtype)
    ab = _gather(sched.alpha_bar, t, x0)
    bb = _gather(sched.beta_bar, t, x0)
    return ab * x0 + bb * noise, noise


def loss(
    key: PRNGKeyArray, eps_fn: EpsFn, sched: schedules.Schedule,
    x0: Float[Array, "B ..."],
) -> Float[Array, " B"]:
    r"""Per-example ε-prediction loss (Ho Eq. 14, the "simple" unweighted loss).

    L = E_{t~U{1..T}, ε} ‖ε − ε_θ(ᾱ_t x_0 + β̄_t ε, t)‖², here averaged over the
    data dimensions of each example; the caller reduces over the batch.

    Args:
        key: PRNG key (split into the time and noise keys).
        eps_fn: ``eps_fn(x_t, t) -> ε̂`` on ``[B, ...]`` with ``t`` ``[B]``.
        sched: the schedule.
        x0: ``[B, ...]`` clean data.

    Returns:
        ``[B]`` mean squared ε errors.
    """
    _check_sched(sched)
    chex.assert_rank(x0, {2, 3, 4, 5})
    t_key, eps_key = jr.split(key)
    t = jr.randint(t_key, x0.shape[:1], 1, sched.num_steps + 1)
    x_t, noise = q_sample(eps_key, sched, x0, t)
    pred = eps_fn(x_t, t)
    chex.assert_equal_shape([pred, x0])
    return jnp.mean(jnp.reshape((pred - noise) ** 2, (x0.shape[0], -1)), axis=1)


def posterior(
    sched: schedules.Schedule, x_t: Float[Array, "B ..."], x0: Float[Array, "B ..."],
    t: Int[Array, " B"],
) -> tuple[Float[Array, "B ..."], Float[Array, " B"]]:
    r"""Posterior q(x_{t−1} | x_t, x_0) (Su (三) §2.3; Ho Eq. 7).

    q = N( (α_t β̄²_{t−1}/β̄_t²) x_t + (ᾱ_{t−1} β_t²/β̄_t²) x_0,
           (β̄²_{t−1} β_t²/β̄_t²) I ).

    Args:
        sched: the schedule.
        x_t: ``[B, ...]`` noisy points.
        x0: ``[B, ...]`` clean data.
        t: ``[B]`` (or scalar) integer times in 1..T.

    Returns:
        ``(mean, std)``: the mean shaped like ``x_t`` and the standard deviation
        ``[B]``.
    """
    _check_sched(sched)
    chex.assert_equal_shape([x_t, x0])
    t = _batch_t(t, x_t)
    ab_t, bb_t = sched.alpha_bar[t], sched.beta_bar[t]
    ab_r, bb_r = sched.alpha_bar[t - 1], sched.beta_bar[t - 1]
    a, b2 = _step_scales(ab_t, bb_t, ab_r, bb_r)
    c_xt = _bcast(a * bb_r**2 / bb_t**2, x_t)
    c_x0 = _bcast(ab_r * b2 / bb_t**2, x_t)
    return c_xt * x_t + c_x0 * x0, bb_r * jnp.sqrt(b2) / bb_t


def predict_x0(
    sched: schedules.Schedule, x_t: Float[Array, "B ..."], t: Int[Array, " B"],
    eps: Float[Array, "B ..."],
) -> Float[Array, "B ..."]:
    r"""x̂_0 = (x_t − β̄_t ε)/ᾱ_t (Su (三) §2.2; Ho Eq. 15 rearranged).

    Args:
        sched: the schedule.
        x_t: ``[B, ...]`` noisy points.
        t: ``[B]`` (or scalar) integer times in 0..T.
        eps: ``[B, ...]`` predicted noise.

    Returns:
        The predicted clean data, shaped like ``x_t``.
    """
    _check_sched(sched)
    chex.assert_equal_shape([x_t, eps])
    t = _batch_t(t, x_t)
    return (x_t - _gather(sched.beta_bar, t, x_t) * eps) / _gather(
        sched.alpha_bar, t, x_t
    )


def sample(
    key: PRNGKeyArray, eps_fn: EpsFn, sched: schedules.Schedule,
    shape: tuple[int, ...], *, sigma: str = "posterior",
    x_T: Float[Array, "B ..."] | None = None, dtype=None,
) -> Float[Array, "B ..."]:
    r"""Ancestral DDPM sampling in T steps (Ho Algorithm 2; Su (三) §2.4).

    x_{t−1} = (x_t − (β_t²/β̄_t) ε_θ(x_t, t))/α_t + σ_t z, with
    σ_t = β̄_{t−1}β_t/β̄_t (``"posterior"``, the variance of q(x_{t−1}|x_t,x_0),
    exact for δ-data) or σ_t = β_t (``"beta"``, exact for N(0, I) data). As in
    Ho's Algorithm 2 no noise is added at t = 1. A ``lax.scan`` over t = T..1.

    Args:
        key: PRNG key (x_T and one key per step).
        eps_fn: ``eps_fn(x, t)``, ``x`` ``[B, ...]``, ``t`` int ``[B]``.
        sched: the schedule.
        shape: output shape ``(B, ...)``.
        sigma: ``"posterior"`` or ``"beta"``.
        x_T: optional ``[B, ...]`` starting noise; then ``key`` drives only z.
        dtype: sample dtype (default: ``x_T``'s, else the schedule's).

    Returns:
        Samples x_0 of shape ``shape``.
    """
    _check_sched(sched)
    if sigma not in SIGMA_KINDS:
        raise ValueError(f"sigma must be one of {SIGMA_KINDS}, got sigma={sigma!r}")
    shape = _check_shape(shape)
    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T.shape must equal shape={shape}, got {x_T.shape}")
        dtype = x_T.dtype
    dtype = sched.alpha_bar.dtype if dtype is None else dtype
    _check_eps_fn(eps_fn, shape, dtype)
    T = sched.num_steps
    init_key, step_key = jr.split(key)
    if x_T is None:
        x_T = jr.normal(init_key, shape, dtype)
    ts = jnp.arange(T, 0, -1)

    def body(x, inp):
        t, k = inp
        ab_t, bb_t = sched.alpha_bar[t], sched.beta_bar[t]
        ab_r, bb_r = sched.alpha_bar[t - 1], sched.beta_bar[t - 1]
        a, b2 = _step_scales(ab_t, bb_t, ab_r, bb_r)
        b = jnp.sqrt(b2)
        std = bb_r * b / bb_t if sigma == "posterior" else jnp.where(t > 1, b, 0.0)
        e = eps_fn(x, jnp.full(shape[:1], t, jnp.int32))
        x = (x - (b2 / bb_t) * e) / a + std * jr.normal(k, shape, dtype)
        return x.astype(dtype), None

    x0, _ = jax.lax.scan(body, x_T, (ts, jr.split(step_key, T)))
    return x0


# --------------------------------------------------------------------------- #
# Private helpers (shared with ddim)
# --------------------------------------------------------------------------- #


def _step_scales(ab_t, bb_t, ab_r, bb_r):
    """Per-step (α, β²) between times r < t from ᾱ, β̄ only (reference §2.6)."""
    a = ab_t / ab_r
    return a, jnp.maximum(bb_t**2 - a**2 * bb_r**2, 0.0)


def _bcast(v, x):
    """Reshape per-example ``v`` ``[B]`` (or scalar) to broadcast against x."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _batch_t(t, x):
    """Integer times broadcast to ``[B]``."""
    t = jnp.asarray(t)
    chex.assert_rank(t, {0, 1})
    return jnp.broadcast_to(t, x.shape[:1])


def _gather(table, t, x):
    """``table[t]`` shaped to broadcast against ``x``, in x's dtype."""
    return _bcast(table[t].astype(x.dtype), x)


def _check_sched(sched) -> None:
    """Static checks on a ``Schedule``."""
    chex.assert_rank([sched.alpha_bar, sched.beta_bar], 1)
    chex.assert_equal_shape([sched.alpha_bar, sched.beta_bar])


def _check_shape(shape) -> tuple[int, ...]:
    """``shape`` must be a non-empty tuple of positive ints ``(B, ...)``."""
    ok = isinstance(shape, (tuple, list)) and len(shape) >= 1
    ok = ok and all(isinstance(d, int) and d > 0 for d in shape)
    if not ok:
        raise ValueError(
            f"shape must be a tuple of positive ints (B, ...), got {shape!r}"
        )
    return tuple(shape)


def _check_eps_fn(eps_fn, shape, dtype) -> None:
    """Abstractly evaluate ``eps_fn`` once; its output must have ``shape``."""
    shape = _check_shape(shape)
    out = jax.eval_shape(
        eps_fn,
        jax.ShapeDtypeStruct(shape, dtype),
        jax.ShapeDtypeStruct(shape[:1], jnp.int32),
    )
    if getattr(out, "shape", None) != shape:
        raise ValueError(
            f"eps_fn(x, t) must return an array of the sample shape {shape}, "
            f"got {getattr(out, 'shape', type(out))}"
        )
