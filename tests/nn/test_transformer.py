"""Tests for jaxlab.nn.transformer: the identical-token invariant on whole models."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flax import nnx

from jaxlab.nn import transformer as tr

L = 12
SMALL = dict(vocab_size=3, out_dim=5, d_model=16, num_heads=2, d_ff=32, gau_key_dim=8)


def _models(kwargs_list):
    return [
        tr.Transformer(tr.TransformerConfig(**SMALL, **kw), rngs=nnx.Rngs(i))
        for i, kw in enumerate(kwargs_list)
    ]


@nnx.jit
def _outputs(models, ids):
    return [m(ids) for m in models]


def _spread(y):
    """Largest difference between any position's output and position 0's."""
    return float(jnp.max(jnp.abs(y - y[:, :1])))


IDENTICAL = jnp.ones((2, L), jnp.int32)  # token 1 at every position

BLIND = [
    dict(scheme=s, causal=c)
    for s in ("t5", "alibi", "rope", "xl", "shaw_k")
    for c in (False, True)
] + [dict(scheme="t5", block="gau"), dict(scheme="rope", block="gau", causal=True)]

SIGHTED = [
    dict(scheme="t5", normalizer="l2"),
    dict(scheme="rope", normalizer="l2", causal=True),
    dict(scheme="t5", normalizer="none"),
    dict(scheme="rope", normalizer="swish_l2"),
    dict(scheme="t5", block="gau", normalizer="relu2"),
    dict(scheme="t5", urpe=True),
    dict(scheme="rope", urpe=True, causal=True),
    dict(scheme="shaw_kv"),
    dict(scheme="t5", cls_sep=True),
    dict(scheme="rope", cls_sep=True),
    dict(scheme="sinusoidal"),
    dict(scheme="learned"),
]


def test_softmax_relative_models_are_position_blind_at_init():
    # Su (2022) / Luo et al. (2022): softmax rows sum to 1, values are equal,
    # token-wise layers keep them equal, so all positions get one output.
    outs = _outputs(_models(BLIND), IDENTICAL)
    for kw, y in zip(BLIND, outs):
        assert y.shape == (2, L, SMALL["out_dim"])
        assert _spread(y) < 1e-6, kw


def test_countermeasures_and_absolute_models_see_positions_at_init():
    outs = _outputs(_models(SIGHTED), IDENTICAL)
    for kw, y in zip(SIGHTED, outs):
        assert y.shape == (2, L, SMALL["out_dim"])
        # Ten times the float32 noise floor of the blind models above.
        assert _spread(y) > 1e-5, kw


def test_wrap_cls_sep_places_markers():
    ids = jnp.asarray([[5, 6, 7, 8], [5, 6, 0, 0]])
    valid = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    out, ok = nnx.jit(lambda i, v: tr.wrap_cls_sep(i, cls_id=1, sep_id=2, valid=v))(
        ids, valid
    )
    np.testing.assert_array_equal(out, [[1, 5, 6, 7, 8, 2], [1, 5, 6, 2, 0, 0]])
    np.testing.assert_array_equal(ok, [[1] * 6, [1, 1, 1, 1, 0, 0]])
    out, ok = tr.wrap_cls_sep(ids, cls_id=9, sep_id=10)
    np.testing.assert_array_equal(out[0], [9, 5, 6, 7, 8, 10])
    assert bool(jnp.all(ok))


@pytest.mark.parametrize(
    "kw", [dict(scheme="t5", cls_sep=True), dict(scheme="learned")]
)
def test_padding_tokens_do_not_change_real_outputs(kw):
    (model,) = _models([kw])
    valid = jnp.arange(L)[None, :] < jnp.asarray([[L], [7]])
    ids = jnp.where(valid, 1, 0)
    f = nnx.jit(lambda m, i, v: m(i, v))
    y = f(model, ids, valid)
    y_junk = f(model, jnp.where(valid, ids, 2), valid)
    np.testing.assert_allclose(y_junk[1, :7], y[1, :7], rtol=1e-6, atol=1e-6)
    # The unpadded row is unaffected by row 1's padding.
    np.testing.assert_allclose(
        y[0], f(model, ids[:1], valid[:1])[0], rtol=1e-5, atol=1e-6
    )


def test_init_from_key_is_deterministic():
    cfg = tr.TransformerConfig(**SMALL, scheme="t5")
    a = tr.init(jr.key(3), cfg)
    b = tr.init(jr.key(3), cfg)
    c = tr.init(jr.key(4), cfg)
    ids = jnp.zeros((1, 4), jnp.int32)
    ya, yb, yc = _outputs([a, b, c], ids)
    np.testing.assert_array_equal(ya, yb)
    assert not np.allclose(ya, yc)


def test_config_validation():
    with pytest.raises(ValueError, match="scheme"):
        tr.TransformerConfig(vocab_size=1, out_dim=1, scheme="nope")
    with pytest.raises(ValueError, match="normalizer"):
        tr.TransformerConfig(vocab_size=1, out_dim=1, normalizer="sparsemax")
    with pytest.raises(ValueError, match="block"):
        tr.TransformerConfig(vocab_size=1, out_dim=1, block="rnn")
    with pytest.raises(ValueError, match="num_heads"):
        tr.TransformerConfig(vocab_size=1, out_dim=1, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="even"):
        tr.TransformerConfig(
            vocab_size=1, out_dim=1, d_model=12, num_heads=4, scheme="rope"
        )
    with pytest.raises(ValueError, match="d_model"):
        tr.TransformerConfig(vocab_size=1, out_dim=1, d_model=0)
    (model,) = _models([dict(scheme="learned", max_len=8)])
    with pytest.raises(ValueError, match="max_len"):
        model(jnp.zeros((1, 9), jnp.int32))
