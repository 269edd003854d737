"""Relative-position probe: which transformers can map [0, …, 0] to [1, 2, …, n]?

Source: J. Su, "A theoretical flaw of RPE Transformers and countermeasures"
(kexue.fm/archives/9105, 2022) and S. Luo et al., "Your Transformer May Not be
as Powerful as You Expect" (NeurIPS 2022, arXiv:2205.13401), whose theorem
(softmax-normalized relative attention is row-stochastic, so identical tokens
give identical outputs) this probe instantiates.

A 2-layer transformer reads n identical tokens and must output each token's
position, as n-way classification and as regression, for n in ``lengths``.
Expected: the softmax relative schemes (T5, ALiBi, RoPE, XL, Shaw keys only,
GAU with softmax) sit exactly at the position-blind optimum (CE = log n,
accuracy 1/n; MSE = (n² − 1)/12); absolute encodings, Shaw keys+values, l2 /
no-denominator / relu² / swish+l2 normalizers, URPE and [CLS]/[SEP] reach
≥ 99 % accuracy. A length-generalization table trains regression at
``gen_train_length`` and tests at ``gen_test_lengths``.

Every row trains its five probe variants (classification at each n,
regression at each n and at the generalization length) as one ``jax.vmap``-ed,
``lax.scan``-ned program, so there is one compilation per row: inputs are
padded to the longest length with a padding mask (equivalent to unpadded
inputs: padded keys get zero weight under every normalizer), the n-way
classifier masks the logits of classes > n, and the regressor's output 0 is
the standardized target (t − (n+1)/2)/√((n²−1)/12).

Measured (quick, 21 rows, seed 0): every softmax relative row sits at the
blind optimum (|gap| ≤ 3e-5); every countermeasure reaches 100 % at n = 16
and 64 in both tasks except swish+l2 with T5, which stalls at the blind
optimum for classification at n = 16 (Su calls swish+l2 only "feasible";
its rows' l2 norms of the swish weights can collapse, so training is
ill-conditioned and seed-dependent). No scheme generalizes from n = 32 to
16/48/64 (best: sinusoidal, 25–52 %). Runtime: 11.7 min wall on the shared
2-core CPU under load (load average 7–11), 6.4 min of process CPU time;
``full()`` (6000 steps) roughly doubles the training part.
Run: ``jaxlab run rpe_probe --quick``
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

from jaxlab import parallel
from jaxlab.nn import transformer as tr
from jaxlab.report import Report, pyplot

# name -> (TransformerConfig overrides, expected outcome)
ROWS: dict[str, tuple[dict, str]] = {
    "sinusoidal": (dict(scheme="sinusoidal"), "pass"),
    "learned": (dict(scheme="learned"), "pass"),
    "t5": (dict(scheme="t5"), "fail"),
    "alibi": (dict(scheme="alibi"), "fail"),
    "rope": (dict(scheme="rope"), "fail"),
    "xl": (dict(scheme="xl"), "fail"),
    "shaw_k": (dict(scheme="shaw_k"), "fail"),
    "shaw_kv": (dict(scheme="shaw_kv"), "pass"),
    "t5/gau_softmax": (dict(scheme="t5", block="gau"), "fail"),
    "t5/l2": (dict(scheme="t5", normalizer="l2"), "pass"),
    "t5/none": (dict(scheme="t5", normalizer="none"), "pass"),
    "t5/gau_relu2": (dict(scheme="t5", block="gau", normalizer="relu2"), "pass"),
    "t5/swish_l2": (dict(scheme="t5", normalizer="swish_l2"), "pass"),
    "t5/urpe": (dict(scheme="t5", urpe=True), "pass"),
    "rope/l2": (dict(scheme="rope", normalizer="l2"), "pass"),
    "rope/none": (dict(scheme="rope", normalizer="none"), "pass"),
    "rope/gau_relu2": (dict(scheme="rope", block="gau", normalizer="relu2"), "pass"),
    "rope/swish_l2": (dict(scheme="rope", normalizer="swish_l2"), "pass"),
    "rope/urpe": (dict(scheme="rope", urpe=True), "pass"),
    "t5/cls_sep": (dict(scheme="t5", cls_sep=True), "pass"),
    "rope/cls_sep": (dict(scheme="rope", cls_sep=True), "pass"),
}
PASS_ACCURACY = 0.99


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    rows: tuple[str, ...] = tuple(ROWS)
    lengths: tuple[int, ...] = (16, 64)
    gen_train_length: int = 32
    gen_test_lengths: tuple[int, ...] = (16, 48, 64)
    steps: int = 3000
    learning_rate: float = 1e-2
    warmup_steps: int = 100
    clip_norm: float = 1.0
    d_model: int = 32
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 64
    gau_key_dim: int = 16
    curve_every: int = 10

    @classmethod
    def quick(cls) -> Config:
        return cls()

    @classmethod
    def full(cls) -> Config:
        return cls(steps=6000)


def run(config: Config, out_dir: pathlib.Path) -> dict:
    _validate(config)
    key = jr.key(config.seed)
    members = _members(config)
    pad = _pad_length(config)
    optimizer = _optimizer(config)

    from tqdm.auto import tqdm

    cpu_start = time.process_time()
    results_rows = {}
    for index, name in enumerate(tqdm(config.rows, desc="rpe_probe rows")):
        overrides, expected = ROWS[name]
        model_cfg = tr.TransformerConfig(
            vocab_size=1,
            out_dim=pad,
            d_model=config.d_model,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            d_ff=config.d_ff,
            gau_key_dim=config.gau_key_dim,
            max_len=pad + 2,
            urpe_max_distance=pad,
            **overrides,
        )
        start = time.perf_counter()
        out = _train_row(
            jr.fold_in(key, index), model_cfg, members, optimizer, config, pad
        )
        out = jax.tree.map(np.asarray, out)
        results_rows[name] = _summarize(name, expected, members, out, config)
        results_rows[name]["seconds"] = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    return _write_report(config, members, results_rows, out_dir, cpu_seconds)


# ---------------------------------------------------------------- training


def _optimizer(config: Config) -> optax.GradientTransformation:
    """Adam, warmup + cosine decay to 1 % of the peak, global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.steps,
        end_value=config.learning_rate * 1e-2,
    )
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm), optax.adam(schedule)
    )


