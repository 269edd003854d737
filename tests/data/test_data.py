"""Offline loaders and the key-driven batcher."""

import jax.random as jr
import numpy as np
import pytest

from jaxlab import data
from jaxlab.data import loaders


def test_digits():
    x, y = data.load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))


def test_mnist5k():
    x, y = data.load_mnist5k()
    assert x.shape == (5000, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 500))
    # MNIST digits have dark borders: the corner pixel is background everywhere
    assert np.all(x[:, 0, 0, 0] == -1.0)


def test_rotten_tomatoes():
    df = data.load_rotten_tomatoes()
    assert list(df.columns) == ["text", "label", "movie"]
    assert len(df) == 12808 and int(df.label.sum()) == 7403
    counts = df.groupby("movie").size()
    assert (counts >= 20).sum() == 338 and counts.max() == 35


def test_missing_package_names_setup_command():
    with pytest.raises(data.MissingDataError, match="make setup"):
        loaders.package_dir("no_such_package_jaxlab", "nosuch==1.0")


def test_batcher_is_a_function_of_the_step():
    x = np.arange(10)
    a = data.Batcher(jr.key(3), x, 3)
    b = data.Batcher(jr.key(3), x, 3)
    assert a.steps_per_epoch == 3
    for step in [7, 0, 5, 7, 2]:  # any order: no hidden iterator state
        np.testing.assert_array_equal(a(step), b(step))
    epoch0 = np.concatenate([a(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # no repeats within an epoch
    epoch1 = np.concatenate([a(s) for s in range(3, 6)])
    assert not np.array_equal(epoch0, epoch1)  # reshuffled each epoch


def test_batcher_pytree_rows_stay_aligned():
    x = np.arange(20).reshape(10, 2)
    batch = data.Batcher(jr.key(0), {"x": x, "y": x[:, 0] * 10}, 4)(1)
    np.testing.assert_array_equal(batch["y"], batch["x"][:, 0] * 10)


@pytest.mark.parametrize("size", [0, 11])
def test_batcher_rejects_bad_batch_size(size):
    with pytest.raises(ValueError, match="batch_size"):
        data.Batcher(jr.key(0), np.arange(10), size)


def test_batcher_rejects_ragged_data():
    with pytest.raises(ValueError, match="leading size"):
        data.Batcher(jr.key(0), (np.arange(10), np.arange(9)), 2)


def test_split_partitions():
    a, b, c = data.split(jr.key(0), 100, (0.5, 0.3, 0.2))
    assert (len(a), len(b), len(c)) == (50, 30, 20)
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b, c])), np.arange(100))


@pytest.mark.parametrize("fractions", [(0.5, 0.4), (1.2, -0.2), (0.0, 1.0)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        data.split(jr.key(0), 100, fractions)
