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

NFE counts evaluations of the score model (one per drift evaluation):
``tsit5`` / ``dopri5`` are FSAL, 1 + 6 per attempted step; ``heun`` and
``midpoint`` 2 per step; ``euler`` 1 per step (rejected steps included).

References:
    Y. Song et al., "Score-Based Generative Modeling through Stochastic
    Differential Equations", ICLR 2021, arXiv 2011.13456, §4.3, App. D.
    J. Su, 生成扩散模型漫谈 (六) "ODE篇", https://kexue.fm/archives/9228.
    P. Kidger, "On Neural Differential Equations", 2021 (diffrax; PID control).
"""

from __future__ import annotations

import chex
import diffrax as dfx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from jaxlab.diffusion import sde as sde_lib

ODE_SOLVERS = ("euler", "heun", "midpoint", "tsit5", "dopri5")
ADAPTIVE_SOLVERS = ("heun", "tsit5", "dopri5")
# (evaluations at start, evaluations per attempted step); verified in the tests
# against a counting callback.
_NFE = {"euler": (0, 1), "heun": (0, 2), "midpoint": (0, 2), "tsit5": (1, 6),
        "dopri5": (1, 6)}


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
    score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, x: Float[Array, "B *D"], *,
    t0: float, t1: float, rtol: float = 1e-5, atol: float = 1e-5,
    solver: str = "tsit5", num_steps: int | None = None, max_steps: int = 4096,
) -> tuple[Float[Array, "B *D"], Int[Array, " B"]]:
    r"""Transport ``x`` from time t0 to t1 along the probability-flow ODE.

    One ``diffeqsolve`` per example, vmapped. With ``num_steps=None`` the step
    size is adaptive (``PIDController(rtol, atol)``, RMS norm over the example);
    otherwise ``num_steps`` equal steps (``StepTo``).

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

    Returns:
        ``(x_t1, nfe)``: the transported points and the ``[B]`` int32 number of
        score evaluations of each example.
    """
    chex.assert_rank(x, {2, 3, 4, 5})
    _check_solver_args(solver, rtol, atol, num_steps, max_steps)
    for name, value in (("t0", t0), ("t1", t1)):
        if not (isinstance(value, (int, float)) and 0 <= value <= sde.T):
            raise ValueError(
                f"{name} must be a number in [0, T={sde.T}], got {value!r}"
            )
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0=t1={t0!r}")
    sde_lib._check_score_fn(score_fn, tuple(x.shape), x.dtype)
    drift = drift_fn(score_fn, sde)

    def vector_field(t, y, args):
        return drift(y[None], t)[0].astype(y.dtype)

    ys, steps = jax.vmap(
        lambda y0: _solve(vector_field, y0, t0, t1, solver, rtol, atol, num_steps,
                          max_steps)
    )(x)
    return ys, nfe_from_steps(steps, solver)


def decode(
    score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, z: Float[Array, "B *D"], *,
    rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
    num_steps: int | None = None, eps: float = 1e-3, max_steps: int = 4096,
) -> tuple[Float[Array, "B *D"], Int[Array, " B"]]:
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

    Returns:
        ``(x, nfe)``.
    """
    _check_ode_eps(eps, sde)
    return flow(score_fn, sde, z, t0=sde.T, t1=eps, rtol=rtol, atol=atol,
                solver=solver, num_steps=num_steps, max_steps=max_steps)


def encode(
    score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, x: Float[Array, "B *D"], *,
    rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
    num_steps: int | None = None, eps: float = 1e-3, max_steps: int = 4096,
) -> tuple[Float[Array, "B *D"], Int[Array, " B"]]:
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

    Returns:
        ``(z, nfe)``.
    """
    _check_ode_eps(eps, sde)
    return flow(score_fn, sde, x, t0=eps, t1=sde.T, rtol=rtol, atol=atol,
                solver=solver, num_steps=num_steps, max_steps=max_steps)


def sample(
    key: PRNGKeyArray, score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE,
    shape: tuple[int, ...], *, rtol: float = 1e-5, atol: float = 1e-5,
    solver: str = "tsit5", num_steps: int | None = None, eps: float = 1e-3,
    max_steps: int = 4096, denoise: bool = False, dtype=None,
) -> tuple[Float[Array, "B *D"], Int[Array, " B"]]:
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

    Returns:
        ``(x, nfe)``: samples of ``shape`` and the ``[B]`` per-sample NFE.
    """
    shape, dtype = sde_lib._shape_dtype(shape, None, dtype)
    z = sde.prior_sample(key, shape, dtype)
    x, nfe = decode(score_fn, sde, z, rtol=rtol, atol=atol, solver=solver,
                    num_steps=num_steps, eps=eps, max_steps=max_steps)
    if denoise:
        x = sde_lib.tweedie_denoise(score_fn, sde, x, eps)
        nfe = nfe + 1
    return x, nfe


def nfe_from_steps(num_steps: Int[Array, "..."], solver: str) -> Int[Array, "..."]:
    """Score evaluations of ``solver`` after ``num_steps`` attempted steps."""
    if solver not in ODE_SOLVERS:
        raise ValueError(f"solver must be one of {ODE_SOLVERS}, got solver={solver!r}")
    first, per_step = _NFE[solver]
    return (first + per_step * jnp.asarray(num_steps)).astype(jnp.int32)


# --------------------------------------------------------------------------- #
# Private (shared with likelihood)
# --------------------------------------------------------------------------- #


def _solve(vector_field, y0, t0, t1, solver, rtol, atol, num_steps, max_steps,
           norm=None):
    """One ``diffeqsolve`` of ``vector_field`` from t0 to t1; (y_t1, steps).

    ``norm`` (default: RMS over all components) measures the scaled local error.
    """
    if num_steps is None:
        kwargs = {} if norm is None else {"norm": norm}
        controller = dfx.PIDController(rtol=rtol, atol=atol, **kwargs)
        # A first step of 1% of the interval; the controller adapts from there
        # (diffrax's automatic initial step would cost two extra evaluations).
        dt0, budget = (t1 - t0) / 100.0, max_steps
    else:
        controller = dfx.StepTo(ts=jnp.linspace(t0, t1, num_steps + 1))
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
            "tsit5": dfx.Tsit5, "dopri5": dfx.Dopri5}[name]()


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