def _members(config: Config) -> list[dict]:
    """The probe variants trained side by side in every row."""
    members = [dict(task="cls", n=n) for n in config.lengths]
    members += [dict(task="reg", n=n) for n in config.lengths]
    members.append(dict(task="reg", n=config.gen_train_length, gen=True))
    return members


def _pad_length(config: Config) -> int:
    return max(*config.lengths, config.gen_train_length, *config.gen_test_lengths)


def _probe(n, pad):
    """Probe input padded to ``pad``: ids 0, valid mask, targets 1..pad."""
    pos = jnp.arange(pad)
    return jnp.zeros((pad,), jnp.int32), pos < n, pos + 1


def _train_row(key, model_cfg, members, optimizer, config, pad):
    """Init one model per member, train them jointly (vmap), evaluate."""
    keys = jr.split(key, len(members))
    states = []
    for k in keys:
        graphdef, state = nnx.split(tr.init(k, model_cfg))
        states.append(state)
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    n = jnp.asarray([m["n"] for m in members])
    is_cls = jnp.asarray([m["task"] == "cls" for m in members])
    eval_n = jnp.asarray(_eval_lengths(config))

    def metrics(p, n_tokens, cls, n_train):
        """Loss, accuracy, per-position guess, class probabilities, output spread."""
        ids, valid, target = _probe(n_tokens, pad)
        y = nnx.merge(graphdef, p)(ids[None], valid[None])[0]
        w = valid.astype(jnp.float32)
        count = jnp.sum(w)
        # n-way classification: classes 1..n; logits of classes > n masked.
        allowed = jnp.broadcast_to((target <= n_tokens)[None, :], y.shape)
        logits = jnp.where(allowed, y, -1e9)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, target - 1)
        hit_c = jnp.argmax(logits, -1) == target - 1
        # Regression on standardized targets: output 0 is (t − mean)/std of the
        # training positions 1..n, so y = 0 is the position-blind optimum.
        mean = (n_train + 1) / 2
        std = jnp.sqrt((n_train**2 - 1) / 12)
        pred = mean + std * y[:, 0]
        se = jnp.square(pred - target)
        hit_r = jnp.abs(pred - target) < 0.5
        loss = jnp.where(cls, jnp.sum(w * ce), jnp.sum(w * se)) / count
        acc = jnp.where(cls, jnp.sum(w * hit_c), jnp.sum(w * hit_r)) / count
        extra = dict(
            guess=jnp.where(cls, jnp.argmax(logits, -1) + 1.0, pred),
            probs=jax.nn.softmax(logits, -1),
            spread=jnp.max(jnp.abs(y - y[:1]) * w[:, None]),
        )
        return loss, (acc, extra)

    def train_one(p, n_tokens, cls):
        def step(carry, _):
            p, opt_state = carry
            (loss, (acc, extra)), grads = jax.value_and_grad(metrics, has_aux=True)(
                p, n_tokens, cls, n_tokens
            )
            updates, opt_state = optimizer.update(grads, opt_state, p)
            p = optax.apply_updates(p, updates)
            return (p, opt_state), (loss, acc, extra["spread"])

        (p, _), (losses, accs, spreads) = jax.lax.scan(
            step, (p, optimizer.init(p)), None, length=config.steps
        )
        # Final evaluation at every length of interest (one vmapped forward).
        loss, (acc, extra) = jax.vmap(lambda m: metrics(p, m, cls, n_tokens))(eval_n)
        return dict(
            init_spread=spreads[0],
            curve_loss=losses[:: config.curve_every],
            curve_acc=accs[:: config.curve_every],
            loss=loss, acc=acc, guess=extra["guess"], probs=extra["probs"],
        )

    # The members (one model each) are this loop's batch: with `--set mesh=...`
    # they are split over the mesh's data axis (each device trains its own
    # models; nothing crosses devices), padded with copies of the last member
    # up to a multiple of the axis size; the copies are dropped afterwards.
    mesh = parallel.default_mesh()
    count = len(members)
    if mesh is not None:
        extra = -count % mesh.shape[parallel.DATA]
        params, n, is_cls = jax.tree.map(
            lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)]),
            (params, n, is_cls))
        params, n, is_cls = parallel.shard_batch((params, n, is_cls), mesh)
    out = jax.jit(jax.vmap(train_one))(params, n, is_cls)
    out = jax.tree.map(lambda a: a[:count], out)
    out["eval_lengths"] = eval_n
    return out


