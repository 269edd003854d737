r"""A small MLP GAN (Flax NNX) trained with the shared fit loop.

The generator of the hubness-prior experiment (reference/hubness.md): latents
z ~ N(0, I_d) map to ``[H, W, C]`` images in [−1, 1]; the discriminator returns
one logit per image. Training uses the non-saturating loss of Goodfellow et al.
(NeurIPS 2014, Sec. 3) with the R1 penalty of Mescheder, Geiger & Nowozin
("Which training methods for GANs do actually converge?", ICML 2018, Eq. 9):

    L_D = E_x softplus(−D(x)) + E_z softplus(D(G(z))) + (γ/2) E_x ‖∇_x D(x)‖²
    L_G = E_z softplus(−D(G(z)))

Both players take simultaneous Adam steps from one train step of
:func:`jaxlab.train.fit`: the loss is L_D + L_G with G's output stopped inside
L_D and D's parameters stopped inside L_G, so each player's gradient is that of
its own loss. Generator and discriminator get separate Adam states (and
learning rates) through ``optax.multi_transform``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

from .. import data as jdata
from .. import train

__all__ = [
    "GAN",
    "Discriminator",
    "Generator",
    "gan_loss",
    "generate",
    "sample_latents",
    "train_gan",
]


class Generator(nnx.Module):
    """MLP generator ``z [B, latent_dim] -> images [B, H, W, C]`` in [−1, 1].

    Args:
        latent_dim: dimension d of z.
        image_shape: ``(H, W, C)``.
        hidden: widths of the hidden layers (ReLU).
        rngs: NNX RNG streams.
    """

    def __init__(self, latent_dim: int, image_shape: Sequence[int], *,
                 hidden: Sequence[int] = (256, 512), rngs: nnx.Rngs):
        _check_sizes(latent_dim, image_shape, hidden)
        self.latent_dim = int(latent_dim)
        self.image_shape = tuple(int(s) for s in image_shape)
        sizes = (self.latent_dim, *hidden, math.prod(self.image_shape))
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )

    def __call__(self, z: jax.Array) -> jax.Array:
        chex.assert_shape(z, (None, self.latent_dim))
        h = z
        for layer in self.layers[:-1]:
            h = jax.nn.relu(layer(h))
        out = jnp.tanh(self.layers[-1](h))
        return out.reshape(z.shape[0], *self.image_shape)


class Discriminator(nnx.Module):
    """MLP discriminator ``images [B, H, W, C] -> logits [B]`` (leaky ReLU 0.2).

    Args:
        image_shape: ``(H, W, C)``.
        hidden: widths of the hidden layers.
        rngs: NNX RNG streams.
    """

    def __init__(self, image_shape: Sequence[int], *,
                 hidden: Sequence[int] = (512, 256), rngs: nnx.Rngs):
        _check_sizes(1, image_shape, hidden)
        self.image_shape = tuple(int(s) for s in image_shape)
        sizes = (math.prod(self.image_shape), *hidden, 1)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        chex.assert_shape(x, (None, *self.image_shape))
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            h = jax.nn.leaky_relu(layer(h), 0.2)
        return self.layers[-1](h)[:, 0]


class GAN(nnx.Module):
    """A generator and its discriminator, trained as one module."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], *,
                 g_hidden: Sequence[int] = (256, 512),
                 d_hidden: Sequence[int] = (512, 256), rngs: nnx.Rngs):
        self.generator = Generator(latent_dim, image_shape, hidden=g_hidden, rngs=rngs)
        self.discriminator = Discriminator(image_shape, hidden=d_hidden, rngs=rngs)


def sample_latents(key: jax.Array, n: int, latent_dim: int) -> jax.Array:
    """The GAN prior: ``[n, latent_dim]`` draws of N(0, I)."""
    return jr.normal(key, (n, latent_dim))


