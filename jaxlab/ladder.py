r"""Ladder Side-Tuning (LST): gates, Fisher importance, structured pruning, memory.

Sung, Cho & Bansal, "LST: Ladder Side-Tuning for Parameter and Memory Efficient
Transfer Learning", NeurIPS 2022 (arXiv 2206.06522); architecture as in the
official ``modeling_side_t5.py`` (see ``reference/ladder.md`` §2). A frozen
backbone returns its per-layer hidden states h^B_0..h^B_L (under
``stop_gradient``); a side network of width d/r reads them through ladders:

    h^S = D_0(h^B_0)
    h̃   = μ_i · h^S + (1 − μ_i) · D_i(h^B_{i+1}),   μ_i = σ(α_i / T)
    h^S = SideBlock_i(h̃)                             for each kept layer i

with T = 0.1 and α_i = 0 at init (μ = 0.5). The side network is initialized by
structured pruning of the backbone with Fisher importance
F(θ) = Σ_{n=1}^{N} (∂L_n/∂θ)² (batch size 1), keeping 1/r of the hidden, per-head
and feed-forward dimensions with one index set per coupled group.

This module is the flax-free half: pure functions of arrays and plain dicts.
The NNX modules live in :mod:`jaxlab.nn.peft`; ``LadderSideNetwork``,
``side_tune``, ``side_config`` and ``init_side_from_backbone`` are re-exported
here lazily, so ``import jaxlab.ladder`` does not import flax.

Pruning works on the parameter layout of :class:`jaxlab.nn.bert.BertLayer` as a
plain dict (``nnx.to_pure_dict``)::

    {"attention": {"query" | "key" | "value" | "output": {"kernel", "bias"}},
     "attn_norm": {"scale", "bias"}, "intermediate": {"kernel", "bias"},
     "output": {"kernel", "bias"}, "out_norm": {"scale", "bias"}}

with kernels stored ``[in, out]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

TEMPERATURE = 0.1
GATE_MODES = ("learnable", "none")
MIXING_MODES = ("pre", "post")
_LAZY = {
    "LadderSideNetwork",
    "side_tune",
    "side_config",
    "init_side_from_backbone",
}


def __getattr__(name: str):
    """Lazy re-export of the NNX side of LST from :mod:`jaxlab.nn.peft`."""
    if name in _LAZY:
        from jaxlab.nn import peft

        return getattr(peft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------
# Gates and ladder mixing
# ----------------------------------------------------------------------------


def gate(alpha: jax.Array, temperature: float = TEMPERATURE) -> jax.Array:
    r"""Ladder gate μ = σ(α / T) (LST §3.1; official ``gate_T = 0.1``).

    Args:
        alpha: gate logits, any shape (one scalar per side layer).
        temperature: T > 0; the paper uses 0.1.

    Returns:
        μ with the shape of ``alpha``; 0.5 at α = 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}; must be > 0.")
    return jax.nn.sigmoid(alpha / temperature)


def ladder_mix(
    side: jax.Array, tap: jax.Array, mu: jax.Array | None, *, mode: str = "learnable"
) -> jax.Array:
    r"""Combine the side state with a downsampled backbone tap.

    ``mode="learnable"``: h̃ = μ·h^S + (1 − μ)·D(h^B) (LST Eq. 1, gated ladder);
    ``mode="none"``: h̃ = h^S + D(h^B) (Su's additive, ungated variant).

    Args:
        side: h^S, ``[..., d_side]``.
        tap: D_i(h^B_i), same shape as ``side``.
        mu: scalar gate (ignored when ``mode="none"``).
        mode: ``"learnable"`` or ``"none"``.

    Returns:
        The mixed state, shape of ``side``.
    """
    if mode not in GATE_MODES:
        raise ValueError(f"mode={mode!r}; allowed: {GATE_MODES}.")
    chex.assert_equal_shape([side, tap])
    if mode == "none":
        return side + tap
    chex.assert_rank(mu, 0)
    return mu * side + (1.0 - mu) * tap