def _eval_lengths(config: Config) -> list[int]:
    return sorted({*config.lengths, config.gen_train_length, *config.gen_test_lengths})


# ----------------------------------------------------------------- reporting


def _optimum(task, n):
    """Position-blind optimum: CE = log n (classes), MSE = (n² − 1)/12 (regression)."""
    return math.log(n) if task == "cls" else (n * n - 1) / 12


def _summarize(name, expected, members, out, config):
    """Host-side per-member numbers of one row (eval at each member's own n)."""
    lengths = [int(L) for L in out["eval_lengths"]]
    per = []
    for i, m in enumerate(members):
        j = lengths.index(m["n"])
        opt = _optimum(m["task"], m["n"])
        loss = float(out["loss"][i, j])
        per.append(dict(
            task=m["task"], n=m["n"], gen=m.get("gen", False),
            accuracy=float(out["acc"][i, j]), loss=loss,
            blind_optimum=opt, gap=loss - opt,
            init_spread=float(out["init_spread"][i]),
            curve_acc=out["curve_acc"][i], curve_loss=out["curve_loss"][i],
            predictions=out["guess"][i, j, : m["n"]],
        ))
    g = len(members) - 1  # the generalization member (regression)
    test = [config.gen_train_length, *config.gen_test_lengths]
    gen = dict(
        lengths=test,
        accuracy=[float(out["acc"][g, lengths.index(L)]) for L in test],
        mse=[float(out["loss"][g, lengths.index(L)]) for L in test],
        predictions={L: out["guess"][g, lengths.index(L), :L] for L in test},
    )
    c = next(i for i, m in enumerate(members) if m["task"] == "cls")
    nc = members[c]["n"]
    return dict(
        expected=expected, members=per, generalization=gen, heatmap_n=nc,
        heatmap=out["probs"][c, lengths.index(nc), :nc, :nc],
    )


