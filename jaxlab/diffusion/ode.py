r"""The probability-flow ODE: sampling, encoding and decoding, solved with diffrax.

Every linear score SDE dx = f x dt + g dw has a deterministic twin with the
same marginals p_t (Song et al. 2021, Eq. 13; Su (六), σ_t = 0):

    dx/dt = f(t) x − ½ g(t)² ∇log p_t(x).

``decode`` integrates it from T down to ε (``t0=T, t1=eps``, negative steps),
``encode`` from ε up to T, and ``sample`` decodes prior draws. Each sample is
solved on its own by ``jax.vmap`` over a single-sample ``diffeqsolve``, so an
adaptive solver takes per-sample steps (its PID controller sees only that
sample's error) and reports a per-sample number of function evaluations —
unlike score_sde, which runs SciPy's RK45 on the host over the flattened batch
with one shared step size (reference/sde.md §6.2). The whole solve is one XLA
program: no host round trips.

``param`` picks the variables the solver integrates in. ``"t"`` (the
default) is dx/dt above, as score_sde. ``"sigma"`` is the DDIM / EDM form: for
a linear SDE with kernel N(ᾱ_t x_0, β̄_t² I) put x̃ = x/ᾱ_t, σ = β̄_t/ᾱ_t; with
ε̂ = −β̄_t s_θ the ODE becomes

    dx̃/dσ = ε̂(ᾱ x̃, t(σ))

(Song, Meng & Ermon 2021, DDIM Eq. 14; Karras et al. 2022, EDM Eq. 4 with
s(t) = ᾱ; Su (六) "d(x/ᾱ) = ε d(β̄/ᾱ)"), whose Euler steps on the nodes of a
uniform t grid are DDIM (η = 0). ``"log_sigma"`` uses u = log σ,
dx̃/du = σ ε̂ (DPM-Solver's λ up to sign). t(σ) inverts t ↦ β̄/ᾱ in closed
form for VE / VP / sub-VP and by bisection + Newton for ``LinearSDE``; at the
end points x = ᾱ x̃ exactly. Measured at rtol = atol = 1e-5 (VP, dopri5), the
σ forms need *more* steps than t — 1.7× (σ) and 1.3× (log σ) on the Gaussian
oracle in 64-D, 1.75× (σ) with the trained U-Net of ``scripts/bench/ode.py``:
x̃(σ) bends sharply at σ ≈ data scale, and with a trained model the step count
is set by the network's roughness in t, which no time change removes. They
are kept as exact, tested options (DDIM's variables), not as the default.

NFE counts evaluations of the score model (one per drift evaluation):
``tsit5`` / ``dopri5`` are FSAL, 1 + 6 per attempted step; ``bosh3`` 1 + 3;
``heun`` and
``midpoint`` 2 per step; ``euler`` 1 per step (rejected steps included).

References:
    Y. Song et al., "Score-Based Generative Modeling through Stochastic
    Differential Equations", ICLR 2021, arXiv 2011.13456, §4.3, App. D.
    J. Su, 生成扩散模型漫谈 (六) "ODE篇", https://kexue.fm/archives/9228.
    P. Kidger, "On Neural Differential Equations", 2021 (diffrax; PID control).
    J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models", ICLR
    2021, arXiv 2010.02502, Eq. (14) and §4.3.
    T. Karras et al., "Elucidating the Design Space of Diffusion-Based
    Generative Models", NeurIPS 2022, arXiv 2206.00364, Eq. (4).
"""

from __future__ import annotations

import math

import chex
import diffrax as dfx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from jaxlab.diffusion import sde as sde_lib

ODE_SOLVERS = ("euler", "heun", "midpoint", "bosh3", "tsit5", "dopri5")
ADAPTIVE_SOLVERS = ("heun", "bosh3", "tsit5", "dopri5")
PARAMS = ("t", "sigma", "log_sigma")
# (evaluations at start, evaluations per attempted step); verified in the tests
# against a counting callback.
_NFE = {"euler": (0, 1), "heun": (0, 2), "midpoint": (0, 2), "bosh3": (1, 3),
        "tsit5": (1, 6), "dopri5": (1, 6)}


