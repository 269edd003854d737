"""Sharded sampling, likelihood and training on 8 forced CPU devices = 1 device.

One subprocess (the device count is fixed when JAX starts) runs every sampler,
the likelihood, a data-parallel train step and an FSDP U-Net train step twice
with the same key: on one device and with the batch sharded over an 8-device
mesh. The tests below check its report.

Tolerances. Where no value crosses devices (DDPM, DDIM, the reverse SDE) each
row is computed by the same arithmetic on either layout and the random bits do
not depend on the sharding (``jax_threefry_partitionable``), so results must be
bit-identical. Where a reduction crosses devices (the PC corrector's batch-mean
norms, the batch-mean loss and its gradient), float32 sums of n terms in
another order differ by at most n·u·Σ|terms| (u = 2⁻²⁴, Higham 2002, Eq. 4.4).
Adaptive solves run in float64: the per-device batch shape may change XLA's
vectorization and fusion and hence round-off (measured: up to 5.4e-12 for
``batch_map`` with the default XLA flags, 0 with the fast-compile flags used
here), far too little to flip an accept/reject decision (in float32 it can: a
sample near a threshold then takes one step more, so they are not compared in
float32). So NFE must be equal and states agree to c·u·NFE·max|x| with
u = 2⁻⁵³ and c = 2¹⁰: per vector-field evaluation a few dozen flops, some
transcendental and evaluated with condition numbers up to ~30 (the inverse of
t ↦ β̄/ᾱ near t = 0), each contributing O(1) ulp; errors add over NFE.

The subprocess compiles with XLA CPU's fast-compile flags
(``_subprocess.FAST_COMPILE``; the programs here are compile-bound); both
layouts use the same flags, and the default flags were checked to pass too.
"""

import pathlib
import sys
import textwrap

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _subprocess import FAST_COMPILE, run_json

U32 = 2.0**-24
U64 = 2.0**-53
B = 16  # global batch: 2 rows per device

