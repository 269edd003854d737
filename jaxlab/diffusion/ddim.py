r"""DDIM: the σ-family of non-Markovian samplers, sub-sequences, inversion, slerp.

Every update is written only in ᾱ, β̄ at the two times involved, so the same
step works between any pair t → r (sub-sequence sampling, reference §2.6).
With x̂_0 = (x_t − β̄_t ε)/ᾱ_t, one step is DDIM Eq. (12):

    x_r = ᾱ_r x̂_0 + √(β̄_r² − σ²) ε + σ z,
    σ̃ = η (β̄_r/β̄_t) √(1 − ᾱ_t²/ᾱ_r²)        (η = 1: DDPM, η = 0: deterministic),

and the σ̂ variant (DDIM App. D.3) keeps the η = 1 ε-coefficient but adds noise
of std σ̂ = √(1 − ᾱ_t²/ᾱ_r²). Every sampler is one ``lax.scan`` over the
sub-sequence, so compile time does not grow with the number of steps.

References:
    J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models", ICLR 2021,
    arXiv 2010.02502: Eq. (12) (step), Eq. (16) (σ_η), Eq. (14) (ODE view),
    App. D.2 (sub-sequences), App. D.3 (σ̂), App. D.5 (interpolation).
    J. Su, 生成扩散模型漫谈 (四) "DDIM = 高观点DDPM", https://kexue.fm/archives/9181
    (reference/ddim.md §2.5–2.8).
"""

import math

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from jaxlab.diffusion import ddpm, schedules

SIGMA_KINDS = ("eta", "hat")
SLERP_KINDS = ("gaussian", "geometric")


def sigma_eta(
    ab_t: ArrayLike, bb_t: ArrayLike, ab_r: ArrayLike, bb_r: ArrayLike,
    eta: ArrayLike,
) -> Array:
    r"""σ̃ = η (β̄_r/β̄_t) √(1 − ᾱ_t²/ᾱ_r²) for a step t → r (DDIM Eq. 16).

    In the DDIM paper's notation η √((1 − α_r)/(1 − α_t)) √(1 − α_t/α_r); the
    bracket is evaluated as β̄_t² − (ᾱ_t/ᾱ_r)² β̄_r², which is exact at r = 0.

    Args:
        ab_t: ᾱ_t.
        bb_t: β̄_t.
        ab_r: ᾱ_r (r < t).
        bb_r: β̄_r.
        eta: η ≥ 0.

    Returns:
        σ̃, broadcast over the inputs.
    """
    ab_t, bb_t, ab_r, bb_r = map(jnp.asarray, (ab_t, bb_t, ab_r, bb_r))
    _, b2 = ddpm._step_scales(ab_t, bb_t, ab_r, bb_r)
    # β̄_t = 0 only for an inversion step out of t = 0, where σ is 0 by definition.
    safe_bb_t = jnp.where(bb_t > 0, bb_t, 1.0)
    return jnp.asarray(eta) * jnp.where(bb_t > 0, bb_r * jnp.sqrt(b2) / safe_bb_t, 0.0)


def step(
    key: PRNGKeyArray | None, x: Float[Array, "B ..."], eps: Float[Array, "B ..."],
    ab_t: ArrayLike, bb_t: ArrayLike, ab_r: ArrayLike, bb_r: ArrayLike, *,
    eta: float = 0.0, sigma: str = "eta",
) -> Float[Array, "B ..."]:
    r"""One generalized DDIM step from time t to an earlier time r (DDIM Eq. 12).

    x_r = ᾱ_r x̂_0 + c ε + σ z with x̂_0 = (x − β̄_t ε)/ᾱ_t and
      ``sigma="eta"``: σ = σ̃_η, c = √(β̄_r² − σ²);
      ``sigma="hat"``:  σ = σ̂ = √(1 − ᾱ_t²/ᾱ_r²), c = √(β̄_r² − σ̃_1²) (App. D.3).
    A step that lands on β̄_r = 0 (r = 0) returns x̂_0 without noise.
    When r > t (ᾱ_r < ᾱ_t) and η = 0 this is the deterministic inversion step.

    Args:
        key: PRNG key for z; may be ``None`` only if η = 0 with ``sigma="eta"``.
        x: ``[B, ...]`` points at time t.
        eps: ``[B, ...]`` ε-prediction at (x, t).
        ab_t: ᾱ_t, a scalar or ``[B]``.
        bb_t: β̄_t, a scalar or ``[B]``.
        ab_r: ᾱ_r, a scalar or ``[B]``.
        bb_r: β̄_r, a scalar or ``[B]``.
        eta: η ≥ 0 (used by ``sigma="eta"``).
        sigma: ``"eta"`` or ``"hat"``.

    Returns:
        x_r, shaped like ``x``.
    """
    chex.assert_equal_shape([x, eps])
    _check_eta(eta)
    _check_sigma(sigma)
    if key is None and (sigma != "eta" or _is_nonzero(eta)):
        raise ValueError(
            f"key may be None only for the deterministic step (eta=0, sigma='eta'), "
            f"got eta={eta!r}, sigma={sigma!r}"
        )
    ab_t, bb_t, ab_r, bb_r = (
        ddpm._bcast(jnp.asarray(v, x.dtype), x) for v in (ab_t, bb_t, ab_r, bb_r)
    )
    x0_hat = (x - bb_t * eps) / ab_t
    if sigma == "eta":
        std = sigma_eta(ab_t, bb_t, ab_r, bb_r, jnp.asarray(eta, x.dtype))
        coef = jnp.sqrt(jnp.maximum(bb_r**2 - std**2, 0.0))
    else:
        s1 = sigma_eta(ab_t, bb_t, ab_r, bb_r, 1.0)
        coef = jnp.sqrt(jnp.maximum(bb_r**2 - s1**2, 0.0))
        _, b2 = ddpm._step_scales(ab_t, bb_t, ab_r, bb_r)
        std = jnp.where(bb_r > 0, jnp.sqrt(b2), 0.0)
    out = ab_r * x0_hat + coef * eps
    if key is not None:
        out = out + std * jr.normal(key, x.shape, x.dtype)
    return out