def drift_fn(score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE):
    r"""The probability-flow drift (x [B, ...], t) ↦ f x − ½ g² s_θ(x, t).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.

    Returns:
        ``drift(x, t)`` with ``t`` a scalar or ``[B]``.
    """

    def drift(x, t):
        return sde_lib.reverse_drift(score_fn, sde, x, t, noise_scale=0.0)

    return drift


def flow(
    score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, x: Float[Array, " B *D"], *,
    t0: float, t1: float, rtol: float = 1e-5, atol: float = 1e-5,
    solver: str = "tsit5", num_steps: int | None = None, max_steps: int = 4096,
    param: str = "t",
) -> tuple[Float[Array, " B *D"], Int[Array, " B"]]:
    r"""Transport ``x`` from time t0 to t1 along the probability-flow ODE.

    One ``diffeqsolve`` per example, vmapped. With ``num_steps=None`` the step
    size is adaptive (``PIDController(rtol, atol)``, RMS norm over the example);
    otherwise ``num_steps`` steps (``StepTo``) between the nodes of a uniform
    grid in t (mapped to σ = β̄/ᾱ for ``param="sigma"``, where Euler's method is
    then exactly DDIM with η = 0). With ``"sigma"`` the
    tolerances apply to x̃ = x/ᾱ_t (equal to x for VE; at most e^{B/2}·x for VP).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        x: ``[B, ...]`` points at time t0.
        t0: start time in [0, T].
        t1: end time in [0, T], ≠ t0 (t1 < t0 solves backwards in time).
        rtol: relative tolerance > 0 (adaptive only; may be a traced scalar).
        atol: absolute tolerance > 0 (adaptive only; may be a traced scalar).
        solver: one of ``ODE_SOLVERS`` (adaptive: ``ADAPTIVE_SOLVERS``).
        num_steps: ``None`` (adaptive) or a positive int of fixed steps.
        max_steps: step budget of the adaptive solver; exceeding it raises.
        param: ``"t"`` (solve dx/dt = f x − ½ g² s_θ), ``"sigma"`` (dx̃/dσ = ε̂)
            or ``"log_sigma"`` (dx̃/d log σ = σ ε̂); see the module docstring.

    Returns:
        ``(x_t1, nfe)``: the transported points and the ``[B]`` int32 number of
        score evaluations of each example.
    """
    chex.assert_rank(x, {2, 3, 4, 5})
    _check_solver_args(solver, rtol, atol, num_steps, max_steps)
    _check_param(param, min(t0, t1))
    for name, value in (("t0", t0), ("t1", t1)):
        if not (isinstance(value, (int, float)) and 0 <= value <= sde.T):
            raise ValueError(
                f"{name} must be a number in [0, T={sde.T}], got {value!r}"
            )
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0=t1={t0!r}")
    sde_lib._check_score_fn(score_fn, tuple(x.shape), x.dtype)
    field = vector_field(score_fn, sde, param)
    u0, u1, scale0, scale1 = _endpoints(sde, param, t0, t1, x.dtype)
    grid = None
    if num_steps is not None and param != "t":
        # The nodes of the uniform t grid, mapped to σ (Euler here is DDIM).
        grid = sigma_of_time(sde, jnp.linspace(t0, t1, num_steps + 1))
        grid = jnp.log(grid) if param == "log_sigma" else grid
    ys, steps = jax.vmap(
        lambda y0: _solve(field, y0 / scale0, u0, u1, solver, rtol, atol, num_steps,
                          max_steps, grid=grid)
    )(x)
    return (ys * scale1).astype(x.dtype), nfe_from_steps(steps, solver)