def gan_loss(model: GAN, x_real: jax.Array, key: jax.Array, *,
             r1_weight: float = 1.0) -> tuple[jax.Array, dict]:
    r"""L_D + L_G of the module docstring for one batch of real images.

    Args:
        model: the GAN.
        x_real: ``[B, H, W, C]`` real images in [−1, 1].
        key: PRNG key for the latents.
        r1_weight: γ of the R1 penalty (≥ 0).

    Returns:
        ``(L_D + L_G, metrics)`` with metrics ``d_loss``, ``g_loss``, ``r1``,
        ``d_real`` (mean D logit on reals) and ``d_fake``.
    """
    chex.assert_rank(x_real, 4)
    gen, disc = model.generator, model.discriminator
    z = sample_latents(key, x_real.shape[0], gen.latent_dim)
    fake = gen(z)

    def d_sum(x):
        return jnp.sum(disc(x))

    d_real = disc(x_real)
    d_fake_for_d = disc(jax.lax.stop_gradient(fake))
    grad_x = jax.grad(d_sum)(x_real)
    r1 = jnp.mean(jnp.sum(grad_x.reshape(grad_x.shape[0], -1) ** 2, axis=1))
    d_loss = (jnp.mean(jax.nn.softplus(-d_real))
              + jnp.mean(jax.nn.softplus(d_fake_for_d)) + 0.5 * r1_weight * r1)
    # The generator's loss sees D with stopped parameters.
    graphdef, d_state = nnx.split(disc)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(d_state))
    d_fake_for_g = frozen(fake)
    g_loss = jnp.mean(jax.nn.softplus(-d_fake_for_g))
    metrics = {"d_loss": d_loss, "g_loss": g_loss, "r1": r1,
               "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake_for_d)}
    return d_loss + g_loss, metrics


def train_gan(
    key: jax.Array,
    x: np.ndarray,
    *,
    latent_dim: int = 128,
    steps: int = 5000,
    batch_size: int = 64,
    g_learning_rate: float = 2e-4,
    d_learning_rate: float = 2e-4,
    b1: float = 0.5,
    r1_weight: float = 1.0,
    g_hidden: Sequence[int] = (256, 512),
    d_hidden: Sequence[int] = (512, 256),
    workdir=None,
    ckpt_every: int = 1000,
    log_every: int = 50,
) -> train.FitResult:
    """Train a :class:`GAN` on images ``x`` [N, H, W, C] in [−1, 1].

    Args:
        key: PRNG key (initialisation, batches and latents).
        x: training images.
        latent_dim: dimension of z.
        steps: simultaneous G/D steps.
        batch_size: images per step.
        g_learning_rate: Adam learning rate of the generator.
        d_learning_rate: Adam learning rate of the discriminator.
        b1: Adam β1 for both (0.5 as in DCGAN, Radford et al. 2016).
        r1_weight: γ of the R1 penalty.
        g_hidden: generator hidden widths.
        d_hidden: discriminator hidden widths.
        workdir: checkpoint folder (resumes when re-run), or ``None``.
        ckpt_every: checkpoint period.
        log_every: history period.

    Returns:
        :class:`jaxlab.train.FitResult`; ``.model`` is the trained GAN and the
        history holds the losses and D's mean logits.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ValueError(f"x must be [N, H, W, C] images, got shape {x.shape}")
    for name, value in (("g_learning_rate", g_learning_rate),
                        ("d_learning_rate", d_learning_rate)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if not 0.0 <= b1 < 1.0:
        raise ValueError(f"b1 must be in [0, 1), got {b1!r}")
    if not r1_weight >= 0:
        raise ValueError(f"r1_weight must be >= 0, got {r1_weight!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    init_key, batch_key, fit_key = jr.split(key, 3)
    model = GAN(latent_dim, x.shape[1:], g_hidden=g_hidden, d_hidden=d_hidden,
                rngs=nnx.Rngs(params=init_key))
    batches = jdata.Batcher(batch_key, x, min(batch_size, len(x)))
    optimizer = optax.multi_transform(
        {"generator": optax.adam(g_learning_rate, b1=b1),
         "discriminator": optax.adam(d_learning_rate, b1=b1)},
        _player_labels,
    )

    def loss_fn(m, batch, step_key):
        return gan_loss(m, batch, step_key, r1_weight=r1_weight)

    return train.fit(fit_key, model, optimizer, loss_fn, batches, num_steps=steps,
                     workdir=workdir, ckpt_every=ckpt_every, log_every=log_every,
                     desc="gan")


@nnx.jit
def _generate(generator: Generator, z):
    return generator(z)


def generate(generator: Generator, z: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Images of latents ``z`` [N, d] in fixed-size batches (one compilation)."""
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != generator.latent_dim:
        raise ValueError(
            f"z must be [N, {generator.latent_dim}], got shape {z.shape}"
        )
    n = len(z)
    bs = min(batch_size, n)
    pad = (-n) % bs
    zp = np.concatenate([z, np.zeros((pad, z.shape[1]), np.float32)]) if pad else z
    out = [np.asarray(_generate(generator, zp[i : i + bs]))
           for i in range(0, len(zp), bs)]
    return np.concatenate(out)[:n]


def _player_labels(params):
    """Label every parameter by the player owning it (first path entry)."""

    def label(path, _):
        first = path[0]
        name = getattr(first, "key", getattr(first, "name", None))
        return str(name)

    return jax.tree_util.tree_map_with_path(label, params)


def _check_sizes(latent_dim, image_shape, hidden):
    """Raise on non-positive sizes."""
    if not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
    if len(tuple(image_shape)) != 3 or any(int(s) < 1 for s in image_shape):
        raise ValueError(f"image_shape must be (H, W, C) > 0, got {tuple(image_shape)}")
    if any(int(h) < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {tuple(hidden)}")
