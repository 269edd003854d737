"""A plain multilayer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
    """Dense layers with ReLU between them (none after the last).

    Args:
        sizes: layer widths ``(in, hidden..., out)``, at least two entries.
        rngs: NNX RNG streams for initialisation.
    """

    def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs):
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(
                f"sizes must list >= 2 positive widths, got {tuple(sizes)}"
            )
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)
