"""Sample-quality metrics shared by the generative experiments (pure JAX)."""

from __future__ import annotations

import chex
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["frechet_distance", "frechet_distance_from_stats", "gaussian_stats"]


def gaussian_stats(feats: Float[Array, "N D"]) -> tuple[Array, Array]:
    """Mean and unbiased covariance of ``feats`` ([N, D], N >= 2)."""
    chex.assert_rank(feats, 2)
    if feats.shape[0] < 2:
        raise ValueError(f"feats needs at least 2 rows, got shape {feats.shape}")
    mu = jnp.mean(feats, axis=0)
    centred = feats - mu[None, :]
    cov = centred.T @ centred / (feats.shape[0] - 1)
    return mu, cov


def frechet_distance_from_stats(mu1, cov1, mu2, cov2) -> Array:
    r"""Fréchet (2-Wasserstein) distance² between N(mu1, cov1) and N(mu2, cov2).

    .. math::
        d^2 = \|\mu_1-\mu_2\|^2 + \operatorname{tr}\big(\Sigma_1+\Sigma_2
              - 2(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}\big)

    (Dowson & Landau 1982; the FID of Heusel et al. 2017 applies it to
    Inception features). The cross term is evaluated with symmetric
    eigendecompositions, so it stays real and finite for singular covariances.
    """
    chex.assert_rank([mu1, cov1, mu2, cov2], [1, 2, 1, 2])
    chex.assert_equal_shape([mu1, mu2])
    chex.assert_equal_shape([cov1, cov2])
    w1, v1 = jnp.linalg.eigh(cov1)
    sqrt1 = (v1 * jnp.sqrt(jnp.clip(w1, 0.0))[None, :]) @ v1.T
    middle = sqrt1 @ cov2 @ sqrt1
    middle = 0.5 * (middle + middle.T)
    cross = jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(middle), 0.0)))
    diff = mu1 - mu2
    return jnp.dot(diff, diff) + jnp.trace(cov1) + jnp.trace(cov2) - 2.0 * cross


def frechet_distance(
    feats_a: Float[Array, "N D"], feats_b: Float[Array, "M D"]
) -> Array:
    """Fréchet distance between Gaussian fits of two feature sets (same D)."""
    chex.assert_rank([feats_a, feats_b], 2)
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"feature dims differ: feats_a {feats_a.shape} vs feats_b {feats_b.shape}"
        )
    return frechet_distance_from_stats(
        *gaussian_stats(feats_a), *gaussian_stats(feats_b)
    )