def sample(
    key: PRNGKeyArray, eps_fn: ddpm.EpsFn, sched: schedules.Schedule,
    shape: tuple[int, ...], *, num_steps: int, eta: float = 0.0,
    skip: str = "uniform", sigma: str = "eta", x_T: Float[Array, "B ..."] | None = None,
    dtype=None,
) -> Float[Array, "B ..."]:
    r"""DDIM sampling over a sub-sequence τ of ``num_steps`` times (DDIM §4.2, 5).

    x_T ~ N(0, I) (or the given ``x_T``), then ``step`` along
    τ_S = T → τ_{S−1} → … → τ_0 = 0 with ε = eps_fn(x, τ_i) (one ``lax.scan``).

    Args:
        key: PRNG key (x_T and one key per step).
        eps_fn: ``eps_fn(x, t)``, ``x`` ``[B, ...]``, ``t`` int ``[B]`` in 1..T.
        sched: the schedule.
        shape: sample shape ``(B, ...)``.
        num_steps: S, an int in 1..T.
        eta: η ≥ 0 (0: deterministic DDIM, 1: DDPM).
        skip: ``"uniform"`` or ``"quadratic"`` sub-sequence (``sub_sequence``).
        sigma: ``"eta"`` (σ_η family) or ``"hat"`` (σ̂, ignores ``eta``).
        x_T: optional ``[B, ...]`` starting noise; then ``key`` drives only z.
        dtype: sample dtype (default: ``x_T``'s, else the schedule's).

    Returns:
        Samples x_0 of shape ``shape``.
    """
    ddpm._check_sched(sched)
    _check_eta(eta)
    _check_sigma(sigma)
    shape = ddpm._check_shape(shape)
    tau = schedules.sub_sequence(sched.num_steps, num_steps, skip)
    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T.shape must equal shape={shape}, got {x_T.shape}")
        dtype = x_T.dtype
    dtype = sched.alpha_bar.dtype if dtype is None else dtype
    ddpm._check_eps_fn(eps_fn, shape, dtype)
    init_key, step_key = jr.split(key)
    x = jr.normal(init_key, shape, dtype) if x_T is None else x_T
    return _scan(eps_fn, sched, x, tau[::-1], step_key, eta, sigma)


def decode(
    eps_fn: ddpm.EpsFn, sched: schedules.Schedule, x_T: Float[Array, "B ..."], *,
    num_steps: int, skip: str = "uniform",
) -> Float[Array, "B ..."]:
    r"""Deterministic DDIM (η = 0) from x_T to x_0: Euler steps of DDIM Eq. (14).

    x_r/ᾱ_r = x_t/ᾱ_t + (β̄_r/ᾱ_r − β̄_t/ᾱ_t) ε_θ(x_t, t) along τ reversed.

    Args:
        eps_fn: ``eps_fn(x, t)``.
        sched: the schedule.
        x_T: ``[B, ...]`` latents at time T.
        num_steps: S in 1..T.
        skip: ``"uniform"`` or ``"quadratic"``.

    Returns:
        x_0, shaped like ``x_T``.
    """
    ddpm._check_sched(sched)
    tau = schedules.sub_sequence(sched.num_steps, num_steps, skip)
    ddpm._check_eps_fn(eps_fn, tuple(x_T.shape), x_T.dtype)
    return _scan(eps_fn, sched, x_T, tau[::-1], None, 0.0, "eta")


