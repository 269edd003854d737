"""Benchmark: geodesic scores to one centre, jaxlab vs scikit-learn's Isomap path.

Work: N points in 384-d (unit vectors on a noisy 8-d manifold) plus their mean
as the centre; k = 10 union kNN graph with Euclidean edges; the geodesic
distance from the centre to every point.

- jaxlab: ``geodesic.geodesic_scores(x, centre, k=10, metric="euclidean")``
  (jitted): tiled on-device kNN (``lax.top_k``), sparse CSR graph, one SciPy
  Dijkstra from the centre; d_geo = 1 / score.
- peer: ``sklearn.manifold.Isomap(n_neighbors=10).fit(z)`` on the N + 1 points,
  which builds the same graph and the dense all-pairs geodesic matrix
  ``dist_matrix_`` (then a 2-component kernel PCA); d_geo = its centre row.

Each side runs in a fresh subprocess; peak RSS is reported raw and net of the
process's RSS after its imports and data (reference/benchmarks.md). Reps
alternate jaxlab / peer; medians and the ratio of medians are reported. The
peer at the largest N runs once, under a wall-clock timeout and an
address-space cap (it needs several dense N×N float64 matrices), and the
report says whether it finished. The distances are checked against each other
on the shared pairs (centre row), and against SciPy Dijkstra on scikit-learn's
own kNN graph where the peer does not finish.

Run: ``.venv/bin/python scripts/bench/geodesic.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

DIM = 384
LATENT = 8
K = 10


def make_data(n: int, seed: int) -> np.ndarray:
    """[N + 1, 384] float32: N unit vectors on a noisy 8-d manifold, then their mean."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, LATENT))
    a = rng.standard_normal((LATENT, DIM)) / np.sqrt(LATENT)
    x = np.tanh(z @ a) + 0.05 * rng.standard_normal((n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate([x, x.mean(axis=0, keepdims=True)]).astype(np.float32)


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux: KB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------- workers


def worker_jaxlab(n: int, seed: int, out: str | None) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxlab import geodesic

    z = make_data(n, seed)
    base = _current_rss_mb()
    x, c = jnp.asarray(z[:n]), jnp.asarray(z[n])
    f = jax.jit(
        lambda x, c: geodesic.geodesic_scores(x, c, k=K, metric="euclidean")
    )
    t0 = time.perf_counter()
    jax.block_until_ready(f(x, c))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = jax.block_until_ready(f(x, c))
    seconds = time.perf_counter() - t0
    d = 1.0 / np.asarray(scores, np.float64)
    if out:
        np.save(out, d)
    peak = _rss_mb()
    return {"seconds": seconds, "compile_seconds": max(first - seconds, 0.0),
            "rss_base_mb": base, "rss_peak_mb": peak, "rss_net_mb": peak - base,
            "unreachable": int(np.isinf(d).sum()),
            "device_kind": jax.devices()[0].device_kind,
            "platform": jax.devices()[0].platform, "jax_version": jax.__version__}


def worker_isomap(n: int, seed: int, out: str | None) -> dict:
    from sklearn.manifold import Isomap

    z = make_data(n, seed)
    Isomap(n_neighbors=K).fit(make_data(50, seed + 1))  # load code paths
    base = _current_rss_mb()
    t0 = time.perf_counter()
    iso = Isomap(n_neighbors=K).fit(z)
    seconds = time.perf_counter() - t0
    d = np.asarray(iso.dist_matrix_[n, :n], np.float64)
    if out:
        np.save(out, d)
    peak = _rss_mb()
    return {"seconds": seconds, "rss_base_mb": base, "rss_peak_mb": peak,
            "rss_net_mb": peak - base}


def worker_reference(n: int, seed: int, out: str | None) -> dict:
    """Independent check for sizes where Isomap does not finish: sklearn's kNN
    graph (float64) and one SciPy Dijkstra from the centre."""
    from scipy.sparse.csgraph import dijkstra
    from sklearn.neighbors import kneighbors_graph

    z = make_data(n, seed).astype(np.float64)
    t0 = time.perf_counter()
    g = kneighbors_graph(z, K, mode="distance")
    d = dijkstra(g, directed=False, indices=n)[:n]
    if out:
        np.save(out, d)
    return {"seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- driver


def _spawn(side: str, n: int, seed: int, out: str | None, timeout: float | None,
           mem_gb: float | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--n", str(n),
           "--seed", str(seed)] + (["--out", out] if out else [])

    def limit():
        if mem_gb:
            cap = int(mem_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"finished": False, "reason": f"timeout after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["?"]
        return {"finished": False, "wall": wall,
                "reason": f"exit {proc.returncode}: {tail[0][:200]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"finished": True, "wall": wall, **result}


def bench_size(n, reps, seed, args, tmp):
    paths = {s: os.path.join(tmp, f"{s}_{n}.npy") for s in ("jaxlab", "isomap",
                                                          "reference")}
    peer_reps = reps if n <= args.peer_full_max else 1
    runs = {"jaxlab": [], "isomap": []}
    peer_done = True
    for r in range(max(reps, peer_reps)):
        if r < reps:
            runs["jaxlab"].append(_spawn("jaxlab", n, seed, paths["jaxlab"] if r == 0
                                         else None, None, None))
            print(f"  N={n} rep {r} jaxlab {runs['jaxlab'][-1].get('seconds')}",
                  file=sys.stderr)
        if r < peer_reps and peer_done:
            timeout = args.peer_timeout if n > args.peer_full_max else None
            res = _spawn("isomap", n, seed, paths["isomap"] if r == 0 else None,
                         timeout, args.peer_mem_gb)
            runs["isomap"].append(res)
            peer_done = res["finished"]
            print(f"  N={n} rep {r} isomap {res.get('seconds', res.get('reason'))}",
                  file=sys.stderr)
    jx = [r for r in runs["jaxlab"] if r["finished"]]
    pe = [r for r in runs["isomap"] if r["finished"]]
    d_j = np.load(paths["jaxlab"])
    if pe:
        d_ref, ref_name = np.load(paths["isomap"]), "isomap dist_matrix_ centre row"
    else:
        _spawn("reference", n, seed, paths["reference"], None, None)
        d_ref, ref_name = np.load(paths["reference"]), \
            "sklearn kneighbors_graph + SciPy Dijkstra (float64)"
    out = {
        "n": n,
        "jaxlab_seconds": float(np.median([r["seconds"] for r in jx])),
        "jaxlab_compile_seconds": float(np.median([r["compile_seconds"] for r in jx])),
        "jaxlab_rss_peak_mb": float(np.median([r["rss_peak_mb"] for r in jx])),
        "jaxlab_rss_net_mb": float(np.median([r["rss_net_mb"] for r in jx])),
        "jaxlab_reps": len(jx),
        "unreachable": jx[0]["unreachable"],
        "peer_finished": bool(pe),
        "peer_reps": len(pe),
        "peer_failure": None if pe else runs["isomap"][-1].get("reason"),
        "check_against": ref_name,
        "max_abs_diff": float(np.max(np.abs(d_j - d_ref))),
        "max_rel_diff": float(np.max(np.abs(d_j - d_ref) / np.maximum(d_ref, 1e-12))),
        "meta": {k: jx[0][k] for k in ("device_kind", "platform", "jax_version")},
    }
    if pe:
        out |= {
            "peer_seconds": float(np.median([r["seconds"] for r in pe])),
            "peer_rss_peak_mb": float(np.median([r["rss_peak_mb"] for r in pe])),
            "peer_rss_net_mb": float(np.median([r["rss_net_mb"] for r in pe])),
        }
        out["speedup"] = out["peer_seconds"] / out["jaxlab_seconds"]
        out["memory_ratio"] = out["jaxlab_rss_net_mb"] / out["peer_rss_net_mb"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: N = 2000, 2 reps")
    p.add_argument("--sizes", default="10000,30000")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-full-max", type=int, default=10000,
                   help="largest N at which the peer gets all reps")
    p.add_argument("--peer-timeout", type=float, default=600.0)
    p.add_argument("--peer-mem-gb", type=float, default=12.0,
                   help="address-space cap for the peer (shared machine)")
    p.add_argument("--worker", choices=("jaxlab", "isomap", "reference"))
    p.add_argument("--n", type=int)
    p.add_argument("--out")
    p.add_argument("--json-out", help="also write the final JSON line to this file")
    args = p.parse_args()
    if args.worker:
        fn = {"jaxlab": worker_jaxlab, "isomap": worker_isomap,
              "reference": worker_reference}[args.worker]
        print(json.dumps(fn(args.n, args.seed, args.out)))
        return
    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    reps = 2 if args.quick else args.reps
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_size(n, reps, args.seed, args, tmp) for n in sizes]
    print(f"\ngeodesic scores to one centre, d={DIM}, k={K} "
          f"({os.cpu_count()} cores, {platform.machine()})")
    head = (f"{'N':>7} {'jaxlab s':>9} {'compile s':>9} {'peer s':>9} {'speedup':>8} "
            f"{'jax net MB':>10} {'peer net MB':>11} {'mem ratio':>9} {'max|Δd|':>9}")
    print(head)
    for r in results:
        peer = f"{r['peer_seconds']:9.2f}" if r["peer_finished"] else f"{'DNF':>9}"
        sp_ = f"{r['speedup']:8.1f}" if r["peer_finished"] else f"{'—':>8}"
        pm = f"{r['peer_rss_net_mb']:11.0f}" if r["peer_finished"] else f"{'—':>11}"
        mr = f"{r['memory_ratio']:9.3f}" if r["peer_finished"] else f"{'—':>9}"
        print(f"{r['n']:7d} {r['jaxlab_seconds']:9.2f} "
              f"{r['jaxlab_compile_seconds']:9.2f} {peer} {sp_} "
              f"{r['jaxlab_rss_net_mb']:10.0f} {pm} {mr} {r['max_abs_diff']:9.2e}")
        if not r["peer_finished"]:
            print(f"  N={r['n']}: Isomap did not finish ({r['peer_failure']}); "
                  f"distances checked against {r['check_against']}")
    final = {"benchmark": "geodesic_scores_vs_isomap", "dim": DIM, "k": K,
             "platform": results[0]["meta"]["platform"],
             "device_kind": results[0]["meta"]["device_kind"],
             "cores": os.cpu_count(), "jax_version": results[0]["meta"]["jax_version"],
             "quick": args.quick}
    for r in results:
        n = r["n"]
        for key, value in r.items():
            if key not in ("n", "meta"):
                final[f"{key}_{n}"] = value
        if r["peer_finished"]:
            final[f"speedup_{n}"] = r["speedup"]
            final[f"memory_ratio_{n}"] = r["memory_ratio"]
    print(json.dumps(final))
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(json.dumps(final) + "\n")


if __name__ == "__main__":
    main()
