"""Hubness: k-occurrence simulation, and hub-prior latents for a GAN and DDIM.

Source: J. Su, "Hubness in the curse of dimensionality" (kexue.fm/archives/9147,
2022) and Liang, Wu, Lai & Qin, "Exploring and Exploiting Hubness Priors for
High-Quality GAN Latent Sampling" (ICML 2022); reference/hubness.md.

(a) Reference simulation, z ~ N(0, I_d), N = 10,000, k = 5 (§4): expect mean
N_5 = 5 exactly, skewness ≈ 0 at d = 2 and ≫ 1 at d ≥ 128, 1.2–1.9% of points
with N_5 > 50 at d = 512, about half anti-hubs, and corr(N_5, ‖z‖) < 0; plus the
ball/cube volume ratio (π/4 at n = 2, 1.87e-70 at n = 100).
(b) A small MLP GAN (digits in quick, MNIST-5k in full): random, truncated
(ψ = 0.7) and hub latents compared by Fréchet distance in the features of a
classifier trained here (not the Inception FID), k-NN precision/recall and the
classifier's confidence. The paper reports hub latents beat random ones and
truncation on StyleGAN2; here the outcome is measured, whatever it is.
(c) The same prior on the x_T of a small DDIM (η = 0) trained on the same data.

Measured (quick, seed 0): skewness 0.105 / 1.42 / 10.4 / 17.7 for d = 2 / 16 /
128 / 512, hub share 1.88% at d = 512; GAN Fréchet distance random 2.71,
truncation 9.02, hub 4.84; DDIM random 1.78, truncation 7.87, hub 3.89 (hub and
truncation raise precision and lower recall; random has the lowest distance).

Runtime: quick 593 s wall (3 min 54 s CPU) on the project's 2-core CPU while
shared with other jobs (load ≈ 10); less on an idle machine. The full preset
(MNIST-5k, 20k GAN and DDIM steps, 4 simulation seeds, 5 repeats) is sized for
an accelerator: hours on that CPU, not run there.

Run: ``jaxlab run hubness --quick`` (or without ``--quick`` for the full preset).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxlab import data, hubness, metrics, train
from jaxlab.nn import classifier as clf
from jaxlab.nn import gan
from jaxlab.report import Report

METHODS = ("random", "truncation", "hub")


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    # (a) simulation
    dims: tuple[int, ...] = (2, 16, 128, 512)
    sim_pool: int = 10_000
    sim_seeds: int = 4
    k: int = 5
    threshold: int = 50
    reduction_pool: int = 4000
    # (b) GAN
    dataset: str = "mnist5k"
    latent_dim: int = 128
    gan_steps: int = 20_000
    gan_batch: int = 64
    classifier_steps: int = 1500
    psi: float = 0.7
    pool: int = 10_000
    repeats: int = 5
    pr_k: int = 3
    # (c) DDIM
    ddim: bool = True
    ddim_train_steps: int = 20_000
    ddim_batch: int = 64
    ddim_T: int = 1000
    ddim_sample_steps: int = 50
    ddim_channels: int = 32

    @classmethod
    def quick(cls) -> Config:
        return cls(sim_seeds=1, reduction_pool=2000, dataset="digits",
                   gan_steps=3000, classifier_steps=800, repeats=3,
                   ddim_train_steps=2000, ddim_channels=16, ddim_sample_steps=20)

    @classmethod
    def full(cls) -> Config:
        return cls()


def run(config: Config, out_dir: pathlib.Path) -> dict:
    _validate(config)
    key = jr.key(config.seed)
    sim_key, red_key, data_key, gan_key, ddim_key = jr.split(key, 5)
    report = Report("hubness: k-occurrence and hub-prior latent sampling", out_dir)
    results: dict = {"config": dataclasses.asdict(config)}

    # ------------------------------------------------------------------ (a)
    report.text("## (a) Hubness of Gaussian data (reference/hubness.md §4)")
    sim = _simulation(sim_key, config)
    results["simulation"] = sim
    report.table(
        ["d", "mean N_5", "skewness", "share N_5 > 50 (self excl.)",
         "share N_5 >= 50 (self incl., Colab)", "anti-hub share", "corr(N_5, ‖z‖)",
         "hub mean ‖z‖ / all mean ‖z‖", "Robin Hood"],
        [[r["d"], r["mean"], *(_pm_sim(r, name) for name in (
            "skewness", "hub_share", "hub_share_colab", "antihub_share", "corr_norm",
            "hub_norm_ratio", "robin_hood"))] for r in sim],
        caption=(f"z ~ N(0, I_d), N = {config.sim_pool}, k = {config.k}, "
                 f"{config.sim_seeds} seed(s) (mean ± std over seeds). Reference: "
                 "skewness 0.07 / 1.4 / 21 / 10–17, share 0 / 0 / 1.4% / 1.7–1.9%, "
                 "anti-hubs 0.2% / 11% / 41% / 50%, "
                 "corr −0.02 / −0.82 / −0.46 / −0.47."),
    )
    report.figure(_histograms(sim), "k_occurrence_hist",
                  "k-occurrence histograms (log counts)")
    for row in sim:
        row.pop("counts_seed0")
    vol = _volume_ratio()
    results["volume_ratio"] = vol
    report.table(["n", "V_n / 2^n"], [[n, v] for n, v in vol["known"]],
                 caption="Ball/cube volume ratio (reference values 0.7854, 0.5236, "
                         "0.1645, 2.49e-3, 2.46e-8, 1.87e-70); n = 10,000 in log10: "
                         f"{vol['log10_at_10000']:.1f}")
    report.figure(vol.pop("figure"), "volume_ratio", "log10(V_n / 2^n)")
    red = _reductions(red_key, config)
    results["reduction"] = red
    report.table(
        ["graph", "skewness", "anti-hub share", "Robin Hood", "max N_k"],
        [[r["name"], r["skewness"], r["antihub_share"], r["robin_hood"], r["max"]]
         for r in red],
        caption=(f"Hubness reduction on z ~ N(0, I_512), N = {config.reduction_pool}, "
                 f"k = {config.k} (mutual proximity: Gaussian; local scaling: σ = "
                 "5th-NN distance; CSLS: r over 10 NN)."),
    )

    # ------------------------------------------------------------------ (b)
    images, _labels = _load(config.dataset)
    split_key, clf_key = jr.split(data_key)
    ref_idx, held_idx = data.split(split_key, len(images), (0.5, 0.5))
    num_eval = len(held_idx)
    classifier = clf.train_feature_classifier(
        clf_key, images, _labels, steps=config.classifier_steps,
        workdir=out_dir / "classifier",
    )
    real_feats = clf.features(classifier, images[ref_idx])
    evaluate = functools.partial(
        _evaluate, classifier, jnp.asarray(real_feats),
        jax.jit(functools.partial(hubness.precision_recall, k=config.pr_k)),
    )
    baseline = evaluate(images[held_idx])
    results["real_baseline"] = baseline

    report.text(
        f"## (b) GAN on {config.dataset}: random vs truncation vs hub latents\n\n"
        f"MLP GAN (z ∈ R^{config.latent_dim}, non-saturating loss + R1, "
        f"{config.gan_steps} steps). Fréchet distance (squared, FID convention) and "
        f"precision/recall (k = {config.pr_k}) in the penultimate features of a conv "
        f"classifier trained on the same data ({config.classifier_steps} steps; this "
        f"is not the Inception FID). Reference set: {len(ref_idx)} real images; each "
        f"method generates {num_eval} images per repeat, {config.repeats} repeats. "
        f"Truncation: z' = ψ z with ψ = {config.psi} (Z-space centre 0). Hubs: "
        f"pool {config.pool}, k = {config.k}, N_k ≥ {config.threshold}, self "
        f"excluded. The row 'real' scores the other {num_eval} real images."
    )
    gan_result = gan.train_gan(
        gan_key, images, latent_dim=config.latent_dim, steps=config.gan_steps,
        batch_size=config.gan_batch, workdir=out_dir / "gan",
        log_every=max(1, config.gan_steps // 100),
    )
    generator = gan_result.model.generator
    sample_fn = functools.partial(gan.sample_latents, latent_dim=config.latent_dim)
    gan_eval = _compare(
        jr.fold_in(gan_key, 1), config, sample_fn, num_eval,
        lambda z: gan.generate(generator, z), evaluate, desc="GAN latents",
    )
    results["gan"] = gan_eval["summary"]
    results["gan_history"] = gan_result.history
    _method_table(report, gan_eval["summary"], baseline, "GAN")
    report.figure(_grids(gan_eval["grids"]), "gan_samples",
                  "GAN samples: random, truncated (ψ = 0.7), hub latents")

    # ------------------------------------------------------------------ (c)
    if config.ddim:
        report.text(
            "## (c) Beyond the paper: the hub prior on DDIM (η = 0) latents x_T\n\n"
            f"U-Net ε-model on {config.dataset} ({config.ddim_train_steps} steps, "
            f"linear schedule T = {config.ddim_T}); deterministic DDIM decoding with "
            f"{config.ddim_sample_steps} steps from x_T ∈ R^{images[0].size} drawn at "
            "random, truncated (ψ = 0.7) or as hubs of a pool of N(0, I) draws."
        )
        decode_fn, ddim_history = _train_ddim(ddim_key, images, config, out_dir)
        dim = int(images[0].size)
        ddim_eval = _compare(
            jr.fold_in(ddim_key, 1), config,
            lambda key, n: jr.normal(key, (n, dim)), num_eval, decode_fn, evaluate,
            desc="DDIM latents",
        )
        results["ddim"] = ddim_eval["summary"]
        results["ddim_history"] = ddim_history
        _method_table(report, ddim_eval["summary"], baseline, "DDIM")
        report.figure(_grids(ddim_eval["grids"]), "ddim_samples",
                      "DDIM (η = 0) samples: random, truncated, hub x_T")

    report.text(_verdict(results))
    return report.write(results)


# ---------------------------------------------------------------------------
# (a) simulation, volume ratio, reductions
# ---------------------------------------------------------------------------


def _simulation(key, config):
    k_occ = {
        inc: jax.jit(functools.partial(hubness.k_occurrence, k=config.k,
                                       include_self=inc, check_finite=False))
        for inc in (False, True)
    }
    rows = []
    for d in tqdm(config.dims, desc="simulation", leave=False):
        per_seed = []
        for s in range(config.sim_seeds):
            z = jr.normal(jr.fold_in(jr.fold_in(key, d), s), (config.sim_pool, d))
            c = k_occ[False](z)
            c_self = k_occ[True](z)
            norms = np.linalg.norm(np.asarray(z), axis=1)
            cn = np.asarray(c)
            hubs = np.asarray(hubness.hub_mask(c, config.threshold, strict=True))
            per_seed.append({
                "mean": float(np.mean(cn)),
                "skewness": float(hubness.skewness(c)),
                "hub_share": float(np.mean(hubs)),
                "hub_share_colab": float(np.mean(
                    np.asarray(hubness.hub_mask(c_self, config.threshold)))),
                "antihub_share": float(hubness.anti_hub_fraction(c)),
                "corr_norm": float(np.corrcoef(cn, norms)[0, 1]),
                "hub_norm_ratio": (float(norms[hubs].mean() / norms.mean())
                                   if hubs.any() else float("nan")),
                "robin_hood": float(hubness.robin_hood_index(c)),
                "counts": cn,
            })
        row = {"d": d, "seeds": config.sim_seeds}
        for name in ("mean", "skewness", "hub_share", "hub_share_colab",
                     "antihub_share", "corr_norm", "hub_norm_ratio", "robin_hood"):
            vals = np.array([p[name] for p in per_seed])
            finite = np.isfinite(vals).any()
            row[name] = float(np.nanmean(vals)) if finite else float("nan")
            row[name + "_std"] = float(np.nanstd(vals)) if len(vals) > 1 else 0.0
            row[name + "_all"] = vals.tolist()
        row["counts_seed0"] = per_seed[0]["counts"]
        rows.append(row)
    return rows


def _volume_ratio():
    ns = np.arange(1, 101)
    log_r = np.asarray(jax.jit(functools.partial(hubness.ball_cube_volume_ratio,
                                                 log=True))(ns))
    # exp in float64 on the host: 1.87e-70 underflows float32 but not float64.
    known = [(n, math.exp(float(log_r[n - 1]))) for n in (2, 3, 5, 10, 20, 100)]
    log10_big = float(hubness.ball_cube_volume_ratio(10_000, log=True)) / math.log(10)
    fig = _line_plot(ns, log_r / math.log(10), "dimension n", "log10 V_n / 2^n")
    return {"known": known, "log10_at_10000": log10_big,
            "log10_curve": (log_r / math.log(10)).tolist(), "figure": fig}


def _reductions(key, config):
    x = jr.normal(key, (config.reduction_pool, 512))
    k = config.k
    graphs = {
        "plain k-NN": jax.jit(functools.partial(hubness.knn, k=k)),
        "mutual proximity": jax.jit(functools.partial(hubness.mutual_proximity, k=k)),
        "local scaling": jax.jit(functools.partial(hubness.local_scaling, k=k)),
        "CSLS": jax.jit(functools.partial(hubness.csls, k=k)),
    }
    rows = []
    for name, fn in graphs.items():
        counts = hubness.graph_k_occurrence(fn(x).indices)
        rows.append({
            "name": name,
            "skewness": float(hubness.skewness(counts)),
            "antihub_share": float(hubness.anti_hub_fraction(counts)),
            "robin_hood": float(hubness.robin_hood_index(counts)),
            "max": int(jnp.max(counts)),
        })
    return rows


# ---------------------------------------------------------------------------
# (b)/(c) latent comparison
# ---------------------------------------------------------------------------


def _compare(key, config, sample_fn, num, render, evaluate, *, desc):
    """Draw latents three ways, render them, and score the images."""
    hub_fn = jax.jit(functools.partial(
        hubness.hub_sample, sample_fn=sample_fn, num=num, pool=config.pool,
        k=config.k, threshold=config.threshold))
    trunc_fn = jax.jit(functools.partial(
        hubness.truncate, sample_fn=sample_fn, num=num, psi=config.psi))
    rand_fn = jax.jit(lambda key: sample_fn(key, num))
    dim = jax.eval_shape(rand_fn, key).shape[1]
    center = jnp.zeros((dim,))
    per_method = {m: [] for m in METHODS}
    grids = {}
    for r in tqdm(range(config.repeats), desc=desc, leave=False):
        rkey = jr.fold_in(key, r)
        t0 = time.perf_counter()
        z_hub, rounds = hub_fn(rkey)
        z_hub = jax.block_until_ready(z_hub)
        hub_seconds = time.perf_counter() - t0
        latents = {
            "random": rand_fn(rkey),
            "truncation": trunc_fn(rkey, center=center),
            "hub": z_hub,
        }
        for m in METHODS:
            z = np.asarray(latents[m])
            imgs = render(z)
            scores = evaluate(imgs)
            scores["latent_norm"] = float(np.linalg.norm(z, axis=1).mean())
            if m == "hub":
                scores["rounds"] = int(rounds)
                scores["seconds"] = hub_seconds
            per_method[m].append(scores)
            if r == 0:
                grids[m] = imgs[:64]
    summary = {}
    for m in METHODS:
        keys = per_method[m][0].keys()
        summary[m] = {
            name: {"mean": float(np.mean([s[name] for s in per_method[m]])),
                   "std": float(np.std([s[name] for s in per_method[m]])),
                   "all": [s[name] for s in per_method[m]]}
            for name in keys
        }
    return {"summary": summary, "grids": grids}


_frechet = jax.jit(metrics.frechet_distance)


def _evaluate(classifier, real_feats, pr_fn, images):
    feats = jnp.asarray(clf.features(classifier, images))
    fd = float(_frechet(real_feats, feats))
    precision, recall = pr_fn(real_feats, feats)
    probs = jax.nn.softmax(classifier.head(feats), axis=-1)
    return {"fd": fd, "precision": float(precision), "recall": float(recall),
            "confidence": float(jnp.mean(jnp.max(probs, axis=-1)))}


def _method_table(report, summary, baseline, name):
    rows = [["real (held-out)", baseline["fd"], baseline["precision"],
             baseline["recall"], baseline["confidence"], "", ""]]
    for m in METHODS:
        s = summary[m]
        rows.append([m, _pm(s["fd"]), _pm(s["precision"]), _pm(s["recall"]),
                     _pm(s["confidence"]), s["latent_norm"]["mean"],
                     (f"{s['rounds']['mean']:.1f} rounds, {s['seconds']['mean']:.2f} s"
                      if m == "hub" else "")])
    report.table(["latents", "Fréchet dist. ↓", "precision ↑", "recall ↑",
                  "confidence ↑", "mean ‖z‖", "hub sampling cost"], rows,
                 caption=f"{name}: mean ± std over repeats.")


# ---------------------------------------------------------------------------
# (c) DDIM model
# ---------------------------------------------------------------------------


def _train_ddim(key, images, config, out_dir):
    from jaxlab.diffusion import ddim, ddpm, schedules
    from jaxlab.nn.unet import UNet

    init_key, batch_key, fit_key = jr.split(key, 3)
    sched = schedules.linear(config.ddim_T)
    model = UNet(in_channels=images.shape[-1], channels=config.ddim_channels,
                 channel_mults=(1, 2), num_res_blocks=1, num_heads=4,
                 rngs=nnx.Rngs(params=init_key))
    batches = data.Batcher(batch_key, images, min(config.ddim_batch, len(images)))

    def loss_fn(m, batch, step_key):
        loss = jnp.mean(ddpm.loss(step_key, m, sched, batch))
        return loss, {}

    result = train.fit(
        fit_key, model, optax.adam(optax.cosine_decay_schedule(
            2e-3, config.ddim_train_steps, alpha=0.05)),
        loss_fn, batches, num_steps=config.ddim_train_steps,
        workdir=out_dir / "ddim", log_every=max(1, config.ddim_train_steps // 100),
        desc="ddim",
    )
    graphdef, state = nnx.split(result.model)

    @jax.jit
    def decode(state, z):
        eps_model = nnx.merge(graphdef, state)
        x_T = z.reshape(z.shape[0], *images.shape[1:])
        x0 = ddim.decode(eps_model, sched, x_T, num_steps=config.ddim_sample_steps)
        return jnp.clip(x0, -1.0, 1.0)

    def render(z):
        return np.asarray(decode(state, jnp.asarray(z, jnp.float32)))

    return render, result.history


# ---------------------------------------------------------------------------
# Data, formatting and figures
# ---------------------------------------------------------------------------


def _load(name):
    if name == "digits":
        return data.load_digits()
    return data.load_mnist5k()


def _validate(config):
    if config.dataset not in ("digits", "mnist5k"):
        raise ValueError(
            f"dataset must be 'digits' or 'mnist5k', got {config.dataset!r}"
        )
    if not 0.0 <= config.psi <= 1.0:
        raise ValueError(f"psi must be in [0, 1], got {config.psi}")
    for name in ("sim_pool", "sim_seeds", "repeats", "gan_steps", "pool",
                 "reduction_pool", "ddim_train_steps", "ddim_sample_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")


def _pm_sim(row, name):
    """'mean ± std' over simulation seeds (just the value for one seed)."""
    if row["seeds"] > 1:
        return f"{row[name]:.4g} ± {row[name + '_std']:.2g}"
    return f"{row[name]:.4g}"


def _pm(stat):
    """'mean ± std' for a summary dict or a simulation value."""
    if isinstance(stat, dict):
        return f"{stat['mean']:.4g} ± {stat['std']:.2g}"
    return f"{stat:.4g}"


def _verdict(results):
    lines = ["## Verdict (measured, this run)"]
    psi = results["config"]["psi"]
    for part in ("gan", "ddim"):
        if part not in results:
            continue
        s = results[part]
        mean = {m: {q: s[m][q]["mean"] for q in s[m]} for m in METHODS}
        fd = {m: mean[m]["fd"] for m in METHODS}
        best = min(fd, key=fd.get)
        gap = abs(fd["hub"] - fd["random"])
        noise = 2 * math.hypot(s["hub"]["fd"]["std"], s["random"]["fd"]["std"])

        def delta(a, b, q, mean=mean):
            return mean[a][q] - mean[b][q]

        lines.append(
            f"- **{part.upper()}**: Fréchet distance random {fd['random']:.3g}, "
            f"truncation {fd['truncation']:.3g}, hub {fd['hub']:.3g} (lowest: {best};"
            f" hub vs random {'beyond' if gap > noise else 'within'} 2 std of the "
            f"repeat noise). Hub − random: precision "
            f"{delta('hub', 'random', 'precision'):+.3f}, recall "
            f"{delta('hub', 'random', 'recall'):+.3f}, confidence "
            f"{delta('hub', 'random', 'confidence'):+.3f}. Hub − truncation "
            f"(ψ = {psi}): Fréchet distance {delta('hub', 'truncation', 'fd'):+.3g}, "
            f"precision {delta('hub', 'truncation', 'precision'):+.3f}, recall "
            f"{delta('hub', 'truncation', 'recall'):+.3f}."
        )
    lines.append(
        "- Reading: hub latents sit nearer the centre (smaller ‖z‖) like truncated "
        "ones but less extremely; any gain in precision/confidence is paid for in "
        "recall. The paper's claim that hub latents beat random sampling holds "
        "here only where the hub row has the lowest Fréchet distance above."
    )
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_plot(x, y, xlabel, ylabel):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(x, y)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig


def _histograms(sim):
    plt = _plt()
    fig, axes = plt.subplots(1, len(sim), figsize=(3.2 * len(sim), 2.8))
    for ax, row in zip(np.atleast_1d(axes), sim):
        c = np.asarray(row["counts_seed0"])
        ax.hist(c, bins=np.arange(c.max() + 2) - 0.5, log=True)
        ax.set(title=f"d = {row['d']}, skew {row['skewness']:.3g}", xlabel="N_5")
    fig.tight_layout()
    return fig


def _grids(grids):
    plt = _plt()
    fig, axes = plt.subplots(1, len(METHODS), figsize=(4 * len(METHODS), 4.2))
    for ax, m in zip(axes, METHODS):
        imgs = np.asarray(grids[m])[..., 0]
        side = int(math.sqrt(len(imgs)))
        # A one-pixel grey frame separates the digits.
        imgs = np.pad(imgs[: side * side], ((0, 0), (1, 1), (1, 1)),
                      constant_values=0.0)
        h, w = imgs.shape[1:]
        tile = imgs.reshape(side, side, h, w).transpose(0, 2, 1, 3)
        ax.imshow(tile.reshape(side * h, side * w), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(m)
        ax.axis("off")
    fig.tight_layout()
    return fig
