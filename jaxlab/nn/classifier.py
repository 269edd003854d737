"""The feature classifier behind jaxlab's Fréchet distances.

The generative experiments (DDIM, score SDEs, hubness) score samples by the
Fréchet distance between Gaussian fits of a classifier's penultimate features
on real and generated images. The classifier is a small conv net trained here
on the same data; this is *not* the Inception FID, and numbers are comparable
only within one experiment run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

from .. import data as jdata
from .. import train

__all__ = ["FeatureClassifier", "accuracy", "features", "train_feature_classifier"]


class FeatureClassifier(nnx.Module):
    """Conv net on ``[N, H, W, C]`` images: two 3×3 convs, pooling, a feature layer.

    ``features(x)`` returns the penultimate ``[N, feature_dim]`` activations;
    calling the module returns ``[N, num_classes]`` logits.
    """

    def __init__(
        self,
        *,
        channels: int = 1,
        num_classes: int = 10,
        feature_dim: int = 128,
        rngs: nnx.Rngs,
    ):
        self.conv1 = nnx.Conv(channels, 32, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=(2, 2), rngs=rngs)
        self.dense = nnx.Linear(64, feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        return jax.nn.relu(self.dense(jnp.mean(h, axis=(1, 2))))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


def train_feature_classifier(
    key: jax.Array,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int = 10,
    steps: int = 1500,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    feature_dim: int = 128,
    workdir=None,
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on images ``x`` [N, H, W, C], labels ``y``."""
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(
            f"x must be [N, H, W, C] and y [N], got {x.shape} and {y.shape}"
        )
    init_key, batch_key, fit_key = jr.split(key, 3)
    model = FeatureClassifier(
        channels=x.shape[-1],
        num_classes=num_classes,
        feature_dim=feature_dim,
        rngs=nnx.Rngs(params=init_key),
    )
    batches = jdata.Batcher(batch_key, (x, y), min(batch_size, len(x)))

    def loss_fn(m, batch, _key):
        xb, yb = batch
        logits = m(xb)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return loss, {"acc": jnp.mean(jnp.argmax(logits, -1) == yb)}

    opt = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps))
    return train.fit(
        fit_key,
        model,
        opt,
        loss_fn,
        batches,
        num_steps=steps,
        workdir=workdir,
        desc="feature classifier",
    ).model


@nnx.jit
def _features(model: FeatureClassifier, x):
    return model.features(x)


@nnx.jit
def _logits(model: FeatureClassifier, x):
    return model(x)


def features(
    model: FeatureClassifier, x: np.ndarray, batch_size: int = 500
) -> np.ndarray:
    """Penultimate features of ``x`` in fixed-size batches (one compilation)."""
    return _batched(lambda b: _features(model, b), x, batch_size)


def accuracy(
    model: FeatureClassifier, x: np.ndarray, y: np.ndarray, batch_size: int = 500
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    logits = _batched(lambda b: _logits(model, b), x, batch_size)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(y)))


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply ``fn`` over padded fixed-size batches and drop the padding."""
    x = np.asarray(x)
    n = len(x)
    bs = min(batch_size, n)
    pad = (-n) % bs
    xp = np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) if pad else x
    out = [np.asarray(fn(xp[i : i + bs])) for i in range(0, len(xp), bs)]
    return np.concatenate(out)[:n]
