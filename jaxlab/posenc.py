"""Position encodings: sinusoidal, learned, RoPE, T5 buckets, ALiBi, Shaw, XL, URPE.

Every scheme of ``reference/positional.md`` (Su 2022, kexue.fm/archives/9105;
Luo et al. 2022, arXiv:2205.13401) as pure functions of arrays. Absolute
schemes return vectors to add to token embeddings; relative schemes return
pre-normalizer logit biases ``[..., H, Lq, Lk]``, value-side terms
``[..., Lq, Lk, 1, D]`` or post-normalizer multipliers for
:func:`jaxlab.attention.attention`.

Relative offsets follow T5's convention ``rel = j − i`` (key position minus
query position). Learned relative tables are indexed with
:func:`relative_index`, which clips the offset to ``[−P, P]`` and shifts it to
``[0, 2P]``.
"""

import math

import chex
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int

DEFAULT_BASE = 10000.0


def sinusoidal(
    positions, dim: int, *, base: float = DEFAULT_BASE
) -> Float[Array, "... D"]:
    r"""Sinusoidal position encoding (Vaswani et al. 2017, Sec. 3.5).

    .. math::
        PE(p)_i = \sin(p\,\omega_i),\quad PE(p)_{i + D/2} = \cos(p\,\omega_i),
        \quad \omega_i = \mathrm{base}^{-2i/D},\ i = 0,\dots,D/2-1,

    i.e. sin on the first half of the features and cos on the second. Hence
    ``PE(p)·PE(p+k) = Σ_i cos(k ω_i)`` depends on the offset k only.

    Args:
      positions: ``[...]`` positions of any integer or float dtype (continuous
        times are allowed, e.g. diffusion time embeddings).
      dim: even feature size D.
      base: wavelength base (10000 in the paper).

    Returns:
      ``[..., D]`` float32 encodings.

    Raises:
      ValueError: if ``dim`` is not a positive even integer or ``base <= 1``.
    """
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"dim={dim!r}: must be a positive even integer")
    if not base > 1.0:
        raise ValueError(f"base={base!r}: must be > 1")
    positions = jnp.asarray(positions).astype(jnp.float32)
    angles = positions[..., None] * _inv_freq(dim, base).reshape(
        (1,) * positions.ndim + (dim // 2,)
    )
    out = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    chex.assert_shape(out, (*positions.shape, dim))
    return out


def learned_table(
    key, num_positions: int, dim: int, *, stddev: float = 0.02
) -> Float[Array, "P D"]:
    r"""Initial learned absolute position table (BERT/GPT-2 style).

    ``E ~ N(0, stddev²)`` of shape ``[num_positions, dim]``; the model adds
    ``E[p]`` to the token embedding at position p (Devlin et al. 2019, Sec. 3).

    Args:
      key: PRNG key.
      num_positions: table length (maximum position + 1).
      dim: feature size.
      stddev: initial standard deviation (BERT uses 0.02).

    Returns:
      ``[num_positions, dim]`` float32 table.
    """
    _check_positive_int("num_positions", num_positions)
    _check_positive_int("dim", dim)
    if not stddev >= 0.0:
        raise ValueError(f"stddev={stddev!r}: must be >= 0")
    return stddev * jr.normal(key, (num_positions, dim), jnp.float32)


def apply_rope(
    x: Float[Array, "*B L H D"], positions, *, base: float = DEFAULT_BASE
) -> Float[Array, "*B L H D"]:
    r"""Rotary position embedding from explicit positions (Su et al. 2021, Eq. 34).

    Feature pairs ``(x_i, x_{i+D/2})`` are rotated by the angle ``p·ω_i`` with
    ``ω_i = base^{-2i/D}`` (the "rotate-half" layout):

    .. math::
        \mathrm{RoPE}(x, p) = x \odot \cos(p\omega) + \mathrm{rot}(x) \odot
        \sin(p\omega),\quad \mathrm{rot}(x) = [-x_{D/2:}, x_{:D/2}].

    Rotations are orthogonal, so norms are preserved, and
    ``RoPE(q, m)·RoPE(k, n) = q·R_{n−m} k`` depends on ``n − m`` only.

    Args:
      x: ``[..., L, H, D]`` queries or keys, D even.
      positions: ``[L]`` or ``[..., L]`` positions (broadcast against x's
        leading axes), integer or float.
      base: frequency base.

    Returns:
      ``[..., L, H, D]`` rotated features in x's dtype (computed in float32).
    """
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"x.shape={x.shape}: expected [..., L, H, D]")
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"x.shape[-1]={dim}: head dim must be even for RoPE")
    if not base > 1.0:
        raise ValueError(f"base={base!r}: must be > 1")
    positions = jnp.asarray(positions).astype(jnp.float32)
    if positions.ndim < 1 or positions.shape[-1] != x.shape[-3]:
        raise ValueError(
            f"positions.shape={positions.shape}: last axis must be L={x.shape[-3]}"
        )
    half = dim // 2
    angles = positions[..., None] * _inv_freq(dim, base).reshape(
        (1,) * positions.ndim + (half,)
    )
    target = (*x.shape[:-1], half)
    angles = _match_rank(angles[..., None, :], len(target))
    cos = jnp.broadcast_to(jnp.cos(angles), target)
    sin = jnp.broadcast_to(jnp.sin(angles), target)
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def t5_relative_bucket(
    rel, *, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
) -> Int[Array, "..."]:
    r"""T5 relative-position bucket (Raffel et al. 2020, Sec. 2.1; T5's code).

    With ``n = −rel = i − j``: if bidirectional, half of the buckets go to
    each sign (``n < 0`` adds ``num_buckets/2``) and ``n ← |n|``; otherwise
    ``n ← max(n, 0)`` (future keys share bucket 0). Let B be the buckets left
    and ``E = B/2``. Offsets ``n < E`` get their own bucket; larger ones share
    logarithmically spaced buckets

    .. math::
        E + \left\lfloor \frac{\log(n/E)}{\log(\mathrm{max\_distance}/E)}
        (B - E) \right\rfloor,\ \text{capped at } B - 1.

    Args:
      rel: ``[...]`` integer offsets ``j − i`` (key minus query position).
      num_buckets: total buckets (even when bidirectional).
      max_distance: offsets at or beyond it share the last bucket.
      bidirectional: distinguish past and future keys.

    Returns:
      ``[...]`` int32 bucket ids in ``[0, num_buckets)``.
    """
    _check_positive_int("num_buckets", num_buckets)
    _check_positive_int("max_distance", max_distance)
    if bidirectional and num_buckets % 2:
        raise ValueError(
            f"num_buckets={num_buckets}: must be even when bidirectional=True"
        )
    exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    if exact < 1:
        raise ValueError(f"num_buckets={num_buckets}: too few buckets (need >= 4)")
    if max_distance <= exact:
        raise ValueError(
            f"max_distance={max_distance}: must exceed the exact range {exact}"
        )
    rel = jnp.asarray(rel).astype(jnp.int32)
    n = -rel
    buckets = num_buckets
    ret = jnp.zeros_like(n)
    if bidirectional:
        buckets //= 2
        ret = ret + (n < 0).astype(jnp.int32) * buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    # Guard log(0) on the branch that jnp.where discards.
    n_safe = jnp.maximum(n, exact).astype(jnp.float32)
    large = exact + (
        jnp.log(n_safe / exact) / math.log(max_distance / exact) * (buckets - exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, buckets - 1)
    return ret + jnp.where(n < exact, n, large)


def t5_bias(
    table: Float[Array, "NB H"],
    q_pos,
    k_pos,
    *,
    max_distance: int = 128,
    bidirectional: bool = True,
) -> Float[Array, "*B H Lq Lk"]:
    r"""Learned per-head T5 bias ``b_h(i, j) = table[bucket(j − i), h]``.

    Args:
      table: ``[num_buckets, H]`` learned scalars (one per bucket and head).
      q_pos: ``[..., Lq]`` integer query positions.
      k_pos: ``[..., Lk]`` integer key positions (same rank as ``q_pos``).
      max_distance: see :func:`t5_relative_bucket`.
      bidirectional: see :func:`t5_relative_bucket`.

    Returns:
      ``[..., H, Lq, Lk]`` logit bias.
    """
    chex.assert_rank(table, 2)
    rel = _rel(q_pos, k_pos)
    buckets = t5_relative_bucket(
        rel,
        num_buckets=table.shape[0],
        max_distance=max_distance,
        bidirectional=bidirectional,
    )
    return jnp.moveaxis(table[buckets], -1, -3)


def alibi_slopes(num_heads: int) -> Float[Array, " H"]:
    r"""ALiBi head slopes (Press et al. 2022, Sec. 3 and their reference code).

    For a power of two H the slopes are the geometric sequence
    ``m_h = 2^{−8h/H}``, h = 1 … H. Otherwise, with ``M = 2^{⌊log2 H⌋}``, the
    first M slopes are those of M heads and the remaining H − M are every
    other slope of 2M heads: ``2^{−8(2k−1)/(2M)}``, k = 1 … H − M.

    Args:
      num_heads: number of heads H (any positive integer).

    Returns:
      ``[H]`` float32 slopes.
    """
    _check_positive_int("num_heads", num_heads)
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = [2.0 ** (-8.0 * h / closest) for h in range(1, closest + 1)]
    extra = [
        2.0 ** (-8.0 * (2 * k - 1) / (2 * closest))
        for k in range(1, 1 + num_heads - closest)
    ]
    return jnp.asarray(slopes + extra, jnp.float32)


def alibi_bias(
    slopes: Float[Array, " H"], q_pos, k_pos
) -> Float[Array, "*B H Lq Lk"]:
    r"""ALiBi bias ``b_h(i, j) = −m_h |i − j|`` (Press et al. 2022, Eq. in Sec. 3).

    The paper's causal form is ``m_h (j − i)`` for ``j ≤ i``, which equals this
    symmetric form under a causal mask; the symmetric form is the usual
    bidirectional extension.

    Args:
      slopes: ``[H]`` from :func:`alibi_slopes`.
      q_pos: ``[..., Lq]`` query positions.
      k_pos: ``[..., Lk]`` key positions (same rank as ``q_pos``).

    Returns:
      ``[..., H, Lq, Lk]`` float32 logit bias.
    """
    chex.assert_rank(slopes, 1)
    dist = jnp.abs(_rel(q_pos, k_pos)).astype(jnp.float32)
    dist = dist[..., None, :, :]
    shape = (*dist.shape[:-3], slopes.shape[0], *dist.shape[-2:])
    m = slopes.astype(jnp.float32).reshape((1,) * (dist.ndim - 3) + (-1, 1, 1))
    return -jnp.broadcast_to(m, shape) * jnp.broadcast_to(dist, shape)


def relative_index(q_pos, k_pos, max_distance: int) -> Int[Array, "*B Lq Lk"]:
    r"""Clipped relative offset shifted to a table index: ``clip(j − i, −P, P) + P``.

    This is Shaw et al.'s ``clip(j − i, k)`` (2018, Eq. 5) and the URPE
    ``clip(i − j, p_min, p_max)`` index (Luo et al. 2022) up to the sign
    convention of the table.

    Args:
      q_pos: ``[..., Lq]`` integer query positions.
      k_pos: ``[..., Lk]`` integer key positions (same rank).
      max_distance: clipping distance P ≥ 0; tables have ``2P + 1`` rows.

    Returns:
      ``[..., Lq, Lk]`` int32 indices in ``[0, 2P]``.
    """
    if not isinstance(max_distance, int) or max_distance < 0:
        raise ValueError(f"max_distance={max_distance!r}: must be an integer >= 0")
    return jnp.clip(_rel(q_pos, k_pos), -max_distance, max_distance) + max_distance


def shaw_key_bias(
    q: Float[Array, "*B Lq H D"],
    table: Float[Array, "R D"],
    rel_index: Int[Array, "Lq Lk"],
    *,
    scale: float | None = None,
) -> Float[Array, "*B H Lq Lk"]:
    r"""Shaw et al. key-side term ``q_i·a^K_{ij}·scale`` (2018, Eq. 4).

    With ``a^K_{ij} = w^K_{clip(j−i, P)}`` (one table shared by all heads),
    ``e_ij = q_i·(k_j + a^K_ij)/√D``; this returns the second term, to be
    passed as ``bias`` (the attention adds ``q_i·k_j/√D`` itself).

    Args:
      q: ``[..., Lq, H, D]`` queries (after any projection).
      table: ``[2P + 1, D]`` learned relative key embeddings.
      rel_index: ``[Lq, Lk]`` from :func:`relative_index`.
      scale: logit scale, default ``1/√D``.

    Returns:
      ``[..., H, Lq, Lk]`` float32 logit bias.
    """
    chex.assert_rank(table, 2)
    chex.assert_rank(rel_index, 2)
    if q.ndim < 3 or q.shape[-1] != table.shape[-1]:
        raise ValueError(
            f"q.shape={q.shape}, table.shape={table.shape}: need q [..., Lq, H, D] "
            "and table [R, D]"
        )
    scale = _scale(q.shape[-1], scale)
    # Score every table row once, then gather: O(Lq·R) dots, not O(Lq·Lk).
    s = jnp.einsum("...qhd,rd->...hqr", q, table, preferred_element_type=jnp.float32)
    return _gather_rel(s, rel_index) * scale


def shaw_value_bias(
    table: Float[Array, "R D"], rel_index: Int[Array, "Lq Lk"]
) -> Float[Array, "Lq Lk 1 D"]:
    r"""Shaw et al. value-side embeddings ``a^V_ij = w^V_{clip(j−i, P)}`` (Eq. 3).

    ``z_i = Σ_j α_ij (v_j + a^V_ij)``; pass the result as ``value_bias`` of
    :func:`jaxlab.attention.attention`. Because the clipped offsets seen by a
    row depend on its distance to the edges, this term is position-dependent
    even for identical tokens: the exempt case of Su (2022), Sec. 2.

    Args:
      table: ``[2P + 1, D]`` learned relative value embeddings.
      rel_index: ``[Lq, Lk]`` from :func:`relative_index`.

    Returns:
      ``[Lq, Lk, 1, D]`` (the head axis broadcasts).
    """
    chex.assert_rank(table, 2)
    chex.assert_rank(rel_index, 2)
    return table[rel_index][..., None, :]


def urpe_toeplitz(
    g: Float[Array, "H R"], rel_index: Int[Array, "Lq Lk"]
) -> Float[Array, "H Lq Lk"]:
    r"""URPE Toeplitz multiplier, one per head (Luo et al. 2022).

    ``c_ij = g[h, clip(j − i, −P, P) + P]``: a learned function of the clipped
    offset, i.e. Luo et al.'s ``g(clip(i − j, p_min, p_max))`` with the table
    stored in offset order. Used as ``O = (A ⊙ C) V`` (Luo et al. 2022, Eq. 5):
    pass the result as ``urpe`` of :func:`jaxlab.attention.attention`.
    ``g ≡ 1`` recovers plain attention.

    Args:
      g: ``[H, 2P + 1]`` learned per-head Toeplitz generators.
      rel_index: ``[Lq, Lk]`` from :func:`relative_index` with the same P.

    Returns:
      ``[H, Lq, Lk]`` multiplier.
    """
    chex.assert_rank(g, 2)
    chex.assert_rank(rel_index, 2)
    return g[:, rel_index]


def xl_relative_embeddings(
    max_distance: int, dim: int, *, base: float = DEFAULT_BASE
) -> Float[Array, "R D"]:
    r"""Transformer-XL sinusoidal relative encodings ``R_{i−j}`` (Dai et al. 2019).

    Row ``m`` of the result encodes the offset ``j − i = m − P``, i.e.
    ``R_{i−j} = PE(P − m)``, so it is indexed by :func:`relative_index` with
    ``P = max_distance``. Choose ``P ≥ L − 1`` to avoid clipping.

    Args:
      max_distance: P.
      dim: even feature size.
      base: sinusoid base.

    Returns:
      ``[2P + 1, dim]`` float32.
    """
    if not isinstance(max_distance, int) or max_distance < 0:
        raise ValueError(f"max_distance={max_distance!r}: must be an integer >= 0")
    m = jnp.arange(2 * max_distance + 1)
    return sinusoidal(max_distance - m, dim, base=base)


def xl_relative_bias(
    q: Float[Array, "*B Lq H D"],
    k: Float[Array, "*B Lk H D"],
    r: Float[Array, "R H D"],
    u: Float[Array, "H D"],
    v: Float[Array, "H D"],
    rel_index: Int[Array, "Lq Lk"],
    *,
    scale: float | None = None,
) -> Float[Array, "*B H Lq Lk"]:
    r"""Transformer-XL relative logits minus the content term (Dai et al. 2019, §3.3).

    .. math::
        A^{rel}_{ij} = \underbrace{q_i^\top k_j}_{(a)}
        + \underbrace{q_i^\top W_R R_{i-j}}_{(b)}
        + \underbrace{u^\top k_j}_{(c)} + \underbrace{v^\top W_R R_{i-j}}_{(d)}.

    Returns ``((b) + (c) + (d))·scale`` to pass as ``bias``; the attention
    computes ``(a)·scale``. The relative shift is a gather by ``rel_index``.

    Args:
      q: ``[..., Lq, H, D]`` queries ``W_q E x``.
      k: ``[..., Lk, H, D]`` content keys ``W_{k,E} E x``.
      r: ``[2P + 1, H, D]`` projected relative encodings ``W_{k,R} R`` (rows as
        in :func:`xl_relative_embeddings`).
      u: ``[H, D]`` global content bias.
      v: ``[H, D]`` global position bias.
      rel_index: ``[Lq, Lk]`` from :func:`relative_index`.
      scale: logit scale, default ``1/√D``.

    Returns:
      ``[..., H, Lq, Lk]`` float32 logit bias.
    """
    chex.assert_rank([r, u, v, rel_index], [3, 2, 2, 2])
    chex.assert_equal_shape([u, v, r[0]])
    if q.ndim < 3 or q.shape[-2:] != r.shape[-2:] or k.shape[-2:] != r.shape[-2:]:
        raise ValueError(
            f"q.shape={q.shape}, k.shape={k.shape}, r.shape={r.shape}: need "
            "matching [H, D] trailing axes"
        )
    scale = _scale(q.shape[-1], scale)
    f32 = jnp.float32
    lead = (1,) * (q.ndim - 3)
    qv = q.astype(f32) + v.astype(f32).reshape(lead + (1, *v.shape))
    pos = _gather_rel(jnp.einsum("...qhd,rhd->...hqr", qv, r.astype(f32)), rel_index)
    content = jnp.einsum("...khd,hd->...hk", k.astype(f32), u.astype(f32))
    content = jnp.broadcast_to(content[..., None, :], pos.shape)
    return (pos + content) * scale


def _inv_freq(dim: int, base: float):
    """Frequencies ω_i = base^{−2i/dim}, i < dim/2, float32."""
    return jnp.asarray(base, jnp.float32) ** (
        -jnp.arange(dim // 2, dtype=jnp.float32) * (2.0 / dim)
    )


def _rel(q_pos, k_pos):
    """Offsets ``j − i`` as int32 ``[..., Lq, Lk]``."""
    q_pos = jnp.asarray(q_pos)
    k_pos = jnp.asarray(k_pos)
    if q_pos.ndim < 1 or q_pos.ndim != k_pos.ndim:
        raise ValueError(
            f"q_pos.shape={q_pos.shape}, k_pos.shape={k_pos.shape}: need [..., L] "
            "arrays of equal rank"
        )
    chex.assert_equal_shape_prefix([q_pos, k_pos], q_pos.ndim - 1)
    return (k_pos[..., None, :] - q_pos[..., :, None]).astype(jnp.int32)


def _gather_rel(scores, rel_index):
    """Gather ``[..., H, Lq, R]`` scores at ``[Lq, Lk]`` indices."""
    idx = jnp.broadcast_to(
        rel_index.reshape((1,) * (scores.ndim - 2) + rel_index.shape),
        (*scores.shape[:-1], rel_index.shape[-1]),
    )
    return jnp.take_along_axis(scores, idx, axis=-1)


def _match_rank(x, ndim: int):
    """Prepend unit axes to x up to ``ndim``."""
    return x.reshape((1,) * (ndim - x.ndim) + x.shape)


def _scale(dim: int, scale):
    """Default logit scale 1/√D."""
    return 1.0 / math.sqrt(dim) if scale is None else scale


def _check_positive_int(name: str, value) -> None:
    """Raise ValueError unless ``value`` is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")

