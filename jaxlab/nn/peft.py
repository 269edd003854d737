r"""Parameter-efficient fine-tuning of a BERT encoder: LST and its baselines.

All methods wrap a :class:`jaxlab.nn.bert.BertEncoder` (or any module that maps
``(input_ids, attention_mask)`` to its per-layer hidden states) and mark the
parameters they add with :class:`PeftParam`, so the optimizer is selected by
variable type (:func:`trainable_filter`):

* **Ladder Side-Tuning** (Sung et al. 2022, arXiv 2206.06522):
  :class:`LadderSideNetwork`; backbone under ``stop_gradient``, a side network
  of width d/r fed by gated ladders (pure math in :mod:`jaxlab.ladder`).
* **Full fine-tuning**: every parameter of :class:`SequenceClassifier`.
* **Bottleneck adapters** (Houlsby et al. 2019, arXiv 1902.00751, Fig. 2):
  x + W_up·gelu(W_down·x) after each attention and FFN sublayer, W_up = 0 at init.
* **LoRA** (Hu et al. 2021, arXiv 2106.09685, Eq. 3): W x + (α/r)·B A x, B = 0
  at init, on the chosen projections.
* **BitFit** (Ben Zaken et al. 2022, arXiv 2106.10199): bias terms only.
* **Linear probe**: frozen encoder, a linear head on mean-pooled features.

Every classifier's head pools the final states with the Sentence-BERT mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlab import ladder
from jaxlab.nn.bert import BertConfig, BertEncoder, BertLayer, Dense, mean_pool

METHODS = ("full", "adapter", "lora", "bitfit", "probe", "lst")
LORA_TARGETS = ("query", "key", "value", "attn_output", "intermediate", "ffn_output")


class PeftParam(nnx.Param):
    """A parameter added by a fine-tuning method (head, adapter, LoRA, side net)."""


def trainable_filter(method: str):
    """NNX filter of the variables the optimizer updates for ``method``.

    ``full``: every ``nnx.Param``; ``bitfit``: every parameter named ``bias``
    plus the head; the others: only :class:`PeftParam` variables.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; allowed: {METHODS}.")
    if method == "full":
        return nnx.Param
    if method == "bitfit":
        return nnx.Any(PeftParam, nnx.All(nnx.Param, nnx.PathContains("bias")))
    return PeftParam


# ----------------------------------------------------------------------------
# Classifier, adapters, LoRA
# ----------------------------------------------------------------------------