_SCRIPT = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, jax.random as jr, numpy as np, optax
    from flax import nnx
    from jaxlab import parallel, train
    from jaxlab.diffusion import ddim, ddpm, gaussian, likelihood, ode, schedules
    from jaxlab.diffusion import sde as sde_lib
    from jaxlab.nn.mlp import MLP
    from jaxlab.nn.unet import UNet

    B, D, MU, S = 16, 3, 0.5, 0.7
    mesh = parallel.make_mesh(8)
    rows = parallel.batch_sharding(mesh)
    out = {"devices": jax.device_count()}

    def floats(tree):
        leaves = jax.tree.leaves(tree)
        return [a for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)]

    def diff(a, b):
        return max(float(np.max(np.abs(np.asarray(u, np.float64)
                                        - np.asarray(v, np.float64))))
                   for u, v in zip(floats(a), floats(b)))

    def record(name, one, many, **extra):
        leaves = jax.tree.leaves(many)
        ints = [a for a in jax.tree.leaves(one) if jnp.issubdtype(a.dtype, jnp.integer)]
        out[name] = {"diff": diff(one, many), "max_abs": diff(one, jax.tree.map(
                         jnp.zeros_like, one)),
                     "max_int": max((int(a.max()) for a in ints), default=0),
                     "specs": [list(x.sharding.spec) for x in leaves],
                     "shards": [len(x.addressable_shards) for x in leaves],
                     "finite": bool(all(np.isfinite(np.asarray(x)).all()
                                        for x in leaves)), **extra}
        if any(jnp.issubdtype(x.dtype, jnp.integer) for x in leaves):
            ints = [(u, v) for u, v in zip(jax.tree.leaves(one), leaves)
                    if jnp.issubdtype(v.dtype, jnp.integer)]
            out[name]["int_equal"] = all(bool(np.array_equal(u, v)) for u, v in ints)

    def both(name, fn, **extra):
        one = jax.jit(fn)(jr.key(0))
        many = jax.jit(fn, out_shardings=rows)(jr.key(0))
        record(name, one, many, **extra)
        return one

    # ---- discrete samplers, float32 ----
    sched = schedules.linear(100)
    eps_fn = gaussian.eps_fn(sched, MU, S)
    both("ddpm", lambda k: ddpm.sample(k, eps_fn, sched, (B, D)))
    both("ddim_eta0", lambda k: ddim.sample(k, eps_fn, sched, (B, D), num_steps=20))
    both("ddim_eta1", lambda k: ddim.sample(k, eps_fn, sched, (B, D), num_steps=20,
                                            eta=1.0))
    x_T = jr.normal(jr.key(5), (B, D))
    f = jax.jit(lambda x: ddim.sample(jr.key(0), eps_fn, sched, (B, D), num_steps=20,
                                      x_T=x))
    record("ddim_sharded_xT", f(x_T), f(parallel.shard_batch(x_T, mesh)))

    # ---- continuous samplers, float32 ----
    vp = sde_lib.VPSDE()
    score = sde_lib.oracle_score_fn(vp, MU, S)
    both("pc", lambda k: sde_lib.pc_sample(k, score, vp, (B, D), num_steps=20),
         num_steps=20)
    both("reverse_sde", lambda k: sde_lib.sample_reverse_sde(k, score, vp, (B, D),
                                                             num_steps=20))

    # ---- adaptive solves, float64 ----
    with jax.enable_x64(True):
        tol = dict(rtol=1e-5, atol=1e-5)
        f64 = jnp.float64
        one = both("ode_sample", lambda k: ode.sample(k, score, vp, (B, D), dtype=f64,
                                                      **tol))
        z = jax.jit(lambda k: vp.prior_sample(k, (B, D), f64), out_shardings=rows)(
            jr.key(0))
        decode = parallel.batch_map(lambda z: ode.decode(score, vp, z, **tol), mesh)
        record("ode_batch_map", one, jax.jit(decode)(z))
        x = MU + S * jr.normal(jr.key(3), (B, D), f64)
        xs = parallel.shard_batch(x, mesh)
        ones = {}
        for est in ("exact", "hutchinson"):
            f = jax.jit(lambda k, x: likelihood.log_likelihood(
                k, score, vp, x, estimator=est, **tol))
            ones[est] = f(jr.key(4), x)
            record(f"loglik_{est}", ones[est], f(jr.key(4), xs))
        ll = parallel.batch_map(
            lambda k, x: likelihood.log_likelihood(k, score, vp, x, **tol), mesh,
            batched=(False, True))
        record("loglik_batch_map", ones["exact"], jax.jit(ll)(jr.key(4), xs))

    # ---- data-parallel train step (MLP, float32) ----
    xb = jr.normal(jr.key(6), (B, 4))
    yb = jnp.sin(xb).sum(1, keepdims=True)
    def mse(m, batch, key):
        return jnp.mean((m(batch[0]) - batch[1]) ** 2), {}
    runs = {}
    for name, use in (("one", None), ("many", mesh)):
        graphdef, state = train.init_state(MLP((4, 32, 1), rngs=nnx.Rngs(0)),
                                           optax.sgd(0.1))
        batch = (xb, yb)
        if use is not None:
            state = parallel.replicate(state, use)
            batch = parallel.shard_batch(batch, use)
        step = train.make_train_step(graphdef, mse, optax.sgd(0.1))
        losses = []
        for _ in range(3):
            state, metrics = step(state, batch, jr.key(7))
            losses.append(float(metrics["loss"]))
        runs[name] = (losses, state.params)
    # largest per-example gradient entry at the initial parameters (the bound's G)
    graphdef, params0 = nnx.split(MLP((4, 32, 1), rngs=nnx.Rngs(0)), nnx.Param)
    def one_loss(p, x, y):
        return jnp.mean((nnx.merge(graphdef, p)(x[None]) - y[None]) ** 2)
    per_example = jax.vmap(jax.grad(one_loss), (None, 0, 0))(params0, xb, yb)
    out["dp_grad_max"] = max(float(jnp.max(jnp.abs(g)))
                             for g in jax.tree.leaves(per_example))
    out["dp_train"] = {
        "loss_one": runs["one"][0], "loss_many": runs["many"][0],
        "param_diff": diff(runs["one"][1], runs["many"][1]),
        "replicated": all(a.sharding.is_fully_replicated
                          for a in jax.tree.leaves(runs["many"][1]))}

    # ---- FSDP U-Net train step on a data:4 x model:2 mesh (float32) ----
    mesh2 = parallel.mesh_from_spec("data:4,model:2")
    imgs = jr.uniform(jr.key(8), (8, 8, 8, 1), minval=-1.0, maxval=1.0)
    def unet_loss(m, batch, key):
        return jnp.mean(ddpm.loss(key, m, sched, batch)), {}
    def unet_fit(**kw):
        model = UNet(in_channels=1, channels=8, channel_mults=(1, 2), num_heads=2,
                     num_groups=4, rngs=nnx.Rngs(0))
        return train.fit(jr.key(9), model, optax.sgd(1e-2, momentum=0.9), unet_loss,
                         lambda step: imgs, num_steps=2, log_every=1,
                         fsdp_min_size=256, **kw)
    ref = unet_fit()
    fsdp = unet_fit(mesh=mesh2)  # param_sharding defaults to "fsdp" on this mesh
    params = jax.tree.leaves(fsdp.state.params)
    mom = jax.tree.leaves(fsdp.state.opt_state)
    big = [a for a in params if a.size >= 256]
    out["fsdp"] = {
        "loss_one": [h["loss"] for h in ref.history],
        "loss_fsdp": [h["loss"] for h in fsdp.history],
        "param_diff": diff(ref.state.params, fsdp.state.params),
        "param_max": diff(ref.state.params, jax.tree.map(jnp.zeros_like,
                                                         ref.state.params)),
        "n_big": len(big),
        "n_big_sharded": sum("model" in tuple(a.sharding.spec) for a in big),
        "n_small_replicated": sum(a.sharding.is_fully_replicated
                                  for a in params if a.size < 256),
        "n_small": sum(a.size < 256 for a in params),
        "n_mom_sharded": sum("model" in tuple(a.sharding.spec) for a in mom),
        "mesh": dict(mesh2.shape)}

    # ---- FSDP BERT train step (train.place_state, as a custom train loop) ----
    from jaxlab.nn.bert import BertConfig, BertEncoder
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    ids = jr.randint(jr.key(10), (8, 12), 0, 64)
    mask = jnp.ones((8, 12), jnp.int32)
    def bert_loss(m, batch, key):
        return jnp.mean(m(batch[0], batch[1])[-1] ** 2), {}
    bert = {}
    for name, use in (("one", None), ("fsdp", mesh2)):
        graphdef, state = train.init_state(BertEncoder(cfg, rngs=nnx.Rngs(0)),
                                           optax.sgd(1e-2))
        state, shardings = train.place_state(state, use, fsdp_min_size=256)
        step = train.make_train_step(graphdef, bert_loss, optax.sgd(1e-2),
                                     state_sharding=shardings)
        batch = (ids, mask) if use is None else parallel.shard_batch((ids, mask), use)
        losses = []
        for _ in range(2):
            state, metrics = step(state, batch, jr.key(11))
            losses.append(float(metrics["loss"]))
        bert[name] = (losses, state)
    bp = jax.tree.leaves(bert["fsdp"][1].params)
    out["fsdp_bert"] = {
        "loss_one": bert["one"][0], "loss_fsdp": bert["fsdp"][0],
        "param_diff": diff(bert["one"][1].params, bert["fsdp"][1].params),
        "n_big": sum(a.size >= 256 for a in bp),
        "n_big_sharded": sum("model" in tuple(a.sharding.spec) for a in bp
                             if a.size >= 256),
        "word_spec": list(bert["fsdp"][1].params["embeddings"]["word"].sharding.spec)}

    # ---- FSDP checkpoints: saved from sharded arrays, restored and re-sharded ----
    import tempfile
    def mlp_fit(**kw):
        return train.fit(jr.key(1), MLP((4, 32, 1), rngs=nnx.Rngs(0)),
                         optax.adam(1e-2), mse, lambda step: (xb, yb), num_steps=4,
                         log_every=1, ckpt_every=1, mesh=mesh2, fsdp_min_size=64, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        full = mlp_fit()
        mlp_fit(workdir=tmp, stop_after=2)
        resumed = mlp_fit(workdir=tmp)
    out["fsdp_resume"] = {
        "diff": diff(resumed.state, full.state),
        "sharded": sum("model" in tuple(a.sharding.spec)
                       for a in jax.tree.leaves(resumed.state.params))}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def report():
    return run_json(_SCRIPT, devices=8, xla_flags=FAST_COMPILE)


def _sharded_rows(entry, n_leaves=1):
    """Every output leaf is split by rows over the 8 devices of the data axis."""
    assert entry["specs"] == [["data"]] * n_leaves
    assert entry["shards"] == [8] * n_leaves
    assert entry["finite"]


def test_eight_devices_are_used(report):
    assert report["devices"] == 8


@pytest.mark.parametrize(
    "name", ["ddpm", "ddim_eta0", "ddim_eta1", "ddim_sharded_xT", "reverse_sde"]
)
def test_row_wise_samplers_are_bit_identical(report, name):
    entry = report[name]
    _sharded_rows(entry)
    assert entry["diff"] == 0.0


def test_pc_sampler_matches_to_reduction_round_off(report):
    entry = report["pc"]
    _sharded_rows(entry)
    # The Langevin step size uses batch means of B norms: an all-reduce sums
    # them in another order (relative error <= B·u per step); over num_steps
    # steps of a contracting update that bounds |Δx| by num_steps·B·u·max|x|.
    bound = entry["num_steps"] * B * U32 * max(entry["max_abs"], 1.0)
    assert entry["diff"] <= bound


@pytest.mark.parametrize(
    "name",
    [
        "ode_sample",
        "ode_batch_map",
        "loglik_exact",
        "loglik_hutchinson",
        "loglik_batch_map",
    ],
)
def test_adaptive_solves_match_with_equal_nfe(report, name):
    entry = report[name]
    _sharded_rows(entry, n_leaves=2)  # (x or logp, nfe), both [B] rows
    assert entry["int_equal"]  # NFE per sample
    assert entry["max_int"] > 0
    assert entry["diff"] <= 2**10 * U64 * entry["max_int"] * max(entry["max_abs"], 1.0)


def test_data_parallel_train_step(report):
    entry = report["dp_train"]
    assert entry["replicated"]
    # loss = mean of B squared errors, summed across devices in another order
    np.testing.assert_allclose(entry["loss_many"], entry["loss_one"], rtol=4 * B * U32)
    # 3 SGD steps of lr 0.1: |Δθ| <= 3·0.1·|Δg|; the gradient, a mean of B
    # per-example terms each <= G, carries round-off <= (B-1)·u·G (Higham 4.4);
    # a factor 2 covers G growing over the 3 steps.
    bound = 3 * 0.1 * (B - 1) * U32 * 2 * report["dp_grad_max"]
    assert entry["param_diff"] <= bound


def test_fsdp_unet_step_matches_one_device_and_shards_params(report):
    entry = report["fsdp"]
    assert entry["mesh"] == {"data": 4, "model": 2}
    assert entry["n_big"] > 0 and entry["n_big_sharded"] == entry["n_big"]
    assert entry["n_small_replicated"] == entry["n_small"]
    assert entry["n_mom_sharded"] == entry["n_big"]  # momentum laid out like params
    # float32 reductions (convolutions, GroupNorm, the batch mean) in another
    # order: relative round-off ~1e-6 per reduction, amplified by 2 SGD steps.
    np.testing.assert_allclose(entry["loss_fsdp"], entry["loss_one"], rtol=1e-5)
    assert entry["param_diff"] <= 1e-5 * max(entry["param_max"], 1.0)


def test_fsdp_bert_step_matches_one_device(report):
    entry = report["fsdp_bert"]
    assert entry["n_big"] > 0 and entry["n_big_sharded"] == entry["n_big"]
    assert "model" in entry["word_spec"]  # the [64, 16] embedding table is split
    np.testing.assert_allclose(entry["loss_fsdp"], entry["loss_one"], rtol=1e-5)
    assert entry["param_diff"] <= 1e-6  # 2 SGD steps of lr 1e-2 on O(1) gradients


def test_fsdp_checkpoint_resume_is_bit_identical(report):
    entry = report["fsdp_resume"]
    assert entry["diff"] == 0.0
    assert entry["sharded"] == 1  # the 4x32 kernel; 32x1 and the biases are < 64
