"""Transformer encoder and GAU blocks with every position scheme and normalizer.

Flax NNX models built on :mod:`jaxlab.posenc` and :func:`jaxlab.attention.attention`
for the relative-position expressivity probe of ``reference/positional.md``
(Su 2022, kexue.fm/archives/9105; Luo et al. 2022, arXiv:2205.13401). The
position scheme, the attention normalizer, URPE, causal masking and
[CLS]/[SEP] wrapping are fields of :class:`TransformerConfig`. There is no
dropout: evaluation is deterministic, so the identical-token symmetry is exact.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab import attention as attn
from jaxlab import posenc

SCHEMES = (
    "none",
    "sinusoidal",
    "learned",
    "t5",
    "alibi",
    "rope",
    "xl",
    "shaw_k",
    "shaw_kv",
)
ABSOLUTE_SCHEMES = ("sinusoidal", "learned")
BLOCKS = ("encoder", "gau")
_INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of :class:`Transformer`.

    Attributes:
      vocab_size: token ids are ``0 … vocab_size − 1`` ([CLS]/[SEP] are added
        after them when ``cls_sep``).
      out_dim: width of the per-token output head.
      d_model: residual width.
      num_heads: attention heads of the encoder block (GAU has one).
      num_layers: number of blocks.
      d_ff: hidden width of the encoder block's feed-forward network.
      block: ``"encoder"`` (pre-LN attention + FFN) or ``"gau"`` (Hua et al.
        2022 gated attention unit).
      scheme: position scheme, one of :data:`SCHEMES`; ``shaw_k`` adds Shaw
        et al.'s key-side embeddings only, ``shaw_kv`` also the value side.
      normalizer: attention normalizer, one of :data:`jaxlab.attention.NORMALIZERS`.
      urpe: multiply the normalized attention by a learned Toeplitz matrix.
      causal: causal attention mask.
      cls_sep: wrap inputs as ``[CLS] x [SEP]``; outputs at the markers are
        dropped.
      max_len: length of the learned absolute table (including markers).
      t5_num_buckets: T5 buckets.
      t5_max_distance: T5 maximum distance.
      shaw_max_distance: Shaw clipping distance k.
      urpe_max_distance: URPE clipping distance P (``2P + 1`` generators).
      urpe_init_std: URPE generators start at ``1 + N(0, std²)``.
      gau_expansion: GAU value width ``e = gau_expansion · d_model``.
      gau_key_dim: GAU shared query/key width s.
      rope_base: RoPE frequency base.
    """

    vocab_size: int
    out_dim: int
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 256
    block: str = "encoder"
    scheme: str = "t5"
    normalizer: str = "softmax"
    urpe: bool = False
    causal: bool = False
    cls_sep: bool = False
    max_len: int = 512
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    shaw_max_distance: int = 16
    urpe_max_distance: int = 128
    urpe_init_std: float = 0.02
    gau_expansion: int = 2
    gau_key_dim: int = 32
    rope_base: float = posenc.DEFAULT_BASE

    def __post_init__(self):
        choices = (
            ("block", BLOCKS),
            ("scheme", SCHEMES),
            ("normalizer", attn.NORMALIZERS),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r}: must be one of {allowed}"
                )
        for name in (
            "vocab_size",
            "out_dim",
            "d_model",
            "num_heads",
            "num_layers",
            "d_ff",
            "max_len",
            "gau_expansion",
            "gau_key_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r}: must be a positive integer")
        for name in ("shaw_max_distance", "urpe_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}: must be an integer >= 0")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model}: must be divisible by "
                f"num_heads={self.num_heads}"
            )
        head_dim = self.d_model // self.num_heads
        if self.block == "gau":
            head_dim = self.gau_key_dim
        if self.scheme == "rope" and head_dim % 2:
            raise ValueError(f"head dim {head_dim}: must be even for scheme='rope'")
        if self.scheme == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"d_model={self.d_model}: must be even for sinusoidal")
        if self.scheme == "xl" and self.d_model % 2:
            raise ValueError(f"d_model={self.d_model}: must be even for scheme='xl'")
        if self.scheme == "t5":
            posenc.t5_relative_bucket(
                0,
                num_buckets=self.t5_num_buckets,
                max_distance=self.t5_max_distance,
                bidirectional=not self.causal,
            )


def wrap_cls_sep(ids, *, cls_id: int, sep_id: int, valid=None):
    """Wrap ``[B, L]`` token ids as ``[CLS] x_1 … x_n [SEP]`` (Su 2022, Sec. 3.5).

    The marker tokens are part of the model; with them a relative-only
    Transformer can tell positions apart (as a CNN does from padding).

    Args:
      ids: ``[B, L]`` int token ids.
      cls_id: id of [CLS].
      sep_id: id of [SEP].
      valid: optional ``[B, L]`` bool, True at real tokens (a prefix); [SEP]
        goes right after the last real token.

    Returns:
      ``(ids [B, L + 2], valid [B, L + 2])``.
    """
    chex.assert_rank(ids, 2)
    b, length = ids.shape
    n = jnp.full((b,), length) if valid is None else jnp.sum(valid, -1)
    chex.assert_shape(n, (b,))
    pos = jnp.broadcast_to(jnp.arange(length + 2)[None, :], (b, length + 2))
    n = jnp.broadcast_to(n[:, None], (b, length + 2))
    body = jnp.pad(ids, ((0, 0), (1, 1)))
    out = jnp.where(pos == 0, cls_id, jnp.where(pos == n + 1, sep_id, body))
    return out.astype(ids.dtype), pos <= n + 1