class SequenceClassifier(nnx.Module):
    """logits = W · mean_pool(h_L) + b on top of an encoder's last hidden state."""

    def __init__(
        self,
        backbone: nnx.Module,
        *,
        hidden_size: int,
        num_classes: int,
        rngs: nnx.Rngs,
    ):
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}; must be ≥ 2.")
        self.backbone = backbone
        self.head = Dense(hidden_size, num_classes, rngs=rngs, param_type=PeftParam)

    def features(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Mean-pooled last hidden state ``[B, D]``."""
        hidden = self.backbone(input_ids, attention_mask)
        return mean_pool(hidden[-1], attention_mask)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.features(input_ids, attention_mask))


class Adapter(nnx.Module):
    r"""Bottleneck adapter x + W_up·gelu(W_down·x + b_down) + b_up (Houlsby 2019).

    W_up and b_up start at zero, so the adapter is the identity at init.
    """

    def __init__(self, features: int, bottleneck: int, *, rngs: nnx.Rngs):
        self.down = Dense(features, bottleneck, rngs=rngs, param_type=PeftParam)
        self.up = Dense(
            bottleneck, features, rngs=rngs, zero_init=True, param_type=PeftParam
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.up(jax.nn.gelu(self.down(x), approximate=False))


def add_adapters(
    encoder: BertEncoder, *, bottleneck: int, rngs: nnx.Rngs
) -> BertEncoder:
    """Insert a bottleneck adapter after every attention and FFN sublayer (in place).

    Args:
        encoder: the backbone (modified and returned).
        bottleneck: adapter width m ≥ 1.
        rngs: initializer keys.

    Returns:
        ``encoder``.
    """
    if not isinstance(bottleneck, (int, np.integer)) or bottleneck < 1:
        raise ValueError(f"bottleneck={bottleneck!r}; must be a positive int.")
    d = encoder.config.hidden_size
    for layer in encoder.layers:
        layer.attn_adapter = nnx.data(Adapter(d, bottleneck, rngs=rngs))
        layer.ffn_adapter = nnx.data(Adapter(d, bottleneck, rngs=rngs))
    return encoder


class LoRADense(nnx.Module):
    r"""y = base(x) + (α/r) · (x A) B with A ``[in, r]``, B ``[r, out]`` = 0 at init.

    A is drawn from U(−1/√in, 1/√in) (Kaiming-uniform, as in the LoRA code).
    """

    def __init__(self, base: Dense, *, rank: int, alpha: float, rngs: nnx.Rngs):
        self.base = base
        bound = 1.0 / np.sqrt(base.in_features)
        a = jax.random.uniform(
            rngs.params(), (base.in_features, rank), jnp.float32, -bound, bound
        )
        self.lora_a = PeftParam(a)
        self.lora_b = PeftParam(jnp.zeros((rank, base.out_features), jnp.float32))
        self.scale = alpha / rank
        self.in_features = base.in_features
        self.out_features = base.out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        low = jnp.einsum("...i,ir->...r", x, self.lora_a[...])
        return self.base(x) + self.scale * jnp.einsum(
            "...r,ro->...o", low, self.lora_b[...]
        )


def add_lora(
    encoder: BertEncoder,
    *,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] = ("query", "value"),
    rngs: nnx.Rngs,
) -> BertEncoder:
    """Wrap the ``targets`` projections of every block in :class:`LoRADense` (in place).

    Args:
        encoder: the backbone (modified and returned).
        rank: r ≥ 1.
        alpha: LoRA α (scale α/r); defaults to 2r.
        targets: subset of ``LORA_TARGETS``; Hu et al. adapt query and value.
        rngs: initializer keys.

    Returns:
        ``encoder``.
    """
    if not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank={rank!r}; must be a positive int.")
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise ValueError(f"targets={tuple(targets)!r}; allowed: {LORA_TARGETS}.")
    alpha = 2.0 * rank if alpha is None else float(alpha)
    for layer in encoder.layers:
        owners = {
            "query": (layer.attention, "query"),
            "key": (layer.attention, "key"),
            "value": (layer.attention, "value"),
            "attn_output": (layer.attention, "output"),
            "intermediate": (layer, "intermediate"),
            "ffn_output": (layer, "output"),
        }
        for t in targets:
            owner, name = owners[t]
            base = getattr(owner, name)
            setattr(owner, name, LoRADense(base, rank=rank, alpha=alpha, rngs=rngs))
    return encoder


# ----------------------------------------------------------------------------
# Ladder Side-Tuning
# ----------------------------------------------------------------------------


def side_config(config: BertConfig, reduction: int, num_layers: int) -> BertConfig:
    """Side-network config: d/r hidden, d_k/r per head, d_ff/r FFN, same heads."""
    d_k = config.attention_head_dim
    ladder._check_reduction(
        reduction,
        hidden_size=config.hidden_size,
        head_dim=d_k,
        intermediate_size=config.intermediate_size,
    )
    return dataclasses.replace(
        config,
        hidden_size=config.hidden_size // reduction,
        head_dim=d_k // reduction,
        intermediate_size=config.intermediate_size // reduction,
        num_layers=num_layers,
    )


class LadderSideNetwork(nnx.Module):
    r"""Ladder Side-Tuning around a frozen backbone with per-layer outputs.

    Forward (official ``modeling_side_t5.py``; ``reference/ladder.md`` §2):

        h^B = stop_gradient(backbone(x))    (h^B_0: embeddings, h^B_{i+1}: block i)
        h^S = D_0(h^B_0)
        for each kept layer i (``side_layers``):
            pre:  h^S = SideBlock_i(mix(h^S, D_i(h^B_{i+1})))
            post: h^S = mix(SideBlock_i(h^S), D_i(h^B_{i+1}))
        logits = W · mean_pool(U h^S) + b

    where mix is μ_i·h^S + (1−μ_i)·D_i(·) with μ_i = σ(α_i/T) (``gate="learnable"``)
    or h^S + D_i(·) (``gate="none"``, Su's additive variant). D_0, D_i: d → d/r
    and U: d/r → d are linear with bias. Side blocks are BERT blocks at width
    d/r with the same number of heads. All parameters except the backbone's are
    :class:`PeftParam`.

    Args:
        backbone: module ``(input_ids, attention_mask) -> (h_0, ..., h_L)``.
        num_classes: classes of the task head.
        reduction: r; divides d, d_k and d_ff.
        side_layers: backbone blocks (0-based) that get a side block and a
            ladder; the others are dropped. All blocks when ``None``.
        mixing: ``"pre"`` (mix before the side block, the default) or ``"post"``.
        gate: ``"learnable"`` or ``"none"``.
        temperature: gate temperature T (0.1).
        config: the backbone's ``BertConfig`` (default ``backbone.config``).
        rngs: initializer keys (random init; see :func:`init_side_from_backbone`).
    """

    def __init__(
        self,
        backbone: nnx.Module,
        *,
        num_classes: int,
        reduction: int = 8,
        side_layers: Sequence[int] | None = None,
        mixing: str = "pre",
        gate: str = "learnable",
        temperature: float = ladder.TEMPERATURE,
        config: BertConfig | None = None,
        rngs: nnx.Rngs,
    ):
        config = config if config is not None else backbone.config
        L = config.num_layers
        side_layers = tuple(range(L)) if side_layers is None else tuple(side_layers)
        if (
            not side_layers
            or list(side_layers) != sorted(set(side_layers))
            or not all(0 <= i < L for i in side_layers)
        ):
            raise ValueError(
                f"side_layers={side_layers!r}; must be increasing, unique, "
                f"in 0..{L - 1}."
            )
        if mixing not in ladder.MIXING_MODES:
            raise ValueError(f"mixing={mixing!r}; allowed: {ladder.MIXING_MODES}.")
        if gate not in ladder.GATE_MODES:
            raise ValueError(f"gate={gate!r}; allowed: {ladder.GATE_MODES}.")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}; must be > 0.")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}; must be ≥ 2.")
        scfg = side_config(config, reduction, len(side_layers))
        d, ds = config.hidden_size, scfg.hidden_size
        dense = {"rngs": rngs, "param_type": PeftParam}
        self.backbone = backbone
        self.config = config
        self.side = scfg
        self.reduction = reduction
        self.side_layers = side_layers
        self.mixing = mixing
        self.gate_mode = gate
        self.temperature = temperature
        self.down0 = Dense(d, ds, **dense)
        self.downs = nnx.List([Dense(d, ds, **dense) for _ in side_layers])
        self.blocks = nnx.List(
            [BertLayer(scfg, rngs=rngs, param_type=PeftParam) for _ in side_layers]
        )
        self.gate_logits = PeftParam(jnp.zeros((len(side_layers),), jnp.float32))
        self.up = Dense(ds, d, **dense)
        self.head = Dense(d, num_classes, **dense)

    def gates(self) -> jax.Array:
        """μ_i = σ(α_i / T), one per side layer (0.5 at init)."""
        return ladder.gate(self.gate_logits[...], self.temperature)

    def taps(self, input_ids: jax.Array, attention_mask: jax.Array) -> tuple:
        """The backbone states the ladders read, under ``stop_gradient``.

        Returns ``(h^B_0, h^B_{i+1} for i in side_layers)``; cacheable, since
        the backbone is frozen.
        """
        hidden = self.backbone(input_ids, attention_mask)
        wanted = (hidden[0], *(hidden[i + 1] for i in self.side_layers))
        return jax.lax.stop_gradient(wanted)

    def side_forward(
        self, taps: Sequence[jax.Array], attention_mask: jax.Array
    ) -> jax.Array:
        """Logits from precomputed :meth:`taps` (the side network alone)."""
        if len(taps) != len(self.side_layers) + 1:
            raise ValueError(
                f"got {len(taps)} taps; need {len(self.side_layers) + 1} "
                "(embeddings + one per side layer)."
            )
        taps = [jax.lax.stop_gradient(t).astype(jnp.float32) for t in taps]
        chex.assert_equal_shape(taps)
        mu = self.gates()
        h = self.down0(taps[0])
        for k, (down, block) in enumerate(zip(self.downs, self.blocks, strict=True)):
            tap = down(taps[k + 1])
            if self.mixing == "pre":
                h = block(
                    ladder.ladder_mix(h, tap, mu[k], mode=self.gate_mode),
                    attention_mask,
                )
            else:
                h = ladder.ladder_mix(
                    block(h, attention_mask), tap, mu[k], mode=self.gate_mode
                )
        return self.head(mean_pool(self.up(h), attention_mask))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Class logits ``[B, num_classes]``."""
        return self.side_forward(self.taps(input_ids, attention_mask), attention_mask)


def init_side_from_backbone(model: LadderSideNetwork, importance: dict) -> dict:
    """Initialize the side blocks by Fisher-guided structured pruning (in place).

    Side block k gets backbone block ``side_layers[k]`` pruned by
    :func:`jaxlab.ladder.structured_prune` to the side widths (1/r of hidden,
    per-head and FFN dimensions). The hidden score also counts the embedding
    tables' and embedding LayerNorm's importance. Ladders D_i, D_0, U and the
    head keep their random init (as in the official code).

    Args:
        model: the side network (its backbone a ``BertEncoder``).
        importance: Fisher importance of ``model.backbone`` as a pure dict
            (see :func:`backbone_fisher`).

    Returns:
        The kept indices (``hidden``, ``heads``, ``ffn``).
    """
    params = nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param))
    emb = importance["embeddings"]
    extra = [
        jnp.sum(emb["word"], axis=0),
        jnp.sum(emb["position"], axis=0),
        jnp.sum(emb["token_type"], axis=0),
        emb["norm"]["scale"],
        emb["norm"]["bias"],
    ]
    blocks = [_block_params(params["layers"][i]) for i in model.side_layers]
    imps = [_block_params(importance["layers"][i]) for i in model.side_layers]
    pruned, indices = ladder.structured_prune(
        blocks,
        imps,
        reduction=model.reduction,
        num_heads=model.config.num_heads,
        extra_hidden_importance=extra,
    )
    for block, new in zip(model.blocks, pruned, strict=True):
        state = nnx.state(block, nnx.Param)
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, new))
        nnx.update(block, state)
    return indices


