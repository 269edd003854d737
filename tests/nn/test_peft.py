"""Tests for jaxlab.nn.peft: adapters, LoRA, BitFit, linear probe, full FT."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlab import ladder, train
from jaxlab.nn import bert, peft

CFG = bert.BertConfig(
    vocab_size=30,
    hidden_size=16,
    num_layers=1,
    num_heads=4,
    intermediate_size=24,
    max_position_embeddings=12,
)
D, F, C, V, P, L = 16, 24, 3, 30, 12, 1


def _backbone(seed=0):
    return bert.BertEncoder(CFG, rngs=nnx.Rngs(seed))


def _batch():
    rng = np.random.default_rng(0)
    return {
        "input_ids": jnp.asarray(rng.integers(1, V, (4, 6)), jnp.int32),
        "attention_mask": jnp.ones((4, 6), jnp.int32).at[2, 4:].set(0),
        "label": jnp.array([0, 2, 1, 0], jnp.int32),
    }


def _model(method, **kw):
    return peft.make_model(method, _backbone(), num_classes=C, rngs=nnx.Rngs(1), **kw)


def _logits(model, batch):
    # Eager on purpose: the op-by-op cache is shared by every model of this
    # file, which is cheaper than one compilation per model (jit is covered by
    # the train-step and loss tests).
    return model(batch["input_ids"], batch["attention_mask"])


def test_adapters_and_lora_are_identity_at_init():
    batch = _batch()
    plain = _model("full")
    ref = _logits(plain, batch)
    for method in ("adapter", "lora"):
        model = _model(method, lora_targets=("query", "value", "ffn_output"))
        model.head = plain.head
        # Equal up to float32 rounding (XLA may fuse the extra zero terms).
        np.testing.assert_allclose(
            np.asarray(_logits(model, batch)), np.asarray(ref), rtol=1e-5, atol=1e-6
        )


def test_lora_dense_closed_form():
    base = bert.Dense(5, 4, rngs=nnx.Rngs(0))
    lora = peft.LoRADense(base, rank=2, alpha=6.0, rngs=nnx.Rngs(1))
    b = jax.random.normal(jax.random.key(2), (2, 4))
    lora.lora_b.set_value(b)
    x = jax.random.normal(jax.random.key(3), (3, 5))
    got = nnx.jit(lambda m, x: m(x))(lora, x)
    W, bias, A = (
        np.asarray(v, np.float64)
        for v in (base.kernel[...], base.bias[...], lora.lora_a[...])
    )
    xn = np.asarray(x, np.float64)
    want = xn @ W + bias + (6.0 / 2) * xn @ A @ np.asarray(b, np.float64)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    bound = 1 / np.sqrt(5)
    assert np.all(np.abs(A) <= bound)


def test_adapter_closed_form():
    adapter = peft.Adapter(4, 2, rngs=nnx.Rngs(0))
    adapter.up.kernel.set_value(jnp.arange(8.0).reshape(2, 4) / 10)
    x = jax.random.normal(jax.random.key(1), (3, 4))
    got = nnx.jit(lambda m, x: m(x))(adapter, x)
    Wd, bd = np.asarray(adapter.down.kernel[...]), np.asarray(adapter.down.bias[...])
    h = np.asarray(x) @ Wd + bd
    gelu = 0.5 * h * (1 + np.vectorize(__import__("math").erf)(h / np.sqrt(2)))
    want = np.asarray(x) + gelu @ (np.arange(8.0).reshape(2, 4) / 10)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def _count(model, method):
    return ladder.parameter_count(nnx.state(model, peft.trainable_filter(method)))


def test_trainable_counts_match_hand_formulas():
    head = D * C + C
    block = 4 * (D * D + D) + D * F + F + F * D + D + 4 * D
    backbone = V * D + P * D + 2 * D + 2 * D + L * block
    assert _count(_model("full"), "full") == backbone + head
    assert _count(_model("probe"), "probe") == head
    m = 5
    adapter = L * 2 * (D * m + m + m * D + D)  # 2 adapters per layer
    assert _count(_model("adapter", adapter_bottleneck=m), "adapter") == adapter + head
    r = 3
    lora = L * 2 * (D * r + r * D)  # (query, value) per layer
    assert _count(_model("lora", lora_rank=r), "lora") == lora + head
    # BitFit: q/k/v/o, FFN and LayerNorm biases of each block, embedding LN bias.
    biases = L * (4 * D + F + D + 2 * D) + D
    model = _model("bitfit")
    assert _count(model, "bitfit") == biases + head
    pct = ladder.trainable_percentage(
        nnx.state(model, peft.trainable_filter("bitfit")),
        nnx.state(model.backbone, nnx.Param),
    )
    assert pct == pytest.approx(100 * (biases + head) / backbone, rel=1e-12)


@pytest.mark.parametrize("method", ["bitfit", "lora"])
def test_train_step_updates_only_trainable(method):
    model = _model(method)
    trainable = peft.trainable_filter(method)
    opt = optax.sgd(0.5)
    graphdef, state = train.init_state(model, opt, trainable)
    step = train.make_train_step(graphdef, peft.classification_loss, opt, trainable)
    frozen = jax.tree.map(np.asarray, state.rest)
    params = jax.tree.map(np.asarray, state.params)
    new, metrics = step(state, _batch(), jax.random.key(0))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, new.rest), frozen)
    flat = nnx.to_flat_state(new.params)
    old = dict(nnx.to_flat_state(params))
    changed = {
        path
        for path, v in flat
        if np.abs(np.asarray(v.get_value()) - np.asarray(old[path].get_value())).max()
        > 0
    }
    if method == "bitfit":
        assert all(path[-1] == "bias" or path[0] == "head" for path, _ in flat)
        assert any(path[0] == "backbone" for path in changed)
    else:
        assert all(
            path[-1] in ("lora_a", "lora_b") or path[0] == "head" for path, _ in flat
        )
        assert any(path[-1] == "lora_b" for path in changed)
    assert np.isfinite(float(metrics["loss"]))


def test_classification_loss_with_zero_head_is_log_c():
    model = _model("probe")
    model.head.kernel.set_value(jnp.zeros((D, C)))
    batch = _batch()
    loss, metrics = nnx.jit(peft.classification_loss)(model, batch)
    assert float(loss) == pytest.approx(np.log(C), rel=1e-6)
    # argmax of equal logits is class 0.
    assert float(metrics["acc"]) == pytest.approx(
        np.mean(np.asarray(batch["label"]) == 0)
    )


def test_probe_features_are_mean_pooled_last_layer():
    model = _model("probe")
    batch = _batch()
    feats = model.features(batch["input_ids"], batch["attention_mask"])
    hidden = model.backbone(batch["input_ids"], batch["attention_mask"])
    m = np.asarray(batch["attention_mask"], np.float32)[..., None]
    want = (np.asarray(hidden[-1]) * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(np.asarray(feats), want, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method='prefix'"):
        peft.trainable_filter("prefix")
    with pytest.raises(ValueError, match="method='prefix'"):
        peft.make_model("prefix", _backbone(), num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank=0"):
        peft.add_lora(_backbone(), rank=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="targets"):
        peft.add_lora(_backbone(), rank=2, targets=("embedding",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="bottleneck=0"):
        peft.add_adapters(_backbone(), bottleneck=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes=1"):
        peft.SequenceClassifier(
            _backbone(), hidden_size=D, num_classes=1, rngs=nnx.Rngs(0)
        )
