"""End-to-end check: an MLP classifier on real 8×8 digits with the shared train loop.

Source: none (plumbing check). Expect test accuracy > 0.9 (quick: 600 steps,
about 10 s on a 2-core CPU). Checkpoints go to ``OUT/sanity/checkpoints``; a
re-run into the same folder resumes instead of retraining.

Run: ``jaxlab run sanity --quick``
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

from jaxlab import data, train
from jaxlab.nn.mlp import MLP
from jaxlab.report import Report, loss_figure


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    hidden: tuple[int, ...] = (128, 128)
    learning_rate: float = 1e-3
    test_fraction: float = 0.25
    ckpt_every: int = 500

    @classmethod
    def quick(cls) -> Config:
        return cls(steps=600, ckpt_every=200)

    @classmethod
    def full(cls) -> Config:
        return cls()


def run(config: Config, out_dir: pathlib.Path) -> dict:
    if not 0.0 < config.test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {config.test_fraction}")
    key = jr.key(config.seed)
    split_key, init_key, batch_key, fit_key = jr.split(key, 4)
    x, y = data.load_digits()
    x = x.reshape(len(x), -1)
    train_idx, test_idx = data.split(
        split_key, len(x), (1 - config.test_fraction, config.test_fraction)
    )
    model = MLP((x.shape[1], *config.hidden, 10), rngs=nnx.Rngs(params=init_key))
    batches = data.Batcher(batch_key, (x[train_idx], y[train_idx]), config.batch_size)

    def loss_fn(m, batch, _key):
        xb, yb = batch
        logits = m(xb)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return loss, {"acc": jnp.mean(jnp.argmax(logits, -1) == yb)}

    result = train.fit(
        fit_key,
        model,
        optax.adam(config.learning_rate),
        loss_fn,
        batches,
        num_steps=config.steps,
        workdir=out_dir,
        ckpt_every=config.ckpt_every,
        log_every=max(1, config.steps // 60),
        desc="sanity",
    )
    logits = nnx.jit(lambda m, xb: m(xb))(result.model, x[test_idx])
    test_acc = float(np.mean(np.argmax(np.asarray(logits), -1) == y[test_idx]))

    report = Report("sanity: MLP on digits", out_dir)
    report.text(
        f"MLP {config.hidden} trained for {config.steps} steps "
        f"(batch {config.batch_size}, Adam {config.learning_rate}) on "
        f"{len(train_idx)} of scikit-learn's 1,797 digits; "
        f"tested on the other {len(test_idx)}."
    )
    final = result.history[-1]
    report.table(
        ["metric", "value"],
        [
            ["test accuracy", test_acc],
            ["final train loss", final["loss"]],
            ["final train batch accuracy", final["acc"]],
            ["steps", config.steps],
        ],
    )
    report.figure(
        loss_figure(result.history, ylabel="train loss", title="sanity: digits MLP"),
        "loss_curve",
        "training loss (log scale)",
    )
    results = {
        "test_accuracy": test_acc,
        "final_train_loss": final["loss"],
        "steps": config.steps,
        "num_train": len(train_idx),
        "num_test": len(test_idx),
        "history": result.history,
    }
    return report.write(results)