def _write_report(config, members, rows, out_dir, cpu_seconds):
    report = Report("rpe_probe: can a transformer count identical tokens?", out_dir)
    report.text(
        f"{config.num_layers}-layer transformers (d_model {config.d_model}, "
        f"{config.num_heads} heads, FFN {config.d_ff}; GAU key dim "
        f"{config.gau_key_dim}) trained for {config.steps} Adam steps (peak lr "
        f"{config.learning_rate}, warmup + cosine decay, gradients clipped to "
        f"global norm {config.clip_norm}) to map n identical tokens to their "
        "positions 1..n. The regressor predicts standardized targets "
        "(t − (n+1)/2)/√((n²−1)/12). Accuracy is the fraction of positions "
        "predicted exactly (regression: |error| < 0.5). The position-blind "
        "optimum is CE = log n (accuracy 1/n) and MSE = (n² − 1)/12; gap = "
        "final loss − optimum. `init spread` is max |y_i − y_0| of the outputs "
        "at initialization (the identical-token invariant: ~1e-7 means exactly "
        "position-blind in float32). Source: Su 2022 (kexue.fm/archives/9105), "
        "Luo et al. 2022 (arXiv:2205.13401)."
    )
    for task, title in (("cls", "n-way classification"), ("reg", "regression (MSE)")):
        headers = ["row", "expected"]
        for n in config.lengths:
            headers += [f"acc n={n}", f"loss n={n}", f"gap n={n}"]
        headers += ["init spread", "verdict"]
        table = []
        for name, r in rows.items():
            ms = [m for m in r["members"] if m["task"] == task and not m["gen"]]
            cells = [name, r["expected"]]
            for m in ms:
                cells += [m["accuracy"], m["loss"], m["gap"]]
            cells.append(max(m["init_spread"] for m in ms))
            cells.append(_verdict(r["expected"], ms))
            table.append(cells)
        optima = ", ".join(f"n={n}: {_optimum(task, n):.4g}" for n in config.lengths)
        report.table(headers, table, caption=f"**{title}** (blind optimum {optima})")
    gen_rows = []
    test = [config.gen_train_length, *config.gen_test_lengths]
    for name, r in rows.items():
        g = r["generalization"]
        if g["accuracy"][0] >= PASS_ACCURACY:
            gen_rows.append([name, *g["accuracy"], *g["mse"]])
    report.table(
        ["row"] + [f"acc n={L}" for L in test] + [f"MSE n={L}" for L in test],
        gen_rows,
        caption=(
            f"**Length generalization**: regression trained at n="
            f"{config.gen_train_length}, tested at {config.gen_test_lengths} "
            "(rows that pass at the training length)"
        ),
    )
    report.figure(_curves(config, members, rows), "accuracy_curves",
                  "training accuracy vs step per row (dashed: expected to fail)")
    fail = _pick(rows, "fail", prefer="t5")
    good = _pick(rows, "pass", prefer="t5/l2")
    if fail and good:
        report.figure(_heatmaps(rows, [fail, good]), "heatmaps",
                      f"per-position class probabilities: {fail} vs {good}")
    misses = [
        name for name, r in rows.items()
        if any(_verdict(r["expected"], [m]).startswith(("FAILED", "NOT"))
               for m in r["members"] if not m["gen"])
    ]
    report.text(
        "Rows that miss their expectation in at least one variant: "
        + (", ".join(misses) if misses else "none") + "."
    )
    total = sum(r["seconds"] for r in rows.values())
    report.text(
        f"Wall time of the training runs: {total:.0f} s; process CPU time "
        f"{cpu_seconds:.0f} s (the wall time depends on the machine's load)."
    )
    results = dict(
        config=dataclasses.asdict(config),
        rows={name: _json_row(r) for name, r in rows.items()},
        total_seconds=total,
        cpu_seconds=cpu_seconds,
        misses=misses,
    )
    return report.write(results)