def backbone_fisher(
    classifier: SequenceClassifier,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    labels: jax.Array,
) -> dict:
    r"""Fisher importance of the backbone for the classifier's cross-entropy.

    F(θ) = Σ_n (∂ CE(f_θ(x_n), y_n)/∂θ)² over the N given examples at batch
    size 1 (:func:`jaxlab.ladder.fisher_importance`); the head is held fixed.

    Args:
        classifier: backbone + head (e.g. the trained linear probe).
        input_ids, attention_mask: ``[N, L]``.
        labels: int ``[N]``.

    Returns:
        A pure dict shaped like the backbone's parameters.
    """
    chex.assert_rank([input_ids, attention_mask], 2)
    chex.assert_shape(labels, input_ids.shape[:1])
    graphdef, params, rest = nnx.split(classifier.backbone, nnx.Param, ...)
    head = classifier.head

    def loss(p, example):
        ids, mask, y = example
        hidden = nnx.merge(graphdef, p, rest)(ids, mask)
        logits = head(mean_pool(hidden[-1], mask))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    fisher = jax.jit(ladder.fisher_importance, static_argnums=0)(
        loss, params, (input_ids, attention_mask, labels)
    )
    return nnx.to_pure_dict(fisher)


def side_tune(
    key: jax.Array,
    model: LadderSideNetwork,
    optimizer: optax.GradientTransformation,
    loss_fn,
    batch_fn,
    *,
    num_steps: int,
    **fit_kwargs,
):
    """Train only the side network of ``model`` with :func:`jaxlab.train.fit`.

    The optimizer state covers :class:`PeftParam` variables alone; the backbone
    is carried as frozen state and never differentiated.

    Returns:
        ``jaxlab.train.FitResult``.
    """
    if not isinstance(model, LadderSideNetwork):
        raise ValueError(  # noqa: TRY004 -- house style: bad argument values
            f"model is a {type(model).__name__}; need a LadderSideNetwork."
        )
    from jaxlab import train

    return train.fit(
        key,
        model,
        optimizer,
        loss_fn,
        batch_fn,
        num_steps=num_steps,
        trainable=trainable_filter("lst"),
        **fit_kwargs,
    )