# ----------------------------------------------------------------------------
# Fisher importance
# ----------------------------------------------------------------------------


def fisher_importance(
    loss_fn: Callable[[Any, Any], jax.Array], params: Any, examples: Any
) -> Any:
    r"""Empirical Fisher diagonal F(θ) = Σ_n (∂L(θ; x_n)/∂θ)², at batch size 1.

    LST's ``fisher-v2`` side-network initialization (``reference/ladder.md`` §2):
    squared per-example gradients summed over N training examples. The examples
    are scanned one at a time, so memory is that of a single backward pass.

    Args:
        loss_fn: ``(params, example) -> scalar``; ``example`` is one row of
            ``examples`` with a leading batch axis of 1 restored.
        params: pytree of arrays (the backbone parameters).
        examples: pytree whose leaves share a leading axis N.

    Returns:
        A pytree like ``params`` with the summed squared gradients.
    """
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(examples)}
    if len(sizes) != 1 or not min(sizes) >= 1:
        raise ValueError(
            f"examples leading sizes={sorted(sizes)}; need one common size N ≥ 1."
        )
    grad_fn = jax.grad(loss_fn)

    def body(total, example):
        batch1 = jax.tree.map(lambda a: a[None], example)
        g = grad_fn(params, batch1)
        return jax.tree.map(lambda t, x: t + jnp.square(x), total, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zeros, examples)
    return total


# ----------------------------------------------------------------------------
# Structured pruning
# ----------------------------------------------------------------------------


def keep_indices(scores: jax.Array, keep: int) -> jax.Array:
    """Indices of the ``keep`` largest scores, in increasing index order.

    Sorting the kept indices preserves the original order of dimensions, so
    ``keep == len(scores)`` returns ``arange(len(scores))`` (ties: lower index).

    Args:
        scores: ``[..., n]`` importances.
        keep: 1 ≤ keep ≤ n.

    Returns:
        int32 ``[..., keep]``.
    """
    n = scores.shape[-1]
    if not 1 <= keep <= n:
        raise ValueError(f"keep={keep!r}; must be in 1..{n}.")
    order = jnp.argsort(-scores, axis=-1, stable=True)[..., :keep]
    return jnp.sort(order, axis=-1).astype(jnp.int32)


def hidden_scores(
    block_importance: Sequence[Mapping], extra: Sequence[jax.Array] = ()
) -> jax.Array:
    r"""Group importance of each residual-stream (hidden) dimension.

    Dimension j of the residual stream is shared by every block, so one index
    set is kept for the whole side network. Its score is the L1 norm of the
    importance of every weight slice attached to j (Torch-Pruning
    ``L1Strategy`` over the coupled group): input rows of q/k/v and of the FFN
    input, output columns and biases of the attention output and FFN output,
    and both LayerNorms; plus ``extra`` vectors ``[d]`` (e.g. the embedding
    table's column sums and embedding LayerNorm).

    Args:
        block_importance: Fisher dicts of the kept blocks (BertLayer layout).
        extra: additional ``[d]`` importance vectors.

    Returns:
        ``[d]`` scores.
    """
    total = sum(jnp.asarray(e) for e in extra) if extra else 0.0
    for imp in block_importance:
        att = imp["attention"]
        rows = [att[n]["kernel"] for n in ("query", "key", "value")]
        rows.append(imp["intermediate"]["kernel"])
        cols = [att["output"]["kernel"], imp["output"]["kernel"]]
        vecs = [
            att["output"]["bias"],
            imp["output"]["bias"],
            imp["attn_norm"]["scale"],
            imp["attn_norm"]["bias"],
            imp["out_norm"]["scale"],
            imp["out_norm"]["bias"],
        ]
        total = total + sum(jnp.sum(jnp.abs(w), axis=1) for w in rows)
        total = total + sum(jnp.sum(jnp.abs(w), axis=0) for w in cols)
        total = total + sum(jnp.abs(v) for v in vecs)
    return jnp.asarray(total)


