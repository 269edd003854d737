"""Sparse-index vs dense multi-label CE on 10,000 classes with 5 positives.

Both sides compute the same per-example losses of
:func:`jaxlab.losses.multilabel_crossentropy` (threshold 0) on the same float32
logits ``[B, C]`` (B=128, C=10,000 by default): the dense form gets the 0/1
label array ``[B, C]`` (int32, as a data pipeline would deliver it), the sparse
form :func:`jaxlab.losses.sparse_multilabel_crossentropy` gets the positive
indices ``[B, 5]``. Rows:

* ``fwd``: the batch-mean loss;
* ``fwd+bwd``: the loss and its gradient with respect to the logits (a
  training step's loss work).

A third program, the textbook sparse evaluation ``all + log(1 - exp(aux -
all))`` of reference section 6 (the form in bert4keras; written here from the
formula), is timed too and checked for NaN/inf on a confident batch, where the
positives' logits are shifted by +40 (bert4keras issue #436).

Agreement check: max |difference| of the per-example losses and gradients of
sparse vs dense, on the random batch and on the confident batch. Time: one
warm-up call per program (compile time reported separately), then ``--reps``
(>= 5) repetitions alternating the programs, median per program, ratio of
medians. Memory: the compiled programs' ``memory_analysis()`` (argument +
output + temporary bytes; the labels are an argument, so the dense side pays
for them). The last line is one JSON object with ``speedup_<row>`` = dense time
/ sparse time (> 1: sparse faster) and ``memory_ratio_<row>`` = sparse bytes /
dense bytes (< 1: sparse smaller), the platform, device kind, core count and
jax version.

Run: ``.venv/bin/python scripts/bench/losses.py [--quick] [--reps 7]``
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

from jaxlab import losses


def _textbook_sparse(logits, label_ids):
    """Reference section 6 as usually implemented: all + log(1 - exp(aux - all))."""
    zeros = jnp.zeros_like(logits[..., :1])
    pos = jnp.take_along_axis(logits, label_ids, axis=-1)
    pos_term = jax.nn.logsumexp(jnp.concatenate([-pos, zeros], -1), -1)
    all_ = jax.nn.logsumexp(jnp.concatenate([logits, zeros], -1), -1)
    aux = jax.nn.logsumexp(pos, -1)
    return pos_term + all_ + jnp.log1p(-jnp.exp(aux - all_))


def _programs():
    def mean_of(fn):
        return lambda s, lab: jnp.mean(fn(s, lab))

    def with_grad(fn):
        def run(s, lab):
            value, grad = jax.value_and_grad(lambda x: jnp.mean(fn(x, lab)))(s)
            return value, grad

        return run

    fns = {
        "dense": losses.multilabel_crossentropy,
        "sparse": losses.sparse_multilabel_crossentropy,
        "textbook": _textbook_sparse,
    }
    progs = {}
    for name, fn in fns.items():
        progs[("fwd", name)] = jax.jit(mean_of(fn))
        progs[("fwd+bwd", name)] = jax.jit(with_grad(fn))
    return progs


def _bytes(compiled) -> int:
    mem = compiled.memory_analysis()
    if mem is None:
        return 0
    return int(
        mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--positives", type=int, default=5)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.classes, args.reps = 8, 1000, 5
    if args.reps < 5:
        parser.error(f"--reps={args.reps}; at least 5 repetitions are required")
    if not 1 <= args.positives <= args.classes:
        parser.error(f"--positives={args.positives} must be in [1, --classes]")
    b, c, k = args.batch, args.classes, args.positives

    rng = np.random.default_rng(0)
    logits = (3.0 * rng.standard_normal((b, c))).astype(np.float32)
    ids = np.argsort(rng.random((b, c)), axis=-1)[:, :k].astype(np.int32)
    labels = np.zeros((b, c), np.int32)
    np.put_along_axis(labels, ids, 1, axis=-1)
    confident = logits.copy()
    np.put_along_axis(confident, ids, np.take_along_axis(logits, ids, -1) + 40.0, -1)
    s, s_conf = jnp.asarray(logits), jnp.asarray(confident)
    inputs = {"dense": jnp.asarray(labels), "sparse": jnp.asarray(ids)}
    inputs["textbook"] = inputs["sparse"]

    compiled, compile_s, nbytes = {}, {}, {}
    for key, prog in _programs().items():
        t0 = time.perf_counter()
        compiled[key] = prog.lower(s, inputs[key[1]]).compile()
        compile_s[key] = time.perf_counter() - t0
        nbytes[key] = _bytes(compiled[key])

    # Agreement (per-example values and gradients), random and confident batch.
    per_example = jax.jit(
        lambda fn, x, lab: jax.vmap(jax.value_and_grad(fn))(x, lab), static_argnums=0
    )
    agree, finite = {}, {}
    for batch_name, x in (("random", s), ("confident", s_conf)):
        out = {
            name: per_example(fn, x, inputs[name])
            for name, fn in (
                ("dense", losses.multilabel_crossentropy),
                ("sparse", losses.sparse_multilabel_crossentropy),
                ("textbook", _textbook_sparse),
            )
        }
        for name in ("sparse", "textbook"):
            diff = max(
                float(jnp.max(jnp.abs(a - r)))
                for a, r in zip(out[name], out["dense"])
            )
            agree[f"{name}_{batch_name}"] = diff
            finite[f"{name}_{batch_name}"] = bool(
                all(jnp.all(jnp.isfinite(a)) for a in out[name])
            )
        finite[f"dense_{batch_name}"] = bool(
            all(jnp.all(jnp.isfinite(a)) for a in out["dense"])
        )

    for key, prog in compiled.items():  # warm-up
        jax.block_until_ready(prog(s, inputs[key[1]]))
    times = {key: [] for key in compiled}
    for _ in range(args.reps):
        for key, prog in compiled.items():  # alternate programs in each repetition
            t0 = time.perf_counter()
            jax.block_until_ready(prog(s, inputs[key[1]]))
            times[key].append(time.perf_counter() - t0)
    med = {key: statistics.median(ts) for key, ts in times.items()}

    print(
        f"\nmulti-label CE, float32, B={b} C={c} positives={k}, {args.reps} "
        "alternating reps (median); peer = dense form with [B, C] labels"
    )
    print(
        f"{'row':8} {'program':9} {'median ms':>10} {'vs dense':>9} {'MB':>8} "
        f"{'mem/dense':>9} {'compile s':>9}"
    )
    summary = {"bench": "losses", "shape": {"B": b, "C": c, "K": k}, "reps": args.reps}
    for row in ("fwd", "fwd+bwd"):
        dense_t, dense_b = med[(row, "dense")], nbytes[(row, "dense")]
        for name in ("dense", "sparse", "textbook"):
            key = (row, name)
            print(
                f"{row:8} {name:9} {med[key] * 1e3:10.3f} {med[key] / dense_t:9.3f} "
                f"{nbytes[key] / 2**20:8.2f} {nbytes[key] / dense_b:9.3f} "
                f"{compile_s[key]:9.2f}"
            )
        tag = row.replace("+", "_")
        summary[f"speedup_sparse_{tag}"] = dense_t / med[(row, "sparse")]
        summary[f"memory_ratio_sparse_{tag}"] = nbytes[(row, "sparse")] / dense_b
        summary[f"speedup_textbook_{tag}"] = dense_t / med[(row, "textbook")]
        summary[f"ms_sparse_{tag}"] = med[(row, "sparse")] * 1e3
        summary[f"ms_dense_{tag}"] = dense_t * 1e3
        summary[f"bytes_sparse_{tag}"] = nbytes[(row, "sparse")]
        summary[f"bytes_dense_{tag}"] = dense_b
    print(
        "agreement with dense (max |diff| of per-example loss and gradient):",
        {key: f"{x:.2e}" for key, x in agree.items()},
    )
    print("all finite:", finite)
    summary.update(
        agreement_max_abs=agree,
        finite=finite,
        **machine_info(),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
