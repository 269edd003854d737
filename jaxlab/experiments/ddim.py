"""DDPM/DDIM: one ε-model, samplers η ∈ {0, 0.5, 1} and σ̂ at S steps (DDIM Tables 1-2).

Source: Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021,
arXiv 2010.02502), Table 1 (FID over S × η and σ̂), Table 2 (encode→decode
reconstruction MSE), Figs. 5–6 (same x_T at different S; slerp); J. Su,
生成扩散模型漫谈 (四) "DDIM = 高观点DDPM"; reference/ddim.md.

Trains an NNX U-Net (``jaxlab.nn.unet``) with the ε-loss on MNIST-5k (quick:
scikit-learn's 8×8 digits), T = 1000 linear schedule, then, with that single
model and no retraining, measures

1. the Fréchet distance (FD) of samples to the training images in the
   penultimate features of a small classifier trained here on the same data —
   **not** the Inception FID; comparable only within one run — for
   S ∈ {10, 20, 50, 100, 1000} × η ∈ {0, 0.5, 1} and σ̂ (the same x_T for every
   cell);
2. encode→decode reconstruction MSE of held-out images (per dimension, data on
   [0, 1]) for S ∈ {10, 20, 50, 100};
3. the same x_T decoded at every S (consistency), slerp interpolation, and
   uniform vs quadratic sub-sequences.

Expected (the paper's ordering): η = 0 has the lowest FD at few steps, FD
decreases with S for every η, σ̂ collapses at S ≤ 20 and recovers at S = 1000;
reconstruction error falls with S. Absolute FDs depend on the classifier and
the sample size (quick mode uses 192 samples per cell in a 32-dimensional
feature space, so FDs are biased upwards; the FD of as many held-out real
images shows that finite-sample floor). Measured quick run (seed 0): FD at
S = 10 / 1000: η=0 3.10 / 1.34, η=1 3.99 / 0.88, σ̂ 6.59 / 0.90 (held-out real
1.47); reconstruction MSE 0.0036 / 0.0013 / 0.00034 / 0.00010 for
S = 10 / 20 / 50 / 100.

Runtime: quick ≈ 6 CPU-minutes (355 s user time) on a 2-core x86 CPU; 11.8 min
wall measured on a shared machine with a load average of ≈ 10 on its 2 cores
(see the report's timing table). Full (MNIST-5k, 40k steps, 2,000 samples per
cell): about a day on a 2-core CPU by extrapolating per-step timings — meant for
an accelerator; not run here, so no numbers are claimed for it.

Run: ``jaxlab run ddim --quick`` (full preset: ``jaxlab run ddim``).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

from jaxlab import data, metrics, train
from jaxlab.diffusion import ddim, ddpm, schedules
from jaxlab.nn import classifier as clf
from jaxlab.nn.unet import UNet
from jaxlab.report import Report, loss_figure, pyplot

DATASETS = ("digits", "mnist5k")
SCHEDULES = {"linear": schedules.linear, "cosine": schedules.cosine,
             "su_exponential": schedules.su_exponential}


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    dataset: str = "mnist5k"
    T: int = 1000
    schedule: str = "linear"
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    num_heads: int = 4
    steps: int = 40_000
    batch_size: int = 128
    learning_rate: float = 5e-4
    warmup: int = 500
    ckpt_every: int = 2000
    classifier_steps: int = 3000
    feature_dim: int = 128  # classifier feature size (the FD space)
    num_samples: int = 2000  # samples per FD cell
    sample_batch: int = 500
    fd_steps: tuple[int, ...] = (10, 20, 50, 100, 1000)
    etas: tuple[float, ...] = (0.0, 0.5, 1.0)
    recon_steps: tuple[int, ...] = (10, 20, 50, 100)
    skip_steps: tuple[int, ...] = (10, 20, 50, 100)
    interp_steps: int = 50
    test_fraction: float = 0.2

    @classmethod
    def quick(cls) -> Config:
        return cls(dataset="digits", channels=16, channel_mults=(1, 2),
                   num_res_blocks=1, steps=2000, batch_size=64, learning_rate=2e-3,
                   warmup=100, ckpt_every=500, classifier_steps=500, feature_dim=32,
                   num_samples=192, sample_batch=192, skip_steps=(10, 20, 50))

    @classmethod
    def full(cls) -> Config:
        return cls()


def run(config: Config, out_dir: pathlib.Path) -> dict:
    _validate(config)
    out_dir = pathlib.Path(out_dir)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    key = jr.key(config.seed)
    (split_key, clf_key, init_key, batch_key, fit_key, xt_key, noise_key,
     interp_key) = jr.split(key, 8)

    # ---------------------------------------------------------------- data
    x, y = data.load_digits() if config.dataset == "digits" else data.load_mnist5k()
    train_idx, test_idx = data.split(
        split_key, len(x), (1 - config.test_fraction, config.test_fraction))
    x_train, y_train, x_test = x[train_idx], y[train_idx], x[test_idx]
    img_shape = x.shape[1:]
    sched = SCHEDULES[config.schedule](config.T)

    # ------------------------------------------- feature classifier (FD space)
    t0 = time.perf_counter()
    classifier = clf.train_feature_classifier(
        clf_key, x_train, y_train, steps=config.classifier_steps,
        feature_dim=config.feature_dim, workdir=out_dir / "classifier")
    clf_acc = clf.accuracy(classifier, x_test, y[test_idx])
    ref_feats = jnp.asarray(clf.features(classifier, x_train))
    timings["classifier"] = time.perf_counter() - t0

    def fd(samples) -> float:
        feats = jnp.asarray(clf.features(classifier, np.asarray(samples)))
        return float(metrics.frechet_distance(ref_feats, feats))

    n = config.num_samples
    real_fd = fd(x_test[:n])

    # ------------------------------------------------------------- ε-model
    t0 = time.perf_counter()
    fit = train_eps_model((init_key, batch_key, fit_key), config, sched, x_train,
                          out_dir / "unet", log_every=max(1, config.steps // 100),
                          desc="ddim unet")
    timings["train"] = time.perf_counter() - t0
    graphdef, state = nnx.split(fit.model)
    fns = _Samplers(graphdef, state, sched, config.sample_batch)

    # ------------------------------------------- Table 1: FD over S × η, σ̂
    t0 = time.perf_counter()
    x_T = jr.normal(xt_key, (n, *img_shape))
    rows = [(f"η={e:g}", "eta", float(e)) for e in config.etas] + [("σ̂", "hat", 0.0)]
    fd_table: dict[str, dict[int, float]] = {}
    grids: dict[int, dict[str, np.ndarray]] = {}
    decoded: dict[int, np.ndarray] = {}
    for label, sigma, eta in rows:
        fd_table[label] = {}
        for s in config.fd_steps:
            out = fns.sample(noise_key, x_T, eta, num_steps=s, sigma=sigma)
            fd_table[label][s] = fd(out)
            grids.setdefault(s, {})[label] = out[:12]
            if sigma == "eta" and eta == 0.0:
                decoded[s] = out
    timings["fd_table"] = time.perf_counter() - t0

    # -------------------------------------- uniform vs quadratic τ (η = 0)
    t0 = time.perf_counter()
    skip_table = {"uniform": {}, "quadratic": {}}
    for s in config.skip_steps:
        for kind in ("uniform", "quadratic"):
            if kind == "uniform" and s in config.fd_steps:
                skip_table[kind][s] = fd_table["η=0"][s]
                continue
            out = fns.sample(noise_key, x_T, 0.0, num_steps=s, sigma="eta", skip=kind)
            skip_table[kind][s] = fd(out)
    timings["skip"] = time.perf_counter() - t0

    # ------------------------------- Table 2: encode → decode reconstruction
    t0 = time.perf_counter()
    x_rec_in = x_test[:n]
    recon = {}
    recon_examples = {}
    for s in config.recon_steps:
        z = fns.encode(x_rec_in, num_steps=s)
        rec = fns.sample(noise_key, z, 0.0, num_steps=s, sigma="eta")
        # per-dimension MSE with data mapped from [-1, 1] to [0, 1] (as Table 2)
        recon[s] = float(np.mean((rec - x_rec_in) ** 2) / 4.0)
        recon_examples[s] = rec[:8]
    timings["reconstruction"] = time.perf_counter() - t0

    # ------------------------- same x_T at every S (η = 0): content consistency
    s_ref = max(config.fd_steps)
    consistency = {s: float(np.mean((decoded[s] - decoded[s_ref]) ** 2) / 4.0)
                   for s in config.fd_steps}

    # ------------------------------------------------------------- slerp
    t0 = time.perf_counter()
    num_pairs, num_lam = 4, 9
    z_pairs = jr.normal(interp_key, (2, num_pairs, *img_shape))
    lams = np.linspace(0.0, 1.0, num_lam)
    z_interp = jnp.stack([
        jax.vmap(lambda a, b, lam=lam: ddim.slerp(a, b, lam))(z_pairs[0], z_pairs[1])
        for lam in lams
    ], axis=1).reshape(num_pairs * num_lam, *img_shape)
    interp = fns.sample(noise_key, z_interp, 0.0, num_steps=config.interp_steps,
                        sigma="eta")
    timings["slerp"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    s_min, s_max = min(config.fd_steps), max(config.fd_steps)
    checks = {
        "eta0_lowest_fd_at_S_min": min(fd_table, key=lambda r: fd_table[r][s_min])
        == "η=0",
        "sigma_hat_highest_fd_at_S_min": max(
            fd_table, key=lambda r: fd_table[r][s_min]) == "σ̂",
        "fd_at_S_max_below_S_min_every_row": all(
            fd_table[r][s_max] < fd_table[r][s_min] for r in fd_table),
        "reconstruction_mse_decreasing": all(
            recon[a] > recon[b] for a, b in zip(config.recon_steps,
                                                config.recon_steps[1:])),
    }
    results = {
        "config": dataclasses.asdict(config),
        "checks": checks,
        "classifier_test_accuracy": clf_acc,
        "fd_real_heldout": real_fd,
        "fd_table": fd_table,
        "skip_table": skip_table,
        "reconstruction_mse": recon,
        "consistency_mse_to_S_max": consistency,
        "final_train_loss": fit.history[-1]["loss"] if fit.history else None,
        "history": fit.history,
        "timings_s": timings,
        "num_train": len(train_idx),
        "num_test": len(test_idx),
    }
    return _write_report(config, results, grids, decoded, recon_examples, x_rec_in,
                         interp.reshape(num_pairs, num_lam, *img_shape), x_test,
                         out_dir)


# --------------------------------------------------------------------------- #
# Jitted wrappers around the library samplers (one compile per S and variant)
# --------------------------------------------------------------------------- #


def train_eps_model(keys, config: Config, sched, x_train, workdir, *, log_every: int,
                    desc: str) -> train.FitResult:
    """Train this experiment's U-Net ε-model (Ho et al. Eq. 14) with ``train.fit``.

    Adam with global-norm clipping at 1 and warm-up + cosine decay to 2% of
    ``config.learning_rate``; the sde experiment reuses it for its DDPM ELBO.

    Args:
        keys: ``(init_key, batch_key, fit_key)``.
        config: the architecture and optimisation fields (``channels``, ...).
        sched: the discrete schedule the loss samples t from.
        x_train: ``[N, H, W, C]`` training images in [-1, 1].
        workdir: checkpoint folder (resumes from it).
        log_every: history interval in steps.
        desc: progress-bar label.

    Raises:
        ValueError: ``x_train`` is not a non-empty ``[N, H, W, C]`` array of
            finite values in [-1, 1] (the range the schedule's noise assumes).
    """
    x = np.asarray(x_train)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(
            f"x_train must be [N, H, W, C] images with N ≥ 1; got shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x_train has {np.sum(~np.isfinite(x))} non-finite values")
    if x.min() < -1.0 or x.max() > 1.0:
        raise ValueError(
            "x_train must be scaled to [-1, 1]; got values in "
            f"[{x.min():g}, {x.max():g}]"
        )
    init_key, batch_key, fit_key = keys
    model = UNet(in_channels=x_train.shape[-1], channels=config.channels,
                 channel_mults=config.channel_mults,
                 num_res_blocks=config.num_res_blocks, num_heads=config.num_heads,
                 rngs=nnx.Rngs(params=init_key))

    def loss_fn(m, batch, k):
        return jnp.mean(ddpm.loss(k, lambda xt, t: m(xt, t), sched, batch)), {}

    lr = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup, config.steps,
        end_value=0.02 * config.learning_rate)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    return train.fit(
        fit_key, model, optimizer, loss_fn,
        data.Batcher(batch_key, x_train, config.batch_size),
        num_steps=config.steps, workdir=workdir, ckpt_every=config.ckpt_every,
        log_every=log_every, desc=desc)


class _Samplers:
    """Chunked, jitted ``ddim.sample`` / ``ddim.encode`` for a trained model.

    η is a traced argument, so the η-rows of Table 1 share one compilation per
    S; every chunk has ``chunk`` examples (the last one is padded).
    """

    def __init__(self, graphdef, state, sched, chunk: int):
        self.state, self.chunk = state, chunk

        def eps_fn(st):
            model = nnx.merge(graphdef, st)
            return lambda x, t: model(x, t)

        @functools.partial(jax.jit, static_argnames=("num_steps", "sigma", "skip"))
        def sample(st, key, x_T, eta, *, num_steps, sigma, skip):
            out = ddim.sample(key, eps_fn(st), sched, x_T.shape, num_steps=num_steps,
                              eta=eta, sigma=sigma, skip=skip, x_T=x_T)
            return jnp.clip(out, -1.0, 1.0)

        @functools.partial(jax.jit, static_argnames=("num_steps",))
        def encode(st, x0, *, num_steps):
            return ddim.encode(eps_fn(st), sched, x0, num_steps=num_steps)

        self._sample, self._encode = sample, encode

    def sample(self, key, x_T, eta, *, num_steps, sigma, skip="uniform"):
        """Samples from the latents ``x_T`` (the step noise from ``key``)."""
        return self._chunks(
            lambda i, xb: self._sample(self.state, jr.fold_in(key, i), xb, eta,
                                       num_steps=num_steps, sigma=sigma, skip=skip),
            x_T)

    def encode(self, x0, *, num_steps):
        """Deterministic DDIM latents of ``x0``."""
        return self._chunks(
            lambda i, xb: self._encode(self.state, xb, num_steps=num_steps), x0)

    def _chunks(self, fn, x):
        x = np.asarray(x)
        outs = []
        for i, start in enumerate(range(0, len(x), self.chunk)):
            xb = x[start : start + self.chunk]
            pad = self.chunk - len(xb)
            if pad:
                xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            outs.append(np.asarray(fn(i, jnp.asarray(xb)))[: self.chunk - pad])
        return np.concatenate(outs)


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _write_report(config, results, grids, decoded, recon_examples, x_rec_in, interp,
                  x_test, out_dir):
    report = Report("DDIM: one ε-model, many samplers (DDIM Tables 1–2)", out_dir)
    fd_table, steps = results["fd_table"], list(config.fd_steps)
    report.text(
        f"Data: {config.dataset} ({results['num_train']} training / "
        f"{results['num_test']} held-out images). U-Net ε-model (channels "
        f"{config.channels}, mults {config.channel_mults}, {config.num_res_blocks} res "
        f"block(s)/level, attention at the lowest resolution) trained for "
        f"{config.steps} steps (batch {config.batch_size}) with the ε-MSE on a "
        f"T = {config.T} {config.schedule} schedule; final training loss "
        f"{_fmt(results['final_train_loss'])}. All samplers below reuse this one "
        f"model (no retraining) and the same x_T.\n\n"
        f"**Sample quality metric:** Fréchet distance (FD) between Gaussian fits of "
        f"the penultimate features of a small conv classifier trained here on the "
        f"same training images (test accuracy "
        f"{results['classifier_test_accuracy']:.3f}), between {config.num_samples} "
        f"samples and the {results['num_train']} training images. This is **not** "
        f"the Inception FID; numbers are comparable only within this run. With "
        f"{config.num_samples} samples the FD is biased upwards: "
        f"{config.num_samples} *held-out real* images score "
        f"{results['fd_real_heldout']:.4g} (the floor). Samples are clipped to "
        f"[-1, 1].")
    report.table(
        ["sampler", *[f"S={s}" for s in steps]],
        [[label, *[fd_table[label][s] for s in steps]] for label in fd_table],
        caption="**FD (lower is better) over S × η and σ̂** — DDIM Table 1's layout "
                "(η = 1 and σ̂ are DDPM).")
    report.figure(_fd_figure(fd_table, steps, results["fd_real_heldout"]),
                  "fd_vs_steps", "FD vs number of sampling steps S (log scale); "
                                 "dashed: held-out real images")
    for s in steps:
        report.figure(_grid_figure(grids[s], f"S = {s}"), f"samples_S{s}",
                      f"samples at S = {s} (rows: sampler; same x_T in every row)")
    report.figure(_grid_figure({"real": x_test[:12]}, "held-out real images"),
                  "real", "held-out real images")

    skip = results["skip_table"]
    report.table(
        ["τ", *[f"S={s}" for s in config.skip_steps]],
        [[kind, *[skip[kind][s] for s in config.skip_steps]] for kind in skip],
        caption="**Uniform vs quadratic sub-sequence, η = 0** (FD; DDIM App. D.2, "
                "ermongroup/ddim #3).")

    recon = results["reconstruction_mse"]
    report.table(
        ["S", *map(str, config.recon_steps)],
        [["MSE", *[recon[s] for s in config.recon_steps]]],
        caption=f"**Encode→decode reconstruction** of {len(x_rec_in)} held-out images "
                "with S steps each way (per-dimension MSE, data on [0, 1]) — DDIM "
                "Table 2's trend (CIFAR10: 0.014 / 0.0065 / 0.0023 / 0.0009).")
    report.figure(_grid_figure({"input": x_rec_in[:8], **{
        f"S={s}": recon_examples[s] for s in config.recon_steps}}, "encode → decode"),
        "reconstruction", "held-out inputs and their S-step reconstructions")

    cons = results["consistency_mse_to_S_max"]
    report.table(
        ["S", *map(str, steps)],
        [["MSE to S_max", *[cons[s] for s in steps]]],
        caption=f"**Same x_T, different S (η = 0)**: per-dimension MSE (on [0, 1]) "
                f"between the decode at S and at S = {max(steps)}.")
    report.figure(_grid_figure({f"S={s}": decoded[s][:12] for s in steps},
                               "same x_T decoded at different S"),
                  "consistency", "each column: one x_T decoded with η = 0 at S steps")
    report.figure(_grid_figure({f"pair {i}": interp[i] for i in range(len(interp))},
                               "slerp(z1, z2, λ), λ = 0 … 1"),
                  "slerp", f"spherical interpolation of x_T, decoded at "
                           f"S = {config.interp_steps} (η = 0)")
    if results["history"]:
        fig = loss_figure(results["history"], ylabel="ε-MSE", title="U-Net training")
        report.figure(fig, "loss_curve", "training ε-loss")
    report.table(["finding (DDIM paper)", "reproduced here"],
                 [[k, v] for k, v in results["checks"].items()],
                 caption="**Orderings** measured in this run.")
    t = results["timings_s"]
    report.table(["phase", "seconds"], [[k, v] for k, v in t.items()],
                 caption="**Wall time** on this machine (shared CPUs: measured under "
                         "load).")
    return report.write(results)


def _fmt(v):
    return "n/a" if v is None else f"{v:.4g}"


def _fd_figure(fd_table, steps, floor):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, row in fd_table.items():
        ax.plot(steps, [row[s] for s in steps], marker="o", label=label)
    ax.axhline(floor, color="gray", ls="--", lw=1, label="held-out real")
    ax.set(xscale="log", yscale="log", xlabel="sampling steps S",
           ylabel="FD (classifier features)", title="DDIM Table 1 analogue")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _grid_figure(rows: dict, title: str):
    plt = pyplot()

    cols = max(len(v) for v in rows.values())
    size = (0.8 * cols + 0.8, 0.85 * len(rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=size, squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(imgs):
                ax.imshow(np.asarray(imgs[c])[..., 0], cmap="gray", vmin=-1, vmax=1)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig



def _validate(config: Config) -> None:
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {config.dataset!r}")
    if config.schedule not in SCHEDULES:
        raise ValueError(
            f"schedule must be one of {tuple(SCHEDULES)}, got {config.schedule!r}")
    for name in ("fd_steps", "recon_steps", "skip_steps"):
        bad = [s for s in getattr(config, name) if not 1 <= s <= config.T]
        if bad:
            raise ValueError(f"{name} must lie in [1, T={config.T}], got {bad}")
    if not 1 <= config.interp_steps <= config.T:
        raise ValueError(f"interp_steps must lie in [1, T], got {config.interp_steps}")
    if any(e < 0 for e in config.etas) or 0.0 not in config.etas:
        raise ValueError(
            f"etas must be >= 0 and include 0.0 (deterministic DDIM), got "
            f"{config.etas}")
    if not 0 <= config.warmup < config.steps:
        raise ValueError(
            f"warmup must be in [0, steps={config.steps}), got {config.warmup}")
    if config.num_samples < 2 or config.sample_batch < 1:
        raise ValueError(
            f"num_samples must be >= 2 and sample_batch >= 1, got "
            f"{config.num_samples}, {config.sample_batch}")
