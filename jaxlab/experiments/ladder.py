"""Ladder Side-Tuning vs full FT, adapters, LoRA, BitFit on MiniLM (Rotten Tomatoes).

Source: Sung, Cho & Bansal, "LST: Ladder Side-Tuning for Parameter and Memory
Efficient Transfer Learning", NeurIPS 2022 (arXiv 2206.06522); see
``reference/ladder.md``. Backbone: pretrained all-MiniLM-L6-v2 (22.7M params,
``jaxlab.nn.bert``); task: Rotten Tomatoes critic snippets, fresh vs rotten
(Pang & Lee 2004), split by movie into train/dev/test (no movie in two splits).

Methods: linear probe on the frozen encoder, LST with Fisher-pruning init and
with random init (r = 8, ladders on all 6 layers, gates μ = σ(α/0.1)), full
fine-tuning, bottleneck adapters, LoRA (q, v) and BitFit. Every method trained
by gradient gets the same number of Adam steps over the same examples in the
same order (``epochs``); the convex linear probe runs ``probe_epochs`` on cached
features so that it is converged. Reported: test/dev accuracy (mean ± std over
seeds), trainable %, the XLA memory of the (uncached) train step at batch ×
max_length and its ratio to full fine-tuning, the median step time, and where
the CPU time went. LST and the probe train on backbone states cached once (the
backbone is frozen, so this changes no gradient); the uncached LST step is
compiled and timed separately for the memory/time columns.

Baselines that backpropagate through the backbone start from the trained probe
head (LP-FT, Kumar et al., ICLR 2022; ``baseline_head="random"`` turns it off).

Measured (quick: 3 seeds, 1,024 training snippets, 48 steps, 40 tokens, 11%
of training snippets truncated), test accuracy on 512 snippets, mean ± std
over seeds: probe 0.715 ± 0.002, LST-prune 0.735 ± 0.014, LST-random
0.735 ± 0.009, full FT 0.728 ± 0.008, adapters 0.724 ± 0.002, LoRA
0.721 ± 0.001, BitFit 0.730 ± 0.014. One binomial standard error of the test
set is 2.0 points (2.8 for a difference of two methods; averaging seeds does
not shrink it): LST beats the probe (+2.0) and is within 2 points of full FT
(+0.7), but neither margin is resolved by this test set. Step memory / full
FT at 32 × 40: LST 0.31, probe 0.21, adapters 0.50, LoRA 0.49, BitFit 0.47;
LST step time 0.39× full FT.
``reference/data.md`` §4 quotes a probe of 0.78 on a random snippet split with
1,536 training examples; split by movie with 1,024 the probe reaches ≈ 0.72.
Full preset (8,800 training snippets, 64 tokens, 825 steps; 2,640 test
snippets, one standard error 0.8 points), test accuracy: probe 0.756 ± 0.001,
LST-prune 0.794 ± 0.004, LST-random 0.792 ± 0.006, full FT 0.829 ± 0.003
(3 seeds each); adapters 0.816, LoRA 0.812, BitFit 0.806 (seed 0 only). Run in
four parts pooled by seed (``first_seed``); the commands are in the README.
At full scale LST beats the probe (+3.7) but is 3.5 points below full FT.
Runtime: quick 549 s wall, 974 CPU-seconds (user + sys) on an idle 2-core
CPU; the whole full preset (every method, 3 seeds) ≈ 20,000 CPU-seconds: the
four parts above measured 12,800 and adapter/LoRA/BitFit seeds 1 and 2 would
add ≈ 8,900 (not run).

Run: ``jaxlab run ladder --quick``
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

from jaxlab import data, ladder, parallel, train
from jaxlab.nn import bert, peft
from jaxlab.report import Report

ALL_METHODS = ("probe", "lst_prune", "lst_random", "full", "adapter", "lora", "bitfit")
LABELS = {
    "probe": "linear probe",
    "lst_prune": "LST (Fisher-pruning init)",
    "lst_random": "LST (random init)",
    "full": "full fine-tuning",
    "adapter": "adapters",
    "lora": "LoRA",
    "bitfit": "BitFit",
}


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0  # split/subsample seed (and the root of the training keys)
    num_seeds: int = 3
    first_seed: int = 0  # trains seeds first_seed, ..., first_seed + num_seeds - 1
    methods: tuple[str, ...] = ALL_METHODS
    split: tuple[float, ...] = (0.7, 0.1, 0.2)  # train/dev/test movies
    train_size: int = 0  # examples per split after the movie split; 0 = all
    dev_size: int = 0
    test_size: int = 0
    max_length: int = 64  # 0.05% of snippets are longer (see results.json)
    batch_size: int = 32
    epochs: float = 3.0  # every gradient-trained method: LST, full, adapter, ...
    probe_epochs: float = 20.0  # convex head on cached features, run to convergence
    lr_full: float = 5e-5
    lr_adapter: float = 1e-3
    lr_lora: float = 1e-3
    lr_bitfit: float = 2e-3
    lr_lst: float = 3e-3  # official GLUE scripts
    lr_probe: float = 1e-2
    baseline_head: str = "probe"  # "probe" (LP-FT) or "random" for full/adapter/...
    warmup: float = 0.1  # fraction of steps with linear warm-up, then linear decay
    reduction: int = 8
    side_layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    lora_rank: int = 8
    adapter_bottleneck: int = 32
    fisher_examples: int = 1024
    cache_taps: bool = True
    eval_batch: int = 64
    timing_steps: int = 5

    @classmethod
    def quick(cls) -> Config:
        """CPU preset: three seeds, 1,024 training snippets, 48 steps per method.

        Every gradient-trained method (LST ×2, full FT, adapters, LoRA, BitFit)
        takes the same 48 Adam steps (1.5 epochs) over the same 1,024 snippets
        per seed; sequences are cut at 40 tokens (11% of training snippets are
        longer; median 26 tokens). About 9 minutes on a 2-core CPU.
        """
        return cls(
            num_seeds=3,
            train_size=1024,
            dev_size=256,
            test_size=512,
            max_length=40,
            epochs=1.5,
            lr_full=1e-4,
            fisher_examples=64,
            timing_steps=3,
        )

    @classmethod
    def full(cls) -> Config:
        return cls()


def run(config: Config, out_dir: pathlib.Path) -> dict:
    _validate(config)
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    key = jr.key(config.seed)
    split_key, sub_key, train_key = jr.split(key, 3)

    # ---------------------------------------------------------------- data
    splits, split_info = _movie_split(split_key, sub_key, config)
    minilm = bert.load_minilm()
    weights = bert.load_weights()
    lengths = np.array(
        [len(e.ids) for e in minilm.tokenizer.encode_batch(splits["train"]["text"])]
    )
    length_info = {
        "max_length": config.max_length,
        "mean": float(lengths.mean()),
        **{f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 95, 99, 100)},
        "truncated_fraction": float(np.mean(lengths > config.max_length)),
    }
    for part in splits.values():
        ids, mask = minilm.tokenize(
            part["text"], max_length=config.max_length, length=config.max_length
        )
        part.update(input_ids=ids, attention_mask=mask)
    truncated = length_info["truncated_fraction"]

    def fresh(method, seed_key):
        backbone = bert.bert_from_weights(weights)
        return peft.make_model(
            "lst" if method.startswith("lst") else method,
            backbone,
            num_classes=2,
            rngs=nnx.Rngs(params=seed_key),
            lora_rank=config.lora_rank,
            adapter_bottleneck=config.adapter_bottleneck,
            reduction=config.reduction,
            side_layers=config.side_layers,
        )

    # Frozen-backbone states, computed once (LST ladders + probe features).
    needs_cache = any(m.startswith("lst") or m == "probe" for m in config.methods)
    t0 = time.perf_counter()
    c0 = time.process_time()
    if needs_cache:
        tapper = fresh("lst_random", jr.key(0))
        for part in splits.values():
            taps, pooled = peft.cache_taps(
                tapper,
                part["input_ids"],
                part["attention_mask"],
                batch_size=config.eval_batch,
            )
            part["features"] = pooled
            if config.cache_taps:
                part["taps"] = taps
    cache_s = time.perf_counter() - t0
    cache_cpu = time.process_time() - c0

    # ---------------------------------------------------------------- train
    results, curves, fisher_info, step_cache = {}, {}, {}, {}
    probe_heads = None  # per-seed trained probe heads
    for method in config.methods:
        out = _run_method(
            method,
            config,
            splits,
            fresh,
            train_key,
            probe_heads,
            fisher_info,
            step_cache,
        )
        results[method], curves[method] = out["summary"], out["curve"]
        if method == "probe":
            probe_heads = out["heads"]
        r = results[method]
        spread = (
            f"± {r['test_acc_std']:.4f}" if len(r["test_acc"]) > 1 else "(1 seed)"
        )
        print(
            f"[ladder] {method}: test acc {r['test_acc_mean']:.4f} {spread}", flush=True
        )

    # ---------------------------------------------------------------- ratios
    ref = results.get("full")
    for row in results.values():
        row["memory_ratio"] = row["memory_bytes"] / ref["memory_bytes"] if ref else None
        row["time_ratio"] = row["step_ms"] / ref["step_ms"] if ref else None
    wall = time.perf_counter() - t_start
    verdict = _verdict(results)
    summary = {
        "config": dataclasses.asdict(config),
        "split": split_info,
        "truncated_fraction_train": truncated,
        "token_lengths_train": length_info,
        "cache_seconds": cache_s,
        "cache_cpu_seconds": cache_cpu,
        "fisher": fisher_info,
        "methods": results,
        "verdict": verdict,
        "wall_seconds": wall,
        "cpu_seconds": time.process_time() - cpu_start,
        "load_avg_1min_at_end": os.getloadavg()[0],
        "platform": jax.devices()[0].platform,
        "cores": os.cpu_count(),
        "jax_version": jax.__version__,
    }
    return _write(out_dir, config, summary, curves)


# ----------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------


def _validate(config: Config) -> None:
    bad = [m for m in config.methods if m not in ALL_METHODS]
    if bad or not config.methods:
        raise ValueError(f"methods={config.methods!r}; allowed: {ALL_METHODS}.")
    ms = config.methods
    if (
        "lst_prune" in ms
        and "probe" in ms
        and ms.index("probe") > ms.index("lst_prune")
    ):
        raise ValueError(
            "methods: 'probe' must come before 'lst_prune' (its head defines "
            "the Fisher loss)."
        )
    if len(config.split) != 3:
        raise ValueError(
            f"split={config.split!r}; need three fractions (train, dev, test)."
        )
    if config.num_seeds < 1:
        raise ValueError(f"num_seeds={config.num_seeds!r}; must be ≥ 1.")
    if config.first_seed < 0:
        raise ValueError(f"first_seed={config.first_seed!r}; must be ≥ 0.")
    for name in ("epochs", "probe_epochs"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name}={getattr(config, name)!r}; must be > 0.")
    if config.baseline_head not in ("probe", "random"):
        raise ValueError(
            f"baseline_head={config.baseline_head!r}; allowed: 'probe', 'random'."
        )
    if config.fisher_examples < 1:
        raise ValueError(f"fisher_examples={config.fisher_examples!r}; must be ≥ 1.")


def _movie_split(split_key, sub_key, config):
    df = data.load_rotten_tomatoes()
    movies = np.unique(df["movie"].to_numpy())
    parts = data.split(split_key, len(movies), config.split)
    names = ("train", "dev", "test")
    sizes = (config.train_size, config.dev_size, config.test_size)
    out, info = {}, {}
    movie_col = df["movie"].to_numpy()
    for i, (name, idx, size) in enumerate(zip(names, parts, sizes, strict=True)):
        rows = np.flatnonzero(np.isin(movie_col, movies[idx]))
        total = len(rows)
        if 0 < size < len(rows):
            perm = np.asarray(jr.permutation(jr.fold_in(sub_key, i), len(rows)))
            rows = np.sort(rows[perm[:size]])
        out[name] = {
            "text": df["text"].to_numpy()[rows].tolist(),
            "label": df["label"].to_numpy()[rows].astype(np.int32),
            "movie": movie_col[rows],
        }
        info[name] = {
            "movies": len(idx),
            "examples_in_split": int(total),
            "examples_used": len(rows),
            "fresh_fraction": float(np.mean(out[name]["label"])),
        }
    seen = [set(out[n]["movie"]) for n in names]
    overlap = len(seen[0] & seen[1]) + len(seen[0] & seen[2]) + len(seen[1] & seen[2])
    if overlap:
        raise RuntimeError(f"movie split leaked {overlap} movies across splits")
    info["movies_shared_between_splits"] = overlap
    return out, info


def _inputs(method, part, config):
    """The batch fields a method trains/evaluates on."""
    base = {"label": part["label"]}
    if method == "probe":
        return {**base, "features": part["features"]}
    if method.startswith("lst") and "taps" in part:
        return {**base, "taps": part["taps"], "attention_mask": part["attention_mask"]}
    return {
        **base,
        "input_ids": part["input_ids"],
        "attention_mask": part["attention_mask"],
    }


def _optimizer(method, config, num_steps):
    lr = {
        "probe": config.lr_probe,
        "lst_prune": config.lr_lst,
        "lst_random": config.lr_lst,
        "full": config.lr_full,
        "adapter": config.lr_adapter,
        "lora": config.lr_lora,
        "bitfit": config.lr_bitfit,
    }[method]
    warm = max(1, int(config.warmup * num_steps))
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, warm),
            optax.linear_schedule(lr, 0.0, max(1, num_steps - warm)),
        ],
        [warm],
    )
    return optax.adam(schedule), lr


def _run_method(
    method, config, splits, fresh, train_key, probe_heads, fisher_info, step_cache
):
    from tqdm.auto import tqdm

    timer = {"compile": 0.0, "train": 0.0, "eval": 0.0}  # CPU seconds (process)

    trainable = peft.trainable_filter("lst" if method.startswith("lst") else method)
    epochs = config.probe_epochs if method == "probe" else config.epochs
    train_data = _inputs(method, splits["train"], config)
    n_train = len(train_data["label"])
    steps_per_epoch = n_train // config.batch_size
    num_steps = max(1, round(epochs * steps_per_epoch))
    opt, lr = _optimizer(method, config, num_steps)
    importance = None
    if method == "lst_prune":
        head0 = probe_heads[0] if probe_heads else None
        importance = _fisher(config, splits, fresh, train_key, head0, fisher_info)

    accs, dev_accs, step_times, curve, compiled, memory = [], [], [], [], None, None
    heads = []
    lp_ft = (
        method in ("full", "adapter", "lora", "bitfit")
        and config.baseline_head == "probe"
        and probe_heads is not None
    )
    show = os.environ.get("JAXLAB_PROGRESS", "1") != "0"
    mesh = parallel.default_mesh()
    for k, (s, seed_key) in enumerate(_seed_keys(train_key, config)):
        model = fresh(method, jr.fold_in(seed_key, 0))
        if lp_ft:  # LP-FT: start from this seed's trained linear-probe head
            model.head = nnx.merge(*nnx.split(probe_heads[k]))
        if importance is not None:
            peft.init_side_from_backbone(model, importance)
        graphdef, state = train.init_state(model, opt, trainable)
        # `--set mesh=...`: batch on the data axis; params replicated, or FSDP
        # when the mesh has a model axis (the same placement `train.fit` uses).
        state, shardings = train.place_state(state, mesh)
        batches = data.Batcher(jr.fold_in(seed_key, 1), train_data, config.batch_size)
        if compiled is None:
            # One compilation per method (shared by both LST inits: same graph,
            # shapes and schedule), reused for every seed.
            cache_key = (
                "lst" if method.startswith("lst") else method,
                lr,
                num_steps,
            )
            c0 = time.process_time()
            if cache_key not in step_cache:
                step = train.make_train_step(
                    graphdef,
                    peft.classification_loss,
                    opt,
                    trainable,
                    state_sharding=shardings,
                )
                first = _device(batches(0), mesh)
                step_cache[cache_key] = step.lower(state, first, seed_key).compile()
            compiled = step_cache[cache_key]
            memory = ladder.compiled_memory(compiled)
            timer["compile"] += time.process_time() - c0
        times, losses = [], []
        c0 = time.process_time()
        bar = tqdm(
            range(num_steps),
            desc=f"{method} seed {s}",
            leave=False,
            disable=not show or None,
        )
        for i in bar:
            batch = _device(batches(i), mesh)
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch, seed_key)
            loss = float(metrics["loss"])  # syncs: the step time is complete
            times.append(time.perf_counter() - t0)
            losses.append(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{method} seed {s}: loss {loss} at step {i}")
        timer["train"] += time.process_time() - c0
        c0 = time.process_time()
        trained = nnx.merge(graphdef, state.params, state.rest)
        test = _inputs(method, splits["test"], config)
        accs.append(peft.accuracy(trained, test, batch_size=config.eval_batch))
        if len(splits["dev"]["label"]):
            dev = _inputs(method, splits["dev"], config)
            dev_accs.append(peft.accuracy(trained, dev, batch_size=config.eval_batch))
        timer["eval"] += time.process_time() - c0
        step_times.append(statistics.median(times[1:] or times))
        if k == 0:
            curve = losses
            trainable_pct = ladder.trainable_percentage(
                state.params, nnx.state(trained.backbone, nnx.Param)
            )
        heads.append(trained.head if method == "probe" else None)

    summary = {
        "label": LABELS[method],
        "seeds": list(_seeds(config)),
        "test_acc": accs,
        "test_acc_mean": float(np.mean(accs)),
        "test_acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "dev_acc": dev_accs,
        "dev_acc_mean": float(np.mean(dev_accs)) if dev_accs else None,
        "trainable_pct": trainable_pct,
        "lr": lr,
        "epochs": epochs,
        "steps": num_steps,
        "train_step_ms": 1e3 * statistics.median(step_times),
        "train_step_memory_bytes": memory["total"],
        "head_init": "linear probe (LP-FT)" if lp_ft else "random",
        "cpu_seconds": timer,
        "trains_on": "cached backbone states"
        if "features" in train_data or "taps" in train_data
        else "tokens",
    }
    # Memory and time of the real (uncached) step at batch × max_length.
    if "features" in train_data or "taps" in train_data:
        c0 = time.process_time()
        real = _uncached_step(method, config, splits, fresh, train_key)
        timer["uncached_step"] = time.process_time() - c0
        summary.update(
            memory_bytes=real["memory"]["total"],
            memory=real["memory"],
            step_ms=real["step_ms"],
        )
    else:
        summary.update(
            memory_bytes=memory["total"],
            memory=memory,
            step_ms=summary["train_step_ms"],
        )
    return {"summary": summary, "curve": curve, "heads": heads}


_UNCACHED: dict = {}


def _seeds(config) -> range:
    """The training seeds of ``config``: first_seed, ..., first_seed + num_seeds - 1."""
    return range(config.first_seed, config.first_seed + config.num_seeds)


def _seed_keys(train_key, config) -> list[tuple[int, jax.Array]]:
    """``(seed, key)`` for each training seed of ``config``.

    Seed ``s`` always trains with ``fold_in(train_key, s)``, so a run with
    ``first_seed=1, num_seeds=2`` repeats seeds 1 and 2 of a 3-seed run exactly
    (same initial weights, batch order and dropout) and can be pooled with a
    1-seed run of seed 0.
    """
    return [(s, jr.fold_in(train_key, s)) for s in _seeds(config)]


def _uncached_step(method, config, splits, fresh, train_key):
    """Compile and time the step that runs the frozen backbone every time."""
    kind = "lst" if method.startswith("lst") else method
    cache_key = (kind, config)
    if cache_key in _UNCACHED:  # LST's two inits share one step
        return _UNCACHED[cache_key]
    trainable = peft.trainable_filter("lst" if method.startswith("lst") else method)
    opt, _ = _optimizer(method, config, 100)
    model = fresh(method, jr.key(0))
    graphdef, state = train.init_state(model, opt, trainable)
    step = train.make_train_step(graphdef, peft.classification_loss, opt, trainable)
    part = splits["train"]
    tokens = {k: part[k] for k in ("input_ids", "attention_mask", "label")}
    batch = _device(data.Batcher(jr.key(0), tokens, config.batch_size)(0))
    compiled = step.lower(state, batch, train_key).compile()
    times = []
    for _ in range(config.timing_steps + 1):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, train_key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    out = {
        "memory": ladder.compiled_memory(compiled),
        "step_ms": 1e3 * statistics.median(times[1:]),
    }
    _UNCACHED[cache_key] = out
    return out


def _fisher(config, splits, fresh, train_key, probe_head, info):
    """Fisher importance of the backbone under the probe's cross-entropy."""
    t0, c0 = time.perf_counter(), time.process_time()
    clf = fresh("probe", jr.fold_in(train_key, 999))
    if probe_head is not None:
        clf.head = probe_head
    part = splits["train"]
    n = min(config.fisher_examples, len(part["label"]))
    idx = np.asarray(jr.permutation(jr.fold_in(train_key, 998), len(part["label"])))[:n]
    fisher = peft.backbone_fisher(
        clf,
        jnp.asarray(part["input_ids"][idx]),
        jnp.asarray(part["attention_mask"][idx]),
        jnp.asarray(part["label"][idx]),
    )
    info.update(
        examples=int(n),
        head="trained linear probe" if probe_head is not None else "random",
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
    )
    return fisher


