"""Score SDEs: VP/VE models, P/C/PC samplers at equal NFE, PF-ODE NFE, bits/dim.

Source: Song et al., "Score-Based Generative Modeling through Stochastic
Differential Equations" (ICLR 2021), Table 1 (predictor-only vs corrector-only
vs predictor–corrector at equal NFE: PC1000 < P2000 ≤ P1000 ≪ C2000 in FID),
Fig. 3 (PF-ODE NFE vs tolerance) and Table 2 (exact likelihood via the ODE);
J. Su, 生成扩散模型漫谈 (五)/(六); reference/sde.md.

Trains continuous-time VP and VE ε-prediction U-Nets (``jaxlab.nn.unet``, the
DDIM issue's model with float times) with the DSM loss on MNIST-5k (quick:
scikit-learn digits), then reports

1. the Fréchet distance of samples in the features of a classifier trained
   here (not the Inception FID; comparable only within one run) for the
   predictors {reverse diffusion, ancestral, probability flow} alone with N and
   2N steps, with one Langevin corrector step per level (PC, 2N NFE), and the
   corrector alone (C, 2N levels) — the paper's Table 1 at N = 1000 (full) or
   N = 50 (quick);
2. probability-flow ODE sampling (Tsit5, per-sample adaptive steps) at several
   tolerances: per-sample NFE and Fréchet distance (the paper's Fig. 3);
3. test-set bits/dim from the ODE likelihood (Hutchinson, rtol = atol = 1e-5,
   ε = 1e-5) on uniformly dequantized data, against the DDPM bound (Ho et al.
   Eq. 5, σ_t = β̃_t) of the DDIM experiment's ε-model (its own preset and
   training recipe, ``ddpm.elbo_bpd``): all T terms with the discretized
   decoder on the discrete images, and an unbiased Monte-Carlo estimate with a
   continuous decoder on the same dequantized images as the ODE.

Expected: PC(N) beats P(N) and C(2N); PF-ODE NFE grows as the tolerance
shrinks; the exact ODE likelihood beats the DDPM ELBO (the paper's Table 2:
3.28 vs ≤ 3.70 bits/dim). Measured (quick, seed 0, Fréchet distance;
held-out-data floor 0.84): VE P50 3.75, P100 2.25, PC50 2.02, C100 78.7 (the
paper's ordering); VP P50 3.36, P100 2.76, PC50 3.36 (r = 0.01 makes VP's
corrector tiny), C100 15.0; PF-ODE mean NFE 67 / 134 / 334 (VP) at tol
1e-2 / 1e-3 / 1e-4; test bits/dim (64 images, 17 levels) VP 2.33 ± 0.02,
VE 2.65 ± 0.03 via the ODE (dequantized) vs DDPM ELBO 3.38 ± 0.04
(discretized decoder; 2.9 ± 1.8 for the 100-time Monte-Carlo estimate on the
dequantized data — unbiased but too noisy to rank).

Runtime: quick 4.6 min wall (379 s process CPU) on the shared 2-core CPU at
load ≈ 1.5 before the DDPM ELBO was added; with it, 24.2 min wall and 560 s
CPU (user + sys) measured at load ≈ 11 (other engineers' jobs), of which the
DDPM model adds 166 s wall / 100 s CPU of training and 65 s / 24 s for its
1000-term ELBO; that run solved the ODEs in the σ variables (then the
default; now ``param="t"``, fewer NFE). Full: hours on a CPU, minutes on one
GPU.

Run: ``jaxlab run sde --quick`` (or without ``--quick`` for the full preset).
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

from jaxlab import data, metrics, train
from jaxlab.diffusion import ddpm, likelihood, ode
from jaxlab.diffusion import sde as sde_lib
from jaxlab.experiments import ddim as ddim_exp
from jaxlab.nn import classifier as clf
from jaxlab.nn.unet import UNet
from jaxlab.report import Report

DATASETS = ("digits", "mnist5k")
# Discrete levels of each data set (digits: 0..16; MNIST: 8-bit), on [-1, 1].
NUM_BINS = {"digits": 17, "mnist5k": 256}


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    dataset: str = "mnist5k"
    test_fraction: float = 0.1
    sdes: tuple[str, ...] = ("vp", "ve")
    # VE σ_max ≈ the largest pairwise distance of the training data (Song &
    # Ermon 2020, technique 1): 31.7 for MNIST-5k, 9.6 for digits, on [-1, 1].
    ve_sigma_max: float = 32.0
    # U-Net (the DDIM issue's model; time_scale maps t ∈ [0, 1] to 0..1000).
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    train_steps: int = 20000
    batch_size: int = 128
    learning_rate: float = 2e-4
    ckpt_every: int = 2000
    # Samplers (Table 1).
    num_steps: int = 1000
    predictors: tuple[str, ...] = ("reverse_diffusion", "ancestral", "probability_flow")
    # Langevin r: PC (Table 5: VE 0.16, VP 0.01) and corrector-only (VE 0.22, VP 0.27).
    snr_ve: float = 0.16
    snr_vp: float = 0.01
    corrector_snr_ve: float = 0.22
    corrector_snr_vp: float = 0.27
    num_samples: int = 1000
    # PF-ODE (Fig. 3) and likelihood (Table 2).
    ode_tols: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    bpd_examples: int = 500
    # DDPM ELBO (Table 2's "DDPM ≤ 3.70"): the DDIM experiment's ε-model, built
    # and trained with that experiment's preset ("quick" or "full"), scored
    # with every one of its T terms in chunks of ``elbo_chunk`` times.
    ddpm_preset: str = "full"
    elbo_chunk: int = 50
    elbo_mc_times: int = 100
    # Fréchet-distance classifier.
    classifier_steps: int = 1500
    feature_dim: int = 128

    @classmethod
    def quick(cls) -> Config:
        return cls(
            dataset="digits", test_fraction=0.2, ve_sigma_max=10.0, channels=16,
            channel_mults=(1, 2), train_steps=1200, batch_size=64,
            learning_rate=2e-3, ckpt_every=600, num_steps=50,
            predictors=("reverse_diffusion",), num_samples=256,
            ode_tols=(1e-2, 1e-3, 1e-4), bpd_examples=64, classifier_steps=500,
            feature_dim=32, ddpm_preset="quick",
        )

    @classmethod
    def full(cls) -> Config:
        return cls()


def run(config: Config, out_dir: pathlib.Path) -> dict:
    _check_config(config)
    out_dir = pathlib.Path(out_dir)
    clock = _Clock()
    key = jr.key(config.seed)
    split_key, clf_key, model_key = jr.split(key, 3)

    x, y = data.load_digits() if config.dataset == "digits" else data.load_mnist5k()
    train_idx, test_idx = data.split(
        split_key, len(x), (1 - config.test_fraction, config.test_fraction)
    )
    x_train, x_test = x[train_idx], x[test_idx]
    num_dims = math.prod(x.shape[1:])

    classifier = clf.train_feature_classifier(
        clf_key, x_train, y[train_idx], steps=config.classifier_steps,
        feature_dim=config.feature_dim, workdir=out_dir / "classifier",
    )
    clf_acc = clf.accuracy(classifier, x_test, y[test_idx])
    real_feats = clf.features(classifier, x_train)
    n_ref = min(config.num_samples, len(x_test))
    floor = float(metrics.frechet_distance(clf.features(classifier, x_test[:n_ref]),
                                           real_feats))
    clock.lap("classifier")

    def frechet(samples):
        samples = np.clip(np.asarray(samples), -1.0, 1.0)
        return float(metrics.frechet_distance(clf.features(classifier, samples),
                                              real_feats))

    per_sde = {}
    for i, name in enumerate(config.sdes):
        per_sde[name] = _run_sde(
            name, _make_sde(name, config), jr.fold_in(model_key, i), config,
            x_train, x_test, num_dims, frechet, out_dir / f"{name}_model", clock,
        )

    ddpm_res = _run_ddpm(jr.fold_in(model_key, len(config.sdes)), config, x_train,
                         x_test, out_dir / "ddpm_model", clock)

    results = {
        "config": dataclasses.asdict(config),
        "num_train": len(train_idx),
        "num_test": len(test_idx),
        "classifier_test_accuracy": clf_acc,
        "frechet_floor_heldout": floor,
        "sdes": per_sde,
        "ddpm_elbo": ddpm_res,
    }
    results["timings_s"] = clock.totals()
    return _write_report(config, results, per_sde, out_dir)


# --------------------------------------------------------------------------- #
# One SDE: train, sample, likelihood
# --------------------------------------------------------------------------- #


def _run_sde(name, sde, key, config, x_train, x_test, num_dims, frechet, workdir,
             clock):
    init_key, batch_key, fit_key, sample_key, ode_key, bpd_key = jr.split(key, 6)
    model = UNet(in_channels=x_train.shape[-1], channels=config.channels,
                 channel_mults=config.channel_mults, num_res_blocks=1, num_heads=4,
                 time_scale=1000.0, rngs=nnx.Rngs(params=init_key))

    def loss_fn(m, batch, k):
        score = sde_lib.eps_score_fn(m, sde)
        return jnp.mean(sde_lib.dsm_loss(k, score, sde, batch)), {}

    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adam(config.learning_rate))
    fit = train.fit(
        fit_key, model, optimizer, loss_fn,
        data.Batcher(batch_key, x_train, config.batch_size),
        num_steps=config.train_steps, workdir=workdir, ckpt_every=config.ckpt_every,
        log_every=max(1, config.train_steps // 60), desc=f"sde {name}",
    )
    clock.lap(f"{name}_train")
    graphdef, state = nnx.split(fit.model)

    def score_of(state):
        return sde_lib.eps_score_fn(lambda x, t: nnx.merge(graphdef, state)(x, t), sde)

    shape = (config.num_samples, *x_train.shape[1:])
    N = config.num_steps
    snr = config.snr_ve if name == "ve" else config.snr_vp
    c_snr = config.corrector_snr_ve if name == "ve" else config.corrector_snr_vp

    # (1) Table 1: P(N), P(2N), PC(N) for each predictor; C(2N).
    runs = []
    for predictor in config.predictors:
        for label, steps, corrector in (("P", N, "none"), ("P", 2 * N, "none"),
                                        ("PC", N, "langevin")):
            runs.append((predictor, f"{label}{steps}", steps, corrector, snr))
    runs.append(("none", f"C{2 * N}", 2 * N, "langevin", c_snr))
    table1, grids = [], {}
    for predictor, column, steps, corrector, r in runs:
        sample = jax.jit(lambda st, k, p=predictor, n=steps, c=corrector, r=r:
                         sde_lib.pc_sample(k, score_of(st), sde, shape, predictor=p,
                                           corrector=c, snr=r, num_steps=n))
        samples = np.asarray(sample(state, sample_key))
        nfe = sde_lib.pc_nfe(steps, predictor=predictor, corrector=corrector)
        table1.append({"predictor": predictor, "column": column, "nfe": nfe,
                       "snr": r if corrector == "langevin" else None,
                       "frechet": frechet(samples)})
        grids[f"{predictor}/{column}"] = samples[:64]
    clock.lap(f"{name}_pc")

    # (2) PF-ODE: NFE and quality vs tolerance (one compilation for the sweep).
    ode_sample = jax.jit(lambda st, k, tol: ode.sample(
        k, score_of(st), sde, shape, rtol=tol, atol=tol, solver="tsit5",
        denoise=True))
    ode_rows = []
    for tol in config.ode_tols:
        samples, nfe = ode_sample(state, ode_key, jnp.asarray(tol, jnp.float32))
        nfe = np.asarray(nfe)
        ode_rows.append({"tol": tol, "nfe_mean": float(nfe.mean()),
                         "nfe_min": int(nfe.min()), "nfe_max": int(nfe.max()),
                         "frechet": frechet(samples)})
        grids[f"ode/{tol:g}"] = np.asarray(samples[:64])
    clock.lap(f"{name}_ode")

    # (3) Bits/dim of dequantized test data via the ODE likelihood.
    num_bins = NUM_BINS[config.dataset]
    deq_key, probe_key = jr.split(bpd_key)
    x_eval = likelihood.dequantize(deq_key, jnp.asarray(x_test[: config.bpd_examples]),
                                   data_range=(-1.0, 1.0), num_bins=num_bins)
    loglik = jax.jit(lambda st, k, xb: likelihood.log_likelihood(
        k, score_of(st), sde, xb, estimator="hutchinson", rtol=1e-5, atol=1e-5,
        eps=1e-5))
    logp, nfe = loglik(state, probe_key, x_eval)
    bpd = np.asarray(likelihood.bits_per_dim(logp, num_dims, data_range=(-1.0, 1.0),
                                             num_bins=num_bins))
    clock.lap(f"{name}_bpd")
    return {
        "train_history": fit.history,
        "final_train_loss": fit.history[-1]["loss"],
        "table1": table1,
        "ode": ode_rows,
        "bpd_mean": float(bpd.mean()),
        "bpd_se": float(bpd.std(ddof=1) / math.sqrt(len(bpd))),
        "bpd_nfe_mean": float(np.mean(np.asarray(nfe))),
        "grids": grids,
    }


def _run_ddpm(key, config, x_train, x_test, workdir, clock):
    """Train the DDIM experiment's ε-model; its test-set −ELBO in bits/dim."""
    dcfg = getattr(ddim_exp.Config, config.ddpm_preset)()
    sched = ddim_exp.SCHEDULES[dcfg.schedule](dcfg.T)
    init_key, batch_key, fit_key, deq_key, elbo_key = jr.split(key, 5)
    fit = ddim_exp.train_eps_model(
        (init_key, batch_key, fit_key), dcfg, sched, x_train, workdir,
        log_every=max(1, dcfg.steps // 60), desc="ddpm (ddim model)")
    clock.lap("ddpm_train")
    graphdef, state = nnx.split(fit.model)
    num_bins = NUM_BINS[config.dataset]
    x0 = jnp.asarray(x_test[: config.bpd_examples])
    x_deq = likelihood.dequantize(deq_key, x0, data_range=(-1.0, 1.0),
                                  num_bins=num_bins)

    def eps_of(st):
        model = nnx.merge(graphdef, st)
        return lambda x, t: model(x, t)

    # (a) Ho et al.'s bound on the discrete data: discretized decoder (Eq. 13),
    # every term t = 1..T; (b) the continuous-decoder bound on the dequantized
    # data (+ log2(num_bins/2), as the ODE's bits/dim), Monte Carlo over t.
    exact = jax.jit(lambda st, k, x: ddpm.elbo_bpd(
        k, eps_of(st), sched, x, chunk=config.elbo_chunk, decoder="discrete",
        num_bins=num_bins))
    mc = jax.jit(lambda st, k, x: ddpm.elbo_bpd(
        k, eps_of(st), sched, x, num_t=config.elbo_mc_times, decoder="gaussian"))
    disc = np.asarray(exact(state, elbo_key, x0))
    cont = np.asarray(mc(state, elbo_key, x_deq)) + math.log2(num_bins / 2.0)
    clock.lap("ddpm_elbo")
    n = len(disc)
    return {
        "preset": config.ddpm_preset,
        "T": dcfg.T,
        "schedule": dcfg.schedule,
        "train_steps": dcfg.steps,
        "final_train_loss": fit.history[-1]["loss"] if fit.history else None,
        "elbo_bpd_discrete": float(disc.mean()),
        "elbo_bpd_discrete_se": float(disc.std(ddof=1) / math.sqrt(n)),
        "elbo_bpd_dequantized": float(cont.mean()),
        "elbo_bpd_dequantized_se": float(cont.std(ddof=1) / math.sqrt(n)),
        "elbo_nfe": dcfg.T,
    }


class _Clock:
    """Wall and process-CPU seconds per phase (CPU ≈ idle-machine time)."""

    def __init__(self):
        self.start = self.last = (time.perf_counter(), time.process_time())
        self.laps: dict[str, dict[str, float]] = {}

    def lap(self, name):
        now = (time.perf_counter(), time.process_time())
        self.laps[name] = {"wall": now[0] - self.last[0], "cpu": now[1] - self.last[1]}
        self.last = now

    def totals(self):
        now = (time.perf_counter(), time.process_time())
        return {**self.laps, "total": {"wall": now[0] - self.start[0],
                                       "cpu": now[1] - self.start[1]}}


def _make_sde(name, config):
    if name == "vp":
        return sde_lib.VPSDE()
    return sde_lib.VESDE(sigma_min=0.01, sigma_max=config.ve_sigma_max)


def _check_config(config):
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {config.dataset!r}")
    bad = [s for s in config.sdes if s not in ("vp", "ve")]
    if bad or not config.sdes:
        raise ValueError(f"sdes must be a non-empty subset of ('vp', 've'), got "
                         f"{config.sdes!r}")
    bad = [p for p in config.predictors if p not in sde_lib.PREDICTORS or p == "none"]
    if bad:
        raise ValueError(
            f"predictors must be among {sde_lib.PREDICTORS[:-1]}, got {bad}"
        )
    if not 0 < config.test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {config.test_fraction}")
    if config.ddpm_preset not in ("quick", "full"):
        raise ValueError(f"ddpm_preset must be 'quick' or 'full', got "
                         f"{config.ddpm_preset!r}")
    if config.elbo_chunk < 1 or config.elbo_mc_times < 1:
        raise ValueError(f"elbo_chunk and elbo_mc_times must be >= 1, got "
                         f"{config.elbo_chunk}, {config.elbo_mc_times}")
    if any(not t > 0 for t in config.ode_tols) or not config.ode_tols:
        raise ValueError(f"ode_tols must be positive numbers, got {config.ode_tols!r}")


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _write_report(config, results, per_sde, out_dir):
    report = Report("sde: score SDEs, PC samplers, PF-ODE and likelihood", out_dir)
    dataset = "scikit-learn digits (8×8)" if config.dataset == "digits" else (
        "MNIST-5k (28×28)")
    report.text(
        f"Continuous-time VP (β ∈ [0.1, 20]) and VE (σ ∈ [0.01, "
        f"{config.ve_sigma_max:g}]) ε-prediction U-Nets (channels "
        f"{config.channels}, mults {config.channel_mults}) trained with the "
        f"unweighted DSM loss for {config.train_steps} steps (batch "
        f"{config.batch_size}, Adam {config.learning_rate:g}) on "
        f"{results['num_train']} images of {dataset}; {results['num_test']} held "
        f"out. Fréchet distances use the penultimate features of a classifier "
        f"trained here (test accuracy {results['classifier_test_accuracy']:.3f}); "
        f"this is **not** the Inception FID and is comparable only within this "
        f"run. {config.num_samples} samples per sampler against the training "
        f"images; the same distance for {min(config.num_samples, results['num_test'])}"
        f" held-out real images is {results['frechet_floor_heldout']:.4g} (the "
        f"floor at this sample size)."
    )
    N = config.num_steps
    report.text(f"## Table 1 analogue: Fréchet distance at equal NFE (N = {N})")
    report.text(
        f"P{N}: predictor only ({N + 1} NFE with the final Tweedie step); "
        f"P{2 * N}: predictor only with twice the steps; PC{N}: predictor + one "
        f"Langevin corrector step per level ({2 * N + 1} NFE); C{2 * N}: corrector "
        f"only over {2 * N} levels. Langevin r: PC VE {config.snr_ve:g} / VP "
        f"{config.snr_vp:g}, C VE {config.corrector_snr_ve:g} / VP "
        f"{config.corrector_snr_vp:g} (the paper's Table 5). All samplers of one "
        f"SDE share x_T and the predictor noise (common random numbers). With "
        f"VP's r = {config.snr_vp:g} the Langevin step is ε ≈ 2r²·v_t, a "
        f"{2 * config.snr_vp**2:.0e} fraction of the marginal variance, so VP's "
        f"PC column stays close to P{N} (the paper's VP row is also nearly flat: "
        f"3.24 / 3.24 / 3.21)."
    )
    cols = [f"P{N}", f"P{2 * N}", f"PC{N}"]
    for name, res in per_sde.items():
        rows = []
        for predictor in config.predictors:
            cells = {r["column"]: r["frechet"] for r in res["table1"]
                     if r["predictor"] == predictor}
            rows.append([predictor.replace("_", " "), *[cells[c] for c in cols]])
        c_cell = [r["frechet"] for r in res["table1"] if r["predictor"] == "none"][0]
        rows.append([f"corrector only (C{2 * N})", "", c_cell, ""])
        report.table(["predictor", *cols], rows,
                     caption=f"**{name.upper()}**: Fréchet distance (lower is better)")
    report.figure(_table1_figure(per_sde, config), "table1_frechet",
                  "Fréchet distance per sampler at equal NFE")

    report.text("## Probability-flow ODE: NFE vs tolerance (Fig. 3 analogue)")
    report.text(
        "Tsit5 with a PID step-size controller, rtol = atol = tol, solved per "
        "sample (vmapped), ε = 1e-3, final Tweedie step; NFE per sample."
    )
    rows = []
    for name, res in per_sde.items():
        for r in res["ode"]:
            rows.append([name.upper(), f"{r['tol']:g}", r["nfe_mean"],
                         f"{r['nfe_min']}–{r['nfe_max']}", r["frechet"]])
    report.table(["SDE", "tol", "mean NFE", "NFE range", "Fréchet distance"], rows)
    report.figure(_ode_figure(per_sde), "ode_nfe_vs_tol",
                  "PF-ODE NFE per sample (mean, min–max) vs tolerance")

    num_bins = NUM_BINS[config.dataset]
    report.text("## Test-set bits/dim via the ODE likelihood (Table 2 analogue)")
    dd = results["ddpm_elbo"]
    report.text(
        f"The same {config.bpd_examples} held-out images. **ODE rows:** uniformly "
        f"dequantized, pixel level k of {num_bins} ↦ −1 + 2(k + u)/{num_bins}, "
        f"u ~ U[0, 1); bits/dim = −log p/(D ln 2) + log2({num_bins}/2), an upper "
        f"bound on the discrete data's bits/dim. Hutchinson (Rademacher) "
        f"divergence, Tsit5 (in t), rtol = atol = 1e-5, "
        f"ε = 1e-5. **DDPM rows:** the DDIM experiment's ε-model ('{dd['preset']}' "
        f"preset: T = {dd['T']} {dd['schedule']} schedule, {dd['train_steps']} "
        f"training steps, loss {_fmt(dd['final_train_loss'])}), negative ELBO of "
        f"Ho et al. (Eq. 5) with σ_t² = β̃_t² (posterior variance, 'fixedsmall'); "
        f"(i) on the discrete images with the discretized Gaussian decoder "
        f"(Ho Eq. 13: bins of width 2/{num_bins - 1} around the {num_bins} levels, "
        f"±∞ edges), all {dd['T']} terms computed — a bound on the discrete "
        f"bits/dim with no dequantization; (ii) on the same dequantized images "
        f"as the ODE rows with a continuous Gaussian decoder, + log2({num_bins}/2), "
        f"Monte Carlo over {config.elbo_mc_times} random t per image (unbiased)."
    )
    rows = [[f"{name.upper()} (continuous), PF-ODE exact likelihood",
             res["bpd_mean"], res["bpd_se"], res["bpd_nfe_mean"]]
            for name, res in per_sde.items()]
    rows.append(["DDPM (DDIM model), ELBO, discretized decoder",
                 dd["elbo_bpd_discrete"], dd["elbo_bpd_discrete_se"], dd["T"]])
    rows.append(["DDPM (DDIM model), ELBO, dequantized data",
                 dd["elbo_bpd_dequantized"], dd["elbo_bpd_dequantized_se"],
                 config.elbo_mc_times])
    report.table(["model / bound", "bits/dim", "± s.e.", "NFE per image"], rows)

    report.figure(_grid_figure(per_sde, config), "samples",
                  f"samples: PC{N} ({config.predictors[0].replace('_', ' ')}) and "
                  f"PF-ODE (tol 1e-3 or the closest)")
    report.figure(_loss_figure(per_sde), "train_loss", "DSM training loss")
    phases = results["timings_s"].items()
    report.text("Time per phase, wall / process CPU (s): " + ", ".join(
        f"{k} {v['wall']:.0f} / {v['cpu']:.0f}" for k, v in phases))
    for res in per_sde.values():
        res.pop("grids")
    return report.write(results)


def _fmt(value):
    return "n/a" if value is None else f"{value:.4g}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table1_figure(per_sde, config):
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(per_sde), figsize=(5 * len(per_sde), 3.4),
                             squeeze=False)
    for ax, (name, res) in zip(axes[0], per_sde.items()):
        labels = [f"{r['predictor'][:8]}\n{r['column']}" for r in res["table1"]]
        ax.bar(range(len(labels)), [r["frechet"] for r in res["table1"]],
               color=["C0" if r["column"].startswith("PC") else "C1"
                      if r["column"].startswith("C") else "C7" for r in res["table1"]])
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set(title=f"{name.upper()} (N = {config.num_steps})",
               ylabel="Fréchet distance")
        ax.grid(axis="y", alpha=0.3)
    return fig


def _ode_figure(per_sde):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, res in per_sde.items():
        tols = [r["tol"] for r in res["ode"]]
        ax.plot(tols, [r["nfe_mean"] for r in res["ode"]], "o-", label=name.upper())
        ax.fill_between(tols, [r["nfe_min"] for r in res["ode"]],
                        [r["nfe_max"] for r in res["ode"]], alpha=0.2)
    ax.set(xscale="log", xlabel="rtol = atol", ylabel="NFE per sample",
           title="PF-ODE (Tsit5, per-sample steps)")
    ax.invert_xaxis()
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _grid_figure(per_sde, config):
    plt = _pyplot()
    fig, axes = plt.subplots(len(per_sde), 2, figsize=(7, 3.6 * len(per_sde)),
                             squeeze=False)
    pc_key = f"{config.predictors[0]}/PC{config.num_steps}"
    tol = min(config.ode_tols, key=lambda t: abs(math.log10(t) + 3))
    for row, (name, res) in zip(axes, per_sde.items()):
        panels = ((f"{name.upper()} PC{config.num_steps}", pc_key),
                  (f"{name.upper()} PF-ODE {tol:g}", f"ode/{tol:g}"))
        for ax, (title, k) in zip(row, panels):
            tiles = np.clip(res["grids"][k][:64], -1, 1)
            side = int(math.isqrt(len(tiles)))
            h, w = tiles.shape[1:3]
            img = tiles[: side * side, ..., 0].reshape(side, side, h, w)
            ax.imshow(img.transpose(0, 2, 1, 3).reshape(side * h, side * w),
                      cmap="gray", vmin=-1, vmax=1)
            ax.set_title(title)
            ax.axis("off")
    return fig


def _loss_figure(per_sde):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, res in per_sde.items():
        hist = res["train_history"]
        ax.plot([h["step"] for h in hist], [h["loss"] for h in hist],
                label=name.upper())
    ax.set(xlabel="step", ylabel="DSM loss (ε-MSE)", yscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig
