r"""Score SDEs: VE, VP, sub-VP and any linear SDE; DSM loss; reverse-time samplers.

A linear SDE dx = f(t) x dt + g(t) dw on t ∈ [0, T] has the Gaussian kernel
p_{0t}(x_t | x_0) = N(ᾱ(t) x_0, β̄(t)² I) (Su's notation: ᾱ is the signal scale,
β̄ the noise standard deviation, see ``schedules``). Su (五) reads the SDE off
any chosen kernel:

    f = d ln ᾱ/dt,        g² = 2 ᾱ β̄ · d(β̄/ᾱ)/dt = d(β̄²)/dt − 2 f β̄²,

which gives VE (ᾱ ≡ 1), VP (ᾱ² + β̄² = 1) and sub-VP (β̄ = 1 − ᾱ²). Sampling
runs the reverse-time family (Su (六); Song et al. 2021, Eq. 6 for σ_t = g)

    dx = [f x − ½ (g² + σ_t²) ∇log p_t(x)] dt + σ_t dw̄,    0 ≤ σ_t ≤ g,

whose members all share the marginals p_t: σ_t = g is the reverse SDE and
σ_t = 0 the probability-flow ODE (``jaxlab.diffusion.ode``).

SDE objects are frozen dataclasses registered as pytrees with only static
fields, so they can be closed over or passed through ``jax.jit`` freely; their
methods are elementwise in ``t`` (a scalar or one time per example ``[B]``).
Score models are called as ``score_fn(x [B, ...], t [B])`` with float t.

References:
    Y. Song, J. Sohl-Dickstein, D. P. Kingma, A. Kumar, S. Ermon, B. Poole,
    "Score-Based Generative Modeling through Stochastic Differential Equations",
    ICLR 2021, arXiv 2011.13456: Eqs. 5–7, 9, 11–13; App. B (SDEs), E (reverse
    diffusion), F (ancestral sampling), G (PC samplers, denoising); Algorithms
    2–5.
    J. Su, 生成扩散模型漫谈 (五) "SDE篇", https://kexue.fm/archives/9209 and
    (六) "ODE篇", https://kexue.fm/archives/9228 (reference/sde.md §2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import chex
import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from jaxlab.diffusion import gaussian

PREDICTORS = (
    "euler_maruyama", "reverse_diffusion", "ancestral", "probability_flow", "none"
)
CORRECTORS = ("langevin", "none")
SDE_SOLVERS = ("euler", "heun", "sra1", "shark")
# Score evaluations per step of each reverse-SDE solver (all have 2 stages but
# Euler–Maruyama; checked against a counting callback in the tests).
_SDE_STAGES = {"euler": 1, "heun": 2, "sra1": 2, "shark": 2}

ScoreFn = Callable[[Array, Array], Array]


# --------------------------------------------------------------------------- #
# SDEs
# --------------------------------------------------------------------------- #


class _LinearSDEBase:
    """Methods shared by every linear SDE.

    Subclasses define, elementwise in t: ``log_alpha_bar(t)`` (log ᾱ),
    ``beta_bar(t)`` (β̄), ``drift_coef(t)`` (f), ``diffusion(t)`` (g) and the
    property ``prior_std``.
    """

    T: float

    def scales(self, t: ArrayLike) -> tuple[Array, Array]:
        r"""(ᾱ(t), β̄(t)): the kernel is p_{0t}(x_t | x_0) = N(ᾱ x_0, β̄² I).

        Args:
            t: times, any shape.

        Returns:
            ``(alpha_bar, beta_bar)``, each shaped like ``t``.
        """
        t = _as_time(t)
        return jnp.exp(self.log_alpha_bar(t)), self.beta_bar(t)

    def drift(self, x: Float[Array, " B *D"], t: ArrayLike) -> Float[Array, " B *D"]:
        r"""Forward drift f(t)·x (Song et al. Eq. 5).

        Args:
            x: ``[B, ...]`` states.
            t: a scalar time or ``[B]`` times.

        Returns:
            The drift, shaped like ``x``.
        """
        t = _batch_time(t, x)
        return _bcast(self.drift_coef(t), x) * x

    def marginal(
        self, x0: Float[Array, " B *D"], t: ArrayLike
    ) -> tuple[Float[Array, " B *D"], Array]:
        r"""Mean ᾱ(t)·x_0 and standard deviation β̄(t) of p_{0t}(x_t | x_0).

        Song et al. App. B; Su (五) (kernel first).

        Args:
            x0: ``[B, ...]`` data.
            t: a scalar time or ``[B]`` times.

        Returns:
            ``(mean, std)``: mean shaped like ``x0``; std shaped like ``t``
            broadcast to ``[B]``.
        """
        t = _batch_time(t, x0)
        ab, bb = self.scales(t)
        return _bcast(ab, x0) * x0, bb

    def prior_sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=None
    ) -> Array:
        """Draw x_T ~ N(0, prior_std² I) of ``shape`` (``dtype`` default float)."""
        shape = _check_shape(shape)
        dtype = jnp.result_type(float) if dtype is None else dtype
        return self.prior_std * jr.normal(key, shape, dtype)

    def prior_logp(self, z: Float[Array, " B *D"]) -> Float[Array, " B"]:
        r"""log N(z; 0, σ_T² I) per example, summed over the non-batch axes.

        Args:
            z: ``[B, ...]`` points.

        Returns:
            ``[B]`` log-densities.
        """
        chex.assert_rank(z, {2, 3, 4, 5})
        var = self.prior_std**2
        num_dims = math.prod(z.shape[1:])
        quad = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
        return -0.5 * quad / var - 0.5 * num_dims * math.log(2 * math.pi * var)

    def transition(self, t_from: ArrayLike, t_to: ArrayLike) -> tuple[Array, Array]:
        r"""Exact one-step forward kernel x_{t_to} = α x_{t_from} + β z (t_from < t_to).

        α = ᾱ(t_to)/ᾱ(t_from) and β² = β̄(t_to)² − α² β̄(t_from)² (Su's per-step
        α_t, β_t rebuilt from ᾱ, β̄ at the two times; reference/ddim.md §2.6).

        Args:
            t_from: earlier time(s).
            t_to: later time(s), broadcastable with ``t_from``.

        Returns:
            ``(alpha, beta)`` broadcast over the inputs.
        """
        t_from, t_to = _as_time(t_from), _as_time(t_to)
        alpha = jnp.exp(self.log_alpha_bar(t_to) - self.log_alpha_bar(t_from))
        b2 = self.beta_bar(t_to) ** 2 - (alpha * self.beta_bar(t_from)) ** 2
        return alpha, jnp.sqrt(jnp.maximum(b2, 0.0))

    def discretize(
        self, x: Float[Array, " B *D"], t: ArrayLike, dt: ArrayLike
    ) -> tuple[Float[Array, " B *D"], Array]:
        r"""Discrete forward step x_t = x_{t−Δt} + f_i + G_i z (Song et al. App. D).

        Uses the exact kernel of the step (``transition``): f_i = (α − 1)·x,
        G_i = β. For VE this is the paper's G_i = √(σ_i² − σ_{i−1}²); for VP the
        paper's β_i = β(t)Δt is its first-order approximation, β² = 1 −
        ᾱ_t²/ᾱ_{t−Δt}², so the chain has exactly the closed-form kernel at any
        step count.

        Args:
            x: ``[B, ...]`` the point at which f_i is evaluated.
            t: the step's end time, a scalar or ``[B]``.
            dt: the step length Δt > 0, a scalar or ``[B]``.

        Returns:
            ``(f, G)``: f shaped like ``x``, G shaped like ``t`` broadcast to ``[B]``.
        """
        if isinstance(dt, (int, float)) and not dt > 0:
            raise ValueError(f"dt must be > 0, got dt={dt!r}")
        t = _batch_time(t, x)
        alpha, beta = self.transition(t - _as_time(dt), t)
        return (_bcast(alpha, x) - 1.0) * x, beta


def _static_dataclass(cls):
    """Frozen dataclass registered as a pytree whose fields are all static."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=[], meta_fields=names)