def head_scores(block_importance: Mapping, num_heads: int) -> jax.Array:
    r"""Group importance of each (head, within-head dimension) of one block.

    Query, key, value and the attention output are coupled: dimension e of
    head h is output column h·d_k + e of q, k and v (and their biases) and
    input row h·d_k + e of the output projection.

    Returns:
        ``[num_heads, d_k]`` scores.
    """
    att = block_importance["attention"]
    inner = att["query"]["kernel"].shape[1]
    if num_heads < 1 or inner % num_heads:
        raise ValueError(f"num_heads={num_heads!r}; must divide {inner}.")
    total = jnp.sum(jnp.abs(att["output"]["kernel"]), axis=1)
    for n in ("query", "key", "value"):
        total = total + jnp.sum(jnp.abs(att[n]["kernel"]), axis=0)
        total = total + jnp.abs(att[n]["bias"])
    return total.reshape(num_heads, inner // num_heads)


def ffn_scores(block_importance: Mapping) -> jax.Array:
    """Group importance of each FFN hidden unit: W_1 column + b_1 + W_2 row.

    Returns:
        ``[d_ff]`` scores.
    """
    w1 = block_importance["intermediate"]
    w2 = block_importance["output"]
    return (
        jnp.sum(jnp.abs(w1["kernel"]), axis=0)
        + jnp.abs(w1["bias"])
        + jnp.sum(jnp.abs(w2["kernel"]), axis=1)
    )


def prune_block(
    params: Mapping,
    hidden_idx: jax.Array,
    head_idx: jax.Array,
    ffn_idx: jax.Array,
) -> dict:
    """Slice one block's weights to the kept hidden / head / FFN indices.

    Args:
        params: the block's parameters (BertLayer layout, kernels ``[in, out]``).
        hidden_idx: kept residual dimensions ``[d']``.
        head_idx: kept flat attention dimensions ``[H·d_k']`` (head-major).
        ffn_idx: kept FFN units ``[d_ff']``.

    Returns:
        A dict with the same layout and the reduced shapes.
    """
    att = params["attention"]

    def take(x, idx, axis):
        return jnp.take(jnp.asarray(x), idx, axis=axis)

    def qkv(p):
        kernel = take(take(p["kernel"], hidden_idx, 0), head_idx, 1)
        return {"kernel": kernel, "bias": take(p["bias"], head_idx, 0)}

    def norm(p):
        return {
            "scale": take(p["scale"], hidden_idx, 0),
            "bias": take(p["bias"], hidden_idx, 0),
        }

    out = att["output"]
    w1, w2 = params["intermediate"], params["output"]
    return {
        "attention": {
            "query": qkv(att["query"]),
            "key": qkv(att["key"]),
            "value": qkv(att["value"]),
            "output": {
                "kernel": take(take(out["kernel"], head_idx, 0), hidden_idx, 1),
                "bias": take(out["bias"], hidden_idx, 0),
            },
        },
        "attn_norm": norm(params["attn_norm"]),
        "intermediate": {
            "kernel": take(take(w1["kernel"], hidden_idx, 0), ffn_idx, 1),
            "bias": take(w1["bias"], ffn_idx, 0),
        },
        "output": {
            "kernel": take(take(w2["kernel"], ffn_idx, 0), hidden_idx, 1),
            "bias": take(w2["bias"], hidden_idx, 0),
        },
        "out_norm": norm(params["out_norm"]),
    }


def structured_prune(
    blocks: Sequence[Mapping],
    importance: Sequence[Mapping],
    *,
    reduction: int,
    num_heads: int,
    extra_hidden_importance: Sequence[jax.Array] = (),
) -> tuple[list[dict], dict]:
    r"""Prune transformer blocks to 1/r of their hidden, head and FFN widths.

    Keeps the top-importance dimensions with consistent index sets: one hidden
    set for all blocks (the shared residual stream), and per block one set of
    d_k/r dimensions in every head (shared by q, k, v and the output
    projection) and one set of d_ff/r FFN units (shared by W_1, b_1 and W_2).
    With ``reduction=1`` every index is kept in order, so the weights are
    returned unchanged.

    Args:
        blocks: parameters of the blocks to prune (BertLayer layout).
        importance: Fisher importance of the same blocks (same layout).
        reduction: r ≥ 1; must divide d, d_k and d_ff.
        num_heads: number of attention heads (kept unchanged, as in LST).
        extra_hidden_importance: ``[d]`` vectors added to the hidden scores.

    Returns:
        ``(pruned_blocks, indices)`` with ``indices = {"hidden": [d/r],
        "heads": list of [H·d_k/r], "ffn": list of [d_ff/r]}``.
    """
    if len(blocks) != len(importance) or not blocks:
        raise ValueError(
            f"blocks ({len(blocks)}) and importance ({len(importance)}) must be "
            "non-empty and of equal length."
        )
    first = blocks[0]
    d = np.shape(first["attn_norm"]["scale"])[0]
    inner = np.shape(first["attention"]["query"]["kernel"])[1]
    d_ff = np.shape(first["intermediate"]["kernel"])[1]
    if num_heads < 1 or inner % num_heads:
        raise ValueError(f"num_heads={num_heads!r}; must divide {inner}.")
    d_k = inner // num_heads
    _check_reduction(reduction, hidden=d, head_dim=d_k, intermediate=d_ff)
    hidden_idx = keep_indices(
        hidden_scores(importance, extra_hidden_importance), d // reduction
    )
    pruned, heads, ffns = [], [], []
    for params, imp in zip(blocks, importance, strict=True):
        per_head = keep_indices(head_scores(imp, num_heads), d_k // reduction)
        offsets = (jnp.arange(num_heads, dtype=jnp.int32) * d_k)[:, None]
        head_idx = (per_head + offsets).reshape(-1)
        ffn_idx = keep_indices(ffn_scores(imp), d_ff // reduction)
        pruned.append(prune_block(params, hidden_idx, head_idx, ffn_idx))
        heads.append(head_idx)
        ffns.append(ffn_idx)
    return pruned, {"hidden": hidden_idx, "heads": heads, "ffn": ffns}


def _check_reduction(reduction: int, **dims: int) -> None:
    """ValueError unless ``reduction`` is a positive int dividing every dim."""
    if not isinstance(reduction, (int, np.integer)) or reduction < 1:
        raise ValueError(f"reduction={reduction!r}; must be a positive int.")
    for name, dim in dims.items():
        if dim % reduction:
            raise ValueError(
                f"reduction={reduction} does not divide {name}={dim}; allowed: "
                f"divisors of {dim}."
            )


# ----------------------------------------------------------------------------
# Accounting: parameters and compiled memory
# ----------------------------------------------------------------------------


def parameter_count(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def trainable_percentage(trainable: Any, backbone: Any) -> float:
    r"""100 · |trainable| / |backbone| (PETL convention: relative to the backbone).

    Args:
        trainable: pytree of the parameters the optimizer updates.
        backbone: pytree of the pretrained backbone's parameters.

    Returns:
        The percentage as a float (full fine-tuning with a head is ≥ 100).
    """
    total = parameter_count(backbone)
    if total == 0:
        raise ValueError("backbone has no parameters.")
    return 100.0 * parameter_count(trainable) / total


def compiled_memory(compiled: Any) -> dict[str, int]:
    """Memory figures of a compiled XLA program (``jit(f).lower(...).compile()``).

    Returns:
        ``{"temp", "argument", "output", "alias", "total"}`` in bytes, where
        ``total = temp + argument + output`` (the issue's definition; ``alias``
        is the part of the output that reuses donated argument buffers).
    """
    stats = compiled.memory_analysis()
    if stats is None:
        raise ValueError("this backend gives no memory_analysis() for the program.")
    out = {
        "temp": int(stats.temp_size_in_bytes),
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
    }
    out["total"] = out["temp"] + out["argument"] + out["output"]
    return out
