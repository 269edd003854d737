"""Dot-product attention with a pluggable row normalizer, URPE and Shaw values.

One function covers every countermeasure of ``reference/positional.md``
(Su 2022, kexue.fm/archives/9105; Luo et al. 2022, arXiv:2205.13401): the
relative-position logit terms of :mod:`jaxlab.posenc` go in ``bias``, the
normalizer is chosen by name, the URPE Toeplitz matrix multiplies the
normalized weights, and Shaw et al.'s value-side embeddings are added to the
values. The layout follows :func:`jax.nn.dot_product_attention`.
"""

import math

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

NORMALIZERS = ("softmax", "l2", "none", "relu2", "swish_l2")
# Same large finite negative as jax.nn.dot_product_attention: exp() gives 0
# without the inf − inf NaNs that −inf logits produce in fully masked rows.
_LARGE_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)
# swish_l2 divides by max(‖w‖, eps): rows of (near-)zero weights stay finite and
# keep finite gradients (clamping ‖w‖² at a denormal-sized floor does not).
_SWISH_L2_EPS = 1e-6


def attention(
    q: Float[Array, "*B Lq H D"],
    k: Float[Array, "*B Lk H D"],
    v: Float[Array, "*B Lk H Dv"],
    *,
    bias: Float[Array, "*B H Lq Lk"] | None = None,
    mask: Bool[Array, "*B H Lq Lk"] | None = None,
    normalizer: str = "softmax",
    urpe: Float[Array, "*B H Lq Lk"] | None = None,
    value_bias: Float[Array, "*B Lq Lk H Dv"] | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Float[Array, "*B Lq H Dv"]:
    r"""Attention with logits ``b_ij = s·q_i·k_j + bias_ij`` and a chosen normalizer.

    .. math::
        o_i = \sum_j a_{ij}\, c_{ij}\, (v_j + r^V_{ij}),\qquad
        a_{i\cdot} = \mathrm{normalizer}(b_{i\cdot}),

    where ``c = urpe`` (URPE, Luo et al. 2022, Eq. 5; ``c ≡ 1`` when None) and
    ``r^V = value_bias`` (Shaw et al. 2018, Eq. 3; 0 when None). Normalizers,
    applied over the allowed keys j of each row (see :func:`normalize`):
    ``softmax`` (l1), ``l2``, ``none`` (un-normalized exp), ``relu2`` (GAU's
    ``relu(b)²/n``) and ``swish_l2``. The normalizer runs in float32 whatever
    the input dtype; the output has v's dtype.

    Args:
      q: ``[..., Lq, H, D]`` queries.
      k: ``[..., Lk, H, D]`` keys.
      v: ``[..., Lk, H, Dv]`` values (Dv may differ from D, as in GAU).
      bias: logit bias broadcastable to ``[..., H, Lq, Lk]`` (T5, ALiBi,
        Shaw-key, XL terms from :mod:`jaxlab.posenc`).
      mask: boolean, broadcastable to ``[..., H, Lq, Lk]``; True = attend
        (e.g. from :func:`padding_mask`).
      normalizer: one of :data:`NORMALIZERS`.
      urpe: post-normalization multiplier broadcastable to ``[..., H, Lq, Lk]``
        (from :func:`jaxlab.posenc.urpe_toeplitz`).
      value_bias: broadcastable to ``[..., Lq, Lk, H, Dv]`` (from
        :func:`jaxlab.posenc.shaw_value_bias`).
      is_causal: also mask keys ``j > i`` (top-left aligned, as jax.nn).
      scale: logit scale, default ``1/√D``.

    Returns:
      ``[..., Lq, H, Dv]`` outputs. Rows whose keys are all masked give 0.

    References:
      Su, "A theoretical flaw of RPE Transformers and countermeasures",
      kexue.fm/archives/9105 (2022); Luo et al., "Your Transformer May Not be
      as Powerful as You Expect", NeurIPS 2022.
    """
    _check_normalizer(normalizer)
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    if q.ndim < 3:
        raise ValueError(f"q.shape={q.shape}: expected [..., Lq, H, D]")
    chex.assert_equal_rank([q, k, v])
    chex.assert_equal_shape_prefix([q, k, v], q.ndim - 3)
    chex.assert_equal_shape([k, v], dims=range(k.ndim - 1))
    chex.assert_equal_shape([q, k], dims=(q.ndim - 2, q.ndim - 1))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    f32 = jnp.float32
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=f32)
    logits = logits * jnp.asarray(scale, f32)
    if bias is not None:
        logits = logits + _broadcast(bias, logits.shape, "bias").astype(f32)
    allowed = _combine_masks(mask, is_causal, logits.shape)
    weights = normalize(logits, normalizer=normalizer, mask=allowed)
    if urpe is not None:
        weights = weights * _broadcast(urpe, weights.shape, "urpe").astype(f32)
    out = jnp.einsum(
        "...hqk,...khd->...qhd",
        weights.astype(v.dtype),
        v,
        preferred_element_type=f32,
    )
    if value_bias is not None:
        out = out + _value_term(weights, jnp.asarray(value_bias), v.shape[-1])
    return out.astype(v.dtype)


