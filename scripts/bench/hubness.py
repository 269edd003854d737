"""Benchmark: exact k-occurrence, jaxlab vs scikit-learn brute-force neighbours.

Work (reference/benchmarks.md): N = 10,000 points of N(0, I_512), k = 5, counted
as the official hubness Colab does through scikit-hubness:
``NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors_graph(X)``
summed over columns (each point counts itself once). jaxlab's side is
``hubness.k_occurrence(x, k, include_self=True)``, the same convention.

Each repetition runs each side in its own fresh subprocess (alternating
jaxlab, scikit-learn), which warms up once (JAX compiles; compile time is
reported separately), then times one call with ``time.perf_counter`` around a
call ending in ``jax.block_until_ready``. Peak memory is the subprocess's peak
resident set size minus its resident size right after its imports, so the
import of either framework is not counted. Both sides get the same float32
array, generated in-process from the same seed, and the count vectors are
compared before any time is reported.

Then jaxlab alone at N = 100,000: the dense distance matrix would be 40 GB; the
tiled search keeps its working set at O(N·k + block²), shown by the peak RSS
and by XLA's own memory analysis of the compiled program.

Usage: ``python scripts/bench/hubness.py [--quick] [--reps 5]``. Human table,
then one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _rss_now_mb() -> float:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    """Peak RSS since the last reset (VmHWM), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _data(n: int, d: int):
    import numpy as np

    return np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)


def worker(side: str, n: int, d: int, k: int, block: int, out: str,
           warmup: bool = True) -> None:
    """One side, one fresh process: import, warm up, time one call, report."""
    import numpy as np

    if side == "jaxlab":
        import functools

        import jax

        from jaxlab import hubness

        fn = jax.jit(functools.partial(hubness.k_occurrence, k=k, include_self=True,
                                       block_size=block, check_finite=False))
    else:
        from sklearn.neighbors import NearestNeighbors

    rss_imports = _rss_now_mb()
    x = _data(n, d)
    extra = {}
    if side == "jaxlab":
        t0 = time.perf_counter()
        compiled = fn.lower(x).compile()
        extra["compile_s"] = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        if mem is not None:
            extra["xla_temp_mb"] = mem.temp_size_in_bytes / 2**20
            extra["xla_argument_mb"] = mem.argument_size_in_bytes / 2**20
        if warmup:
            jax.block_until_ready(compiled(x))
        rss_before = _rss_now_mb()
        reset = _reset_peak_rss()
        t0 = time.perf_counter()
        counts = jax.block_until_ready(compiled(x))
        seconds = time.perf_counter() - t0
        run_peak = _hwm_mb() - rss_before if reset else float("nan")
        counts = np.asarray(counts)
    else:

        def call():
            graph = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x)
            return np.asarray(graph.kneighbors_graph(x).sum(axis=0)).ravel()

        call()  # warm-up (BLAS threads, caches)
        rss_before = _rss_now_mb()
        reset = _reset_peak_rss()
        t0 = time.perf_counter()
        counts = call()
        seconds = time.perf_counter() - t0
        run_peak = _hwm_mb() - rss_before if reset else float("nan")
    np.save(out, counts.astype(np.int64))
    peak = _peak_rss_mb()  # ru_maxrss: the whole process, compile included
    extra["run_peak_mb"] = run_peak
    print(json.dumps({"side": side, "seconds": seconds,
                      "rss_after_imports_mb": rss_imports, "peak_rss_mb": peak,
                      "net_peak_mb": peak - rss_imports, **extra}))


def _spawn(side, n, d, k, block, out, warmup=True):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--n", str(n),
           "--d", str(d), "--k", str(k), "--block", str(block), "--out", out]
    if not warmup:
        cmd.append("--no-warmup")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, smoke run")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--worker", choices=["jaxlab", "sklearn"])
    p.add_argument("--n", type=int)
    p.add_argument("--d", type=int)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--out")
    p.add_argument("--no-warmup", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.d, args.k, args.block, args.out,
               warmup=not args.no_warmup)
        return

    import numpy as np

    n, d, k = (2000, 64, 5) if args.quick else (10_000, 512, 5)
    n_big = 5000 if args.quick else 100_000
    reps = args.reps or (2 if args.quick else 5)
    runs = {"jaxlab": [], "sklearn": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for side in ("jaxlab", "sklearn"):  # alternate A, B
                out = os.path.join(tmp, f"{side}_{rep}.npy")
                runs[side].append(_spawn(side, n, d, k, args.block, out))
                last = runs[side][-1]
                print(f"  rep {rep} {side}: {last['seconds']:.3f} s, "
                      f"net peak {last['net_peak_mb']:.0f} MB", file=sys.stderr)
        ours = np.load(os.path.join(tmp, "jaxlab_0.npy"))
        peer = np.load(os.path.join(tmp, "sklearn_0.npy"))
        big_out = os.path.join(tmp, "big.npy")
        # One timed run of the compiled program (no warm-up run: minutes on CPU).
        big = _spawn("jaxlab", n_big, d, k, args.block, big_out, warmup=False)
        big_counts = np.load(big_out)

    diff = np.abs(ours - peer)
    agree = {"max_abs_count_diff": int(diff.max()),
             "num_points_differing": int((diff > 0).sum()),
             "sum_jaxlab": int(ours.sum()), "sum_sklearn": int(peer.sum())}

    def med(side, key):
        return statistics.median(r[key] for r in runs[side])

    t_j, t_s = med("jaxlab", "seconds"), med("sklearn", "seconds")
    m_j, m_s = med("jaxlab", "net_peak_mb"), med("sklearn", "net_peak_mb")
    import jax

    result = {
        "bench": "hubness_k_occurrence",
        "n": n, "d": d, "k": k, "block_size": args.block, "reps": reps,
        "jaxlab_seconds_median": t_j, "sklearn_seconds_median": t_s,
        "jaxlab_compile_seconds_median": med("jaxlab", "compile_s"),
        "jaxlab_net_peak_mb_median": m_j, "sklearn_net_peak_mb_median": m_s,
        "jaxlab_raw_peak_mb_median": med("jaxlab", "peak_rss_mb"),
        "sklearn_raw_peak_mb_median": med("sklearn", "peak_rss_mb"),
        "jaxlab_run_peak_mb_median": med("jaxlab", "run_peak_mb"),
        "sklearn_run_peak_mb_median": med("sklearn", "run_peak_mb"),
        "jaxlab_xla_temp_mb": runs["jaxlab"][0].get("xla_temp_mb"),
        "speedup_k_occurrence": t_s / t_j,
        "memory_ratio_k_occurrence": m_j / m_s,
        "memory_ratio_k_occurrence_timed_call": (
            med("jaxlab", "run_peak_mb") / med("sklearn", "run_peak_mb")),
        **agree,
        "big_n": n_big, "big_seconds": big["seconds"],
        "big_compile_seconds": big["compile_s"],
        "big_net_peak_mb": big["net_peak_mb"], "big_raw_peak_mb": big["peak_rss_mb"],
        "big_run_peak_mb": big["run_peak_mb"],
        "big_xla_temp_mb": big.get("xla_temp_mb"),
        "big_input_mb": n_big * d * 4 / 2**20,
        "big_dense_matrix_mb": n_big * n_big * 4 / 2**20,
        "big_sum_ok": bool(big_counts.sum() == n_big * k),
        "platform": platform.platform(), "machine": platform.machine(),
        "device_kind": jax.devices()[0].device_kind, "cores": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0], "jax_version": jax.__version__,
    }
    import sklearn

    result["sklearn_version"] = sklearn.__version__

    print(f"\nk-occurrence, N = {n}, d = {d}, k = {k} (self counted, as the official "
          f"Colab); {reps} alternating reps, fresh process per run, medians")
    print(f"{'side':<10}{'time s':>10}{'net peak MB':>14}{'raw peak MB':>14}"
          f"{'timed-call peak MB':>20}")
    for side, t, m in (("jaxlab", t_j, m_j), ("sklearn", t_s, m_s)):
        print(f"{side:<10}{t:>10.3f}{m:>14.1f}{med(side, 'peak_rss_mb'):>14.1f}"
              f"{med(side, 'run_peak_mb'):>20.1f}")
    print("net peak = process peak RSS - RSS after imports (JAX's includes XLA "
          "compilation); timed-call peak = peak RSS growth during the timed call "
          "(VmHWM reset just before it)")
    print(f"speedup (sklearn / jaxlab time): {result['speedup_k_occurrence']:.2f}x;  "
          f"memory ratio (jaxlab / sklearn net peak): "
          f"{result['memory_ratio_k_occurrence']:.2f} (timed call alone: "
          f"{result['memory_ratio_k_occurrence_timed_call']:.2f});  jaxlab compile "
          f"{result['jaxlab_compile_seconds_median']:.2f} s")
    print(f"agreement: max |count diff| = {agree['max_abs_count_diff']}, "
          f"points differing = {agree['num_points_differing']}, "
          f"sums {agree['sum_jaxlab']} / "
          f"{agree['sum_sklearn']}")
    print(f"jaxlab alone, N = {n_big}: {big['seconds']:.2f} s (+ compile "
          f"{big['compile_s']:.2f} s), net peak {big['net_peak_mb']:.0f} MB, "
          f"timed-call peak {big['run_peak_mb']:.0f} MB (input "
          f"{result['big_input_mb']:.0f} MB, XLA temp "
          f"{result['big_xla_temp_mb']:.1f} MB; a dense N×N float32 matrix would "
          f"be {result['big_dense_matrix_mb']:.0f} MB)")
    print(f"machine: {result['platform']}, {result['cores']} cores, load "
          f"{result['load_avg_1min']:.1f}, jax {result['jax_version']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