def _pick(rows, expected, prefer):
    """``prefer`` if it was run, else the first row with that expectation."""
    if prefer in rows:
        return prefer
    return next((n for n, r in rows.items() if r["expected"] == expected), None)


def _verdict(expected, ms):
    ok = all(m["accuracy"] >= PASS_ACCURACY for m in ms)
    if expected == "pass":
        return "pass ✓" if ok else "FAILED to pass"
    blind = all(abs(m["gap"]) <= 1e-3 * max(1.0, m["blind_optimum"]) for m in ms)
    return "at optimum ✓" if blind else "NOT at optimum"


def _json_row(r):
    out = dict(
        expected=r["expected"],
        seconds=r["seconds"],
        generalization=r["generalization"],
    )
    out["members"] = [
        {k: (v[:: max(1, len(v) // 100)] if k.startswith("curve") else v)
         for k, v in m.items()}
        for m in r["members"]
    ]
    return out


def _curves(config, members, rows):
    """Small multiples: training accuracy vs step, one panel per row."""
    plt = pyplot()

    shown = [i for i, m in enumerate(members) if not m.get("gen")]
    cols = min(6, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(2.6 * cols, 2.2 * nrows), sharex=True, sharey=True,
        squeeze=False,
    )
    steps = np.arange(0, config.steps, config.curve_every)
    for ax, (name, r) in zip(axes.flat, rows.items()):
        for i in shown:
            m = members[i]
            curve = r["members"][i]["curve_acc"]
            ax.plot(steps[: len(curve)], curve, lw=1.1,
                    ls="-" if m["task"] == "cls" else "--",
                    label=f"{m['task']} n={m['n']}")
        ax.set_title(f"{name} (expect {r['expected']})", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("train accuracy", fontsize=8)
    fig.tight_layout()
    return fig


def _heatmaps(rows, names):
    plt = pyplot()

    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 4))
    for ax, name in zip(axes, names):
        r = rows[name]
        n = r["heatmap_n"]
        im = ax.imshow(r["heatmap"], vmin=0, vmax=1, cmap="viridis",
                       extent=(0.5, n + 0.5, n + 0.5, 0.5))
        ax.set(title=f"{name} (expected to {r['expected']})", xlabel="predicted class",
               ylabel="true position")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="p(class | position)")
    return fig


def _validate(config: Config) -> None:
    unknown = [r for r in config.rows if r not in ROWS]
    if unknown or not config.rows:
        raise ValueError(f"rows={config.rows!r}: each must be one of {tuple(ROWS)}")
    for name in ("steps", "gen_train_length", "d_model", "num_heads", "num_layers",
                 "d_ff", "curve_every", "gau_key_dim"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer")
    if not config.lengths or min(config.lengths) < 2:
        raise ValueError(f"lengths={config.lengths!r}: need lengths >= 2")
    if not config.gen_test_lengths or min(config.gen_test_lengths) < 2:
        raise ValueError(f"gen_test_lengths={config.gen_test_lengths!r}: need >= 2")
    if not 0 <= config.warmup_steps < config.steps:
        raise ValueError(f"warmup_steps={config.warmup_steps!r}: must be in [0, steps)")
    if not config.clip_norm > 0:
        raise ValueError(f"clip_norm={config.clip_norm!r}: must be > 0")
    if not config.learning_rate > 0:
        raise ValueError(f"learning_rate={config.learning_rate!r}: must be > 0")
