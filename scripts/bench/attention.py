"""Forward+backward time of jaxlab.attention per normalizer vs jax.nn's attention.

Every variant computes ``grad_{q,k,v} Σ attention(q, k, v) ⊙ g`` for the same
float32 inputs (B=8, L=512, H=8, D=64 by default) and a fixed cotangent g,
jitted. The peer is :func:`jax.nn.dot_product_attention` (XLA implementation,
softmax). Rows:

* ``softmax``, ``l2``, ``none``, ``relu2``, ``swish_l2``: no bias;
* ``softmax+bias``: a ``[H, L, L]`` relative bias (T5-style), against the peer
  with the same bias.

Agreement check: the softmax rows' outputs and gradients are compared to the
peer's (max abs difference printed); the other normalizers have no peer and
are checked finite. Time: one warm-up call (compile time reported
separately), then ``--reps`` (≥ 5) repetitions alternating all variants, the
median per variant and the ratio of medians. Memory: the compiled programs'
``memory_analysis()`` temp bytes. The last line is one JSON object with
``speedup_<variant>`` = peer time / jaxlab time (> 1: jaxlab faster) and
``memory_ratio_<variant>`` = jaxlab temp bytes / peer temp bytes.

Target: the softmax path within 1.2× of the peer (speedup_softmax ≥ 1/1.2).

Run: ``.venv/bin/python scripts/bench/attention.py [--quick] [--reps 7]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import machine_info  # scripts/bench/ is on sys.path when run

from jaxlab import attention as attn
from jaxlab import posenc


def _fwd_bwd(fn):
    """jit(grad of Σ fn(q, k, v) ⊙ g) returning (out, (dq, dk, dv))."""

    def loss(q, k, v, g):
        out = fn(q, k, v)
        return jnp.sum(out * g), out

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)

    def both(q, k, v, g):
        grads, out = grad(q, k, v, g)
        return out, grads

    return jax.jit(both)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.length, args.heads, args.dim, args.reps = 2, 64, 4, 16, 5
    if args.reps < 5:
        parser.error(f"--reps={args.reps}; at least 5 repetitions are required")
    b, length, h, d = args.batch, args.length, args.heads, args.dim

    rng = np.random.default_rng(0)
    q, k, v, g = (
        jnp.asarray(rng.standard_normal((b, length, h, d)), jnp.float32)
        for _ in range(4)
    )
    pos = jnp.arange(length)
    table = jnp.asarray(rng.standard_normal((32, h)), jnp.float32)
    bias = posenc.t5_bias(table, pos, pos)  # [H, L, L]
    bias4 = bias[None]

    variants = {
        "peer": lambda q, k, v: jax.nn.dot_product_attention(q, k, v),
        "peer+bias": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, bias=bias4),
        "softmax+bias": lambda q, k, v: attn.attention(q, k, v, bias=bias),
    }
    for name in attn.NORMALIZERS:
        variants[name] = lambda q, k, v, n=name: attn.attention(q, k, v, normalizer=n)
    peer_of = {name: "peer" for name in attn.NORMALIZERS}
    peer_of["softmax+bias"] = "peer+bias"

    compiled, compile_s, temp = {}, {}, {}
    for name, fn in variants.items():
        t0 = time.perf_counter()
        compiled[name] = _fwd_bwd(fn).lower(q, k, v, g).compile()
        compile_s[name] = time.perf_counter() - t0
        mem = compiled[name].memory_analysis()
        temp[name] = int(getattr(mem, "temp_size_in_bytes", 0)) if mem else 0

    outs = {}
    for name, c in compiled.items():  # warm-up + agreement inputs
        outs[name] = jax.block_until_ready(c(q, k, v, g))
    agree = {}
    for name in ("softmax", "softmax+bias"):
        ref = outs[peer_of[name]]
        agree[name] = max(
            float(jnp.max(jnp.abs(a - r)))
            for a, r in zip(jax.tree.leaves(outs[name]), jax.tree.leaves(ref))
        )
    finite = {
        name: bool(all(jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(outs[name])))
        for name in attn.NORMALIZERS
    }

    times = {name: [] for name in compiled}
    for _ in range(args.reps):
        for name, c in compiled.items():  # alternate variants in each repetition
            t0 = time.perf_counter()
            jax.block_until_ready(c(q, k, v, g))
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}

    print(
        f"\nattention forward+backward, float32, B={b} L={length} H={h} D={d}, "
        f"{args.reps} alternating reps (median); peer = jax.nn.dot_product_attention"
    )
    print(
        f"{'variant':14} {'median ms':>10} {'peer ms':>9} {'time/peer':>9} "
        f"{'temp MB':>8} {'mem/peer':>8} {'compile s':>9}"
    )
    summary = {
        "bench": "attention",
        "shape": {"B": b, "L": length, "H": h, "D": d},
        "reps": args.reps,
    }
    for name in compiled:
        if name.startswith("peer"):
            continue
        peer = peer_of[name]
        ratio = med[name] / med[peer]
        mem_ratio = temp[name] / max(temp[peer], 1)
        print(
            f"{name:14} {med[name] * 1e3:10.2f} {med[peer] * 1e3:9.2f} {ratio:9.3f} "
            f"{temp[name] / 2**20:8.1f} {mem_ratio:8.3f} {compile_s[name]:9.2f}"
        )
        key = name.replace("+", "_")
        summary[f"speedup_{key}"] = med[peer] / med[name]
        summary[f"memory_ratio_{key}"] = mem_ratio
        summary[f"ms_{key}"] = med[name] * 1e3
    for peer in ("peer", "peer+bias"):
        summary[f"ms_{peer.replace('+', '_')}"] = med[peer] * 1e3
    print("agreement with the peer (max |Δ| over output and grads):",
          {k: f"{x:.2e}" for k, x in agree.items()})
    print("other normalizers finite:", finite)
    target = med["softmax"] / med["peer"] <= 1.2
    print(f"target softmax within 1.2x of the peer: {target}")
    summary.update(
        agreement_max_abs=agree,
        finite=finite,
        target_softmax_within_1_2x=target,
        **machine_info(),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