def _device(batch, mesh=None):
    """The batch on device: sharded on the mesh's data axis when there is one."""
    if mesh is not None:
        return parallel.shard_batch(batch, mesh)
    return jax.tree.map(jnp.asarray, batch)


def _verdict(results):
    out = {}
    probe, full = results.get("probe"), results.get("full")
    for name in ("lst_prune", "lst_random"):
        row = results.get(name)
        if row is None:
            continue
        v = {}
        if probe:
            v["beats_probe"] = row["test_acc_mean"] > probe["test_acc_mean"]
            v["minus_probe_points"] = 100 * (
                row["test_acc_mean"] - probe["test_acc_mean"]
            )
        if full:
            v["within_2_points_of_full"] = (
                row["test_acc_mean"] >= full["test_acc_mean"] - 0.02
            )
            v["minus_full_points"] = 100 * (
                row["test_acc_mean"] - full["test_acc_mean"]
            )
        out[name] = v
    return out


def _write(out_dir, config, summary, curves):
    report = Report("ladder: Ladder Side-Tuning on MiniLM, Rotten Tomatoes", out_dir)
    methods = summary["methods"]
    sp = summary["split"]
    seeds = ", ".join(map(str, _seeds(config)))
    report.text(
        f"Backbone: all-MiniLM-L6-v2 (pretrained, 22.7M parameters). Task: Rotten "
        f"Tomatoes fresh/rotten, split **by movie** ({sp['train']['movies']} / "
        f"{sp['dev']['movies']} / {sp['test']['movies']} movies, "
        f"{sp['movies_shared_between_splits']} shared); examples used "
        f"{sp['train']['examples_used']} / {sp['dev']['examples_used']} / "
        f"{sp['test']['examples_used']} (train/dev/test). Sequences padded/truncated "
        f"to {config.max_length} tokens "
        f"({100 * summary['truncated_fraction_train']:.1f}% "
        f"of training snippets truncated; token lengths median "
        f"{summary['token_lengths_train']['p50']:.0f}, 90th percentile "
        f"{summary['token_lengths_train']['p90']:.0f}, 99th "
        f"{summary['token_lengths_train']['p99']:.0f}, max "
        f"{summary['token_lengths_train']['p100']:.0f}); batch "
        f"{config.batch_size}; Adam with {int(100 * config.warmup)}% linear "
        f"warm-up then linear decay; {config.num_seeds} seed(s) ({seeds}; mean "
        "± sample std). Methods that backpropagate through the backbone start "
        "from the same seed's trained linear-probe head "
        "when `baseline_head='probe'` (LP-FT, Kumar et al., ICLR 2022); LST keeps "
        "its own randomly initialized head and up-sampler. Same budget: every "
        "gradient-trained method (both LSTs, full FT, adapters, LoRA, BitFit) "
        f"takes the same {_steps(config, 'full', summary)} Adam steps "
        f"({config.epochs:g} epochs) over the same training examples in the same "
        "order per seed; only the learning rate differs (column below). The linear "
        f"probe is a convex logistic regression on cached features and runs "
        f"{config.probe_epochs:g} epochs so that it is converged: extra epochs can "
        "only make this baseline stronger."
    )
    rows = []
    for r in methods.values():
        rows.append(
            [
                r["label"],
                f"{r['test_acc_mean']:.4f} ± {r['test_acc_std']:.4f}"
                if len(r["test_acc"]) > 1
                else f"{r['test_acc_mean']:.4f} (1 seed)",
                "—" if r["dev_acc_mean"] is None else f"{r['dev_acc_mean']:.4f}",
                f"{r['trainable_pct']:.3f}",
                r["memory_bytes"] / 2**20,
                "—" if r["memory_ratio"] is None else f"{r['memory_ratio']:.3f}",
                r["step_ms"],
                "—" if r["time_ratio"] is None else f"{r['time_ratio']:.3f}",
                f"{r['epochs']:g} ({r['steps']}, lr {r['lr']:g})",
                r["head_init"],
            ]
        )
    report.table(
        [
            "method",
            "test acc",
            "dev acc",
            "trainable %",
            "step memory MB",
            "memory / full",
            "step ms",
            "time / full",
            "epochs (steps, lr)",
            "head init",
        ],
        rows,
        caption=(
            "Accuracy over seeds; memory = XLA `memory_analysis()` of the compiled "
            "train step (temp + argument + output bytes) at batch "
            f"{config.batch_size} × {config.max_length} running the backbone; step "
            "time = median wall time of that step (ms) on this machine, measured "
            "while it was shared with other jobs."
        ),
    )
    cached = [r["label"] for r in methods.values() if r["trains_on"] != "tokens"]
    if cached:
        report.text(
            "Speed-up used: " + ", ".join(cached) + " trained on backbone hidden "
            "states computed once (the backbone is frozen, so the gradients are the "
            "same as running it every step); their memory/time columns come from "
            "the uncached step, compiled and timed separately. Cached training step "
            "times (ms): "
            + ", ".join(
                f"{r['label']} {r['train_step_ms']:.1f}"
                for r in methods.values()
                if r["trains_on"] != "tokens"
            )
            + "."
        )
    lines = []
    for name, v in summary["verdict"].items():
        parts = []
        if "beats_probe" in v:
            parts.append(
                f"{'beats' if v['beats_probe'] else 'does NOT beat'} the linear probe "
                f"({v['minus_probe_points']:+.2f} points)"
            )
        if "within_2_points_of_full" in v:
            parts.append(
                f"{'is' if v['within_2_points_of_full'] else 'is NOT'} within 2 points "
                f"of full fine-tuning ({v['minus_full_points']:+.2f} points)"
            )
        if parts:
            lines.append(f"- {LABELS[name]} " + " and ".join(parts) + ".")
    if lines:
        n_test = summary["split"]["test"]["examples_used"]
        p = np.mean([r["test_acc_mean"] for r in methods.values()])
        se = 100 * np.sqrt(p * (1 - p) / n_test)
        lines.append(
            f"- Resolution: one binomial standard error of an accuracy on the "
            f"{n_test} test snippets is {se:.1f} points (test-set sampling; "
            "averaging seeds does not reduce it), ≈ "
            f"{se * np.sqrt(2):.1f} for a difference of two methods, so smaller "
            "gaps are not resolved."
        )
        report.text("Verdict (mean test accuracy over seeds):\n\n" + "\n".join(lines))
    if summary["fisher"]:
        f = summary["fisher"]
        report.text(
            f"Pruning init: Fisher importance from {f['examples']} training examples "
            f"at "
            f"batch size 1 with the {f['head']} head ({f['seconds']:.0f} s)."
        )
    cpu_rows = [
        [
            r["label"],
            f"{r['cpu_seconds']['compile']:.1f}",
            f"{r['cpu_seconds']['train']:.1f}",
            f"{r['cpu_seconds']['eval']:.1f}",
            f"{r['cpu_seconds'].get('uncached_step', 0.0):.1f}",
        ]
        for r in methods.values()
    ]
    report.table(
        ["method", "compile", "train", "evaluate", "uncached step (memory/time)"],
        cpu_rows,
        caption=(
            "Where the CPU time went (process CPU seconds, all seeds). Backbone "
            f"cache: {summary['cache_cpu_seconds']:.0f} s"
            + (
                f"; Fisher pass: {summary['fisher']['cpu_seconds']:.0f} s"
                if summary["fisher"]
                else ""
            )
            + f"; whole run: {summary['cpu_seconds']:.0f} s."
        ),
    )
    report.figure(
        _accuracy_figure(methods), "accuracy", "test accuracy (mean ± std over seeds)"
    )
    if any(r["memory_ratio"] is not None for r in methods.values()):
        report.figure(
            _tradeoff_figure(methods),
            "memory_vs_accuracy",
            "train-step memory relative to full fine-tuning vs test accuracy",
        )
    report.figure(_curve_figure(curves), "loss_curves", "training loss, seed 0")
    report.text(
        f"Wall time {summary['wall_seconds'] / 60:.1f} min on {summary['cores']} "
        f"{summary['platform']} cores (1-min load average at the end "
        f"{summary['load_avg_1min_at_end']:.1f}). Command: `{_command(config)}`."
    )
    return report.write(summary)


