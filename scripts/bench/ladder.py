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

Memory breakdown: the state trees give the exact bytes of the trainable and
frozen weights, the Adam state and the batch (the arguments); temp holds the
activations kept for the backward pass, the gradients that XLA materializes
(it fuses many straight into the Adam update, so they cannot be split off
exactly) and workspace. "once" = arguments + temp,
i.e. every buffer counted once as a PyTorch peak-memory reading would (the
issue's total also counts the outputs, which alias the donated arguments).
A second, compile-only table repeats the memory at the LST paper's GLUE shape
(batch 100 × sequence 128), where activations dominate as they do for T5-base.

Why adapters/LoRA come out below the paper's ≥ 0.7× at 32 × 64 (measured on
2 CPU cores, jax 0.10.2): 0.56× total, 0.62× counted once. The steps are the
paper's baselines: the adapters sit inside every block, so the backward pass
runs through the whole backbone and its activations are kept (temp 495 MB vs
685 MB for full FT). What differs is the mix of memory parts. Full FT's
arguments are 86 MB weights + 172 MB Adam state (plus their 258 MB output
copies in the issue's total); its gradients are in temp. Adapters/LoRA drop
the Adam state and the weight gradients (≈ 260 MB counted once) and XLA also
frees the inputs of frozen matmuls that only the weight gradients need. For
MiniLM at 32 × 64 these parameter-sized parts are ≈ 36% of full FT's 943 MB;
for T5-base in the paper (220M parameters, batch 100 × 128) weights + gradients
+ Adam are ≈ 3.5 of 17.6 GB, so activations dominate and PEFT saves ≈ 26%.
At the paper's shape the same steps measure adapters 0.79×, LoRA 0.80× (≥ 0.7,
as in the paper) but LST 0.41×: the side network keeps all 12 heads (official
config), so its saved attention maps [B, 12, L, L] are as large as the
backbone's (≈ 79 MB per tensor per side layer at 100 × 128) and do not shrink
with r; with d = 384 they are a larger share of MiniLM's activations than of
T5-base's (d = 768).

Agreement check: adapters and LoRA are the identity at init, so their logits
must equal the plain classifier's with the same head; LST's logits through the
backbone must equal its logits on precomputed (cacheable) backbone taps.

Run: ``.venv/bin/python scripts/bench/ladder.py [--quick] [--reps 7]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import machine_info  # scripts/bench/ is on sys.path when run
from flax import nnx

from jaxlab import ladder, train
from jaxlab.nn import bert, peft

METHODS = ("full", "adapter", "lora", "bitfit", "probe", "lst")
PAPER_METHODS = ("full", "adapter", "lora", "lst")


def nbytes(tree):
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def make_batch(tok, batch, seq):
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int32)
    ids[:, 0] = tok.token_to_id("[CLS]")
    ids[:, -1] = tok.token_to_id("[SEP]")
    return {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.ones((batch, seq), jnp.int32),
        "label": jnp.asarray(rng.integers(0, 2, batch), jnp.int32),
    }


def breakdown(state, batch, mem):
    """Per-part bytes of one compiled train step (see the module docstring)."""
    parts = {
        "trainable_weights": nbytes(state.params),
        "frozen_weights": nbytes(state.rest),
        "adam_state": nbytes(state.opt_state),
        "batch": nbytes(batch),
    }
    parts["temp"] = mem["temp"]
    parts["outputs_double_counted"] = mem["output"]
    parts["once"] = mem["argument"] + mem["temp"]
    return parts


