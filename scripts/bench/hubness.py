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

Where jaxlab's net peak comes from: the worker records the resident size
(net of the post-import RSS) after the data, after tracing/lowering, after XLA
compilation and after the warm-up call, and XLA's ``memory_analysis()`` of the
compiled program. Two extra figures put the headline in context (the headline
ratio follows the rule above and is not replaced by either): ``jax_floor``, the
same measurement for a trivial jitted program (a row sum of the same array),
i.e. the fixed cost of using JAX at all; and ``warm_cache``, jaxlab's side with
JAX's persistent compilation cache already filled by an earlier process, so
that the compiled program is loaded instead of built by XLA.

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
           warmup: bool = True, cache_dir: str | None = None) -> None:
    """One side, one fresh process: import, warm up, time one call, report.

    ``side`` is "jaxlab", "sklearn" or "jax_floor" (a trivial jitted row sum of
    the same array: JAX's fixed memory cost, not an answer to the task).
    """
    import numpy as np

    if side in ("jaxlab", "jax_floor"):
        import functools

        import jax
        import jax.numpy as jnp

        if cache_dir:
            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        from jaxlab import hubness

        if side == "jaxlab":
            fn = jax.jit(functools.partial(
                hubness.k_occurrence, k=k, include_self=True, block_size=block,
                check_finite=False))
        else:
            fn = jax.jit(lambda a: jnp.sum(a, axis=1))
    else:
        from sklearn.neighbors import NearestNeighbors

    rss_imports = _rss_now_mb()
    x = _data(n, d)
    extra = {"stage_data_mb": _rss_now_mb() - rss_imports}
    if side in ("jaxlab", "jax_floor"):
        t0 = time.perf_counter()
        lowered = fn.lower(x)
        extra["stage_lowered_mb"] = _rss_now_mb() - rss_imports
        compiled = lowered.compile()
        extra["compile_s"] = time.perf_counter() - t0
        extra["stage_compiled_mb"] = _rss_now_mb() - rss_imports
        mem = compiled.memory_analysis()
        if mem is not None:
            extra["xla_temp_mb"] = mem.temp_size_in_bytes / 2**20
            extra["xla_argument_mb"] = mem.argument_size_in_bytes / 2**20
        if warmup:
            jax.block_until_ready(compiled(x))
            extra["stage_warm_call_mb"] = _rss_now_mb() - rss_imports
        if side == "jax_floor":
            np.save(out, np.zeros(1, np.int64))
            print(json.dumps({"side": side, "net_peak_mb": _peak_rss_mb() - rss_imports,
                              **extra}))
            return
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


