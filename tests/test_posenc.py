"""Tests for jaxlab.posenc: closed forms and independent reimplementations."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlab import posenc

EPS32 = float(np.finfo(np.float32).eps)


def _normal(seed, shape):
    """Fixed-seed float32 Gaussian test data (NumPy: no per-shape compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ---------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.float32, jnp.bfloat16])
def test_sinusoidal_shape_dtype_any_batch(dtype):
    pos = jnp.arange(6).reshape(2, 3).astype(dtype)
    out = jax.jit(posenc.sinusoidal, static_argnums=1)(pos, 10)
    assert out.shape == (2, 3, 10) and out.dtype == jnp.float32
    scalar = jax.jit(posenc.sinusoidal, static_argnums=1)(jnp.asarray(2.5), 4)
    assert scalar.shape == (4,)


def test_sinusoidal_known_values():
    # dim 4: ω = (1, 10000^{-1/2} = 0.01); sin first, cos second.
    p = jnp.array([0.0, 1.5, 100.0])
    got = jax.jit(posenc.sinusoidal, static_argnums=1)(p, 4)
    x = np.array([0.0, 1.5, 100.0])[:, None]
    want = np.concatenate([np.sin(x), np.sin(x / 100), np.cos(x), np.cos(x / 100)], 1)
    # float32 angles up to 100 rad carry ≤ 100·eps rounding (x4 margin for ω, sin).
    np.testing.assert_allclose(got, want, rtol=0, atol=100 * EPS32 * 4)


