"""Memory and step time of Ladder Side-Tuning vs full fine-tuning, adapters, LoRA.

Every method fine-tunes the same pretrained all-MiniLM-L6-v2 for binary
classification with Adam, through the same jitted train step
(``jaxlab.train.make_train_step``) at batch 32 × sequence 64. For each method:

* memory: ``jax.jit(step).lower(...).compile().memory_analysis()``,
  temp + argument + output bytes (the issue's definition), and "net" =
  that minus the output bytes aliased to donated arguments (counted once);
* time: median over ≥ 5 alternating repetitions after a warm-up call.

Targets from the LST paper (arXiv 2206.06522): LST ≤ 0.35× full fine-tuning
memory while adapters/LoRA stay ≥ 0.7×; LST step time ≤ 0.6× full FT.

Agreement check: adapters and LoRA are the identity at init, so their logits
must equal the plain classifier's with the same head; LST's logits through the
backbone must equal its logits on precomputed (cacheable) backbone taps.

Run: ``.venv/bin/python scripts/bench/ladder.py [--quick] [--reps 7]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlab import ladder, train
from jaxlab.nn import bert, peft

METHODS = ("full", "adapter", "lora", "bitfit", "probe", "lst")


def build(method, weights, num_layers, args):
    backbone = bert.bert_from_weights(weights, num_layers=num_layers)
    return peft.make_model(
        method,
        backbone,
        num_classes=2,
        rngs=nnx.Rngs(0),
        lora_rank=args.lora_rank,
        adapter_bottleneck=args.bottleneck,
        reduction=args.reduction,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--reduction", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--bottleneck", type=int, default=32)
    args = parser.parse_args()
    num_layers = None
    if args.quick:
        args.batch, args.seq, args.reps, num_layers = 4, 16, 5, 2
    if args.reps < 5:
        parser.error(f"--reps={args.reps}; at least 5 repetitions are required")

    weights = bert.load_weights()
    tok = bert.load_tokenizer()
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (args.batch, args.seq)).astype(np.int32)
    ids[:, 0] = tok.token_to_id("[CLS]")
    ids[:, -1] = tok.token_to_id("[SEP]")
    batch = {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.ones((args.batch, args.seq), jnp.int32),
        "label": jnp.asarray(rng.integers(0, 2, args.batch), jnp.int32),
    }
    key = jax.random.key(0)
    opt = optax.adam(1e-4)

    rows, steps, states, compile_s = {}, {}, {}, {}
    models = {m: build(m, weights, num_layers, args) for m in METHODS}
    backbone_params = nnx.state(models["full"].backbone, nnx.Param)
    for method, model in models.items():
        trainable = peft.trainable_filter(method)
        graphdef, state = train.init_state(model, opt, trainable)
        step = train.make_train_step(graphdef, peft.classification_loss, opt, trainable)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch, key).compile()
        compile_s[method] = time.perf_counter() - t0
        mem = ladder.compiled_memory(compiled)
        rows[method] = {
            "memory": mem,
            "trainable_pct": ladder.trainable_percentage(state.params, backbone_params),
            "compile_s": compile_s[method],
        }
        # Warm-up call (the step donates its state, so keep the returned one).
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)
        steps[method], states[method] = compiled, state

    # Agreement checks (same inputs, answers must match).
    plain = models["full"]
    ref_logits = nnx.jit(lambda m, b: m(b["input_ids"], b["attention_mask"]))
    agree = {}
    for method in ("adapter", "lora"):
        other = models[method]
        other.head = plain.head  # same head: identity-initialized extras only
        diff = ref_logits(other, batch) - ref_logits(plain, batch)
        agree[method] = float(jnp.abs(diff).max())
    lst = models["lst"]
    taps = nnx.jit(lambda m, b: m.taps(b["input_ids"], b["attention_mask"]))(lst, batch)
    cached = nnx.jit(lambda m, t, k: m.side_forward(t, k))(
        lst, taps, batch["attention_mask"]
    )
    agree["lst_cached_taps"] = float(jnp.abs(cached - ref_logits(lst, batch)).max())

    times = {m: [] for m in METHODS}
    for _ in range(args.reps):
        for method in METHODS:  # alternate methods within each repetition
            t0 = time.perf_counter()
            states[method], metrics = steps[method](states[method], batch, key)
            jax.block_until_ready(metrics)
            times[method].append(time.perf_counter() - t0)

    full_mem = rows["full"]["memory"]["total"]
    # "net": outputs that reuse donated argument buffers (alias) counted once.
    full_net = full_mem - rows["full"]["memory"]["alias"]
    full_time = statistics.median(times["full"])
    print(
        f"\nLadder Side-Tuning benchmark: all-MiniLM-L6-v2"
        f"{'' if num_layers is None else f' ({num_layers}-layer slice)'}, "
        f"batch {args.batch} × seq {args.seq}, Adam; r={args.reduction}, "
        f"LoRA rank {args.lora_rank} (q, v), adapter bottleneck {args.bottleneck}"
    )
    print(
        f"{'method':8} {'train %':>9} {'temp MB':>9} {'arg MB':>8} {'out MB':>8} "
        f"{'total MB':>9} {'mem/full':>8} {'net MB':>8} {'net/full':>8} "
        f"{'step ms':>9} {'time/full':>9} {'compile s':>9}"
    )
    mb = 1 / 2**20
    result = {}
    for method in METHODS:
        m = rows[method]["memory"]
        t = statistics.median(times[method])
        mem_ratio = m["total"] / full_mem
        net = m["total"] - m["alias"]
        time_ratio = t / full_time
        print(
            f"{method:8} {rows[method]['trainable_pct']:9.3f} {m['temp'] * mb:9.1f} "
            f"{m['argument'] * mb:8.1f} {m['output'] * mb:8.1f} {m['total'] * mb:9.1f} "
            f"{mem_ratio:8.3f} {net * mb:8.1f} {net / full_net:8.3f} "
            f"{t * 1e3:9.1f} {time_ratio:9.3f} {compile_s[method]:9.1f}"
        )
        result[method] = {
            **{f"{k}_bytes": v for k, v in m.items()},
            "step_ms_median": t * 1e3,
            "step_ms_all": [x * 1e3 for x in times[method]],
            "trainable_pct": rows[method]["trainable_pct"],
            "compile_s": compile_s[method],
        }
    print("agreement (max |Δlogits|):", {k: f"{v:.2e}" for k, v in agree.items()})
    targets = {
        "lst_memory_le_0.35": rows["lst"]["memory"]["total"] / full_mem <= 0.35,
        "adapter_memory_ge_0.7": rows["adapter"]["memory"]["total"] / full_mem >= 0.7,
        "lora_memory_ge_0.7": rows["lora"]["memory"]["total"] / full_mem >= 0.7,
        "lst_time_le_0.6": statistics.median(times["lst"]) / full_time <= 0.6,
    }
    print("paper targets met:", targets)
    summary = {
        "bench": "ladder",
        "batch": args.batch,
        "seq": args.seq,
        "reps": args.reps,
        "num_layers": num_layers or 6,
        **{
            f"memory_ratio_{m}_vs_full": rows[m]["memory"]["total"] / full_mem
            for m in METHODS
            if m != "full"
        },
        **{
            f"speedup_{m}_vs_full": full_time / statistics.median(times[m])
            for m in METHODS
            if m != "full"
        },
        **{
            f"memory_ratio_net_{m}_vs_full": (
                rows[m]["memory"]["total"] - rows[m]["memory"]["alias"]
            )
            / full_net
            for m in METHODS
            if m != "full"
        },
        "targets_met": targets,
        "agreement_max_abs": agree,
        "methods": result,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "jax_version": jax.__version__,
        "load_avg_1min": os.getloadavg()[0],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