def make_model(
    method: str,
    backbone: BertEncoder,
    *,
    num_classes: int,
    rngs: nnx.Rngs,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] = ("query", "value"),
    adapter_bottleneck: int = 32,
    reduction: int = 8,
    side_layers: Sequence[int] | None = None,
    mixing: str = "pre",
    gate: str = "learnable",
) -> nnx.Module:
    """Build the model of one fine-tuning ``method`` around ``backbone``.

    ``adapter`` and ``lora`` modify ``backbone`` in place, so pass a fresh copy
    per model. Train it with ``trainable=trainable_filter(method)``; ``lst``
    returns a :class:`LadderSideNetwork` with a random side network (call
    :func:`init_side_from_backbone` for the pruning init).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; allowed: {METHODS}.")
    if method == "lst":
        return LadderSideNetwork(
            backbone,
            num_classes=num_classes,
            reduction=reduction,
            side_layers=side_layers,
            mixing=mixing,
            gate=gate,
            rngs=rngs,
        )
    if method == "adapter":
        add_adapters(backbone, bottleneck=adapter_bottleneck, rngs=rngs)
    elif method == "lora":
        add_lora(
            backbone, rank=lora_rank, alpha=lora_alpha, targets=lora_targets, rngs=rngs
        )
    return SequenceClassifier(
        backbone,
        hidden_size=backbone.config.hidden_size,
        num_classes=num_classes,
        rngs=rngs,
    )


def classification_loss(model: nnx.Module, batch: dict, key: jax.Array | None = None):
    """Mean cross-entropy and accuracy, the ``loss_fn`` of :func:`jaxlab.train.fit`.

    ``batch`` holds ``label`` ``[B]`` and the inputs of :func:`predict`.

    Returns:
        ``(loss, {"acc": accuracy})``.
    """
    del key  # deterministic models (no dropout)
    logits = predict(model, batch)
    labels = batch["label"]
    chex.assert_shape(labels, logits.shape[:1])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return loss, {"acc": acc}


def predict(model: nnx.Module, batch: dict) -> jax.Array:
    """Logits ``[B, C]`` from whichever inputs ``batch`` carries.

    * ``features`` ``[B, D]`` (cached pooled embeddings): ``model.head`` only
      (the linear probe on a frozen encoder);
    * ``taps`` (cached backbone states) + ``attention_mask``: the side network
      of a :class:`LadderSideNetwork`;
    * ``input_ids`` + ``attention_mask``: the full model.
    """
    if "features" in batch:
        return model.head(batch["features"])
    mask = batch["attention_mask"]
    if "taps" in batch:
        return model.side_forward(batch["taps"], mask)
    return model(batch["input_ids"], mask)


@nnx.jit
def _predict_jit(model, batch):
    return predict(model, batch)


@nnx.jit
def _taps_jit(model, ids, mask):
    hidden = model.backbone(ids, mask)
    taps = (hidden[0], *(hidden[i + 1] for i in model.side_layers))
    return tuple(t.astype(jnp.float16) for t in taps), mean_pool(hidden[-1], mask)


def batched(fn, data: dict, *, batch_size: int):
    """Apply ``fn(batch) -> pytree`` over ``data`` in fixed-size batches.

    The last batch is padded by repeating row 0, so every call has the same
    shape (one compilation); results are concatenated as NumPy arrays.
    """
    n = len(next(iter(jax.tree.leaves(data))))
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; must be ≥ 1.")
    outs = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        idx = np.where(idx < n, idx, 0)
        out = fn(jax.tree.map(lambda a, i=idx: jnp.asarray(a[i]), data))
        keep = min(batch_size, n - start)
        outs.append(jax.tree.map(lambda a, k=keep: np.asarray(a)[:k], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def accuracy(model: nnx.Module, data: dict, *, batch_size: int = 64) -> float:
    """Accuracy on ``data`` (the inputs of :func:`predict` plus ``label``)."""
    inputs = {k: v for k, v in data.items() if k != "label"}
    logits = batched(lambda b: _predict_jit(model, b), inputs, batch_size=batch_size)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(data["label"])))


def cache_taps(
    model: LadderSideNetwork,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    *,
    batch_size: int = 64,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Run the frozen backbone once: the ladder taps and pooled final states.

    Because the backbone is frozen, its hidden states are a fixed function of
    the input; caching them lets the side network (and a linear probe) train
    for many epochs at the cost of one forward pass (same gradients as running
    the backbone in every step).

    Returns:
        ``(taps, pooled)``: ``taps`` as in :meth:`LadderSideNetwork.taps`
        (float16, ``[N, L, D]`` each) and ``pooled`` ``[N, D]`` float32, the
        mean-pooled last backbone layer (linear-probe features).
    """
    chex.assert_equal_shape([input_ids, attention_mask])
    data = {"ids": input_ids, "mask": attention_mask}
    return batched(
        lambda b: _taps_jit(model, b["ids"], b["mask"]), data, batch_size=batch_size
    )


def _block_params(tree) -> dict:
    """A BertLayer pure dict without the adapter slots."""
    return {k: v for k, v in tree.items() if k not in ("attn_adapter", "ffn_adapter")}