def vector_field(score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, param: str = "t"):
    r"""The probability-flow ODE of one example as a diffrax vector field.

    ``param="t"``: (t, x) ↦ f(t) x − ½ g(t)² s_θ(x, t) (Song et al. Eq. 13).
    ``param="sigma"``: (σ, x̃) ↦ −β̄ s_θ(ᾱ x̃, t(σ)) with ᾱ = ᾱ(t(σ)),
    β̄ = σ ᾱ — the DDIM / EDM form dx̃/dσ = ε̂ (DDIM Eq. 14; EDM Eq. 4; Su (六):
    with f = d ln ᾱ/dt and g² = 2ᾱβ̄ d(β̄/ᾱ)/dt, d(x/ᾱ)/dt = −½ g² s/ᾱ
    = −β̄ s · d(β̄/ᾱ)/dt). ``param="log_sigma"``: (u, x̃) ↦ σ·(−β̄ s_θ), σ = e^u.

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        param: one of ``PARAMS``.

    Returns:
        ``field(u, y, args)`` for one unbatched example ``y`` (time u = t, σ or
        log σ).
    """
    _check_param(param)
    if param == "t":
        drift = drift_fn(score_fn, sde)

        def field(t, y, args):
            return drift(y[None], t)[0].astype(y.dtype)

        return field

    def field(u, y, args):
        # dx̃/dσ = ε̂; with u = log σ, dx̃/du = σ ε̂ (DPM-Solver's time variable).
        sigma = u if param == "sigma" else jnp.exp(u)
        t = time_of_sigma(sde, sigma)
        ab = jnp.exp(sde.log_alpha_bar(t))
        s = score_fn((ab * y)[None], t)[0]
        scale = sigma * ab if param == "sigma" else sigma**2 * ab
        return (-scale * s).astype(y.dtype)

    return field


def sigma_of_time(sde: sde_lib.SDE, t: ArrayLike) -> Array:
    r"""σ(t) = β̄(t)/ᾱ(t), the noise-to-signal ratio (EDM's σ; DDIM's √(1−α)/√α).

    Args:
        sde: the SDE.
        t: times in [0, T], any shape.

    Returns:
        σ(t), shaped like ``t``.
    """
    t = jnp.asarray(t, jnp.result_type(float))
    return sde.beta_bar(t) * jnp.exp(-sde.log_alpha_bar(t))


def time_of_sigma(sde: sde_lib.SDE, sigma: ArrayLike) -> Array:
    r"""The inverse t(σ) of the increasing map ``sigma_of_time``.

    Closed forms, with B(t) = β_min t + (β_max − β_min) t²/(2T):

    - VP, σ² = e^B − 1: B = log(1 + σ²);
    - sub-VP, σ = (1 − e^{−B}) e^{B/2} = 2 sinh(B/2): B = 2 asinh(σ/2);
      then t = 2B/(β_min + √(β_min² + 2(β_max − β_min)B/T));
    - VE, σ² = σ_min²(e^{2rt} − 1), r = ln(σ_max/σ_min)/T:
      t = log(1 + σ²/σ_min²)/(2r);
    - ``LinearSDE``: bisection on [0, T] then Newton steps on σ(t) − σ (autodiff),
      accurate to float precision and smooth in σ.

    Args:
        sde: the SDE.
        sigma: σ ≥ 0, any shape.

    Returns:
        t(σ), shaped like ``sigma``.
    """
    sigma = jnp.asarray(sigma, jnp.result_type(float))
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.SubVPSDE)):
        if isinstance(sde, sde_lib.VPSDE):
            B = jnp.log1p(sigma**2)
        else:
            B = 2.0 * jnp.arcsinh(0.5 * sigma)
        b0, slope = sde.beta_min, (sde.beta_max - sde.beta_min) / sde.T
        return 2.0 * B / (b0 + jnp.sqrt(b0**2 + 2.0 * slope * B))
    if isinstance(sde, sde_lib.VESDE):
        rate = math.log(sde.sigma_max / sde.sigma_min) / sde.T
        return jnp.log1p((sigma / sde.sigma_min) ** 2) / (2.0 * rate)
    return _invert_sigma(sde, sigma)


def decode(
    score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, z: Float[Array, " B *D"], *,
    rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
    num_steps: int | None = None, eps: float = 1e-3, max_steps: int = 4096,
    param: str = "t",
) -> tuple[Float[Array, " B *D"], Int[Array, " B"]]:
    r"""Latents x_T ↦ data x_ε by the probability-flow ODE (T → ε).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        z: ``[B, ...]`` latents at time T.
        rtol: relative tolerance.
        atol: absolute tolerance.
        solver: one of ``ODE_SOLVERS``.
        num_steps: ``None`` (adaptive) or fixed steps.
        eps: final time, 0 ≤ eps < T (0 only for scores finite at t = 0).
        max_steps: adaptive step budget.
        param: one of ``PARAMS`` (see ``flow``).

    Returns:
        ``(x, nfe)``.
    """
    _check_ode_eps(eps, sde)
    return flow(score_fn, sde, z, t0=sde.T, t1=eps, rtol=rtol, atol=atol,
                solver=solver, num_steps=num_steps, max_steps=max_steps,
                param=param)