def _spawn(side, n, d, k, block, out, warmup=True, cache_dir=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--n", str(n),
           "--d", str(d), "--k", str(k), "--block", str(block), "--out", out]
    if not warmup:
        cmd.append("--no-warmup")
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, smoke run")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--block", type=int, default=512,
                   help="block_size (default: hubness.DEFAULT_BLOCK_SIZE = 512)")
    p.add_argument("--worker", choices=["jaxlab", "sklearn", "jax_floor"])
    p.add_argument("--cache-dir")
    p.add_argument("--n", type=int)
    p.add_argument("--d", type=int)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--out")
    p.add_argument("--no-warmup", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.d, args.k, args.block, args.out,
               warmup=not args.no_warmup, cache_dir=args.cache_dir)
        return

    import numpy as np

    n, d, k = (2000, 64, 5) if args.quick else (10_000, 512, 5)
    n_big = 5000 if args.quick else 100_000
    reps = args.reps or (2 if args.quick else 5)
    runs = {"jaxlab": [], "sklearn": [], "jax_floor": [], "warm_cache": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "jax_cache")
        # Fill the persistent compilation cache once (not measured).
        _spawn("jaxlab", n, d, k, args.block, os.path.join(tmp, "fill.npy"),
               cache_dir=cache)
        for rep in range(reps):
            # alternate jaxlab, sklearn; then the two context figures
            for side in ("jaxlab", "sklearn", "jax_floor", "warm_cache"):
                out = os.path.join(tmp, f"{side}_{rep}.npy")
                if side == "warm_cache":
                    r = _spawn("jaxlab", n, d, k, args.block, out, cache_dir=cache)
                else:
                    r = _spawn(side, n, d, k, args.block, out)
                runs[side].append(r)
                print(f"  rep {rep} {side}: {r.get('seconds', float('nan')):.3f} s, "
                      f"net peak {r['net_peak_mb']:.0f} MB", file=sys.stderr)
        cached = np.load(os.path.join(tmp, "warm_cache_0.npy"))
        ours = np.load(os.path.join(tmp, "jaxlab_0.npy"))
        peer = np.load(os.path.join(tmp, "sklearn_0.npy"))
        big_out = os.path.join(tmp, "big.npy")
        # One timed run of the compiled program (no warm-up run: minutes on CPU).
        big = _spawn("jaxlab", n_big, d, k, args.block, big_out, warmup=False)
        big_counts = np.load(big_out)

    diff = np.abs(ours - peer)
    agree = {"max_abs_count_diff": int(diff.max()),
             "num_points_differing": int((diff > 0).sum()),
             "sum_jaxlab": int(ours.sum()), "sum_sklearn": int(peer.sum()),
             "warm_cache_counts_equal": bool(np.array_equal(cached, ours))}

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
        "memory_ratio_k_occurrence_warm_cache": med("warm_cache", "net_peak_mb") / m_s,
        "memory_ratio_jax_floor": med("jax_floor", "net_peak_mb") / m_s,
        "memory_ratio_input_alone": n * d * 4 / 2**20 / m_s,
        "warm_cache_net_peak_mb_median": med("warm_cache", "net_peak_mb"),
        "warm_cache_seconds_median": med("warm_cache", "seconds"),
        "jax_floor_net_peak_mb_median": med("jax_floor", "net_peak_mb"),
        "input_mb": n * d * 4 / 2**20,
        "jaxlab_stages_mb": {key: med("jaxlab", key) for key in (
            "stage_data_mb", "stage_lowered_mb", "stage_compiled_mb",
            "stage_warm_call_mb")},
        "jax_floor_stages_mb": {key: med("jax_floor", key) for key in (
            "stage_data_mb", "stage_lowered_mb", "stage_compiled_mb",
            "stage_warm_call_mb")},
        "warm_cache_stages_mb": {key: med("warm_cache", key) for key in (
            "stage_data_mb", "stage_lowered_mb", "stage_compiled_mb",
            "stage_warm_call_mb")},
        # nan when the peer's timed call grew the RSS by nothing (tiny --quick sizes)
        "memory_ratio_k_occurrence_timed_call": (
            med("jaxlab", "run_peak_mb") / med("sklearn", "run_peak_mb")
            if med("sklearn", "run_peak_mb") > 0 else float("nan")),
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
    print("\nwhere jaxlab's net peak comes from (RSS above the post-import RSS, MB, "
          "medians; each stage cumulative):")
    print(f"{'program':<22}{'data':>8}{'traced':>8}{'compiled':>10}{'warm call':>11}"
          f"{'net peak':>10}")
    for label, side in (("k_occurrence", "jaxlab"),
                        ("k_occurrence, cache", "warm_cache"),
                        ("trivial jit (floor)", "jax_floor")):
        st = [med(side, key) for key in ("stage_data_mb", "stage_lowered_mb",
                                         "stage_compiled_mb", "stage_warm_call_mb")]
        print(f"{label:<22}{st[0]:>8.1f}{st[1]:>8.1f}{st[2]:>10.1f}{st[3]:>11.1f}"
              f"{med(side, 'net_peak_mb'):>10.1f}")
    print(f"XLA temp buffers of the k_occurrence program: "
          f"{result['jaxlab_xla_temp_mb']:.1f} MB; input array "
          f"{result['input_mb']:.1f} MB (alone "
          f"{result['memory_ratio_input_alone']:.2f}x the peer's net peak)")
    print(f"memory ratio with a warm persistent compilation cache (NOT the headline):"
          f" {result['memory_ratio_k_occurrence_warm_cache']:.2f}; trivial-jit floor "
          f"{result['memory_ratio_jax_floor']:.2f}")
    print(f"agreement: max |count diff| = {agree['max_abs_count_diff']}, "
          f"points differing = {agree['num_points_differing']}, "
          f"sums {agree['sum_jaxlab']} / "
          f"{agree['sum_sklearn']}; warm-cache counts identical: "
          f"{agree['warm_cache_counts_equal']}")
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