@_static_dataclass
class VESDE(_LinearSDEBase):
    r"""Variance-exploding SDE dx = σ(t)√(2 ln(σ_max/σ_min)) dw (Song et al. Eq. 9).

    σ(t) = σ_min (σ_max/σ_min)^t, ᾱ ≡ 1 and the exact kernel variance is
    β̄² = σ(t)² − σ_min² (the process starts at x_0; the paper's code uses
    σ(t)², i.e. data pre-perturbed by σ_min). Prior N(0, σ_max² I). Defaults
    are the paper's CIFAR-10 constants (σ_min = 0.01, σ_max = 50, T = 1).

    Args:
        sigma_min: σ_min > 0.
        sigma_max: σ_max > σ_min.
        T: end time > 0.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"VESDE: need 0 < sigma_min < sigma_max, got sigma_min="
                f"{self.sigma_min!r}, sigma_max={self.sigma_max!r}"
            )
        _check_T(self.T)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min) / self.T

    def sigma(self, t: ArrayLike) -> Array:
        """σ(t) = σ_min (σ_max/σ_min)^{t/T}."""
        return self.sigma_min * jnp.exp(self._log_ratio * _as_time(t))

    def log_alpha_bar(self, t):
        return jnp.zeros_like(_as_time(t))

    def beta_bar(self, t):
        return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * self._log_ratio * _as_time(t)))

    def drift_coef(self, t):
        return jnp.zeros_like(_as_time(t))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    @property
    def prior_std(self) -> float:
        return float(self.sigma_max)


class _LinearBeta:
    """β(t) linear in t on [0, T], shared by VP and sub-VP (Song et al. Eqs. 11-12).

    Fields-free: ``VPSDE`` and ``SubVPSDE`` declare ``beta_min``, ``beta_max``
    and ``T``; both have drift −½β(t) x and a N(0, I) prior.
    """

    def beta(self, t: ArrayLike) -> Array:
        """β(t) = β_min + (t/T)(β_max − β_min)."""
        return self.beta_min + (_as_time(t) / self.T) * (self.beta_max - self.beta_min)

    def int_beta(self, t: ArrayLike) -> Array:
        """B(t) = ∫_0^t β = β_min t + (β_max − β_min) t²/(2T)."""
        t = _as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def log_alpha_bar(self, t):
        return -0.5 * self.int_beta(t)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


@_static_dataclass
class VPSDE(_LinearBeta, _LinearSDEBase):
    r"""Variance-preserving SDE dx = −½β(t) x dt + √β(t) dw (Song et al. Eq. 11).

    β(t) = β_min + t (β_max − β_min) on [0, 1], B(t) = ∫_0^t β; the kernel is
    N(e^{−B/2} x_0, (1 − e^{−B}) I) and the prior N(0, I). Defaults are the
    paper's (β_min = 0.1, β_max = 20), the continuous limit of DDPM's
    linear schedule.

    Args:
        beta_min: β(0) > 0.
        beta_max: β(T) ≥ β_min.
        T: end time > 0.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def __post_init__(self):
        _check_betas("VPSDE", self.beta_min, self.beta_max)
        _check_T(self.T)

    def beta_bar(self, t):
        return jnp.sqrt(-jnp.expm1(-self.int_beta(t)))

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))