def encode(
    score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, x: Float[Array, " B *D"], *,
    rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
    num_steps: int | None = None, eps: float = 1e-3, max_steps: int = 4096,
    param: str = "t",
) -> tuple[Float[Array, " B *D"], Int[Array, " B"]]:
    r"""Data x_ε ↦ latents x_T by the probability-flow ODE (ε → T).

    The map is a bijection, so ``decode(encode(x)) ≈ x`` to the solver
    tolerance ("uniquely identifiable encodings", Song et al. §4.3).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        x: ``[B, ...]`` data (points at time eps).
        rtol: relative tolerance.
        atol: absolute tolerance.
        solver: one of ``ODE_SOLVERS``.
        num_steps: ``None`` (adaptive) or fixed steps.
        eps: start time, 0 ≤ eps < T.
        max_steps: adaptive step budget.
        param: one of ``PARAMS`` (see ``flow``).

    Returns:
        ``(z, nfe)``.
    """
    _check_ode_eps(eps, sde)
    return flow(score_fn, sde, x, t0=eps, t1=sde.T, rtol=rtol, atol=atol,
                solver=solver, num_steps=num_steps, max_steps=max_steps,
                param=param)


def sample(
    key: PRNGKeyArray, score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE,
    shape: tuple[int, ...], *, rtol: float = 1e-5, atol: float = 1e-5,
    solver: str = "tsit5", num_steps: int | None = None, eps: float = 1e-3,
    max_steps: int = 4096, denoise: bool = False, dtype=None, param: str = "t",
) -> tuple[Float[Array, " B *D"], Int[Array, " B"]]:
    r"""Sample by decoding prior draws x_T ~ p_T through the probability-flow ODE.

    Song et al. §4.3 (Fig. 3: NFE vs tolerance). With ``denoise`` a final
    Tweedie step E[x_0 | x_ε] is applied (+1 NFE).

    Args:
        key: PRNG key for x_T.
        score_fn: ``score_fn(x, t)``.
        sde: the SDE.
        shape: sample shape ``(B, ...)``.
        rtol: relative tolerance.
        atol: absolute tolerance.
        solver: one of ``ODE_SOLVERS``.
        num_steps: ``None`` (adaptive) or fixed steps.
        eps: final time, 0 ≤ eps < T (paper: 1e-3).
        max_steps: adaptive step budget.
        denoise: apply the final Tweedie step.
        dtype: sample dtype (default float).
        param: one of ``PARAMS`` (see ``flow``).

    Returns:
        ``(x, nfe)``: samples of ``shape`` and the ``[B]`` per-sample NFE.
    """
    shape, dtype = sde_lib._shape_dtype(shape, None, dtype)
    z = sde.prior_sample(key, shape, dtype)
    x, nfe = decode(score_fn, sde, z, rtol=rtol, atol=atol, solver=solver,
                    num_steps=num_steps, eps=eps, max_steps=max_steps, param=param)
    if denoise:
        x = sde_lib.tweedie_denoise(score_fn, sde, x, eps)
        nfe = nfe + 1
    return x, nfe


def nfe_from_steps(num_steps: Int[Array, ...], solver: str) -> Int[Array, ...]:
    """Score evaluations of ``solver`` after ``num_steps`` attempted steps."""
    if solver not in ODE_SOLVERS:
        raise ValueError(f"solver must be one of {ODE_SOLVERS}, got solver={solver!r}")
    first, per_step = _NFE[solver]
    return (first + per_step * jnp.asarray(num_steps)).astype(jnp.int32)


# --------------------------------------------------------------------------- #
# Private (shared with likelihood)
# --------------------------------------------------------------------------- #