def test_sinusoidal_dot_depends_only_on_offset():
    # PE(p)·PE(p+k) = Σ_i [sin a sin b + cos a cos b] = Σ_i cos(k ω_i).
    dim, base = 64, 10000.0
    p = jnp.arange(0, 50, dtype=jnp.float32)
    pe = jax.jit(posenc.sinusoidal, static_argnums=1)
    omega = base ** (-np.arange(dim // 2) * 2.0 / dim)
    for k in [0, 1, 7, 30]:
        dots = jnp.sum(pe(p, dim) * pe(p + k, dim), axis=-1)
        want = np.sum(np.cos(k * omega))
        # Each float32 angle p·ω carries ≤ (p+k)·eps rounding, plus eps for sin/cos;
        # dim terms with |∂(sin·sin+cos·cos)/∂angle| ≤ 2 bound the dot's error.
        tol = dim * 2 * ((50 + k) * EPS32 + 2 * EPS32)
        np.testing.assert_allclose(dots, np.full(50, want), rtol=0, atol=tol)


@pytest.mark.parametrize("dim", [0, 3, -2])
def test_sinusoidal_bad_dim(dim):
    with pytest.raises(ValueError, match="dim"):
        posenc.sinusoidal(jnp.arange(3), dim)


# ------------------------------------------------------------------ learned


def test_learned_table_init_stats():
    table = jax.jit(posenc.learned_table, static_argnums=(1, 2))(jr.key(0), 256, 64)
    assert table.shape == (256, 64) and table.dtype == jnp.float32
    n = table.size
    # Sample std of N Gaussians has standard error σ/√(2N); mean has σ/√N.
    assert abs(float(jnp.std(table)) - 0.02) < 4 * 0.02 / math.sqrt(2 * n)
    assert abs(float(jnp.mean(table))) < 4 * 0.02 / math.sqrt(n)


def test_learned_table_bad_args():
    with pytest.raises(ValueError, match="num_positions"):
        posenc.learned_table(jr.key(0), 0, 4)
    with pytest.raises(ValueError, match="stddev"):
        posenc.learned_table(jr.key(0), 3, 4, stddev=-1.0)


# --------------------------------------------------------------------- RoPE


def _rope_reference(x, pos, base=10000.0):
    """Complex-number RoPE in float64: pair (x_i, x_{i+D/2}) times e^{i p ω_i}."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    omega = base ** (-np.arange(half) * 2.0 / x.shape[-1])
    z = x[..., :half] + 1j * x[..., half:]
    rot = np.exp(1j * np.asarray(pos, np.float64)[:, None, None] * omega)
    z = z * rot
    return np.concatenate([z.real, z.imag], axis=-1)


def test_rope_matches_complex_rotation_and_preserves_norm():
    x = _normal(1, (2, 9, 3, 16))
    pos = jnp.arange(9) * 3
    got = jax.jit(posenc.apply_rope)(x, pos)
    np.testing.assert_allclose(got, _rope_reference(x, pos), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        jnp.linalg.norm(got, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
    )


def test_rope_scores_depend_only_on_offset():
    q = _normal(2, (1, 1, 2, 32))
    k = _normal(3, (1, 1, 2, 32))
    rope = jax.jit(posenc.apply_rope)

    def score(m, n):
        qm = rope(q, jnp.array([m]))
        kn = rope(k, jnp.array([n]))
        return jnp.sum(qm * kn, axis=-1)

    for m, n in [(0, 5), (3, 1), (10, 10)]:
        for shift in [1, 17, 40]:
            # Angles up to ~60 rad in float32: error ≲ 60·eps per feature pair.
            np.testing.assert_allclose(
                score(m + shift, n + shift), score(m, n), rtol=0, atol=1e-4
            )


def test_rope_batched_positions_dtype_and_bad_dim():
    x = _normal(4, (2, 5, 1, 6)).astype(jnp.bfloat16)
    pos = jnp.stack([jnp.arange(5), jnp.arange(5) + 2])
    out = jax.jit(posenc.apply_rope)(x, pos)
    assert out.dtype == jnp.bfloat16 and out.shape == x.shape
    np.testing.assert_allclose(
        out[1].astype(jnp.float32),
        _rope_reference(x[1].astype(jnp.float32), pos[1]),
        atol=0.05,  # bf16 output rounding (2^-8 relative on |x| ≲ 4)
    )
    with pytest.raises(ValueError, match="even"):
        posenc.apply_rope(jnp.ones((4, 2, 5)), jnp.arange(4))
    with pytest.raises(ValueError, match="positions"):
        posenc.apply_rope(jnp.ones((4, 2, 6)), jnp.arange(3))


# ----------------------------------------------------------------------- T5


def _t5_bucket_reference(rel, num_buckets, max_distance, bidirectional):
    """The T5 rule written out on one Python int (Raffel et al., T5 code)."""
    n = -rel
    ret = 0
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    )
    return ret + min(val, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("nb,md", [(32, 128), (16, 40), (8, 20)])
def test_t5_buckets_match_reference(bidirectional, nb, md):
    rel = np.arange(-400, 401)
    f = jax.jit(
        lambda r: posenc.t5_relative_bucket(
            r, num_buckets=nb, max_distance=md, bidirectional=bidirectional
        )
    )
    got = np.asarray(f(jnp.asarray(rel)))
    want = np.array([_t5_bucket_reference(int(r), nb, md, bidirectional) for r in rel])
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0 and got.max() < nb


def test_t5_buckets_known_offsets():
    # 32 buckets / 128: 16 per direction, 8 exact, logs up to 15; keys after the
    # query (rel > 0) get +16. Unidirectional: 16 exact, future keys -> 0.
    bi = dict(num_buckets=32, max_distance=128, bidirectional=True)
    rel = jnp.array([0, -1, -7, -8, -127, -1000, 1, 8, 1000])
    np.testing.assert_array_equal(
        jax.jit(lambda r: posenc.t5_relative_bucket(r, **bi))(rel),
        [0, 1, 7, 8, 15, 15, 17, 24, 31],
    )
    uni = dict(num_buckets=32, max_distance=128, bidirectional=False)
    rel = jnp.array([5, 0, -15, -16, -1000])
    np.testing.assert_array_equal(
        jax.jit(lambda r: posenc.t5_relative_bucket(r, **uni))(rel), [0, 0, 15, 16, 31]
    )


def test_t5_bias_gathers_table_per_head():
    table = _normal(5, (16, 3))
    pos = jnp.arange(7)
    bias = jax.jit(lambda t, p: posenc.t5_bias(t, p, p, max_distance=40))(table, pos)
    bias, table = np.asarray(bias), np.asarray(table)
    assert bias.shape == (3, 7, 7)
    for i in range(7):
        for j in range(7):
            b = _t5_bucket_reference(j - i, 16, 40, True)
            np.testing.assert_array_equal(bias[:, i, j], table[b])


def test_t5_bad_args():
    with pytest.raises(ValueError, match="num_buckets"):
        posenc.t5_relative_bucket(jnp.arange(3), num_buckets=7, bidirectional=True)
    with pytest.raises(ValueError, match="max_distance"):
        posenc.t5_relative_bucket(jnp.arange(3), num_buckets=32, max_distance=4)


# -------------------------------------------------------------------- ALiBi


def test_alibi_slopes_geometric_for_8_heads():
    got = jax.jit(posenc.alibi_slopes, static_argnums=0)(8)
    np.testing.assert_array_equal(got, [2.0**-h for h in range(1, 9)])


def test_alibi_slopes_non_power_of_two():
    # 12 heads: the 8-head sequence 2^-1..2^-8, then every other 16-head slope
    # 2^{-k/2} for k = 1, 3, 5, 7 (Press et al.'s get_slopes).
    want = [2.0**-h for h in range(1, 9)] + [2.0 ** (-k / 2) for k in (1, 3, 5, 7)]
    np.testing.assert_allclose(posenc.alibi_slopes(12), want, rtol=1e-7)
    np.testing.assert_allclose(
        posenc.alibi_slopes(6), [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    )
    assert posenc.alibi_slopes(1).tolist() == [2.0**-8]
    with pytest.raises(ValueError, match="num_heads"):
        posenc.alibi_slopes(0)


def test_alibi_bias_is_minus_slope_times_distance():
    slopes = posenc.alibi_slopes(4)
    q_pos, k_pos = jnp.arange(3) + 2, jnp.arange(5)
    bias = jax.jit(posenc.alibi_bias)(slopes, q_pos, k_pos)
    dist = np.abs(np.arange(5)[None, :] - (np.arange(3) + 2)[:, None])
    np.testing.assert_allclose(bias, -np.asarray(slopes)[:, None, None] * dist)


# --------------------------------------------------------- Shaw, URPE, XL


def test_relative_index_clips():
    rel_index = jax.jit(posenc.relative_index, static_argnums=2)
    idx = rel_index(jnp.arange(5), jnp.arange(5), 2)
    want = np.clip(np.arange(5)[None, :] - np.arange(5)[:, None], -2, 2) + 2
    np.testing.assert_array_equal(idx, want)
    with pytest.raises(ValueError, match="max_distance"):
        posenc.relative_index(jnp.arange(3), jnp.arange(3), -1)
    with pytest.raises(ValueError, match="rank"):
        posenc.relative_index(jnp.arange(3), jnp.zeros((1, 3)), 2)


def test_shaw_key_and_value_terms_match_loops():
    lq, lk, h, d, p = 4, 6, 2, 8, 2
    q = _normal(6, (lq, h, d))
    tk = _normal(7, (2 * p + 1, d))
    tv = _normal(8, (2 * p + 1, d))
    idx = posenc.relative_index(jnp.arange(lq), jnp.arange(lk), p)
    kb = jax.jit(posenc.shaw_key_bias)(q, tk, idx)
    vb = jax.jit(posenc.shaw_value_bias)(tv, idx)
    assert kb.shape == (h, lq, lk) and vb.shape == (lq, lk, 1, d)
    kb, vb = np.asarray(kb), np.asarray(vb)
    qn, tkn, tvn = (np.asarray(a, np.float64) for a in (q, tk, tv))
    for i in range(lq):
        for j in range(lk):
            m = min(max(j - i, -p), p) + p
            np.testing.assert_allclose(
                kb[:, i, j], qn[i] @ tkn[m] / math.sqrt(d), rtol=1e-5, atol=1e-5
            )
            np.testing.assert_array_equal(vb[i, j, 0], tvn[m])
    with pytest.raises(ValueError, match="table"):
        posenc.shaw_key_bias(q, jnp.ones((5, d + 1)), idx)


def test_urpe_toeplitz_is_toeplitz_per_head():
    g = _normal(9, (3, 7))
    idx = posenc.relative_index(jnp.arange(6), jnp.arange(6), 3)
    c = np.asarray(jax.jit(posenc.urpe_toeplitz)(g, idx))
    g = np.asarray(g)
    assert c.shape == (3, 6, 6)
    for i in range(6):
        for j in range(6):
            np.testing.assert_array_equal(c[:, i, j], g[:, min(max(j - i, -3), 3) + 3])


def test_xl_embeddings_and_bias_match_formula():
    lq, h, d, p = 5, 2, 8, 4
    q = _normal(10, (lq, h, d))
    k = _normal(11, (lq, h, d))
    r = _normal(12, (2 * p + 1, h, d))
    u = _normal(13, (h, d))
    v = _normal(14, (h, d))
    idx = posenc.relative_index(jnp.arange(lq), jnp.arange(lq), p)
    got = jax.jit(posenc.xl_relative_bias)(q, k, r, u, v, idx)
    qn, kn, rn, un, vn = (np.asarray(a, np.float64) for a in (q, k, r, u, v))
    want = np.zeros((h, lq, lq))
    for i in range(lq):
        for j in range(lq):
            rij = rn[j - i + p]  # row m encodes the offset j − i = m − P
            want[:, i, j] = np.sum(
                qn[i] * rij + un * kn[j] + vn * rij, axis=-1
            ) / math.sqrt(d)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    emb = jax.jit(posenc.xl_relative_embeddings, static_argnums=(0, 1))(p, 6)
    np.testing.assert_allclose(emb, posenc.sinusoidal(p - jnp.arange(2 * p + 1), 6))
    with pytest.raises(ValueError, match="trailing"):
        posenc.xl_relative_bias(q, k[..., :4], r, u, v, idx)