def normalize(
    logits: Float[Array, "*B Lk"],
    *,
    normalizer: str = "softmax",
    mask: Bool[Array, "*B Lk"] | None = None,
) -> Float[Array, "*B Lk"]:
    r"""Row normalizers of attention logits over the last axis, in float32.

    With ``b`` one row of logits and ``J`` its allowed (unmasked) keys:

    - ``softmax`` (l1): ``a_j = e^{b_j} / Σ_{J} e^{b_j}``.
    - ``l2``: ``a_j = e^{b_j} / \sqrt{Σ_J e^{2 b_j}} = \sqrt{softmax(2b)_j}``
      (Su 2022, Sec. 3.3), computed as ``e^{b_j − m} / ‖e^{b − m}‖₂`` with
      ``m = max_J b`` so it neither overflows nor has sqrt's infinite slope.
    - ``none``: ``a_j = e^{b_j}``, no denominator (Su 2022, Sec. 3.2). Logits
      above ~88 overflow float32, as the formula does.
    - ``relu2``: ``a_j = relu(b_j)² / n`` with ``n = |J|`` (GAU, Hua et al.
      2022, Eq. 5 with Su's 1/n).
    - ``swish_l2``: ``w_j = b_j σ(b_j)``, ``a_j = w_j / max(‖w‖₂, 10⁻⁶)``
      (Su 2022, Sec. 3.4; the floor only matters for all-but-zero rows).

    Masked entries are 0; rows with no allowed key are all 0.

    Args:
      logits: ``[..., Lk]`` logits.
      normalizer: one of :data:`NORMALIZERS`.
      mask: boolean broadcastable to ``logits``; True = allowed.

    Returns:
      ``[..., Lk]`` float32 weights.
    """
    _check_normalizer(normalizer)
    b = jnp.asarray(logits).astype(jnp.float32)
    if mask is not None:
        mask = _broadcast(mask, b.shape, "mask").astype(bool)
    if normalizer in ("softmax", "l2"):
        if mask is not None:
            b = jnp.where(mask, b, _LARGE_NEGATIVE)
        if normalizer == "softmax":
            a = jax.nn.softmax(b, axis=-1)
        else:
            m = jax.lax.stop_gradient(jnp.max(b, axis=-1, keepdims=True))
            e = jnp.exp(b - m)
            a = e * jax.lax.rsqrt(jnp.sum(e * e, axis=-1, keepdims=True))
    elif normalizer == "none":
        # Inner where keeps masked (possibly huge) logits out of exp and its grad.
        a = jnp.exp(b if mask is None else jnp.where(mask, b, 0.0))
    elif normalizer == "relu2":
        n = b.shape[-1] if mask is None else jnp.sum(mask, -1, keepdims=True)
        a = jnp.square(jax.nn.relu(b)) / jnp.maximum(jnp.asarray(n, jnp.float32), 1.0)
    else:  # swish_l2
        w = jax.nn.silu(b)
        if mask is not None:
            w = jnp.where(mask, w, 0.0)
        sq = jnp.sum(w * w, axis=-1, keepdims=True)
        big = sq > _SWISH_L2_EPS**2
        # Double where: the rsqrt branch never sees a tiny argument, so its
        # derivative cannot overflow into inf·0 = NaN.
        inv = jnp.where(big, jax.lax.rsqrt(jnp.where(big, sq, 1.0)), 1 / _SWISH_L2_EPS)
        a = w * inv
    if mask is not None:
        a = jnp.where(mask, a, 0.0)
    return a


