"""The shared feature classifier."""

import jax.random as jr
import numpy as np
import pytest

from jaxlab import data
from jaxlab.nn import classifier


def test_classifier_learns_digits_and_gives_features():
    x, y = data.load_digits()
    model = classifier.train_feature_classifier(
        jr.key(0), x[:1200], y[:1200], steps=300
    )
    # held-out accuracy well above chance (0.1); measured ~0.9 at 300 steps
    assert classifier.accuracy(model, x[1200:], y[1200:]) > 0.7
    feats = classifier.features(model, x[:37], batch_size=16)  # padding path
    assert feats.shape == (37, 128) and np.all(np.isfinite(feats))
    np.testing.assert_allclose(
        feats[:16], classifier.features(model, x[:16]), rtol=1e-5, atol=1e-6
    )


def test_bad_shapes():
    with pytest.raises(ValueError, match="N, H, W, C"):
        classifier.train_feature_classifier(jr.key(0), np.zeros((4, 8, 8)), np.zeros(4))