def init(key, cfg: TransformerConfig) -> "Transformer":
    """A :class:`Transformer` with parameters drawn from ``key``.

    Args:
      key: PRNG key for the parameter initializers.
      cfg: the model's hyperparameters.

    Returns:
      The initialized module.
    """
    return Transformer(cfg, rngs=nnx.Rngs(params=key))


class RelativePosition(nnx.Module):
    """Per-layer relative-position parameters and the attention call that uses them.

    Holds what the scheme needs (T5 table, Shaw key/value tables, XL's
    ``W_R``, u, v, URPE generators) and applies it in :meth:`attend`.
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        num_heads: int,
        head_dim: int,
        value_dim: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.num_heads = num_heads
        init = jax.nn.initializers.normal(_INIT_STD)
        s = cfg.scheme
        if s == "t5":
            self.t5_table = nnx.Param(
                init(rngs.params(), (cfg.t5_num_buckets, num_heads))
            )
        if s in ("shaw_k", "shaw_kv"):
            rows = 2 * cfg.shaw_max_distance + 1
            self.shaw_k = nnx.Param(init(rngs.params(), (rows, head_dim)))
        if s == "shaw_kv":
            self.shaw_v = nnx.Param(init(rngs.params(), (rows, value_dim)))
        if s == "xl":
            self.xl_r = nnx.Linear(
                cfg.d_model, num_heads * head_dim, use_bias=False, rngs=rngs
            )
            self.xl_u = nnx.Param(init(rngs.params(), (num_heads, head_dim)))
            self.xl_v = nnx.Param(init(rngs.params(), (num_heads, head_dim)))
        if cfg.urpe:
            rows = 2 * cfg.urpe_max_distance + 1
            noise = jax.random.normal(rngs.params(), (num_heads, rows))
            self.urpe_g = nnx.Param(1.0 + cfg.urpe_init_std * noise)

    def attend(self, q, k, v, positions, *, mask=None):
        """Attention of q, k ``[B, L, H, D]``, v ``[B, L, H, Dv]`` at positions ``[L]``.

        Adds the scheme's logit bias (or rotates q, k), value-side terms and
        URPE multiplier, then calls :func:`jaxlab.attention.attention`.
        """
        cfg, s = self.cfg, self.cfg.scheme
        bias = value_bias = urpe = None
        if s == "rope":
            q = posenc.apply_rope(q, positions, base=cfg.rope_base)
            k = posenc.apply_rope(k, positions, base=cfg.rope_base)
        elif s == "t5":
            bias = posenc.t5_bias(
                self.t5_table[...],
                positions,
                positions,
                max_distance=cfg.t5_max_distance,
                bidirectional=not cfg.causal,
            )
        elif s == "alibi":
            slopes = posenc.alibi_slopes(self.num_heads)
            bias = posenc.alibi_bias(slopes, positions, positions)
        elif s == "xl":
            p = positions.shape[-1] - 1
            rel = posenc.xl_relative_embeddings(p, cfg.d_model)
            r = self.xl_r(rel).reshape(2 * p + 1, *q.shape[-2:])
            idx = posenc.relative_index(positions, positions, p)
            bias = posenc.xl_relative_bias(
                q, k, r, self.xl_u[...], self.xl_v[...], idx
            )
        elif s in ("shaw_k", "shaw_kv"):
            idx = posenc.relative_index(positions, positions, cfg.shaw_max_distance)
            bias = posenc.shaw_key_bias(q, self.shaw_k[...], idx)
            if s == "shaw_kv":
                value_bias = posenc.shaw_value_bias(self.shaw_v[...], idx)
        if cfg.urpe:
            idx = posenc.relative_index(positions, positions, cfg.urpe_max_distance)
            urpe = posenc.urpe_toeplitz(self.urpe_g[...], idx)
        return attn.attention(
            q,
            k,
            v,
            bias=bias,
            mask=mask,
            normalizer=cfg.normalizer,
            urpe=urpe,
            value_bias=value_bias,
            is_causal=cfg.causal,
        )


class EncoderBlock(nnx.Module):
    """Pre-LN Transformer block: ``x + W_o·Attn(LN x)``, then ``x + FFN(LN x)``."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        d, h = cfg.d_model, cfg.num_heads
        self.num_heads, self.head_dim = h, d // h
        self.ln_attn = nnx.LayerNorm(d, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
        self.proj = nnx.Linear(d, d, rngs=rngs)
        self.ln_ff = nnx.LayerNorm(d, rngs=rngs)
        self.ff_in = nnx.Linear(d, cfg.d_ff, rngs=rngs)
        self.ff_out = nnx.Linear(cfg.d_ff, d, rngs=rngs)
        self.pos = RelativePosition(cfg, h, self.head_dim, self.head_dim, rngs=rngs)

    def __call__(self, x_BxLxD, positions, mask=None):
        """``[B, L, d_model]`` → ``[B, L, d_model]``."""
        b, length, d = x_BxLxD.shape
        qkv = self.qkv(self.ln_attn(x_BxLxD)).reshape(
            b, length, 3, self.num_heads, self.head_dim
        )
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        o_BxLxHxK = self.pos.attend(q, k, v, positions, mask=mask)
        x_BxLxD = x_BxLxD + self.proj(o_BxLxHxK.reshape(b, length, d))
        h = self.ff_out(jax.nn.gelu(self.ff_in(self.ln_ff(x_BxLxD))))
        return x_BxLxD + h


class GAUBlock(nnx.Module):
    r"""Gated attention unit (Hua et al. 2022, "Transformer Quality in Linear Time").

    ``U, V, Z = φ(LN(x) W)`` (φ = swish), ``Q = γ_q ⊙ Z + β_q``,
    ``K = γ_k ⊙ Z + β_k``, ``A = normalizer(QKᵀ/√s + b)`` (relu²/n in the
    paper, Su's kexue.fm/archives/9019 form), ``x + (U ⊙ A V) W_o``. One head;
    the position scheme enters through ``b`` (or RoPE on Q, K) as in the
    encoder block. γ starts at 1 and β at 0.
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        d, s = cfg.d_model, cfg.gau_key_dim
        e = cfg.gau_expansion * d
        self.e, self.s = e, s
        self.ln = nnx.LayerNorm(d, rngs=rngs)
        self.uvz = nnx.Linear(d, 2 * e + s, rngs=rngs)
        # Per-dim scale and offset start at 1 and 0 (Su's bert4keras GAU).
        self.gamma = nnx.Param(jnp.ones((2, s)))
        self.beta = nnx.Param(jnp.zeros((2, s)))
        self.proj = nnx.Linear(e, d, rngs=rngs)
        self.pos = RelativePosition(cfg, 1, s, e, rngs=rngs)

    def __call__(self, x_BxLxD, positions, mask=None):
        """``[B, L, d_model]`` → ``[B, L, d_model]``."""
        uvz = jax.nn.silu(self.uvz(self.ln(x_BxLxD)))
        e = self.e
        u, v, z = uvz[..., :e], uvz[..., e : 2 * e], uvz[..., 2 * e :]
        gamma, beta = self.gamma[...], self.beta[...]
        q = z * gamma[0][None, None] + beta[0][None, None]
        k = z * gamma[1][None, None] + beta[1][None, None]
        o = self.pos.attend(
            q[:, :, None], k[:, :, None], v[:, :, None], positions, mask=mask
        )
        return x_BxLxD + self.proj(u * o[:, :, 0])


class Transformer(nnx.Module):
    """Token embedding, optional absolute encoding, blocks, final LN, per-token head.

    ``__call__(ids [B, L], valid=None) -> [B, L, out_dim]``.
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        vocab = cfg.vocab_size + (2 if cfg.cls_sep else 0)
        self.embed = nnx.Embed(vocab, cfg.d_model, rngs=rngs)
        if cfg.scheme == "learned":
            self.pos_table = nnx.Param(
                posenc.learned_table(rngs.params(), cfg.max_len, cfg.d_model)
            )
        block = EncoderBlock if cfg.block == "encoder" else GAUBlock
        self.blocks = nnx.List([block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.ln_out = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.out_dim, rngs=rngs)

    def __call__(self, ids, valid=None):
        """Per-token outputs.

        Args:
          ids: ``[B, L]`` int token ids in ``[0, vocab_size)``.
          valid: optional ``[B, L]`` bool padding mask (True = real token).

        Returns:
          ``[B, L, out_dim]`` (marker positions removed when ``cls_sep``).
        """
        cfg = self.cfg
        chex.assert_rank(ids, 2)
        length = ids.shape[1]
        if valid is not None:
            chex.assert_shape(valid, ids.shape)
        if cfg.cls_sep:
            ids, valid_w = wrap_cls_sep(
                ids, cls_id=cfg.vocab_size, sep_id=cfg.vocab_size + 1, valid=valid
            )
            valid = None if valid is None else valid_w
        total = ids.shape[1]
        if cfg.scheme == "learned" and total > cfg.max_len:
            raise ValueError(
                f"sequence length {total} exceeds max_len={cfg.max_len} of the "
                "learned table"
            )
        positions = jnp.arange(total)
        x = self.embed(ids)
        if cfg.scheme == "sinusoidal":
            x = x + posenc.sinusoidal(positions, cfg.d_model)[None]
        elif cfg.scheme == "learned":
            x = x + self.pos_table[...][:total][None]
        mask = None if valid is None else attn.padding_mask(valid, valid)
        for block in self.blocks:
            x = block(x, positions, mask)
        y = self.head(self.ln_out(x))
        if cfg.cls_sep:
            y = y[:, 1 : length + 1]
        return y