def causal_mask(q_len: int, k_len: int) -> Bool[Array, "Lq Lk"]:
    """Boolean ``[Lq, Lk]`` lower-triangular mask, True where ``j ≤ i``.

    Args:
      q_len: Lq.
      k_len: Lk.

    Returns:
      ``[Lq, Lk]`` bool.
    """
    for name, val in (("q_len", q_len), ("k_len", k_len)):
        if not isinstance(val, int) or val <= 0:
            raise ValueError(f"{name}={val!r}: must be a positive integer")
    return jnp.tril(jnp.ones((q_len, k_len), bool))


def padding_mask(
    q_valid: Bool[Array, "*B Lq"], k_valid: Bool[Array, "*B Lk"]
) -> Bool[Array, "*B 1 Lq Lk"]:
    """Padding mask ``valid_q[i] ∧ valid_k[j]`` with a unit head axis.

    Args:
      q_valid: ``[..., Lq]`` True at real (non-pad) query tokens.
      k_valid: ``[..., Lk]`` True at real key tokens.

    Returns:
      ``[..., 1, Lq, Lk]`` bool, to pass as ``mask``.
    """
    q_valid, k_valid = jnp.asarray(q_valid, bool), jnp.asarray(k_valid, bool)
    if q_valid.ndim < 1 or q_valid.ndim != k_valid.ndim:
        raise ValueError(
            f"q_valid.shape={q_valid.shape}, k_valid.shape={k_valid.shape}: need "
            "[..., L] arrays of equal rank"
        )
    chex.assert_equal_shape_prefix([q_valid, k_valid], q_valid.ndim - 1)
    return (q_valid[..., :, None] & k_valid[..., None, :])[..., None, :, :]


def _check_normalizer(normalizer) -> None:
    """Raise ValueError for an unknown normalizer name."""
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer={normalizer!r}: must be one of {NORMALIZERS}")


def _broadcast(x, shape, name: str):
    """Explicit broadcast (rank promotion may be disabled) with a clear error."""
    x = jnp.asarray(x)
    try:
        return jnp.broadcast_to(x, shape)
    except ValueError as err:
        msg = f"{name}.shape={x.shape}: not broadcastable to {shape}"
        raise ValueError(msg) from err


def _combine_masks(mask, is_causal: bool, shape):
    """Combined boolean mask of ``shape`` or None when nothing is masked."""
    allowed = None if mask is None else _broadcast(mask, shape, "mask").astype(bool)
    if is_causal:
        causal = jnp.broadcast_to(causal_mask(shape[-2], shape[-1]), shape)
        allowed = causal if allowed is None else allowed & causal
    return allowed


def _value_term(weights, value_bias, dv: int):
    """``Σ_j a_ij r^V_ij`` as ``[..., Lq, H, Dv]`` in float32."""
    lead, (h, lq, lk) = weights.shape[:-3], weights.shape[-3:]
    if value_bias.ndim < 4:
        raise ValueError(
            f"value_bias.shape={value_bias.shape}: expected [..., Lq, Lk, H, Dv]"
        )
    vb = value_bias.astype(jnp.float32)
    if vb.shape[-2] == 1:
        # Head-shared table (Shaw et al.): one batched matmul per query row.
        vb = _broadcast(vb[..., 0, :], (*lead, lq, lk, dv), "value_bias")
        return jnp.einsum("...hqk,...qkd->...qhd", weights, vb)
    vb = _broadcast(vb, (*lead, lq, lk, h, dv), "value_bias")
    return jnp.einsum("...hqk,...qkhd->...qhd", weights, vb)