@_static_dataclass
class SubVPSDE(_LinearBeta, _LinearSDEBase):
    r"""Sub-VP SDE dx = −½β x dt + √(β(t)(1 − e^{−2B(t)})) dw (Song et al. Eq. 12).

    Same drift and β(t) as ``VPSDE``; the kernel is N(e^{−B/2} x_0,
    (1 − e^{−B})² I), whose variance never exceeds VP's. Prior N(0, I).

    Args:
        beta_min: β(0) > 0.
        beta_max: β(T) ≥ β_min.
        T: end time > 0.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def __post_init__(self):
        _check_betas("SubVPSDE", self.beta_min, self.beta_max)
        _check_T(self.T)

    def beta_bar(self, t):
        return -jnp.expm1(-self.int_beta(t))

    def diffusion(self, t):
        return jnp.sqrt(-self.beta(t) * jnp.expm1(-2.0 * self.int_beta(t)))



@_static_dataclass
class LinearSDE(_LinearSDEBase):
    r"""The linear SDE whose kernel is N(ᾱ(t) x_0, β̄(t)² I), by Su's map (Su (五)).

    f = d ln ᾱ/dt and g² = 2ᾱβ̄·d(β̄/ᾱ)/dt = d(β̄²)/dt − 2fβ̄², both by forward
    autodiff of the given functions. ``alpha_bar_fn`` and ``beta_bar_fn`` must be
    elementwise, differentiable, with ᾱ(0) = 1, β̄(0) = 0 and β̄/ᾱ increasing
    (so that g² ≥ 0). The prior is N(0, σ_T² I) with σ_T² = ᾱ(T)² + β̄(T)², the
    marginal variance at T for unit-variance data (1 for VP, ≈ σ_max² for VE),
    unless ``prior_scale`` is given.

    Args:
        alpha_bar_fn: t ↦ ᾱ(t) > 0.
        beta_bar_fn: t ↦ β̄(t) ≥ 0.
        T: end time > 0.
        prior_scale: optional prior standard deviation > 0.
    """

    alpha_bar_fn: Callable[[Array], Array]
    beta_bar_fn: Callable[[Array], Array]
    T: float = 1.0
    prior_scale: float | None = None

    def __post_init__(self):
        if not (callable(self.alpha_bar_fn) and callable(self.beta_bar_fn)):
            raise ValueError(
                f"LinearSDE: alpha_bar_fn and beta_bar_fn must be callables, got "
                f"{self.alpha_bar_fn!r} and {self.beta_bar_fn!r}"
            )
        _check_T(self.T)
        if self.prior_scale is not None and not self.prior_scale > 0:
            raise ValueError(
                f"LinearSDE: prior_scale must be > 0 or None, got "
                f"{self.prior_scale!r}"
            )
        ab_T = float(self.alpha_bar_fn(jnp.asarray(self.T)))
        bb_T = float(self.beta_bar_fn(jnp.asarray(self.T)))
        if not (ab_T > 0 and bb_T > 0 and math.isfinite(ab_T + bb_T)):
            raise ValueError(
                f"LinearSDE: need alpha_bar(T) > 0 and beta_bar(T) > 0 (finite), got "
                f"alpha_bar(T)={ab_T}, beta_bar(T)={bb_T}"
            )

    def log_alpha_bar(self, t):
        return jnp.log(self.alpha_bar_fn(_as_time(t)))

    def beta_bar(self, t):
        return self.beta_bar_fn(_as_time(t))

    def drift_coef(self, t):
        t = _as_time(t)
        return _elementwise_derivative(self.log_alpha_bar, t)

    def diffusion(self, t):
        t = _as_time(t)
        bb, dbb = jax.jvp(self.beta_bar, (t,), (jnp.ones_like(t),))
        g2 = 2.0 * bb * dbb - 2.0 * self.drift_coef(t) * bb**2
        return jnp.sqrt(jnp.maximum(g2, 0.0))

    @property
    def prior_std(self) -> float:
        if self.prior_scale is not None:
            return float(self.prior_scale)
        ab_T = float(self.alpha_bar_fn(jnp.asarray(self.T)))
        bb_T = float(self.beta_bar_fn(jnp.asarray(self.T)))
        return math.sqrt(ab_T**2 + bb_T**2)


SDE = VESDE | VPSDE | SubVPSDE | LinearSDE


# --------------------------------------------------------------------------- #
# Score parameterizations and the DSM loss
# --------------------------------------------------------------------------- #


def eps_score_fn(eps_fn: ScoreFn, sde: SDE) -> ScoreFn:
    r"""Wrap an ε-prediction model as a score model: s(x, t) = −ε_θ(x, t)/β̄(t).

    The kernel score is ∇log p_{0t}(x_t | x_0) = −ε/β̄_t (reference/sde.md §2.1),
    so with this wrapper the unweighted ``dsm_loss`` is exactly the DDPM
    ε-MSE. Song et al.'s NCSN++ output scaling by 1/σ(t) is the VE case.

    Args:
        eps_fn: ``eps_fn(x [B, ...], t [B]) -> ε̂`` shaped like ``x``.
        sde: the SDE (supplies β̄).

    Returns:
        ``score_fn(x, t)``.
    """

    def score_fn(x, t):
        t = _batch_time(t, x)
        return -eps_fn(x, t) / _bcast(sde.beta_bar(t), x).astype(x.dtype)

    return score_fn


def oracle_score_fn(sde: SDE, mu: ArrayLike, s: ArrayLike) -> ScoreFn:
    r"""Exact score of p_t for data N(μ, diag(s²)): −(x − ᾱμ)/(ᾱ²s² + β̄²).

    The Gaussian oracle (``jaxlab.diffusion.gaussian``) evaluated at (ᾱ(t), β̄(t));
    used by the tests and as a sanity model.

    Args:
        sde: the SDE.
        mu: data mean, broadcastable to one example ``x[0]``.
        s: data standard deviation, broadcastable to one example.

    Returns:
        ``score_fn(x, t)``.
    """

    def score_fn(x, t):
        t = _batch_time(t, x)
        ab, bb = sde.scales(t)
        m = jnp.asarray(mu, x.dtype)
        sd = jnp.asarray(s, x.dtype)
        m = m.reshape((1,) * (x.ndim - m.ndim) + m.shape)
        sd = sd.reshape((1,) * (x.ndim - sd.ndim) + sd.shape)
        return gaussian.score(
            x, _bcast(ab, x).astype(x.dtype), _bcast(bb, x).astype(x.dtype), m, sd
        )

    return score_fn


def dsm_loss(
    key: PRNGKeyArray, score_fn: ScoreFn, sde: SDE, x0: Float[Array, " B *D"], *,
    likelihood_weighting: bool = False, eps: float = 1e-5,
) -> Float[Array, " B"]:
    r"""Per-example denoising score-matching loss (Song et al. Eq. 7).

    With t ~ U[ε, T], z ~ N(0, I), x_t = ᾱ_t x_0 + β̄_t z and the kernel score
    −z/β̄_t:

    - default, λ(t) = β̄_t² (∝ 1/E‖∇log p_{0t}‖²): mean_d (β̄_t s_θ + z)², which
      is the DDPM ε-MSE when s_θ = −ε_θ/β̄ (``eps_score_fn``);
    - ``likelihood_weighting``, λ(t) = g(t)²: mean_d g_t² (s_θ + z/β̄_t)², the
      weighting under which the loss bounds the negative log-likelihood (Song,
      Durkan, Murray, Ermon 2021, Thm. 1).

    Args:
        key: PRNG key (split into the time and noise keys).
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        x0: ``[B, ...]`` data.
        likelihood_weighting: use λ = g² instead of λ = β̄².
        eps: smallest training time, 0 < eps < T (paper: 1e-5).

    Returns:
        ``[B]`` losses averaged over the data dimensions; the caller reduces
        over the batch.
    """
    chex.assert_rank(x0, {2, 3, 4, 5})
    _check_eps(eps, sde)
    t_key, z_key = jr.split(key)
    t = jr.uniform(t_key, x0.shape[:1], x0.dtype, eps, sde.T)
    z = jr.normal(z_key, x0.shape, x0.dtype)
    mean, std = sde.marginal(x0, t)
    std = _bcast(std, x0).astype(x0.dtype)
    score = score_fn(mean + std * z, t)
    chex.assert_equal_shape([score, x0])
    if likelihood_weighting:
        g2 = _bcast(sde.diffusion(t) ** 2, x0).astype(x0.dtype)
        per_dim = g2 * (score + z / std) ** 2
    else:
        per_dim = (std * score + z) ** 2
    return jnp.mean(jnp.reshape(per_dim, (x0.shape[0], -1)), axis=1)


# --------------------------------------------------------------------------- #
# Reverse-time SDE with diffrax
# --------------------------------------------------------------------------- #


def reverse_drift(
    score_fn: ScoreFn, sde: SDE, x: Float[Array, " B *D"], t: ArrayLike, *,
    noise_scale: float = 1.0,
) -> Float[Array, " B *D"]:
    r"""Drift of Su's reverse-time family: f x − ½(g² + σ_t²) s_θ(x, t), σ_t = λg.

    λ = 1 is the reverse SDE (Song et al. Eq. 6), λ = 0 the probability-flow
    ODE (Eq. 13); every λ ∈ [0, 1] has the marginals p_t (Su (六)).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        x: ``[B, ...]`` states.
        t: a scalar time or ``[B]`` times.
        noise_scale: λ ∈ [0, 1].

    Returns:
        The drift, shaped like ``x``.
    """
    t = _batch_time(t, x)
    g2 = _bcast(sde.diffusion(t) ** 2, x).astype(x.dtype)
    coef = 0.5 * (1.0 + noise_scale**2)
    return sde.drift(x, t).astype(x.dtype) - coef * g2 * score_fn(x, t)


def sample_reverse_sde(
    key: PRNGKeyArray, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], *,
    solver: str = "euler", num_steps: int = 1000, eps: float = 1e-3,
    noise_scale: float = 1.0, denoise: bool = True,
    x_T: Float[Array, " B *D"] | None = None, dtype=None,
) -> Float[Array, " B *D"]:
    r"""Sample by solving the reverse-time SDE family with diffrax, T → ε.

    dx = [f x − ½(g² + σ_t²) s_θ] dt + σ_t dw̄ with σ_t = λ g(t) (Su (六)),
    solved from T down to ε on ``num_steps`` equal steps with Brownian
    increments from a ``VirtualBrownianTree`` keyed by ``key`` (in the reversed
    clock u = −t, see the comment in the code).
    The noise is additive (σ_t does not depend on x), so Itô and Stratonovich
    solutions coincide and every solver below converges to the same law:

    - ``"euler"``: Euler–Maruyama (the paper's default predictor for VP);
    - ``"heun"``: stochastic Heun (strong order 1 for additive noise);
    - ``"sra1"``, ``"shark"``: Rößler's SRA1 and Foster's ShARK, strong order
      1.5 for additive noise (use space-time Lévy areas).

    With ``denoise`` a final Tweedie step returns E[x_0 | x_ε] =
    (x_ε + β̄_ε² s_θ(x_ε, ε))/ᾱ_ε (Song et al. App. G, "denoising").

    Args:
        key: PRNG key (x_T and the Brownian path).
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        shape: sample shape ``(B, ...)``.
        solver: one of ``SDE_SOLVERS``.
        num_steps: number of equal steps ≥ 1.
        eps: final time, 0 < eps < T (paper: 1e-3 for sampling).
        noise_scale: λ ∈ (0, 1]; λ = 1 is the reverse SDE.
        denoise: apply the final Tweedie step.
        x_T: optional ``[B, ...]`` starting point (else drawn from the prior).
        dtype: sample dtype (default: ``x_T``'s, else the default float).

    Returns:
        Samples of shape ``shape``. The number of score evaluations is
        ``reverse_sde_nfe(num_steps, solver=solver, denoise=denoise)``.
    """
    if solver not in SDE_SOLVERS:
        raise ValueError(f"solver must be one of {SDE_SOLVERS}, got solver={solver!r}")
    _check_steps("num_steps", num_steps)
    _check_eps(eps, sde)
    if not 0 < noise_scale <= 1:
        raise ValueError(
            f"noise_scale must be in (0, 1] (0 is the probability-flow ODE: use "
            f"jaxlab.diffusion.ode), got noise_scale={noise_scale!r}"
        )
    shape, dtype = _shape_dtype(shape, x_T, dtype)
    init_key, bm_key = jr.split(key)
    x = sde.prior_sample(init_key, shape, dtype) if x_T is None else x_T
    _check_score_fn(score_fn, shape, dtype)
    lam = float(noise_scale)

    # Solved forward in u = −t ∈ [−T, −ε] (torchsde's recipe): diffrax 0.7's
    # stochastic Runge–Kutta solvers (SRA1, ShARK) return wrong paths for a
    # backwards-in-time solve (diffrax issue #598, fixed upstream in PR #746),
    # e.g. the forward-time variance for an OU process. dx/du = −b(x, −u) and the
    # reversed-time Brownian motion is a Brownian motion in u.
    def drift(u, y, args):
        return -reverse_drift(score_fn, sde, y, -u, noise_scale=lam).astype(dtype)

    def diffusion(u, y, args):
        sigma = lam * sde.diffusion(-u)
        return lx.DiagonalLinearOperator(jnp.full(shape, sigma, dtype))

    levy = dfx.BrownianIncrement
    if solver in ("sra1", "shark"):
        levy = dfx.SpaceTimeLevyArea
    dt = (sde.T - eps) / num_steps
    bm = dfx.VirtualBrownianTree(
        -sde.T, -eps, tol=dt / 2, shape=jax.ShapeDtypeStruct(shape, dtype),
        key=bm_key, levy_area=levy,
    )
    terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm))
    us = jnp.linspace(-sde.T, -eps, num_steps + 1)
    sol = dfx.diffeqsolve(
        terms, _sde_solver(solver), -sde.T, -eps, None, x,
        stepsize_controller=dfx.StepTo(ts=us), max_steps=num_steps,
        saveat=dfx.SaveAt(t1=True),
    )
    x = sol.ys[0]
    return tweedie_denoise(score_fn, sde, x, eps) if denoise else x


def reverse_sde_nfe(
    num_steps: int, *, solver: str = "euler", denoise: bool = True
) -> int:
    """Score evaluations of ``sample_reverse_sde`` (stages × steps + Tweedie)."""
    if solver not in SDE_SOLVERS:
        raise ValueError(f"solver must be one of {SDE_SOLVERS}, got solver={solver!r}")
    _check_steps("num_steps", num_steps)
    return _SDE_STAGES[solver] * num_steps + int(denoise)


def tweedie_denoise(
    score_fn: ScoreFn, sde: SDE, x: Float[Array, " B *D"], t: ArrayLike
) -> Float[Array, " B *D"]:
    r"""Tweedie's formula E[x_0 | x_t] = (x_t + β̄_t² ∇log p_t(x_t))/ᾱ_t.

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        x: ``[B, ...]`` points at time t.
        t: a scalar time or ``[B]`` times.

    Returns:
        The denoised estimate, shaped like ``x``.
    """
    t = _batch_time(t, x)
    ab, bb = sde.scales(t)
    ab, bb = _bcast(ab, x).astype(x.dtype), _bcast(bb, x).astype(x.dtype)
    return (x + bb**2 * score_fn(x, t)) / ab


# --------------------------------------------------------------------------- #
# Predictor–corrector sampling
# --------------------------------------------------------------------------- #


def pc_sample(
    key: PRNGKeyArray, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], *,
    predictor: str = "reverse_diffusion", corrector: str = "langevin",
    snr: float = 0.16, num_steps: int = 1000, num_corrector_steps: int = 1,
    eps: float = 1e-3, denoise: bool = True,
    x_T: Float[Array, " B *D"] | None = None, dtype=None,
) -> Float[Array, " B *D"]:
    r"""Predictor–corrector sampling (Song et al. §4.2, Algorithms 2–3), a ``lax.scan``.

    On the grid t_0 = T > t_1 > … > t_N = ε (equal steps, Δt = t_{i+1} − t_i < 0)
    each iteration runs one predictor step t_i → t_{i+1}, then M corrector steps
    at the level t_{i+1}; with α = ᾱ_{t_i}/ᾱ_{t_{i+1}} and
    β² = β̄_{t_i}² − α²β̄_{t_{i+1}}² (the exact forward step t_{i+1} → t_i):

    - ``"euler_maruyama"``: x ← x + (f x − g² s)Δt + g √|Δt| z;
    - ``"reverse_diffusion"``: x ← (2 − α) x + β² s + β z (App. E; VP:
      (2 − √(1 − β_i)) x + β_i s + √β_i z, VE: x + (σ_i² − σ_{i−1}²) s + …);
    - ``"ancestral"``: x ← (x + β² s)/α + (β̄_{t_{i+1}} β/β̄_{t_i}) z, the DDPM
      posterior step with x̂_0 from Tweedie (App. F; as the paper for VE; for VP
      the paper adds noise √β_i, here the posterior std is used for every SDE);
    - ``"probability_flow"``: x ← (2 − α) x + ½β² s, the reverse-diffusion step
      of the probability-flow ODE (Table 1's third row; no noise);
    - ``"none"``: no move (corrector-only sampling, "C2000").

    Langevin corrector (Algorithms 4–5): z ~ N(0, I), g = s_θ(x, t_{i+1}),
    ε = 2 a (r ‖z‖/‖g‖)², x ← x + ε g + √(2ε) z, with r = ``snr`` and
    a = α² = ᾱ_{t_i}²/ᾱ_{t_{i+1}}² (= 1 − β_i for VP, 1 for VE).
    As in score_sde the norms are batch means of per-example norms, so the step
    size is batch-coupled (the mean is global under a sharded batch).

    With ``denoise`` the last step is Tweedie's E[x_0 | x_ε] (App. G).

    Args:
        key: PRNG key (x_T and one key per step).
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        shape: sample shape ``(B, ...)``.
        predictor: one of ``PREDICTORS``.
        corrector: one of ``CORRECTORS``.
        snr: Langevin signal-to-noise ratio r > 0 (paper: 0.16 VE, 0.01–0.27).
        num_steps: N ≥ 1 noise levels.
        num_corrector_steps: M ≥ 1 corrector steps per level.
        eps: final time, 0 < eps < T.
        denoise: apply the final Tweedie step.
        x_T: optional ``[B, ...]`` starting point (else drawn from the prior).
        dtype: sample dtype (default: ``x_T``'s, else the default float).

    Returns:
        Samples of shape ``shape``. The number of score evaluations is
        ``pc_nfe(...)`` with the same settings.
    """
    _check_pc_args(predictor, corrector, snr, num_steps, num_corrector_steps)
    _check_eps(eps, sde)
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none'")
    shape, dtype = _shape_dtype(shape, x_T, dtype)
    init_key, loop_key = jr.split(key)
    x = sde.prior_sample(init_key, shape, dtype) if x_T is None else x_T
    _check_score_fn(score_fn, shape, dtype)
    ts = jnp.linspace(sde.T, eps, num_steps + 1).astype(dtype)
    batch = shape[:1]

    def body(x, inp):
        t, s, k = inp
        kp, kc = jr.split(k)
        tb, sb = jnp.full(batch, t, dtype), jnp.full(batch, s, dtype)
        alpha, beta = sde.transition(s, t)
        if predictor != "none":
            x = _predict(predictor, kp, score_fn, sde, x, tb, sb, alpha, beta)
        if corrector != "none":
            a = alpha**2
            x = _langevin(kc, score_fn, x, sb, a, snr, num_corrector_steps)
        return x.astype(dtype), None

    keys = jr.split(loop_key, num_steps)
    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], keys))
    return tweedie_denoise(score_fn, sde, x, eps) if denoise else x


def pc_nfe(
    num_steps: int, *, predictor: str = "reverse_diffusion",
    corrector: str = "langevin", num_corrector_steps: int = 1, denoise: bool = True,
) -> int:
    """Score evaluations of ``pc_sample``: N·(P + M·C) + Tweedie."""
    _check_pc_args(predictor, corrector, 1.0, num_steps, num_corrector_steps)
    per_level = int(predictor != "none")
    per_level += num_corrector_steps * int(corrector != "none")
    return num_steps * per_level + int(denoise)


def langevin_step(
    key: PRNGKeyArray, score_fn: ScoreFn, x: Float[Array, " B *D"], t: ArrayLike, *,
    snr: float, alpha: ArrayLike = 1.0,
) -> Float[Array, " B *D"]:
    r"""One Langevin corrector step at time t (Song et al. Algorithms 4–5).

    ε = 2α (r ‖z‖/‖s‖)² with batch-mean norms, x ← x + ε s_θ(x, t) + √(2ε) z.

    Args:
        key: PRNG key for z.
        score_fn: ``score_fn(x, t)``.
        x: ``[B, ...]`` states.
        t: a scalar time or ``[B]`` times.
        snr: r > 0.
        alpha: the step-size factor α (1 for VE; 1 − β_i for VP).

    Returns:
        The updated states, shaped like ``x``.
    """
    if isinstance(snr, (int, float)) and not snr > 0:
        raise ValueError(f"snr must be > 0, got snr={snr!r}")
    t = _batch_time(t, x)
    return _langevin(key, score_fn, x, t, jnp.asarray(alpha, x.dtype), snr, 1)


# --------------------------------------------------------------------------- #
# Private helpers
# --------------------------------------------------------------------------- #


def _predict(name, key, score_fn, sde, x, t, s, alpha, beta):
    """One predictor step from time t to s < t (t, s are ``[B]``)."""
    score = score_fn(x, t)
    z = jr.normal(key, x.shape, x.dtype)
    alpha = alpha.astype(x.dtype)
    beta = beta.astype(x.dtype)
    if name == "euler_maruyama":
        dt = (s - t)[0]
        g = sde.diffusion(t[0]).astype(x.dtype)
        drift = sde.drift(x, t).astype(x.dtype) - g**2 * score
        return x + drift * dt + g * jnp.sqrt(-dt) * z
    if name == "reverse_diffusion":
        return (2.0 - alpha) * x + beta**2 * score + beta * z
    if name == "probability_flow":
        return (2.0 - alpha) * x + 0.5 * beta**2 * score
    # ancestral: the DDPM posterior step with x̂_0 from Tweedie's formula.
    bb_t = sde.beta_bar(t[0]).astype(x.dtype)
    bb_s = sde.beta_bar(s[0]).astype(x.dtype)
    std = bb_s * beta / bb_t
    return (x + beta**2 * score) / alpha + std * z


def _langevin(key, score_fn, x, t, a, snr, num_steps):
    """``num_steps`` Langevin steps at the fixed time(s) t with factor a."""
    def step(x, k):
        grad = score_fn(x, t)
        z = jr.normal(k, x.shape, x.dtype)
        g_norm = jnp.mean(jnp.linalg.norm(jnp.reshape(grad, (x.shape[0], -1)), axis=1))
        z_norm = jnp.mean(jnp.linalg.norm(jnp.reshape(z, (x.shape[0], -1)), axis=1))
        step_size = 2.0 * a * (snr * z_norm / g_norm) ** 2
        out = x + step_size * grad + jnp.sqrt(2.0 * step_size) * z
        return out.astype(x.dtype), None

    x, _ = jax.lax.scan(step, x, jr.split(key, num_steps))
    return x


def _sde_solver(name):
    """The diffrax solver for a reverse-SDE solver name."""
    return {
        "euler": dfx.Euler, "heun": dfx.Heun, "sra1": dfx.SRA1, "shark": dfx.ShARK,
    }[name]()


def _elementwise_derivative(fn, t):
    """d fn/dt for an elementwise ``fn`` at array ``t`` (one forward-mode pass)."""
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]


def _as_time(t) -> Array:
    """``t`` as a floating array (Python numbers become the default float)."""
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(float)


def _batch_time(t, x) -> Array:
    """Times as ``[B]`` in x's dtype (a scalar is broadcast)."""
    t = jnp.asarray(t, x.dtype)
    chex.assert_rank(t, {0, 1})
    return jnp.broadcast_to(t, x.shape[:1])


def _bcast(v, x) -> Array:
    """Reshape per-example ``v`` (``[B]`` or scalar) to broadcast against ``x``."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _check_T(T) -> None:
    """T must be a positive finite number."""
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"T must be a positive finite number, got T={T!r}")


def _check_betas(name, beta_min, beta_max) -> None:
    """0 < β_min ≤ β_max."""
    if not 0 < beta_min <= beta_max:
        raise ValueError(
            f"{name}: need 0 < beta_min <= beta_max, got beta_min={beta_min!r}, "
            f"beta_max={beta_max!r}"
        )


def _check_eps(eps, sde) -> None:
    """0 < eps < T."""
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must be a number in (0, T={sde.T}), got eps={eps!r}")


def _check_steps(name, n) -> None:
    """A positive Python int."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={n!r}")


def _check_pc_args(predictor, corrector, snr, num_steps, num_corrector_steps) -> None:
    """Validate the predictor–corrector hyperparameters."""
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    if not (isinstance(snr, (int, float)) and snr > 0):
        raise ValueError(f"snr must be a number > 0, got snr={snr!r}")
    _check_steps("num_steps", num_steps)
    _check_steps("num_corrector_steps", num_corrector_steps)


def _check_shape(shape) -> tuple[int, ...]:
    """``shape`` must be a tuple of positive ints ``(B, ...)`` with at least 2 axes."""
    ok = isinstance(shape, (tuple, list)) and len(shape) >= 2
    ok = ok and all(isinstance(d, int) and d > 0 for d in shape)
    if not ok:
        raise ValueError(
            f"shape must be a tuple of >= 2 positive ints (B, ...), got {shape!r}"
        )
    return tuple(shape)


def _shape_dtype(shape, x_T, dtype):
    """Resolve the sample shape and dtype from the arguments."""
    shape = _check_shape(shape)
    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T.shape must equal shape={shape}, got {x_T.shape}")
        return shape, x_T.dtype
    return shape, jnp.result_type(float) if dtype is None else jnp.dtype(dtype)


def _check_score_fn(score_fn, shape, dtype) -> None:
    """Abstractly evaluate ``score_fn`` once; it must return the sample shape."""
    out = jax.eval_shape(
        score_fn, jax.ShapeDtypeStruct(shape, dtype),
        jax.ShapeDtypeStruct(shape[:1], dtype),
    )
    if getattr(out, "shape", None) != tuple(shape):
        raise ValueError(
            f"score_fn(x, t) must return an array of the sample shape {shape}, got "
            f"{getattr(out, 'shape', type(out))}"
        )
