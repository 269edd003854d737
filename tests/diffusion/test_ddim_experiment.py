"""The DDIM experiment's ε-model trainer (also used by the sde experiment's ELBO)."""

import dataclasses

import jax.random as jr
import numpy as np
import pytest

from jaxlab.diffusion import schedules
from jaxlab.experiments import ddim as exp

TINY = dataclasses.replace(
    exp.Config.quick(),
    channels=16,
    channel_mults=(1,),
    num_res_blocks=1,
    steps=2,
    batch_size=8,
    warmup=1,
    ckpt_every=2,
)


def _images(n=16):
    return np.asarray(jr.uniform(jr.key(3), (n, 8, 8, 1), minval=-1.0, maxval=1.0))


def test_first_loss_is_the_noise_power_because_the_output_conv_starts_at_zero(
    tmp_path,
):
    # The U-Net's last convolution is zero-initialised, so ε̂ = 0 and the first
    # logged loss is the mean of 8 × 64 values of ε², each χ²₁: mean 1, standard
    # deviation sqrt(2 / 512) = 0.0625. Five standard deviations: 0.31.
    sched = schedules.linear(TINY.T)
    keys = tuple(jr.split(jr.key(0), 3))
    fit = exp.train_eps_model(
        keys, TINY, sched, _images(), tmp_path / "ckpt", log_every=1, desc="tiny"
    )
    losses = [h["loss"] for h in fit.history]
    assert [h["step"] for h in fit.history] == [1, 2]
    assert abs(losses[0] - 1.0) < 5 * np.sqrt(2 / 512)
    assert np.all(np.isfinite(losses))
    # A second call resumes from the sealed step-2 checkpoint: nothing to train,
    # the same history comes back.
    again = exp.train_eps_model(
        keys, TINY, sched, _images(), tmp_path / "ckpt", log_every=1, desc="tiny"
    )
    assert again.history == fit.history


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((16, 8, 8)), r"\[N, H, W, C\].*\(16, 8, 8\)"),
        (np.zeros((0, 8, 8, 1)), r"N ≥ 1"),
        (255.0 * np.ones((16, 8, 8, 1)), r"\[-1, 1\].*\[255, 255\]"),
        (np.full((16, 8, 8, 1), np.nan), r"x_train has 1024 non-finite"),
    ],
)
def test_rejects_images_it_cannot_train_on(tmp_path, x, match):
    keys = tuple(jr.split(jr.key(0), 3))
    with pytest.raises(ValueError, match=match):
        exp.train_eps_model(
            keys, TINY, schedules.linear(TINY.T), x, tmp_path, log_every=1, desc="x"
        )
    assert not any(tmp_path.iterdir())  # nothing written before the check
