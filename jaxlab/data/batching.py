"""Key-driven, resumable batching.

A :class:`Batcher` maps a step number to a batch deterministically: epoch
``e`` uses the permutation drawn from ``fold_in(key, e)``. A training run that
resumes at step ``s`` therefore sees exactly the batches an uninterrupted run
would have seen.
"""

from __future__ import annotations

import jax
import jax.random as jr
import numpy as np


class Batcher:
    """Shuffling mini-batches of a pytree of host arrays with a common leading axis.

    Args:
        key: PRNG key that fixes every epoch's permutation.
        data: pytree of arrays, all with the same leading size N.
        batch_size: examples per batch, 1 <= batch_size <= N. The last partial
            batch of each epoch is dropped so every batch has the same shape.

    Call it with a step number: ``batcher(step) -> batch``.
    """

    def __init__(self, key: jax.Array, data, batch_size: int):
        leaves = jax.tree.leaves(data)
        if not leaves:
            raise ValueError("data must contain at least one array")
        sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                f"all arrays in data need the same leading size, got {sizes}"
            )
        (n,) = sizes
        if not 1 <= batch_size <= n:
            raise ValueError(
                f"batch_size must be in [1, {n}] (the data size), got {batch_size}"
            )
        self.key = key
        self.data = jax.tree.map(np.asarray, data)
        self.batch_size = int(batch_size)
        self.num_examples = int(n)
        self.steps_per_epoch = n // batch_size
        self._epoch = -1
        self._perm = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``."""
        return np.asarray(
            jr.permutation(jr.fold_in(self.key, epoch), self.num_examples)
        )

    def __call__(self, step: int):
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm, self._epoch = self.permutation(epoch), epoch
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        return jax.tree.map(lambda a: a[idx], self.data)


def split(key: jax.Array, n: int, fractions=(0.8, 0.2)) -> tuple[np.ndarray, ...]:
    """Random disjoint index sets covering ``range(n)`` in the given proportions.

    Args:
        key: PRNG key.
        n: number of examples.
        fractions: positive numbers summing to 1; the last part takes the remainder.

    Returns:
        One sorted int array of indices per fraction.
    """
    fractions = tuple(float(f) for f in fractions)
    if (
        n < len(fractions)
        or any(f <= 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
    ):
        raise ValueError(
            f"fractions must be positive and sum to 1 with n >= {len(fractions)}, "
            f"got {fractions} with n={n}"
        )
    perm = np.asarray(jr.permutation(key, n))
    cuts = np.floor(np.cumsum(fractions[:-1]) * n).astype(int)
    return tuple(np.sort(p) for p in np.split(perm, cuts))
