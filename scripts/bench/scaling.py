"""Benchmark: throughput of sharded DDIM, PF-ODE sampling and a U-Net train step.

Work (issue 10, reference/benchmarks.md): a small ε-prediction U-Net on 8×8×1
images (fixed random, non-zero weights) and a global batch split over the
``data`` axis of a mesh of n devices:

- DDIM (η = 0) sampling, ``num_steps`` steps, ``jax.jit`` with
  ``out_shardings=parallel.batch_sharding(mesh)`` (compiler-partitioned);
- PF-ODE sampling (VP SDE, adaptive Tsit5) with the per-device solve of
  ``parallel.batch_map`` around ``ode.decode`` (x_T drawn sharded);
- one data-parallel train step (``train.make_train_step``, Adam, DDPM loss;
  parameters replicated, the batch sharded).

CPU mode (default): each n in 1, 2, 4, 8 runs in its own subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=n``. The forced devices
share the machine's cores, so the ratios measure sharding overhead, not
speedup. GPU mode (``--device gpu``): one process, n = 1 and n = all visible
devices, the device kind printed.

Agreement: every run samples from the same keys; the max |difference| of the
DDIM and ODE samples and of the train loss to the n = 1 run is printed before
any time. Timing: one warm-up call per workload (compile time reported), then
``--reps`` repetitions alternating the three workloads, medians.
``speedup_<work>_<n>v1`` = median time on 1 device / on n devices (> 1: n
devices are faster). TFLOP/s use XLA's ``cost_analysis()`` flops: of one ε
evaluation on the global batch times the number of evaluations for the
samplers (XLA counts a loop body once), of the whole program for the step.

Usage: ``python scripts/bench/scaling.py [--quick] [--reps 5] [--device cpu|gpu]``.
Human table, then one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CPU_COUNTS = (1, 2, 4, 8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 2 reps")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    reps = args.reps or (2 if args.quick else 5)
    if args.worker is not None:  # one device count, in this process
        print(json.dumps(_measure(args.worker, args.quick, reps)))
        return
    if args.device == "cpu":
        runs = [_spawn(n, args.quick, reps) for n in CPU_COUNTS]
    else:
        import jax

        counts = sorted({1, jax.device_count()})
        runs = [_measure(n, args.quick, reps) for n in counts]
    _report(runs, args, reps)


def _spawn(n: int, quick: bool, reps: int) -> dict:
    """Measure with n forced CPU devices in a fresh process."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
           "JAX_PLATFORMS": "cpu", "JAXLAB_PROGRESS": "0"}
    cmd = [sys.executable, __file__, "--worker", str(n), "--reps", str(reps)]
    proc = subprocess.run(cmd + (["--quick"] if quick else []), env=env, check=False,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"worker with {n} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(n: int, quick: bool, reps: int) -> dict:
    """Compile, check and time the three workloads on an n-device data mesh."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax
    from flax import nnx

    from jaxlab import parallel, train
    from jaxlab.diffusion import ddim, ddpm, ode, schedules
    from jaxlab.diffusion import sde as sde_lib

    batch = 16 if quick else 64
    steps = 5 if quick else 20
    tol = 1e-2 if quick else 1e-3
    mesh = parallel.make_mesh(n)
    rows = parallel.batch_sharding(mesh)
    graphdef, params = _model(quick)
    params = parallel.replicate(params, mesh)
    sched = schedules.linear(1000)
    vp = sde_lib.VPSDE()
    shape = (batch, 8, 8, 1)

    def eps_fn(params, x, t):
        return nnx.merge(graphdef, params)(x, t)

    def ddim_run(params, key):
        return ddim.sample(key, lambda x, t: eps_fn(params, x, t), sched, shape,
                           num_steps=steps)

    def ode_run(params, z):
        def score(x, t):  # continuous t in [eps, 1] → the model's step scale
            return sde_lib.eps_score_fn(lambda y, s: eps_fn(params, y, s * 1000.0),
                                        vp)(x, t)
        return ode.decode(score, vp, z, rtol=tol, atol=tol, max_steps=512)

    def loss_fn(model, x0, key):
        return jnp.mean(ddpm.loss(key, model, sched, x0)), {}

    ddim_f = jax.jit(ddim_run, out_shardings=rows)
    ode_f = jax.jit(parallel.batch_map(ode_run, mesh, batched=(False, True)))
    model = nnx.merge(graphdef, jax.device_get(params))
    graph2, state = train.init_state(model, optax.adam(1e-4))
    state = parallel.replicate(state, mesh)
    step_f = train.make_train_step(graph2, loss_fn, optax.adam(1e-4))
    z = jax.jit(lambda k: vp.prior_sample(k, shape), out_shardings=rows)(jr.key(1))
    x0 = parallel.shard_batch(
        jr.uniform(jr.key(2), shape, minval=-1.0, maxval=1.0), mesh)

    compile_s = {}
    t0 = time.perf_counter()
    samples = jax.block_until_ready(ddim_f(params, jr.key(0)))
    compile_s["ddim"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ode_x, nfe = jax.block_until_ready(ode_f(params, z))
    compile_s["ode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the step donates its state: keep stepping the same chain
    state, metrics = jax.block_until_ready(step_f(state, x0, jr.key(3)))
    compile_s["train"] = time.perf_counter() - t0
    first_loss = float(metrics["loss"])

    times = {"ddim": [], "ode": [], "train": []}
    for _ in range(reps):  # alternate the workloads
        t0 = time.perf_counter()
        jax.block_until_ready(ddim_f(params, jr.key(0)))
        times["ddim"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(ode_f(params, z))
        times["ode"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(step_f(state, x0, jr.key(3)))
        times["train"].append(time.perf_counter() - t0)

    # XLA flops: one ε evaluation of the global batch (1 device), the whole step
    x1 = jnp.zeros(shape)
    t1 = jnp.ones((batch,), jnp.int32)
    eps_flops = _flops(jax.jit(eps_fn).lower(jax.device_get(params), x1, t1))
    step_flops = _flops(step_f.lower(state, x0, jr.key(3))) * n  # per-device program
    med = {k: statistics.median(v) for k, v in times.items()}
    nfe_total = int(np.sum(np.asarray(nfe)))
    flops = {"ddim": eps_flops * steps, "ode": eps_flops * nfe_total / batch,
             "train": step_flops}
    dev = jax.devices()[0]
    return {
        "devices": n, "batch": batch, "ddim_steps": steps, "ode_tol": tol,
        "median_s": med, "compile_s": compile_s,
        "samples_per_s_ddim": batch / med["ddim"],
        "samples_per_s_ode": batch / med["ode"],
        "steps_per_s_train": 1.0 / med["train"],
        "examples_per_s_train": batch / med["train"],
        "tflops": {k: flops[k] / med[k] / 1e12 for k in med},
        "ode_mean_nfe": nfe_total / batch,
        "checks": {"ddim": np.asarray(samples, np.float64).ravel()[:256].tolist(),
                   "ode": np.asarray(ode_x, np.float64).ravel()[:256].tolist(),
                   "loss": first_loss},
        "platform": dev.platform, "device_kind": dev.device_kind,
    }


def _model(quick: bool):
    """A U-Net with fixed random weights (zero-initialized kernels filled too)."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    from flax import nnx

    from jaxlab.nn.unet import UNet

    width = 8 if quick else 32
    model = UNet(channels=width, channel_mults=(1, 2), num_res_blocks=1, num_heads=2,
                 num_groups=4, rngs=nnx.Rngs(params=jr.key(0)))
    rng = np.random.default_rng(0)

    def fill(a):
        if a.ndim >= 2 and not np.any(np.asarray(a)):
            return jnp.asarray(0.05 * rng.standard_normal(a.shape), a.dtype)
        return a

    nnx.update(model, jax.tree.map(fill, nnx.state(model, nnx.Param)))
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def _flops(lowered) -> float:
    """XLA's flop count of a lowered program (0 when the backend gives none)."""
    cost = lowered.compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _report(runs: list[dict], args, reps: int) -> None:
    """Agreement, the human table, then one JSON line."""
    import jax
    import numpy as np

    base = runs[0]
    print(f"# scaling: U-Net 8x8x1, global batch {base['batch']}, DDIM "
          f"{base['ddim_steps']} steps, PF-ODE tsit5 tol {base['ode_tol']}, "
          f"{reps} reps, {base['platform']} / {base['device_kind']}")
    scale = {k: float(np.max(np.abs(base["checks"][k]))) for k in ("ddim", "ode")}
    print(f"sample scale max|x|: ddim {scale['ddim']:.3g}, ode {scale['ode']:.3g} "
          "(random weights); the ODE differs within its tolerance when float32 "
          "round-off flips a step-size decision")
    agree = {}
    for r in runs[1:]:
        n = r["devices"]
        agree[n] = {
            "ddim": float(np.max(np.abs(np.subtract(r["checks"]["ddim"],
                                                    base["checks"]["ddim"])))),
            "ode": float(np.max(np.abs(np.subtract(r["checks"]["ode"],
                                                   base["checks"]["ode"])))),
            "loss": abs(r["checks"]["loss"] - base["checks"]["loss"]),
        }
        print(f"agreement n={n} vs 1: max|Δ| ddim {agree[n]['ddim']:.2e}, "
              f"ode {agree[n]['ode']:.2e}, first loss {agree[n]['loss']:.2e}")
    head = (f"{'devices':>7} | {'DDIM samples/s':>14} | {'ODE samples/s':>13} | "
            f"{'ODE NFE':>7} | {'train steps/s':>13} | {'examples/s':>10} | "
            f"{'TFLOP/s ddim/ode/train':>24} | {'compile s ddim/ode/train':>24}")
    print(head)
    print("-" * len(head))
    for r in runs:
        tf, cs = r["tflops"], r["compile_s"]
        print(f"{r['devices']:>7} | {r['samples_per_s_ddim']:>14.1f} | "
              f"{r['samples_per_s_ode']:>13.2f} | {r['ode_mean_nfe']:>7.1f} | "
              f"{r['steps_per_s_train']:>13.2f} | {r['examples_per_s_train']:>10.1f} | "
              f"{tf['ddim']:.4f}/{tf['ode']:.4f}/{tf['train']:.4f}".rjust(24) + " | "
              + f"{cs['ddim']:.1f}/{cs['ode']:.1f}/{cs['train']:.1f}".rjust(24))
    out = {"bench": "scaling", "quick": args.quick, "device": args.device,
           "batch": base["batch"], "reps": reps}
    for r in runs:
        n = r["devices"]
        out[f"samples_per_s_ddim_{n}"] = round(r["samples_per_s_ddim"], 3)
        out[f"samples_per_s_ode_{n}"] = round(r["samples_per_s_ode"], 3)
        out[f"steps_per_s_train_{n}"] = round(r["steps_per_s_train"], 3)
        out[f"examples_per_s_train_{n}"] = round(r["examples_per_s_train"], 3)
        for k, v in r["tflops"].items():
            out[f"tflops_{k}_{n}"] = round(v, 6)
        if n != base["devices"]:
            for k in ("ddim", "ode", "train"):
                out[f"speedup_{k}_{n}v1"] = round(
                    base["median_s"][k] / r["median_s"][k], 3)
    out["max_abs_diff"] = {str(n): a for n, a in agree.items()}
    out.update(platform=base["platform"], device_kind=base["device_kind"],
               cores=os.cpu_count(), machine=platform.machine(),
               jax=jax.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