def encode(
    eps_fn: ddpm.EpsFn, sched: schedules.Schedule, x0: Float[Array, "B ..."], *,
    num_steps: int, skip: str = "uniform",
) -> Float[Array, "B ..."]:
    r"""Deterministic DDIM inversion x_0 → x_T (the ODE of DDIM Eq. 14 run forward).

    Steps τ_{i−1} → τ_i with the η = 0 update
    x_{τ_i} = ᾱ_{τ_i} x̂_0 + β̄_{τ_i} ε, x̂_0 = (x − β̄_{τ_{i−1}} ε)/ᾱ_{τ_{i−1}}.
    ε is evaluated at the current point with the *destination* time,
    ε = eps_fn(x_{τ_{i−1}}, τ_i), because ε_θ(·, 0) is undefined for a network
    trained on t ∈ 1..T (as in DDIM inversion in diffusers' DDIMInverseScheduler
    and Mokady et al. 2022). The error is first order in the step, like decoding.

    Args:
        eps_fn: ``eps_fn(x, t)``.
        sched: the schedule.
        x0: ``[B, ...]`` data.
        num_steps: S in 1..T.
        skip: ``"uniform"`` or ``"quadratic"``.

    Returns:
        The latents x_T, shaped like ``x0``.
    """
    ddpm._check_sched(sched)
    tau = schedules.sub_sequence(sched.num_steps, num_steps, skip)
    ddpm._check_eps_fn(eps_fn, tuple(x0.shape), x0.dtype)
    return _scan(eps_fn, sched, x0, tau, None, 0.0, "eta", eps_at_dest=True)


def slerp(
    z1: Float[Array, "..."], z2: Float[Array, "..."], lam: ArrayLike, *,
    kind: str = "gaussian",
) -> Float[Array, "..."]:
    r"""Spherical interpolation between latents (Su (四) §2.8; DDIM App. D.5).

    ``"gaussian"`` (Su): z = z_1 cos(λπ/2) + z_2 sin(λπ/2); for independent
    z_1, z_2 ~ N(0, I) every z is exactly N(0, I).
    ``"geometric"`` (DDIM App. D.5): with θ = arccos(⟨z_1, z_2⟩/(‖z_1‖‖z_2‖)),
    z = sin((1 − λ)θ)/sin θ · z_1 + sin(λθ)/sin θ · z_2 (norms over all axes).

    Args:
        z1: latent at λ = 0.
        z2: latent at λ = 1, same shape as ``z1``.
        lam: scalar λ in [0, 1].
        kind: ``"gaussian"`` or ``"geometric"``.

    Returns:
        The interpolant, shaped like ``z1``.
    """
    chex.assert_equal_shape([z1, z2])
    if kind not in SLERP_KINDS:
        raise ValueError(f"kind must be one of {SLERP_KINDS}, got kind={kind!r}")
    lam = jnp.asarray(lam, z1.dtype)
    chex.assert_rank(lam, 0)
    if kind == "gaussian":
        return jnp.cos(0.5 * math.pi * lam) * z1 + jnp.sin(0.5 * math.pi * lam) * z2
    cos = jnp.vdot(z1, z2) / (jnp.linalg.norm(z1) * jnp.linalg.norm(z2))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.maximum(jnp.sin(theta), jnp.finfo(z1.dtype).tiny)
    return (jnp.sin((1 - lam) * theta) * z1 + jnp.sin(lam * theta) * z2) / sin


# --------------------------------------------------------------------------- #
# Private
# --------------------------------------------------------------------------- #


def _scan(eps_fn, sched, x, times, key, eta, sigma, *, eps_at_dest=False):
    """One ``lax.scan`` of ``step`` along consecutive pairs of ``times``."""
    times = jnp.asarray(times, jnp.int32)
    src, dst = times[:-1], times[1:]
    n = src.shape[0]
    deterministic = sigma == "eta" and not _is_nonzero(eta)
    # η = 0 draws no noise at all (bit-deterministic, and cheaper).
    keys = None if key is None or deterministic else jr.split(key, n)
    batch = x.shape[:1]

    def body(x, inp):
        t, r, k = inp
        t_eval = r if eps_at_dest else t
        e = eps_fn(x, jnp.full(batch, t_eval, jnp.int32)).astype(x.dtype)
        x = step(
            k, x, e, sched.alpha_bar[t], sched.beta_bar[t],
            sched.alpha_bar[r], sched.beta_bar[r], eta=eta, sigma=sigma,
        )
        return x, None

    x, _ = jax.lax.scan(body, x, (src, dst, keys))
    return x


def _check_eta(eta) -> None:
    """η must be a finite number ≥ 0 (checked when concrete)."""
    if isinstance(eta, jax.core.Tracer):
        return
    e = float(eta)
    if not (math.isfinite(e) and e >= 0.0):
        raise ValueError(f"eta must be a finite number >= 0, got eta={eta!r}")


def _check_sigma(sigma) -> None:
    """``sigma`` must name a known variant."""
    if sigma not in SIGMA_KINDS:
        raise ValueError(f"sigma must be one of {SIGMA_KINDS}, got sigma={sigma!r}")


def _is_nonzero(eta) -> bool:
    """True unless η is concretely 0 (a traced η counts as non-zero)."""
    if isinstance(eta, jax.core.Tracer):
        return True
    return float(eta) != 0.0
