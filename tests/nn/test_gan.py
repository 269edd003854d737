"""Tests for jaxlab.nn.gan: shapes, the two players' gradients, training."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

from jaxlab.nn import gan

SHAPE = (4, 4, 1)
LATENT = 8


def _model(seed=0):
    return gan.GAN(
        LATENT, SHAPE, g_hidden=(16,), d_hidden=(16,), rngs=nnx.Rngs(params=seed)
    )


def test_shapes_and_range_under_jit():
    model = _model()
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, z):
        m = nnx.merge(graphdef, state)
        x = m.generator(z)
        return x, m.discriminator(x)

    x, logits = fwd(state, 3.0 * jr.normal(jr.key(1), (5, LATENT)))
    assert x.shape == (5, *SHAPE) and logits.shape == (5,)
    assert float(jnp.max(jnp.abs(x))) <= 1.0


def test_zero_discriminator_gives_log2_losses():
    # D ≡ 0 (last layer zeroed): softplus(0) = log 2 for each term, and
    # ∇_x D = 0, so L_D = 2 log 2, L_G = log 2 and R1 = 0 exactly.
    model = _model()
    last = model.discriminator.layers[-1]
    last.kernel[...] = jnp.zeros_like(last.kernel[...])
    last.bias[...] = jnp.zeros_like(last.bias[...])
    x = jr.uniform(jr.key(2), (6, *SHAPE), minval=-1, maxval=1)
    loss, m = jax.jit(gan.gan_loss)(model, x, jr.key(3))
    np.testing.assert_allclose(float(m["d_loss"]), 2 * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(m["g_loss"]), math.log(2), rtol=1e-6)
    assert float(m["r1"]) == 0.0
    np.testing.assert_allclose(float(loss), 3 * math.log(2), rtol=1e-6)


def test_each_player_gets_the_gradient_of_its_own_loss():
    model = _model()
    x = jr.uniform(jr.key(4), (6, *SHAPE), minval=-1, maxval=1)
    key, gamma = jr.key(5), 0.7
    g_def, g_params = nnx.split(model.generator)
    d_def, d_params = nnx.split(model.discriminator)
    z = jr.normal(key, (6, LATENT))  # the documented prior draw of gan_loss

    def sp(v):
        return jnp.log1p(jnp.exp(v))

    def d_loss(dp):
        d = nnx.merge(d_def, dp)
        fake = nnx.merge(g_def, g_params)(z)
        gx = jax.grad(lambda xx: jnp.sum(d(xx)))(x)
        r1 = jnp.mean(jnp.sum(gx.reshape(6, -1) ** 2, axis=1))
        return jnp.mean(sp(-d(x))) + jnp.mean(sp(d(fake))) + 0.5 * gamma * r1

    def g_loss(gp):
        return jnp.mean(sp(-nnx.merge(d_def, d_params)(nnx.merge(g_def, gp)(z))))

    def total(params):
        g, d = params
        m = _model()
        nnx.update(m.generator, g)
        nnx.update(m.discriminator, d)
        return gan.gan_loss(m, x, key, r1_weight=gamma)[0]

    g_grad, d_grad = jax.jit(jax.grad(total))((g_params, d_params))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        d_grad,
        jax.grad(d_loss)(d_params),
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        g_grad,
        jax.grad(g_loss)(g_params),
    )


def test_training_fits_a_point_mass_and_players_have_own_optimizers():
    # Dirac target (Mescheder et al. 2018 show R1 makes this converge): every
    # image equals p. The generator's mean error must shrink well below its
    # error at initialisation.
    p = np.linspace(-0.6, 0.6, math.prod(SHAPE)).reshape(SHAPE).astype(np.float32)
    x = np.broadcast_to(p, (64, *SHAPE)).copy()
    z = np.asarray(jr.normal(jr.key(6), (256, LATENT)))
    kw = dict(
        latent_dim=LATENT,
        batch_size=32,
        g_hidden=(32,),
        d_hidden=(32,),
        r1_weight=1.0,
        log_every=50,
        g_learning_rate=5e-3,
        d_learning_rate=5e-3,
    )
    init = gan.GAN(
        LATENT,
        SHAPE,
        g_hidden=(32,),
        d_hidden=(32,),
        rngs=nnx.Rngs(params=jr.split(jr.key(7), 3)[0]),
    )
    err0 = np.abs(gan.generate(init.generator, z) - p).mean()
    res = gan.train_gan(jr.key(7), x, steps=400, **kw)
    assert all(np.isfinite(h["loss"]) for h in res.history)
    err = np.abs(gan.generate(res.model.generator, z) - p).mean()
    assert err < 0.25 * err0, (err0, err)
    # A vanishing generator learning rate freezes G but not D.
    frozen = gan.train_gan(
        jr.key(7), x, steps=5, **{**kw, "g_learning_rate": 1e-12, "log_every": 5}
    )
    g0, d0 = nnx.state(init.generator), nnx.state(init.discriminator)
    g1 = nnx.state(frozen.model.generator)
    d1 = nnx.state(frozen.model.discriminator)
    g_change = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1))
    )
    d_change = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(d0), jax.tree.leaves(d1))
    )
    assert g_change < 1e-9 and d_change > 1e-3


def test_generate_is_batch_invariant():
    model = _model()
    z = np.asarray(jr.normal(jr.key(8), (23, LATENT)))
    direct = np.asarray(model.generator(jnp.asarray(z)))
    np.testing.assert_allclose(
        gan.generate(model.generator, z, batch_size=7), direct, rtol=1e-6, atol=1e-6
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        gan.Generator(0, SHAPE, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="image_shape must be"):
        gan.Discriminator((4, 4), rngs=nnx.Rngs(0))
    x = np.zeros((8, *SHAPE), np.float32)
    with pytest.raises(ValueError, match="x must be"):
        gan.train_gan(jr.key(0), x[..., 0], steps=1)
    with pytest.raises(ValueError, match="g_learning_rate must be > 0"):
        gan.train_gan(jr.key(0), x, steps=1, g_learning_rate=0.0)
    with pytest.raises(ValueError, match="b1 must be in"):
        gan.train_gan(jr.key(0), x, steps=1, b1=1.0)
    with pytest.raises(ValueError, match="r1_weight"):
        gan.train_gan(jr.key(0), x, steps=1, r1_weight=-1.0)
    with pytest.raises(ValueError, match="z must be"):
        gan.generate(_model().generator, np.zeros((3, LATENT + 1)))
