"""The ε-prediction U-Net: shapes, time input, per-example independence, training."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlab.diffusion import ddpm, schedules
from jaxlab.nn.unet import UNet


@pytest.fixture(scope="module")
def model():
    """One small model for the module.

    Eager initialization compiles one random-number program per parameter shape;
    the "rbg" key implementation compiles far faster than threefry on CPU.
    """
    key = jr.key(0, impl="rbg")
    return UNet(channels=8, channel_mults=(1, 2), num_heads=2, rngs=nnx.Rngs(key))


@pytest.fixture(scope="module")
def random_model(model):
    """A copy whose zero-initialized kernels (block outputs, attention output, the
    output conv) get random weights, so the output depends on x and t. Drawn with
    NumPy: no XLA compilation per parameter shape."""
    m = nnx.clone(model)
    rng = np.random.default_rng(0)

    def fill(p):
        if p.ndim >= 2 and not np.any(np.asarray(p)):
            return jnp.asarray(0.1 * rng.standard_normal(p.shape), p.dtype)
        return p

    nnx.update(m, jax.tree.map(fill, nnx.state(m, nnx.Param)))
    return m


_apply = nnx.jit(lambda m, x, t: m(x, t))


# Every call below reuses one of four compiled signatures (compiles dominate).
T3 = jnp.array([1, 50, 999])


def test_shapes_and_jit(model):
    x = jr.normal(jr.key(0), (3, 8, 8, 1))
    out = _apply(model, x, T3)
    assert out.shape == x.shape and out.dtype == x.dtype
    # zero-initialized output conv: the untrained model predicts ε̂ = 0
    np.testing.assert_array_equal(out, 0.0)
    # 28×28 (MNIST) with a scalar time broadcast to the batch
    x28 = jr.normal(jr.key(1), (3, 28, 28, 1))
    assert _apply(model, x28, 7).shape == x28.shape


def test_time_is_used_and_accepts_continuous_times(random_model):
    m = random_model
    x = jr.normal(jr.key(1), (3, 8, 8, 1))
    a = _apply(m, x, jnp.array([10, 10, 10]))
    b = _apply(m, x, jnp.array([500, 500, 500]))
    assert float(jnp.max(jnp.abs(a))) > 1e-3
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    # Continuous time: t ∈ [0, 1] with time_scale = 1000 embeds like step 1000·t.
    cont = nnx.clone(m)
    cont.time_scale = 1000.0
    np.testing.assert_allclose(
        _apply(cont, x, jnp.full((3,), 0.01)), a, rtol=1e-4, atol=1e-5
    )


def test_examples_are_independent(random_model):
    """GroupNorm and attention act per example: a batch equals its rows."""
    m = random_model
    x = jr.normal(jr.key(2), (3, 8, 8, 1))
    full = _apply(m, x, T3)
    for i in range(3):
        np.testing.assert_allclose(
            _apply(m, x[i : i + 1], T3[i : i + 1]),
            full[i : i + 1],
            rtol=1e-5,
            atol=1e-5,
        )


def test_grad_and_training_reduce_the_eps_loss(model):
    """A few Adam steps on the DDPM ε-loss of a fixed batch lower it."""
    sched = schedules.linear(100)
    x0 = jnp.tanh(jr.normal(jr.key(3), (16, 8, 8, 1)))
    graphdef, params = nnx.split(model)
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    def loss_fn(p, key):
        m = nnx.merge(graphdef, p)
        return ddpm.loss(key, lambda x, t: m(x, t), sched, x0).mean()

    @jax.jit
    def step(p, s, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    losses = []
    for i in range(40):
        params, opt_state, loss = step(params, opt_state, jr.fold_in(jr.key(5), i))
        losses.append(float(loss))
    before, after = np.mean(losses[:5]), np.mean(losses[-10:])
    # ε̂ = 0 at init has loss E‖ε‖²/D = 1 (16·64 draws per step: SE ≈ 0.02)
    assert abs(before - 1.0) < 0.1
    assert after < 0.8 * before


def test_bad_arguments(model):
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(channel_mults=(), rngs=rngs)
    with pytest.raises(ValueError, match="num_heads"):
        UNet(channels=6, channel_mults=(1,), num_heads=4, rngs=rngs)
    with pytest.raises(ValueError, match="channels"):
        UNet(channels=0, rngs=rngs)
    with pytest.raises(ValueError, match="time_scale"):
        UNet(time_scale=0.0, rngs=rngs)
    with pytest.raises(ValueError, match="divisible"):
        model(jnp.zeros((1, 7, 7, 1)), 1)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        model(jnp.zeros((8, 8, 1)), 1)