def _command(config: Config) -> str:
    """The ``jaxlab run`` line that rebuilds ``config`` from its nearer preset."""
    best = None
    for flag, preset in (("", Config.full()), (" --quick", Config.quick())):
        sets = [
            f" --set {f.name}={_set_value(getattr(config, f.name))}"
            for f in dataclasses.fields(Config)
            if getattr(config, f.name) != getattr(preset, f.name)
        ]
        if best is None or len(sets) < len(best[1]):
            best = (flag, sets)
    return "jaxlab run ladder" + best[0] + "".join(best[1])


def _set_value(value) -> str:
    """A Config value as ``--set`` parses it (tuples are comma-separated)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _steps(config, method, summary):
    row = summary["methods"].get(method) or next(
        (r for m, r in summary["methods"].items() if m != "probe"), None
    )
    return row["steps"] if row else "the same number of"


def _accuracy_figure(methods):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    names = list(methods)
    means = [methods[m]["test_acc_mean"] for m in names]
    stds = [methods[m]["test_acc_std"] for m in names]
    colors = ["tab:red" if m.startswith("lst") else "tab:gray" for m in names]
    ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=4)
    for i, m in enumerate(names):
        ax.scatter(
            [i] * len(methods[m]["test_acc"]),
            methods[m]["test_acc"],
            color="k",
            s=8,
            zorder=3,
        )
    ax.set_xticks(
        range(len(names)), [methods[m]["label"] for m in names], rotation=25, ha="right"
    )
    lo = min(min(methods[m]["test_acc"]) for m in names)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(means) + 0.05))
    ax.axhline(0.78, ls="--", lw=1, color="tab:blue", label="expected probe ≈ 0.78")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _tradeoff_figure(methods):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for m, r in methods.items():
        if r["memory_ratio"] is None:
            continue
        ax.errorbar(
            r["memory_ratio"],
            r["test_acc_mean"],
            yerr=r["test_acc_std"],
            fmt="o",
            color="tab:red" if m.startswith("lst") else "tab:gray",
            capsize=3,
        )
        ax.annotate(
            r["label"],
            (r["memory_ratio"], r["test_acc_mean"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set(xlabel="train-step memory / full fine-tuning", ylabel="test accuracy")
    ax.grid(alpha=0.3)
    return fig


def _curve_figure(curves):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for m, losses in curves.items():
        if not losses:
            continue
        x = np.linspace(0, 1, len(losses))
        k = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(x[: len(smooth)], smooth, label=LABELS[m], lw=1.2)
    ax.set(xlabel="fraction of training", ylabel="train loss (smoothed)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig
