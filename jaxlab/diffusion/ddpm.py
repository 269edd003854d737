r"""DDPM: forward sampling, the ε-MSE loss, the posterior and the ancestral sampler.

Notation (Su; see ``schedules``): x_t = ᾱ_t x_0 + β̄_t ε; the per-step scales
between two times r < t are α = ᾱ_t/ᾱ_r and β² = 1 − α² = β̄_t² − α²β̄_r². All
functions accept integer times ``t`` of shape ``[B]`` (one per example) or a
scalar; ``eps_fn(x, t)`` is called with ``t`` broadcast to ``[B]``.

References:
    J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    NeurIPS 2020 (Eqs. 4, 5, 7, 11, 13, 14; Algorithms 1–2; the bound of Eq. 5
    in bits/dim is ``elbo_bpd``).
    J. Su, 生成扩散模型漫谈 (三) https://kexue.fm/archives/9164 (posterior,
    σ_t choices) — reference/ddim.md §2.1–2.4.
"""

import math
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import log_ndtr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from jaxlab.diffusion import schedules

SIGMA_KINDS = ("posterior", "beta")

EpsFn = Callable[[Array, Int[Array, " B"]], Array]


def q_sample(
    key: PRNGKeyArray,
    sched: schedules.Schedule,
    x0: Float[Array, "B ..."],
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
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    sched: schedules.Schedule,
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
    sched: schedules.Schedule,
    x_t: Float[Array, "B ..."],
    x0: Float[Array, "B ..."],
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
    sched: schedules.Schedule,
    x_t: Float[Array, "B ..."],
    t: Int[Array, " B"],
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
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    sched: schedules.Schedule,
    shape: tuple[int, ...],
    *,
    sigma: str = "posterior",
    x_T: Float[Array, "B ..."] | None = None,
    dtype=None,
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


# --------------------------------------------------------------------------- #
# The variational bound (Ho et al. Eq. 5) in bits/dim
# --------------------------------------------------------------------------- #

DECODERS = ("discrete", "gaussian")


def prior_kl(
    sched: schedules.Schedule, x0: Float[Array, "B ..."]
) -> Float[Array, " B"]:
    r"""L_T = KL(q(x_T | x_0) ‖ N(0, I)) per example, in nats (Ho et al. Eq. 5).

    With q(x_T | x_0) = N(ᾱ_T x_0, β̄_T² I), per dimension
    KL = ½(β̄_T² + ᾱ_T² x_0² − 1 − log β̄_T²), summed over the non-batch axes.

    Args:
        sched: the schedule.
        x0: ``[B, ...]`` clean data.

    Returns:
        ``[B]`` KL divergences (nats).
    """
    _check_sched(sched)
    chex.assert_rank(x0, {2, 3, 4, 5})
    T = sched.num_steps
    ab, bb = sched.alpha_bar[T].astype(x0.dtype), sched.beta_bar[T].astype(x0.dtype)
    kl = 0.5 * (bb**2 + (ab * x0) ** 2 - 1.0 - 2.0 * jnp.log(bb))
    return jnp.sum(jnp.reshape(kl, (x0.shape[0], -1)), axis=1)


def vlb_term(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    sched: schedules.Schedule,
    x0: Float[Array, "B ..."],
    t: Int[Array, " B"],
    *,
    sigma: str = "posterior",
    decoder: str = "discrete",
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
) -> Float[Array, " B"]:
    r"""One term L_{t−1} of Ho et al.'s bound (Eq. 5) per example, in nats.

    x_t ~ q(x_t | x_0) is drawn once (Ho et al.'s code does the same). For
    t ≥ 2, L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) between
    Gaussians: q = N(μ̃_t, β̃_t² I) (``posterior``, Ho Eq. 7) and
    p_θ = N(μ_θ, σ_t² I) with μ_θ = μ̃_t(x_t, x̂_0), x̂_0 = (x_t − β̄_t ε_θ)/ᾱ_t
    (Ho Eq. 11), and σ_t = β̃_t = β̄_{t−1}β_t/β̄_t (``"posterior"``, Ho's
    "fixedsmall") or σ_t = β_t (``"beta"``, "fixedlarge"):

        KL = Σ_d [log(σ_t/β̃_t) + (β̃_t² + (μ̃_t − μ_θ)²)/(2σ_t²) − ½].

    For t = 1, L_0 = −log p_θ(x_0 | x_1) with mean μ_θ(x_1, 1) = x̂_0 and
    σ_1 = β̃_2 (β̃_1 = 0; Ho et al.'s code clips it the same way):

    - ``"discrete"``: Ho Eq. 13, the Gaussian mass of the bin of x_0: data on
      the grid lo + k·w, w = (hi − lo)/(num_bins − 1), bins [x − w/2, x + w/2]
      with edges ±∞ at the ends (w = 2/255 for 8-bit data on [−1, 1]); a bound
      on the discrete data's −log P;
    - ``"gaussian"``: the continuous density −log N(x_0; x̂_0, σ_1²), a bound on
      −log p of continuous data (for discrete data it must be dequantized and
      offset as in ``likelihood.bits_per_dim``).

    Args:
        key: PRNG key for x_t.
        eps_fn: ``eps_fn(x_t, t)``.
        sched: the schedule (T ≥ 2).
        x0: ``[B, ...]`` data.
        t: ``[B]`` (or scalar) integer times in 1..T.
        sigma: ``"posterior"`` or ``"beta"``.
        decoder: ``"discrete"`` or ``"gaussian"``.
        data_range: (lo, hi) of the data grid (``"discrete"`` only).
        num_bins: number of levels ≥ 2 (``"discrete"`` only).

    Returns:
        ``[B]`` L_{t−1} in nats.
    """
    _check_sched(sched)
    chex.assert_rank(x0, {2, 3, 4, 5})
    lo, hi = _check_vlb_args(sched, sigma, decoder, data_range, num_bins)
    t = _batch_t(t, x0)
    x_t, _ = q_sample(key, sched, x0, t)
    e = eps_fn(x_t, t)
    chex.assert_equal_shape([e, x0])
    x0_hat = predict_x0(sched, x_t, t, e)
    mean_q, std_q = posterior(sched, x_t, x0, t)
    mean_p, _ = posterior(sched, x_t, x0_hat, t)
    # σ_t of the reverse step; at t = 1 the decoder's σ_1 = β̃_2.
    _, b2 = _step_scales(
        sched.alpha_bar[t],
        sched.beta_bar[t],
        sched.alpha_bar[t - 1],
        sched.beta_bar[t - 1],
    )
    std_p = std_q if sigma == "posterior" else jnp.sqrt(b2)
    _, std_2 = posterior(sched, x_t[:1], x0[:1], jnp.full((1,), 2, jnp.int32))
    std_p = jnp.where(t == 1, std_2[0], std_p).astype(x0.dtype)
    std_q = std_q.astype(x0.dtype)
    sq, sp = _bcast(std_q, x0), _bcast(std_p, x0)
    kl = (
        jnp.log(sp)
        - jnp.log(jnp.maximum(sq, jnp.finfo(x0.dtype).tiny))
        + (sq**2 + (mean_q - mean_p) ** 2) / (2.0 * sp**2)
        - 0.5
    )
    if decoder == "gaussian":
        nll0 = (
            0.5 * ((x0 - x0_hat) / sp) ** 2 + jnp.log(sp) + 0.5 * jnp.log(2.0 * jnp.pi)
        )
    else:
        nll0 = -_discretized_gaussian_logp(x0, x0_hat, sp, lo, hi, num_bins)
    per_dim = jnp.where(_bcast(t, x0) == 1, nll0, kl)
    return jnp.sum(jnp.reshape(per_dim, (x0.shape[0], -1)), axis=1)


def elbo_bpd(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    sched: schedules.Schedule,
    x0: Float[Array, "B ..."],
    *,
    num_t: int | None = None,
    chunk: int = 50,
    sigma: str = "posterior",
    decoder: str = "discrete",
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
) -> Float[Array, " B"]:
    r"""Negative ELBO of the DDPM in bits/dim, per example (Ho et al. Eq. 5).

    L = L_T + Σ_{t=2}^T L_{t−1} + L_0 (``prior_kl`` and ``vlb_term``), divided
    by D ln 2. With ``decoder="discrete"`` this bounds −log2 P(x_0)/D of the
    discrete data directly (Ho et al. §4.2: 3.70–3.75 bits/dim on CIFAR-10;
    no dequantization offset); with ``"gaussian"`` it bounds −log2 p(x_0)/D of
    continuous data.

    - ``num_t=None``: every term t = 1..T (each with its own x_t draw), a
      ``lax.scan`` over chunks of ``chunk`` times, each chunk one call of
      ``eps_fn`` on ``chunk·B`` examples (memory ∝ chunk·B, not T·B);
    - ``num_t=K``: the unbiased Monte-Carlo estimate L_T + T·mean_k L_{t_k−1}
      with t_k ~ U{1..T} i.i.d. per example (uniform importance weights T;
      K·B examples in one call).

    Args:
        key: PRNG key (times and x_t draws).
        eps_fn: ``eps_fn(x_t, t)``.
        sched: the schedule (T ≥ 2).
        x0: ``[B, ...]`` data.
        num_t: ``None`` (exact sum) or the number K ≥ 1 of random times.
        chunk: times per ``eps_fn`` call of the exact sum, ≥ 1.
        sigma: reverse-step σ_t, ``"posterior"`` (β̃_t) or ``"beta"``.
        decoder: ``"discrete"`` (Ho Eq. 13) or ``"gaussian"``.
        data_range: (lo, hi) of the data grid.
        num_bins: number of levels ≥ 2 (256 for 8-bit data, 17 for digits).

    Returns:
        ``[B]`` negative ELBO in bits/dim.
    """
    _check_sched(sched)
    chex.assert_rank(x0, {2, 3, 4, 5})
    _check_vlb_args(sched, sigma, decoder, data_range, num_bins)
    for name, value, allow_none in (("num_t", num_t, True), ("chunk", chunk, False)):
        if allow_none and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    B, T = x0.shape[0], sched.num_steps
    num_dims = math.prod(x0.shape[1:])
    kw = {
        "sigma": sigma,
        "decoder": decoder,
        "data_range": data_range,
        "num_bins": num_bins,
    }

    def terms(k, ts):
        """L_{t−1} at times ``ts`` [K, B] (example b at ts[:, b]): [K, B]."""
        K = ts.shape[0]
        xs = jnp.broadcast_to(x0[None], (K, *x0.shape)).reshape(K * B, *x0.shape[1:])
        return vlb_term(k, eps_fn, sched, xs, ts.reshape(-1), **kw).reshape(K, B)

    t_key, x_key = jr.split(key)
    if num_t is not None:
        # Independent times for every example, so examples' errors are independent.
        ts = jr.randint(t_key, (num_t, B), 1, T + 1)
        total = T * jnp.mean(terms(x_key, ts), axis=0)
    else:
        c = min(chunk, T)
        num_chunks = -(-T // c)
        ts = jnp.arange(1, num_chunks * c + 1).reshape(num_chunks, c)

        def body(acc, inp):
            i, ts_i = inp
            t_i = jnp.broadcast_to(jnp.minimum(ts_i, T)[:, None], (c, B))
            vals = terms(jr.fold_in(x_key, i), t_i)
            return acc + jnp.sum(jnp.where((ts_i <= T)[:, None], vals, 0.0), 0), None

        total, _ = jax.lax.scan(
            body, jnp.zeros((B,), x0.dtype), (jnp.arange(num_chunks), ts)
        )
    return (prior_kl(sched, x0) + total) / (num_dims * math.log(2.0))


def _discretized_gaussian_logp(x, mean, std, lo, hi, num_bins):
    """log ∫_bin N(u; mean, std²) du on the grid of ``num_bins`` levels (Ho Eq. 13)."""
    half = 0.5 * (hi - lo) / (num_bins - 1)
    a = (x - half - mean) / std
    b = (x + half - mean) / std
    at_lo, at_hi = x < lo + half, x > hi - half
    # log(Φ(b) − Φ(a)) on the side of the mean where both tails are small.
    flip = a > 0
    a_, b_ = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    log_b, log_a = log_ndtr(b_), log_ndtr(a_)
    mid = log_b + jnp.log1p(-jnp.minimum(jnp.exp(log_a - log_b), 1.0 - 1e-7))
    return jnp.where(at_lo, log_ndtr(b), jnp.where(at_hi, log_ndtr(-a), mid))


def _check_vlb_args(sched, sigma, decoder, data_range, num_bins):
    """Validate the bound's options; returns (lo, hi)."""
    if sched.num_steps < 2:
        raise ValueError(f"the bound needs T >= 2 steps, got T={sched.num_steps}")
    if sigma not in SIGMA_KINDS:
        raise ValueError(f"sigma must be one of {SIGMA_KINDS}, got sigma={sigma!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got decoder={decoder!r}")
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got num_bins={num_bins!r}")
    return _check_range(data_range)


def _check_range(data_range) -> tuple[float, float]:
    """(lo, hi) with lo < hi, both finite."""
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"data_range must be a pair (lo, hi) of numbers, got {data_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must satisfy lo < hi, got {data_range!r}")
    return lo, hi
