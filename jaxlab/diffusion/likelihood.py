r"""Exact log-likelihood of score models via the probability-flow ODE; bits/dim.

The probability-flow ODE dx/dt = f̃(x, t) = f x − ½ g² s_θ(x, t) is a neural
ODE, so the instantaneous change of variables (Chen et al. 2018, Thm. 1;
Song et al. 2021, App. D.2) gives the density it defines:

    log p_0(x_0) = log p_T(x_T) + ∫_0^T ∇·f̃(x_t, t) dt,

solved forward from ε to T for the augmented state (x_t, ∫∇·f̃) with diffrax,
one adaptive solve per example (vmapped). The divergence is

- ``"exact"``: Σ_i ∂f̃_i/∂x_i from one linearization and D tangent passes
  (``jax.linearize`` + ``vmap`` over the basis) — for small D;
- ``"hutchinson"``: vᵀ (∂f̃/∂x) v with one Jacobian product per probe, a probe
  v (Rademacher or Gaussian, E[vvᵀ] = I) drawn once per example and held fixed
  along the path (Grathwohl et al. 2019, FFJORD), an unbiased estimate. The
  product is taken in forward mode, vᵀ(Jv) by one ``jax.jvp``, rather than as
  the (vᵀJ)v of a VJP: the estimator is identical, and inside XLA's solver loop
  on CPU the transposed convolutions of a VJP through a U-Net cost ~6× a
  forward pass, the JVP ~2× (measured with the sde experiment's model).

With ``param="sigma"`` (or ``"log_sigma"``) the same ODE is solved in the DDIM
/ EDM variables x̃ = x/ᾱ_t, σ = β̄_t/ᾱ_t of ``ode.vector_field``,
dx̃/dσ = h(x̃, σ) (measured to need more steps than ``"t"``, the default; see
``ode``). The change of variables is exact:
p_x(x) = p_x̃(x/ᾱ)·ᾱ^{−D}, and the instantaneous change of variables in σ gives
log p_x̃(x̃_ε) = log p_x̃(x̃_T) + ∫_{σ_ε}^{σ_T} ∇_x̃·h dσ, so

    log p(x_ε) = log p_T(ᾱ_T x̃_T) + D log ᾱ_T + ∫_{σ_ε}^{σ_T} ∇_x̃·h dσ
                 − D log ᾱ_ε

(D log ᾱ at each end; 0 for VE; with u = log σ the divergence is taken the
same way, ∫ ∇_x̃·(dx̃/du) du). ``param="t"`` integrates in t as score_sde.

References:
    Y. Song et al., "Score-Based Generative Modeling through Stochastic
    Differential Equations", ICLR 2021, arXiv 2011.13456, §4.3, App. D.2
    (RK45, rtol = atol = 1e-5, ε = 1e-5, uniformly dequantized data).
    R. T. Q. Chen et al., "Neural Ordinary Differential Equations", 2018.
    W. Grathwohl et al., "FFJORD", ICLR 2019 (Hutchinson's estimator).
    J. Ho et al., DDPM, 2020, §3.3 (discrete data, bits/dim conventions).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from jaxlab.diffusion import ode
from jaxlab.diffusion import sde as sde_lib
from jaxlab.diffusion.ddpm import _check_range

ESTIMATORS = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def log_likelihood(
    key: PRNGKeyArray, score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE,
    x: Float[Array, " B *D"], *, estimator: str = "exact", probe: str = "rademacher",
    rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
    eps: float = 1e-5, max_steps: int = 4096,
    prior_logp: Callable[[Array], Array] | None = None, param: str = "t",
) -> tuple[Float[Array, " B"], Int[Array, " B"]]:
    r"""log p_θ(x) of the probability-flow ODE model, per example, in nats.

    log p(x) = log p_T(x_T) + ∫_ε^T ∇·f̃ dt with x_ε = x (Song et al. App. D.2;
    instantaneous change of variables). Solved with an adaptive diffrax solver,
    one solve per example. The PID controller bounds the local error of every
    coordinate *and* of the log-density by the tolerance (∞-norm of the scaled
    error): with the usual RMS norm over the D + 1 components the log-density's
    own error could be ~√D times larger (measured in ``scripts/bench/ode.py``:
    this makes the per-sample solve more accurate than score_sde's at the same
    rtol/atol).

    Args:
        key: PRNG key for the Hutchinson probes (unused by ``"exact"``).
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        x: ``[B, ...]`` data (continuous; dequantize discrete data first).
        estimator: ``"exact"`` (cost ∝ D per evaluation) or ``"hutchinson"``.
        probe: ``"rademacher"`` or ``"gaussian"`` (Hutchinson only).
        rtol: relative tolerance > 0 (paper: 1e-5).
        atol: absolute tolerance > 0 (paper: 1e-5).
        solver: an adaptive solver of ``ode.ADAPTIVE_SOLVERS``.
        eps: start time, 0 ≤ eps < T (paper: 1e-5).
        max_steps: adaptive step budget; exceeding it raises.
        prior_logp: optional ``z [B, ...] -> [B]`` replacing ``sde.prior_logp``
            (e.g. the exact marginal p_T of a known data distribution).
        param: ``"t"`` (solve in x, t), ``"sigma"`` or ``"log_sigma"`` (solve
            in x̃ = x/ᾱ and σ = β̄/ᾱ or log σ; see the module docstring).

    Returns:
        ``(logp, nfe)``: ``[B]`` log-likelihoods and ``[B]`` int32 numbers of
        evaluations of the augmented vector field (each one score evaluation,
        plus one JVP for Hutchinson or D tangent passes for exact).
    """
    chex.assert_rank(x, {2, 3, 4, 5})
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got probe={probe!r}")
    ode._check_solver_args(solver, rtol, atol, None, max_steps)
    ode._check_ode_eps(eps, sde)
    ode._check_param(param, eps)
    sde_lib._check_score_fn(score_fn, tuple(x.shape), x.dtype)
    prior_logp = sde.prior_logp if prior_logp is None else prior_logp
    field = ode.vector_field(score_fn, sde, param)
    probes = _probes(key, x, probe) if estimator == "hutchinson" else None
    u0, u1, ab0, ab1 = ode._endpoints(sde, param, eps, sde.T, x.dtype)
    # D log ᾱ_T − D log ᾱ_ε: the log-Jacobians of x ↦ x̃ at the two ends.
    num_dims = math.prod(x.shape[1:])
    log_det = num_dims * (jnp.log(ab1) - jnp.log(ab0))

    def one(x_i, v_i):
        def vector_field(u, state, args):
            y, _ = state

            def f(y):
                return field(u, y, args)

            if estimator == "exact":
                dy, div = _exact_divergence(f, y)
            else:
                dy, jac_v = jax.jvp(f, (y,), (v_i,))
                div = jnp.sum(v_i * jac_v)
            return dy, div.astype(y.dtype)

        state0 = (x_i / ab0, jnp.zeros((), x_i.dtype))
        (y_T, delta), steps = ode._solve(
            vector_field, state0, u0, u1, solver, rtol, atol, None, max_steps,
            norm=_max_norm,
        )
        return prior_logp((ab1 * y_T)[None])[0] + delta + log_det, steps

    if probes is None:
        logp, steps = jax.vmap(lambda x_i: one(x_i, None))(x)
    else:
        logp, steps = jax.vmap(one)(x, probes)
    return logp, ode.nfe_from_steps(steps, solver)


def bits_per_dim(
    logp: Float[Array, "*B"], num_dims: int, *,
    data_range: tuple[float, float] = (-1.0, 1.0), num_bins: int = 256,
) -> Float[Array, "*B"]:
    r"""Bits per dimension of discrete data from the density of dequantized data.

    Discrete data take ``num_bins`` levels spread over ``data_range`` = [lo, hi]
    (the model sees lo + k(hi − lo)/(num_bins − 1)); ``dequantize`` maps level k
    to a uniform draw in a bin of width w = (hi − lo)/num_bins. By Jensen,
    log P(k) ≥ E_u[log p(x_deq)] + D log w (Theis et al. 2016; Ho et al. 2020),
    so the reported upper bound is

        bpd = −log p(x_deq)/(D ln 2) + log2(num_bins/(hi − lo)),

    i.e. + 8 for 8-bit data on [0, 1] and + 7 on [−1, 1] (reference/sde.md
    §2.7, the offsets derived here).

    Args:
        logp: log-densities (nats) of dequantized data, any shape.
        num_dims: D, the number of dimensions per example.
        data_range: (lo, hi) of the model's data space, lo < hi.
        num_bins: number of discrete levels ≥ 2 (256 for 8-bit images, 17 for
            scikit-learn's digits).

    Returns:
        bits/dim, shaped like ``logp``.
    """
    lo, hi = _check_range(data_range)
    if not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive int, got num_dims={num_dims!r}")
    _check_bins(num_bins)
    offset = math.log2(num_bins / (hi - lo))
    return -jnp.asarray(logp) / (num_dims * math.log(2.0)) + offset


def dequantize(
    key: PRNGKeyArray, x: Float[Array, " B *D"], *,
    data_range: tuple[float, float] = (-1.0, 1.0), num_bins: int = 256,
) -> Float[Array, " B *D"]:
    r"""Uniform dequantization: level k ↦ lo + (k + u)(hi − lo)/num_bins, u ~ U[0, 1).

    ``x`` holds discrete data on the grid lo + k(hi − lo)/(num_bins − 1)
    (jaxlab's loaders: 8-bit MNIST with 256 levels, digits with 17, on
    [−1, 1]); k is recovered by rounding. For 8-bit data on [0, 1] this is
    (255x + u)/256, the convention of Song et al. and Ho et al.

    Args:
        key: PRNG key for u.
        x: ``[B, ...]`` discrete data.
        data_range: (lo, hi), lo < hi.
        num_bins: number of levels ≥ 2.

    Returns:
        Continuous data in [lo, hi), shaped like ``x``.
    """
    chex.assert_rank(x, {2, 3, 4, 5})
    lo, hi = _check_range(data_range)
    _check_bins(num_bins)
    k = jnp.clip(jnp.round((x - lo) / (hi - lo) * (num_bins - 1)), 0, num_bins - 1)
    u = jr.uniform(key, x.shape, x.dtype)
    return (lo + (k + u) * (hi - lo) / num_bins).astype(x.dtype)


# --------------------------------------------------------------------------- #
# Private
# --------------------------------------------------------------------------- #


def _max_norm(tree):
    """Max-abs over every component of the scaled error (the ∞-norm)."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(tree)]))


def _exact_divergence(f, y):
    """(f(y), tr ∂f/∂y) by one linearization and one tangent pass per dimension."""
    dy, jvp = jax.linearize(f, y)
    num = y.size
    basis = jnp.eye(num, dtype=y.dtype).reshape((num,) + y.shape)
    cols = jax.vmap(jvp)(basis).reshape(num, num)
    return dy, jnp.trace(cols)


def _probes(key, x, kind):
    """One Hutchinson probe per example, E[v vᵀ] = I."""
    if kind == "gaussian":
        return jr.normal(key, x.shape, x.dtype)
    return jr.rademacher(key, x.shape, x.dtype)


def _check_bins(num_bins) -> None:
    """An int ≥ 2."""
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got num_bins={num_bins!r}")