def _solve(vector_field, y0, t0, t1, solver, rtol, atol, num_steps, max_steps,
           norm=None, grid=None):
    """One ``diffeqsolve`` of ``vector_field`` from t0 to t1; (y_t1, steps).

    ``norm`` (default: RMS over all components) measures the scaled local error;
    ``grid`` (fixed steps only) replaces the uniform nodes from t0 to t1.
    """
    if num_steps is None:
        kwargs = {} if norm is None else {"norm": norm}
        controller = dfx.PIDController(rtol=rtol, atol=atol, **kwargs)
        # A first step of 1% of the interval; the controller adapts from there
        # (diffrax's automatic initial step would cost two extra evaluations).
        dt0, budget = (t1 - t0) / 100.0, max_steps
    else:
        ts = jnp.linspace(t0, t1, num_steps + 1) if grid is None else grid
        controller = dfx.StepTo(ts=ts)
        dt0, budget = None, num_steps
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vector_field), _ode_solver(solver), t0, t1, dt0, y0,
        stepsize_controller=controller, max_steps=budget,
        saveat=dfx.SaveAt(t1=True),
    )
    y1 = jax.tree.map(lambda a: a[0], sol.ys)
    return y1, sol.stats["num_steps"]


def _ode_solver(name):
    """The diffrax solver object for a solver name."""
    return {"euler": dfx.Euler, "heun": dfx.Heun, "midpoint": dfx.Midpoint,
            "bosh3": dfx.Bosh3, "tsit5": dfx.Tsit5, "dopri5": dfx.Dopri5}[name]()


def _endpoints(sde, param, t0, t1, dtype):
    """(u0, u1, ᾱ(t0), ᾱ(t1)) for ``param``: u = σ (scales ᾱ) or u = t (scales 1)."""
    if param == "t":
        return t0, t1, 1.0, 1.0
    ts = jnp.asarray([t0, t1], jnp.result_type(float))
    u0, u1 = sigma_of_time(sde, ts)
    if param == "log_sigma":
        u0, u1 = jnp.log(u0), jnp.log(u1)
    ab0, ab1 = jnp.exp(sde.log_alpha_bar(ts)).astype(dtype)
    return u0, u1, ab0, ab1


def _invert_sigma(sde, sigma):
    """t(σ) for a general SDE: 60 bisection halvings on [0, T], then Newton."""

    def one(target):
        def bisect(_, lo_hi):
            lo, hi = lo_hi
            mid = 0.5 * (lo + hi)
            below = sigma_of_time(sde, mid) < target
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        zero = jnp.zeros_like(target)
        lo, hi = jax.lax.fori_loop(0, 60, bisect, (zero, zero + sde.T))
        t = 0.5 * (lo + hi)
        for _ in range(2):  # Newton makes t a smooth function of σ
            val, slope = jax.jvp(lambda u: sigma_of_time(sde, u), (t,),
                                 (jnp.ones_like(t),))
            t = jnp.clip(t - (val - target) / jnp.maximum(slope, 1e-30), 0.0, sde.T)
        return t

    flat = jnp.ravel(sigma)
    return jax.vmap(one)(flat).reshape(sigma.shape)


def _check_param(param, t_min=None) -> None:
    """``param`` is one of ``PARAMS``; log σ needs both end times > 0."""
    if param not in PARAMS:
        raise ValueError(f"param must be one of {PARAMS}, got param={param!r}")
    if param == "log_sigma" and t_min is not None and not t_min > 0:
        raise ValueError(
            f"param='log_sigma' needs end times > 0 (log σ(0) = −∞), got {t_min!r}"
        )


def _check_solver_args(solver, rtol, atol, num_steps, max_steps) -> None:
    """Validate solver name, tolerances and step counts."""
    if solver not in ODE_SOLVERS:
        raise ValueError(f"solver must be one of {ODE_SOLVERS}, got solver={solver!r}")
    if num_steps is None:
        if solver not in ADAPTIVE_SOLVERS:
            raise ValueError(
                f"solver={solver!r} has no error estimate; use one of "
                f"{ADAPTIVE_SOLVERS} or pass num_steps"
            )
        for name, value in (("rtol", rtol), ("atol", atol)):
            # Traced tolerances are allowed (one compilation for a sweep).
            if isinstance(value, jax.core.Tracer):
                continue
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {name}={value!r}")
        sde_lib._check_steps("max_steps", max_steps)
    else:
        sde_lib._check_steps("num_steps", num_steps)


def _check_ode_eps(eps, sde) -> None:
    """0 ≤ eps < T."""
    if not (isinstance(eps, (int, float)) and 0 <= eps < sde.T):
        raise ValueError(f"eps must be a number in [0, T={sde.T}), got eps={eps!r}")
