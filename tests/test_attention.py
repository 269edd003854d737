"""Tests for jaxlab.attention: normalizers, masks, URPE, Shaw values, the invariant."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import attention as attn
from jaxlab import posenc

B, L, H, D = 2, 7, 3, 8


def _normal(seed, shape):
    """Fixed-seed float32 Gaussian test data."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _qkv(seed=0, lq=L, lk=L, dv=D):
    q = _normal(seed, (B, lq, H, D))
    k = _normal(seed + 1, (B, lk, H, D))
    return q, k, _normal(seed + 2, (B, lk, H, dv))


def _np_normalize(b, name):
    """Float64 NumPy statement of each normalizer (Su 2022, Secs. 3.2-3.4)."""
    b = np.asarray(b, np.float64)
    if name == "softmax":
        e = np.exp(b - b.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if name == "l2":
        e = np.exp(b)
        return e / np.sqrt(np.sum(e**2, -1, keepdims=True))
    if name == "none":
        return np.exp(b)
    if name == "relu2":
        return np.maximum(b, 0) ** 2 / b.shape[-1]
    w = b / (1 + np.exp(-b))
    return w / np.sqrt(np.sum(w**2, -1, keepdims=True))


def _np_attention(q, k, v, weights_fn, c=None, r=None):
    """o_i = Σ_j a_ij c_ij (v_j + r_ij) in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    a = weights_fn(logits)
    if c is not None:
        a = a * c
    out = np.einsum("bhqk,bkhd->bqhd", a, v)
    if r is not None:
        r = np.broadcast_to(r, (*a.shape[2:], *v.shape[2:]))
        out = out + np.einsum("bhqk,qkhd->bqhd", a, r)
    return out


# ------------------------------------------------------------ softmax = peer


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_matches_jax_nn(causal):
    q, k, v = _qkv(0)
    bias = _normal(5, (1, H, L, L))
    mask = jnp.asarray(np.random.default_rng(6).random((B, 1, L, L)) > 0.3)
    mask = mask | jnp.eye(L, dtype=bool)[None, None]  # keep every row non-empty
    f = jax.jit(
        lambda *a: attn.attention(*a[:3], bias=a[3], mask=a[4], is_causal=causal)
    )
    got = f(q, k, v, bias, mask)
    want = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- normalizers


def _all_normalizers(fn):
    """Jit ``fn(name, *args)`` for every normalizer in one program (one compile)."""
    return jax.jit(lambda *a: {name: fn(name, *a) for name in attn.NORMALIZERS})


def test_normalizers_match_formulas():
    b = _normal(7, (4, 9)) * 2
    got = _all_normalizers(lambda n, x: attn.normalize(x, normalizer=n))(b)
    for name in attn.NORMALIZERS:
        assert got[name].dtype == jnp.float32
        np.testing.assert_allclose(
            got[name], _np_normalize(b, name), rtol=1e-5, atol=1e-7, err_msg=name
        )


def test_l2_is_sqrt_softmax_2b_and_unit_norm():
    b = _normal(8, (5, 11)) * 3
    a = jax.jit(lambda x: attn.normalize(x, normalizer="l2"))(b)
    np.testing.assert_allclose(a, jnp.sqrt(jax.nn.softmax(2 * b, -1)), rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(a * a, -1), 1.0, rtol=1e-5)
    # Σ_j a_ij lies in [1, √n] (Su 2022, Sec. 3.3).
    s = np.asarray(jnp.sum(a, -1))
    assert np.all(s >= 1 - 1e-6) and np.all(s <= math.sqrt(11) + 1e-5)


def test_l2_shift_invariant_per_row_and_stable():
    b = _normal(9, (5, 11))
    shift = jnp.asarray([0.0, 100.0, -80.0, 500.0, 3.0])[:, None]
    f = jax.jit(lambda x: attn.normalize(x, normalizer="l2"))
    # Rounding b + c in float32 moves each logit by ≤ |c|·eps/2, and a weight
    # by ≤ 2× the largest logit error (numerator and norm).
    rtol = 2 * 500 * float(np.finfo(np.float32).eps) + 1e-6
    np.testing.assert_allclose(f(b + shift), f(b), rtol=rtol, atol=1e-7)
    g = jax.jit(jax.grad(lambda x: jnp.sum(f(x)[:, 0])))(b + shift)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_gradients_finite_for_masked_and_degenerate_rows():
    # Row 0: all logits 0 (swish(0) = 0, so ‖w‖ = 0); row 1: fully masked;
    # row 2: one key only. Every normalizer must give finite gradients.
    b = jnp.stack([jnp.zeros(5), _normal(20, (5,)), _normal(21, (5,))])
    mask = jnp.asarray([[1] * 5, [0] * 5, [1, 0, 0, 0, 0]], bool)
    grads = _all_normalizers(
        lambda n, x, m: jax.grad(
            lambda y: jnp.sum(attn.normalize(y, normalizer=n, mask=m) * (1 + y))
        )(x)
    )(b, mask)
    for name, g in grads.items():
        assert bool(jnp.all(jnp.isfinite(g))), name


def test_masked_entries_are_zero_and_relu2_counts_allowed_keys():
    b = _normal(10, (3, 6))
    mask = jnp.asarray([[1, 1, 0, 1, 0, 0], [1] * 6, [0] * 6], bool)
    got = _all_normalizers(lambda n, x, m: attn.normalize(x, normalizer=n, mask=m))(
        b, mask
    )
    for name, a in got.items():
        assert bool(jnp.all(jnp.where(mask, True, a == 0))), name
        keep = np.asarray(mask[0])
        want = _np_normalize(np.asarray(b[0])[keep], name)
        np.testing.assert_allclose(np.asarray(a[0])[keep], want, rtol=1e-5, atol=1e-7)


def test_normalize_bad_name():
    with pytest.raises(ValueError, match="normalizer"):
        attn.normalize(jnp.ones(3), normalizer="l1")
    with pytest.raises(ValueError, match="normalizer"):
        attn.attention(*_qkv(), normalizer="sparsemax")


def test_attention_each_normalizer_matches_reference():
    q, k, v = _qkv(11, dv=5)  # Dv ≠ D as in GAU
    got = _all_normalizers(lambda n, *a: attn.attention(*a, normalizer=n))(q, k, v)
    for name in attn.NORMALIZERS:
        assert got[name].shape == (B, L, H, 5)
        want = _np_attention(q, k, v, lambda x: _np_normalize(x, name))  # noqa: B023
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_normalizer_runs_in_float32_for_bfloat16_inputs():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(12))
    q = q * 8  # logits ~ ±60: exp overflows bf16's 8-bit mantissa budget badly
    f = jax.jit(lambda *a: attn.attention(*a, normalizer="l2"))
    got = f(q, k, v)
    assert got.dtype == jnp.bfloat16
    want = _np_attention(
        *(x.astype(jnp.float32) for x in (q, k, v)), lambda x: _np_normalize(x, "l2")
    )
    # Weights cast to bf16 for the value matmul and the bf16 output each add
    # ≤ 2^-8 relative error: bound by 2^-7 · Σ_j a_ij |v_j| ≤ 2^-7 · √L · max|v|.
    tol = 2.0**-7 * math.sqrt(L) * float(jnp.max(jnp.abs(v.astype(jnp.float32))))
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0, atol=tol)


# ----------------------------------------------------------- masks, URPE, Shaw


def test_padding_mask_ignores_padded_keys_and_empty_rows_are_zero():
    q, k, v = _qkv(13)
    valid = jnp.arange(L)[None, :] < jnp.asarray([[5], [7]])
    mask = jax.jit(attn.padding_mask)(valid, valid)
    assert mask.shape == (B, 1, L, L)
    f = jax.jit(lambda q, k, v, m: attn.attention(q, k, v, mask=m, normalizer="l2"))
    out = f(q, k, v, mask)
    v2 = jnp.where(valid[:, :, None, None], v, 1e3)  # garbage at padded keys
    k2 = jnp.where(valid[:, :, None, None], k, -1e3)
    np.testing.assert_allclose(f(q, k2, v2, mask), out, rtol=1e-6)
    np.testing.assert_array_equal(out[0, 5:], 0.0)  # padded queries: no keys


def test_causal_output_ignores_future_tokens():
    q, k, v = _qkv(14)
    f = _all_normalizers(lambda n, *a: attn.attention(*a, normalizer=n, is_causal=True))
    out = f(q, k, v)
    out2 = f(q, k.at[:, 4:].set(5.0), v.at[:, 4:].set(-5.0))
    for name in attn.NORMALIZERS:
        np.testing.assert_allclose(out2[name][:, :4], out[name][:, :4], rtol=1e-6)
    np.testing.assert_array_equal(
        jax.jit(attn.causal_mask, static_argnums=(0, 1))(2, 3),
        [[True, False, False], [True, True, False]],
    )


def test_urpe_of_ones_equals_plain_attention():
    q, k, v = _qkv(15)
    ones = posenc.urpe_toeplitz(
        jnp.ones((H, 9)), posenc.relative_index(jnp.arange(L), jnp.arange(L), 4)
    )
    got = _all_normalizers(
        lambda n, q, k, v, c: (
            attn.attention(q, k, v, normalizer=n, urpe=c),
            attn.attention(q, k, v, normalizer=n),
        )
    )(q, k, v, ones)
    for name, (with_c, plain) in got.items():
        np.testing.assert_array_equal(with_c, plain, err_msg=name)


def test_urpe_and_shaw_values_match_reference():
    q, k, v = _qkv(16)
    idx = posenc.relative_index(jnp.arange(L), jnp.arange(L), 3)
    c = posenc.urpe_toeplitz(_normal(17, (H, 7)), idx)
    r = posenc.shaw_value_bias(_normal(18, (7, D)), idx)
    f = jax.jit(lambda *a: attn.attention(*a[:3], urpe=a[3], value_bias=a[4]))
    want = _np_attention(
        q, k, v, lambda x: _np_normalize(x, "softmax"), np.asarray(c), np.asarray(r)
    )
    np.testing.assert_allclose(f(q, k, v, c, r), want, rtol=1e-4, atol=1e-5)
    # Per-head value embeddings [Lq, Lk, H, D] take the other path.
    per_head = jnp.arange(1.0, H + 1).reshape(1, 1, H, 1)
    r_h = jnp.broadcast_to(r, (L, L, H, D)) * per_head
    want_h = _np_attention(q, k, v, lambda x: _np_normalize(x, "softmax"), r=r_h)
    np.testing.assert_allclose(
        jax.jit(lambda *a: attn.attention(*a[:3], value_bias=a[3]))(q, k, v, r_h),
        want_h, rtol=1e-4, atol=1e-5,
    )


def test_bad_shapes_raise():
    q, k, v = _qkv(19)
    with pytest.raises(ValueError, match="q.shape"):
        attn.attention(q[0, 0], k[0, 0], v[0, 0])
    with pytest.raises(ValueError, match="bias"):
        attn.attention(q, k, v, bias=jnp.ones((H + 1, L, L)))
    with pytest.raises(ValueError, match="value_bias"):
        attn.attention(q, k, v, value_bias=jnp.ones((L, L, D)))
    with pytest.raises(ValueError, match="q_len"):
        attn.causal_mask(0, 3)
    with pytest.raises(AssertionError):
        attn.attention(q, k[..., :4], v)


# ----------------------------------------------------- the identical-token flaw


def _identical_token_qkv(seed, rope):
    """Projections of one token repeated L times; optional RoPE on q and k."""
    x = jnp.broadcast_to(_normal(seed, (1, 1, 16)), (1, L, 16))
    wq, wk, wv = (_normal(seed + i, (16, H, D)) / 4 for i in (1, 2, 3))
    q, k, v = (jnp.einsum("bld,dhe->blhe", x, w) for w in (wq, wk, wv))
    if rope:
        q, k = posenc.apply_rope(q, jnp.arange(L)), posenc.apply_rope(k, jnp.arange(L))
    return q, k, v


def _relative_terms(scheme, q, k, tables):
    """Pre-normalizer bias of each relative scheme for positions 0..L-1."""
    pos = jnp.arange(L)
    if scheme == "t5":
        return posenc.t5_bias(tables["t5"], pos, pos)
    if scheme == "alibi":
        return posenc.alibi_bias(posenc.alibi_slopes(H), pos, pos)
    if scheme == "xl":
        idx = posenc.relative_index(pos, pos, L - 1)
        rel = posenc.xl_relative_embeddings(L - 1, 16)
        r = jnp.einsum("rd,dhe->rhe", rel, tables["w_r"])
        return posenc.xl_relative_bias(q, k, r, tables["u"], tables["v"], idx)
    if scheme == "shaw_k":
        idx = posenc.relative_index(pos, pos, 2)
        return posenc.shaw_key_bias(q, tables["shaw"], idx)
    return None  # rope: inside q and k


TABLES = {
    "t5": _normal(30, (32, H)),
    "w_r": _normal(31, (16, H, D)),
    "u": _normal(32, (H, D)),
    "v": _normal(33, (H, D)),
    "shaw": _normal(34, (5, D)),
}


def _spread(out):
    """Largest difference between any position's output and position 0's."""
    return float(jnp.max(jnp.abs(out - out[:, :1])))


@pytest.mark.parametrize("scheme", ["t5", "alibi", "rope", "xl", "shaw_k"])
def test_softmax_relative_schemes_are_position_blind(scheme):
    @jax.jit
    def outputs(tables):
        q, k, v = _identical_token_qkv(40, scheme == "rope")
        bias = _relative_terms(scheme, q, k, tables)
        return {
            (name, causal): attn.attention(
                q, k, v, bias=bias, normalizer=name, is_causal=causal
            )
            for name in attn.NORMALIZERS
            for causal in (False, True)
        }

    for (name, causal), out in outputs(TABLES).items():
        if name == "softmax":
            # Rows sum to 1 and v_j ≡ v, so o_i = v up to float32 rounding.
            assert _spread(out) < 1e-6, causal
        else:
            # The same logits under other normalizers are position-dependent.
            assert _spread(out) > 1e-3, (name, causal)


def test_urpe_and_shaw_values_break_the_symmetry():
    @jax.jit
    def spreads(tables, g, shaw_v):
        q, k, v = _identical_token_qkv(50, False)
        pos = jnp.arange(L)
        bias = _relative_terms("t5", q, k, tables)
        idx = posenc.relative_index(pos, pos, 3)
        c = posenc.urpe_toeplitz(g, idx)
        r = posenc.shaw_value_bias(shaw_v, idx)
        return [
            _spread_jnp(attn.attention(q, k, v, bias=bias, urpe=uc, value_bias=vr))
            for uc, vr in ((None, None), (c, None), (None, r))
        ]

    plain, urpe, shaw_v = spreads(
        TABLES, 1 + 0.1 * _normal(51, (H, 7)), 0.1 * _normal(52, (7, D))
    )
    assert plain < 1e-6 and urpe > 1e-3 and shaw_v > 1e-3


def _spread_jnp(out):
    """Traceable :func:`_spread`."""
    return jnp.max(jnp.abs(out - out[:, :1]))
