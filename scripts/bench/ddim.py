"""Benchmark: DDIM as one lax.scan vs a per-step Python loop (diffusers' design).

Work (reference/benchmarks.md): deterministic DDIM (η = 0, S = 50 uniform steps,
T = 1000 linear schedule) with the same ε-model (the quick ``ddim`` experiment's
U-Net: channels 16, mults (1, 2), on 8×8×1 inputs, with fixed random weights —
so the outputs are not images; only time and agreement matter), the same batch
of x_T and the same sub-sequence. Two batch sizes: B = 128 (compute-bound per
step) and B = 1 (where per-step dispatch overhead dominates); quick: 32 and 1.

- jaxlab: ``ddim.sample(..., x_T=x_T)`` jitted as one program, a ``lax.scan``
  over the 50 steps.
- peer: the scheduler-loop design of diffusers' Flax pipelines (``for t in
  timesteps: eps = unet(x, t); x = scheduler.step(eps, t, x)``): a Python loop
  calling one jitted function per step that evaluates the model and applies
  ``ddim.step`` (the same update), so each step pays a dispatch and a host
  round trip.

Both outputs are compared (max |Δ|) before any time is reported. Each side is
compiled and warmed up first (compile times reported separately), then timed
alternately for ``--reps`` repetitions (≥ 5) with ``time.perf_counter`` around
calls ending in ``jax.block_until_ready``; the table reports medians and the
speedup is the ratio of medians (loop / scan; > 1 means the scan is faster).

Second, the scan sampler's compile time at S = 1000 divided by that at S = 10
(fresh ``jax.jit`` objects, ``.lower(...).compile()``, median of 3 each):
with a scan the program does not grow with S (target ≤ 1.5).

Usage: ``python scripts/bench/ddim.py [--quick] [--reps 7]``. Human table, then
one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import machine_info  # scripts/bench/ is on sys.path when run
from flax import nnx

from jaxlab.diffusion import ddim, schedules
from jaxlab.nn.unet import UNet


def _model():
    """The quick experiment's U-Net with fixed random (non-zero) weights."""
    model = UNet(channels=16, channel_mults=(1, 2), num_res_blocks=1, num_heads=4,
                 rngs=nnx.Rngs(params=jr.key(0, impl="rbg")))
    rng = np.random.default_rng(0)

    def fill(p):
        # the zero-initialized output kernels get weights too, so ε̂ ≠ 0
        if p.ndim >= 2 and not np.any(np.asarray(p)):
            return jnp.asarray(0.05 * rng.standard_normal(p.shape), p.dtype)
        return p

    nnx.update(model, jax.tree.map(fill, nnx.state(model, nnx.Param)))
    return nnx.split(model)


def _scan_sampler(graphdef, sched, num_steps):
    """jaxlab: the whole sampler as one jitted program."""

    def run(state, x_T):
        model = nnx.merge(graphdef, state)
        return ddim.decode(lambda x, t: model(x, t), sched, x_T, num_steps=num_steps)

    return jax.jit(run)


def _loop_sampler(graphdef, sched, num_steps):
    """Peer: Python loop over a jitted per-step function (model + DDIM update)."""

    @jax.jit
    def step(state, x, t, r):
        model = nnx.merge(graphdef, state)
        eps = model(x, jnp.full(x.shape[:1], t))
        return ddim.step(None, x, eps, sched.alpha_bar[t], sched.beta_bar[t],
                         sched.alpha_bar[r], sched.beta_bar[r])

    tau = schedules.sub_sequence(sched.num_steps, num_steps)[::-1]
    pairs = [(jnp.int32(t), jnp.int32(r)) for t, r in zip(tau[:-1], tau[1:])]

    def run(state, x_T):
        x = x_T
        for t, r in pairs:
            x = step(state, x, t, r)
        return x

    return run, step


def _time(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def _compile_seconds(graphdef, state, sched, x_T, num_steps, repeats=3) -> float:
    out = []
    for _ in range(repeats):
        fn = _scan_sampler(graphdef, sched, num_steps)  # fresh jit: no cache hit
        t0 = time.perf_counter()
        fn.lower(state, x_T).compile()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _compare(graphdef, state, sched, batch, num_steps, reps):
    """Agreement, then alternating timed reps of scan vs loop at one batch size."""
    x_T = jr.normal(jr.key(1), (batch, 8, 8, 1))
    scan = _scan_sampler(graphdef, sched, num_steps)
    loop, loop_step = _loop_sampler(graphdef, sched, num_steps)
    t0 = time.perf_counter()
    scan.lower(state, x_T).compile()
    compile_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop_step.lower(state, x_T, jnp.int32(1), jnp.int32(0)).compile()
    compile_step = time.perf_counter() - t0
    # warm-up and agreement check before any timing
    a = np.asarray(jax.block_until_ready(scan(state, x_T)))
    b = np.asarray(jax.block_until_ready(loop(state, x_T)))
    max_diff = float(np.max(np.abs(a - b)))
    print(f"B={batch}: agreement max |scan - loop| = {max_diff:.3g} "
          f"(output scale {float(np.max(np.abs(a))):.3g})")
    times = {"scan": [], "loop": []}
    for _ in range(reps):  # alternate A, B
        times["scan"].append(_time(scan, state, x_T))
        times["loop"].append(_time(loop, state, x_T))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "scan_median_s": med["scan"], "loop_median_s": med["loop"],
            "scan_min_s": min(times["scan"]), "loop_min_s": min(times["loop"]),
            "speedup": med["loop"] / med["scan"], "max_abs_diff": max_diff,
            "compile_scan_s": compile_scan, "compile_loop_step_s": compile_step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batch, few reps")
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args()
    batches = (32, 1) if args.quick else (128, 1)
    reps = args.reps or (3 if args.quick else 7)
    num_steps = 50

    sched = schedules.linear(1000)
    graphdef, state = _model()
    rows = [_compare(graphdef, state, sched, b, num_steps, reps) for b in batches]
    x_T = jr.normal(jr.key(1), (batches[0], 8, 8, 1))
    c10 = _compile_seconds(graphdef, state, sched, x_T, 10)
    c1000 = _compile_seconds(graphdef, state, sched, x_T, 1000)
    ratio = c1000 / c10

    print(f"\nDDIM η=0, S={num_steps}, 8×8×1 inputs, U-Net 16ch; {reps} alternating "
          f"reps, medians (s)")
    print(f"{'batch':>6}{'scan':>10}{'loop':>10}{'speedup':>10}{'max|Δ|':>10}")
    for r in rows:
        print(f"{r['batch']:>6}{r['scan_median_s']:>10.4f}{r['loop_median_s']:>10.4f}"
              f"{r['speedup']:>10.3f}{r['max_abs_diff']:>10.2g}")
    print("speedup = loop / scan (> 1: the lax.scan sampler is faster)")
    print(f"scan compile: S=10 {c10:.2f} s, S=1000 {c1000:.2f} s -> ratio {ratio:.3f} "
          f"(target <= 1.5); loop step compile {rows[0]['compile_loop_step_s']:.2f} s")
    out = {"bench": "ddim"}
    for r in rows:
        out[f"speedup_scan_vs_python_loop_S50_B{r['batch']}"] = r["speedup"]
    out.update({
        "compile_ratio_S1000_over_S10": ratio,
        "compile_s_S10": c10,
        "compile_s_S1000": c1000,
        "rows": rows,
        "num_steps": num_steps,
        "reps": reps,
        "quick": args.quick,
        **machine_info(),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
