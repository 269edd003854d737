r"""A small DDPM-style U-Net in Flax NNX for ε-prediction on 8×8 and 28×28 images.

Architecture (Ho et al. 2020, App. B, scaled down): a 3×3 input conv; per
resolution level ``num_res_blocks`` residual blocks (GroupNorm → SiLU → conv,
with the time embedding added in between), a stride-2 conv between levels; a
middle block ResBlock → self-attention → ResBlock at the lowest resolution; a
mirrored decoder that concatenates the skip activations and upsamples by
nearest-neighbour ×2 + conv; GroupNorm → SiLU → zero-initialized 3×3 output conv.

Time enters as ``posenc.sinusoidal(t * time_scale, channels)`` followed by a
two-layer MLP. ``t`` may be integer steps (``time_scale=1``, discrete DDPM /
DDIM) or float times, e.g. continuous t ∈ [0, 1] with ``time_scale=1000`` for
score SDEs, so one module serves both.

References:
    J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models", 2020.
    J. Su, 生成扩散模型漫谈 (四) §4.5: a fixed sinusoidal t-embedding and the
    original U-Net beat ad-hoc variants at small σ.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from jaxlab import posenc


class UNet(nnx.Module):
    """ε-prediction U-Net ``model(x [B, H, W, C], t [B] or scalar) -> [B, H, W, C]``.

    Args:
        in_channels: image channels C (the output has the same).
        channels: base width; level i has ``channels * channel_mults[i]``.
        channel_mults: width multipliers, one per resolution level; H and W must
            be divisible by ``2 ** (len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per level in the encoder.
        num_heads: attention heads at the lowest resolution.
        num_groups: GroupNorm groups (reduced to divide the width if needed).
        time_scale: multiplies ``t`` before the sinusoidal embedding.
        rngs: ``nnx.Rngs`` for parameter initialization.
    """

    def __init__(
        self, *, in_channels: int = 1, channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
        num_heads: int = 4, num_groups: int = 8, time_scale: float = 1.0,
        rngs: nnx.Rngs,
    ):
        _check_positive("in_channels", in_channels)
        _check_positive("channels", channels)
        _check_positive("num_res_blocks", num_res_blocks)
        _check_positive("num_heads", num_heads)
        if not channel_mults or any(int(m) < 1 for m in channel_mults):
            raise ValueError(
                f"channel_mults must be a non-empty tuple of ints >= 1, got "
                f"{channel_mults!r}"
            )
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        widths = [channels * int(m) for m in channel_mults]
        if widths[-1] % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide the lowest-resolution width "
                f"{widths[-1]}"
            )
        self.channels = channels
        self.num_levels = len(widths)
        self.time_scale = float(time_scale)
        temb = 4 * channels
        self.time_mlp1 = nnx.Linear(channels, temb, rngs=rngs)
        self.time_mlp2 = nnx.Linear(temb, temb, rngs=rngs)
        self.conv_in = nnx.Conv(in_channels, channels, (3, 3), rngs=rngs)

        down, skips, ch = [], [channels], channels
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                down.append(ResBlock(ch, w, temb, num_groups, rngs=rngs))
                ch = w
                skips.append(ch)
            if i < len(widths) - 1:
                down.append(Downsample(ch, rngs=rngs))
                skips.append(ch)
        self.down = nnx.List(down)
        self.mid1 = ResBlock(ch, ch, temb, num_groups, rngs=rngs)
        self.mid_attn = SelfAttention(ch, num_heads, num_groups, rngs=rngs)
        self.mid2 = ResBlock(ch, ch, temb, num_groups, rngs=rngs)

        up = []
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                up.append(ResBlock(ch + skips.pop(), w, temb, num_groups, rngs=rngs))
                ch = w
            if i > 0:
                up.append(Upsample(ch, rngs=rngs))
        self.up = nnx.List(up)
        self.norm_out = nnx.GroupNorm(ch, num_groups=_groups(ch, num_groups), rngs=rngs)
        self.conv_out = nnx.Conv(
            ch, in_channels, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs
        )

    def __call__(
        self, x: Float[Array, "B H W C"], t: ArrayLike
    ) -> Float[Array, "B H W C"]:
        """ε̂(x, t); ``t`` is ``[B]`` or a scalar, integer or float."""
        if x.ndim != 4:
            raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
        f = 2 ** (self.num_levels - 1)
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"H and W must be divisible by 2**(levels-1) = {f}, got {x.shape[1:3]}"
            )
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        emb = posenc.sinusoidal(t * self.time_scale, self.channels)
        emb = self.time_mlp2(jax.nn.silu(self.time_mlp1(emb)))

        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(jnp.concatenate([h, hs.pop()], axis=-1), emb)
            else:
                h = layer(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h))).astype(x.dtype)


class ResBlock(nnx.Module):
    """GroupNorm → SiLU → conv, + Dense(time), GroupNorm → SiLU → conv, + skip."""

    def __init__(self, cin: int, cout: int, temb: int, num_groups: int, *, rngs):
        self.norm1 = nnx.GroupNorm(cin, num_groups=_groups(cin, num_groups), rngs=rngs)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
        self.time = nnx.Linear(temb, cout, rngs=rngs)
        self.norm2 = nnx.GroupNorm(
            cout, num_groups=_groups(cout, num_groups), rngs=rngs
        )
        # Zero-initialized last conv: each block starts as the identity.
        self.conv2 = nnx.Conv(
            cout, cout, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs
        )
        self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

    def __call__(self, x, emb):
        """Residual update of ``x`` [B, H, W, cin] given ``emb`` [B, temb]."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.time(jax.nn.silu(emb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class SelfAttention(nnx.Module):
    """Multi-head self-attention over the H·W positions, pre-GroupNorm, residual."""

    def __init__(self, ch: int, num_heads: int, num_groups: int, *, rngs):
        self.num_heads = num_heads
        self.norm = nnx.GroupNorm(ch, num_groups=_groups(ch, num_groups), rngs=rngs)
        self.qkv = nnx.Linear(ch, 3 * ch, rngs=rngs)
        self.out = nnx.Linear(ch, ch, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x):
        """``x`` [B, H, W, C] -> same shape."""
        b, hgt, wid, c = x.shape
        qkv_BxLx3xNxK = self.qkv(self.norm(x)).reshape(
            b, hgt * wid, 3, self.num_heads, c // self.num_heads
        )
        q, k, v = (qkv_BxLx3xNxK[:, :, i] for i in range(3))
        o_BxLxNxK = jax.nn.dot_product_attention(q, k, v)
        return x + self.out(o_BxLxNxK.reshape(b, hgt, wid, c))


class Downsample(nnx.Module):
    """3×3 stride-2 conv (halves H and W)."""

    def __init__(self, ch: int, *, rngs):
        self.conv = nnx.Conv(ch, ch, (3, 3), strides=(2, 2), rngs=rngs)

    def __call__(self, x):
        """``[B, H, W, C] -> [B, H/2, W/2, C]``."""
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour ×2 then a 3×3 conv."""

    def __init__(self, ch: int, *, rngs):
        self.conv = nnx.Conv(ch, ch, (3, 3), rngs=rngs)

    def __call__(self, x):
        """``[B, H, W, C] -> [B, 2H, 2W, C]``."""
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _groups(ch: int, num_groups: int) -> int:
    """Largest group count ≤ num_groups that divides ch."""
    g = max(1, min(num_groups, ch))
    while ch % g:
        g -= 1
    return g


def _check_positive(name: str, value) -> None:
    """Raise ValueError unless ``value`` is a positive int."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