def paper_regime(weights, tok, num_layers, args, batch, seq):
    """Compile-only memory of full FT, adapters, LoRA and LST at batch × seq."""
    data = make_batch(tok, batch, seq)
    opt = optax.adam(1e-4)
    out = {}
    for method in PAPER_METHODS:
        model = build(method, weights, num_layers, args)
        trainable = peft.trainable_filter(method)
        graphdef, state = train.init_state(model, opt, trainable)
        step = train.make_train_step(graphdef, peft.classification_loss, opt, trainable)
        mem = ladder.compiled_memory(
            step.lower(state, data, jax.random.key(0)).compile()
        )
        out[method] = {**mem, **breakdown(state, data, mem)}
    return out


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
    parser.add_argument(
        "--no-paper-regime",
        action="store_true",
        help="skip the compile-only memory table at batch 100 × seq 128",
    )
    args = parser.parse_args()
    num_layers = None
    if args.quick:
        args.batch, args.seq, args.reps, num_layers = 4, 16, 5, 2
    if args.reps < 5:
        parser.error(f"--reps={args.reps}; at least 5 repetitions are required")

    weights = bert.load_weights()
    tok = bert.load_tokenizer()
    batch = make_batch(tok, args.batch, args.seq)
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
            "parts": breakdown(state, batch, mem),
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
    print(
        "\nPer-part memory (MB): weights/Adam/batch are arguments; temp = saved "
        "activations + gradients + workspace; outputs alias the donated arguments"
    )
    print(
        f"{'method':8} {'train W':>8} {'frozen W':>8} {'Adam':>8} {'batch':>6} "
        f"{'temp':>8} {'outputs':>8} {'once':>8} {'once/full':>9}"
    )
    full_once = rows["full"]["parts"]["once"]
    for method in METHODS:
        q = rows[method]["parts"]
        print(
            f"{method:8} {q['trainable_weights'] * mb:8.1f} "
            f"{q['frozen_weights'] * mb:8.1f} {q['adam_state'] * mb:8.1f} "
            f"{q['batch'] * mb:6.2f} {q['temp'] * mb:8.1f} "
            f"{q['outputs_double_counted'] * mb:8.1f} {q['once'] * mb:8.1f} "
            f"{q['once'] / full_once:9.3f}"
        )
        result[method]["parts_bytes"] = q
    paper = {}
    if not args.no_paper_regime:
        pb, ps = (8, 32) if args.quick else (100, 128)
        paper = paper_regime(weights, tok, num_layers, args, pb, ps)
        print(
            f"\nCompile-only memory at the paper's GLUE shape, batch {pb} × seq {ps} "
            "(MB):"
        )
        print(
            f"{'method':8} {'total':>9} {'mem/full':>8} {'temp':>9} {'once':>9} "
            f"{'once/full':>9}"
        )
        for method in PAPER_METHODS:
            q = paper[method]
            print(
                f"{method:8} {q['total'] * mb:9.1f} "
                f"{q['total'] / paper['full']['total']:8.3f} "
                f"{q['temp'] * mb:9.1f} {q['once'] * mb:9.1f} "
                f"{q['once'] / paper['full']['once']:9.3f}"
            )
    print("agreement (max |Δlogits|):", {k: f"{v:.2e}" for k, v in agree.items()})
    targets = {
        "lst_memory_le_0.35": rows["lst"]["memory"]["total"] / full_mem <= 0.35,
        "adapter_memory_ge_0.7": rows["adapter"]["memory"]["total"] / full_mem >= 0.7,
        "lora_memory_ge_0.7": rows["lora"]["memory"]["total"] / full_mem >= 0.7,
        "lst_time_le_0.6": statistics.median(times["lst"]) / full_time <= 0.6,
    }
    if paper:
        ratio = {m: paper[m]["total"] / paper["full"]["total"] for m in paper}
        targets.update(
            {
                "paper_shape_lst_memory_le_0.35": ratio["lst"] <= 0.35,
                "paper_shape_adapter_memory_ge_0.7": ratio["adapter"] >= 0.7,
                "paper_shape_lora_memory_ge_0.7": ratio["lora"] >= 0.7,
            }
        )
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
        **{
            f"memory_ratio_once_{m}_vs_full": rows[m]["parts"]["once"] / full_once
            for m in METHODS
            if m != "full"
        },
        **{
            f"memory_ratio_paper_shape_{m}_vs_full": paper[m]["total"]
            / paper["full"]["total"]
            for m in paper
            if m != "full"
        },
        "paper_shape": [pb, ps] if paper else None,
        "paper_shape_bytes": paper,
        "targets_met": targets,
        "agreement_max_abs": agree,
        "methods": result,
        **machine_info(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
