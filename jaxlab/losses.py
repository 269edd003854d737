r"""Multi-label "Softmax + cross-entropy" loss family (``reference/losses.md``).

Pure functions of logits ``s`` (no sigmoid or softmax applied) and labels:

* :func:`multilabel_crossentropy` -- the threshold-0 loss (ZLPR,
  arXiv 2208.02955; J. Su, kexue.fm/archives/7359) and its general Circle-loss
  form with a threshold logit, scale and margin (Sun et al., CVPR 2020, eq. 1).
* :func:`sparse_multilabel_crossentropy` -- the same loss from positive class
  indices (kexue.fm/archives/8888), NaN-free when the model is confident.
* :func:`soft_multilabel_crossentropy`, :func:`multilabel_probs`,
  :func:`multilabel_predict` -- the soft-label version (kexue.fm/archives/9064),
  whose optimum is ``t = sigmoid(2 s)``, and the threshold decision rule.
* :func:`nxm_crossentropy` -- the n-way m-class losses L1 ("analog") and L3
  ("centered") of kexue.fm/archives/9158.
* :func:`topk_subset_crossentropy` -- the combinatorial "choose k of n" softmax
  of kexue.fm/archives/7359, evaluated in log space.

Conventions shared by every loss:

* The class axis is the last axis; losses reduce it only (``[..., C] -> [...]``,
  and ``[..., n, m] -> [...]`` for the n x m losses, whose definition couples the
  n rows) and callers reduce the rest.
* Everything is evaluated in log space in at least float32: float16/bfloat16
  logits are upcast, float64 stays float64, and the loss is returned in that
  compute dtype (its gradient comes back in the logits' dtype). Excluded
  entries are replaced (never offset) by half the most negative finite value of
  the compute dtype, so there is no hard-coded ``1e12`` and masking is exact: a
  masked class changes neither the loss nor any gradient, and its own gradient
  is exactly zero. Losses stay finite for ``|logits|`` up to ``1e4``;
  logits already set to ``-inf`` or the dtype's minimum by the caller are fine.
* Label checks: when ``labels``/``targets``/``label_ids`` are concrete arrays
  (eager calls, or closed over / static under a transformation) invalid values
  raise ``ValueError``. Under ``jax.jit``/``vmap`` they are tracers whose values
  cannot be inspected; there, every example whose labels are invalid gets a NaN
  loss instead of a silently wrong number.
* Hyper-parameters (``scale``, ``margin``, ``eps``, ``variant``, ``k``) are
  static Python values checked before tracing.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Shaped

NXM_VARIANTS = ("analog", "centered")
NXM_ROW_SUM_ATOL = 1e-3  # tolerance on sum_j t_ij = 1 for the n x m losses
# Up to this many label ids the sparse loss finds its largest negative score by
# fused comparisons (O(C K), no temporaries); beyond it by lax.top_k.
SPARSE_FUSED_MAX_IDS = 64

# ---------------------------------------------------------------------------
# Dense, sparse and soft multi-label losses
# ---------------------------------------------------------------------------


def multilabel_crossentropy(
    logits: Float[ArrayLike, "*batch C"],
    labels: Shaped[ArrayLike, "*batch C"],
    *,
    mask: Shaped[ArrayLike, "..."] | None = None,
    threshold: float | Float[ArrayLike, "..."] = 0.0,
    scale: float = 1.0,
    margin: float = 0.0,
) -> Float[Array, "*batch"]:
    r"""Multi-label softmax cross-entropy (ZLPR loss), dense 0/1 labels.

    With the defaults (threshold 0, scale 1, margin 0) this is section 5 of the
    reference (Su 2020, kexue.fm/archives/7359; ZLPR, arXiv 2208.02955):

    .. math::
        L = \log\Big(1 + \sum_{i \in \Omega_{neg}} e^{s_i}\Big)
          + \log\Big(1 + \sum_{j \in \Omega_{pos}} e^{-s_j}\Big),

    and class ``c`` is predicted iff ``s_c > 0`` (:func:`multilabel_predict`).

    General form (threshold logit :math:`s_0`, scale :math:`\gamma`, margin
    :math:`m`; Circle loss, Sun et al. 2020, eq. 1, with the threshold class of
    reference section 4):

    .. math::
        L = \log\Big(1 + \sum_{neg} e^{\gamma(s_i - s_0 + m/2)}\Big)
          + \log\Big(1 + \sum_{pos} e^{\gamma(s_0 - s_j + m/2)}\Big).

    Expanding the product inside the logs gives
    :math:`\log(1 + \sum_{neg,pos} e^{\gamma(s_i - s_j + m)} + \sum_{neg}
    e^{\gamma(s_i - s_0 + m/2)} + \sum_{pos} e^{\gamma(s_0 - s_j + m/2)})`:
    every negative/positive pair carries Circle loss's margin ``m`` and the
    threshold sits in the middle of the margin band, so the decision rule stays
    ``s_c > s_0``. With :math:`\gamma = 1, m = 0` it is the two-logsumexp form
    of reference section 4.

    Args:
        logits: scores ``s``, shape ``[..., C]`` with any leading shape (e.g.
            ``[B, heads, L*L]`` for span scoring).
        labels: hard labels in {0, 1} (bool, int or float), shape ``[..., C]``.
        mask: optional boolean array broadcastable to ``logits``; ``False``
            excludes a class exactly (it changes neither loss nor gradient).
        threshold: threshold logit :math:`s_0`, a scalar or an array of shape
            ``logits.shape[:-1]`` (it may be learned; it receives a gradient).
        scale: :math:`\gamma > 0`.
        margin: :math:`m \ge 0`.

    Returns:
        The loss per example, shape ``logits.shape[:-1]``, in float32 (float64
        for float64 logits).

    Raises:
        ValueError: for bad ``scale``/``margin``/shapes, or (when concrete)
            ``labels`` outside {0, 1}.

    References:
        J. Su, kexue.fm/archives/7359 (2020); ZLPR, arXiv 2208.02955;
        Sun et al., "Circle Loss", CVPR 2020, eq. 1.
    """
    scale, margin = _check_circle_hparams(scale, margin)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_class_axis("logits", logits)
    chex.assert_equal_shape([logits, labels])
    keep = _broadcast_mask(mask, logits.shape)
    _raise_if_not_binary("labels", labels)

    s = logits.astype(_compute_dtype(logits))
    z = scale * (s - _row_threshold(threshold, s))
    half_margin = 0.5 * scale * margin
    pos = labels != 0
    neg_term = _log1p_sum_exp(z + half_margin, _and(~pos, keep))
    pos_term = _log1p_sum_exp(half_margin - z, _and(pos, keep))
    return _nan_where(_nonbinary_rows(labels), neg_term + pos_term)


def sparse_multilabel_crossentropy(
    logits: Float[ArrayLike, "*batch C"],
    label_ids: Int[ArrayLike, "*batch K"],
    *,
    mask: Shaped[ArrayLike, "..."] | None = None,
    threshold: float | Float[ArrayLike, "..."] = 0.0,
    scale: float = 1.0,
    margin: float = 0.0,
) -> Float[Array, "*batch"]:
    r""":func:`multilabel_crossentropy` from positive class indices.

    For very many classes with few positives (GlobalPointer's ``L*L`` span grid,
    kexue.fm/archives/8888) no dense label array is built. The positive term
    uses the gathered scores; the negative term uses (reference section 6)

    .. math::
        \log\Big(1 + \sum_{neg} e^{a_i}\Big)
        = \log\Big(1 + \sum_{all} e^{a_i} - \sum_{pos} e^{a_j}\Big),
        \qquad a = \gamma(s - s_0 + m/2).

    The usual evaluation ``all + log(1 - exp(aux - all))`` cancels
    catastrophically once the positives dominate the sum (NaN in bert4keras
    #436; bert4torch clamps it with an epsilon, questioned in its #95). Here
    both sums are taken relative to :math:`\tau = \max(0, \max_{neg} a_i)`
    (found by fused comparisons with the ``K`` ids, or for
    ``K > SPARSE_FUSED_MAX_IDS`` among the top ``K + 1`` scores) and every term
    is capped at :math:`\tau`. Negatives are never capped, each positive then
    contributes exactly the same capped term to both sums, and the difference is
    :math:`\ge 1` whenever :math:`\tau > 0`, so at most ``K + 1`` units of
    rounding error are amplified: the value and gradient stay accurate (not
    just finite) for confident models and ``|logits|`` up to ``1e4``.

    Args:
        logits: scores, shape ``[..., C]``.
        label_ids: integer indices of the positive classes, shape ``[..., K]``,
            padded with ``-1``. Repeated indices count once (set semantics).
        mask: optional boolean array broadcastable to ``logits``; masked classes
            are excluded exactly, also when listed in ``label_ids``.
        threshold: as in :func:`multilabel_crossentropy`.
        scale: as in :func:`multilabel_crossentropy`.
        margin: as in :func:`multilabel_crossentropy`.

    Returns:
        The loss per example, shape ``logits.shape[:-1]``, equal to the dense
        loss with the corresponding 0/1 labels.

    Raises:
        ValueError: for bad hyper-parameters/shapes, or (when concrete) indices
            ``>= C`` or ``< -1``.

    References:
        J. Su, kexue.fm/archives/8888; bert4keras issue #436.
    """
    scale, margin = _check_circle_hparams(scale, margin)
    logits, label_ids = jnp.asarray(logits), jnp.asarray(label_ids)
    _check_class_axis("logits", logits)
    chex.assert_rank(label_ids, logits.ndim)
    chex.assert_equal_shape_prefix([logits, label_ids], logits.ndim - 1)
    chex.assert_type(label_ids, int)
    num_classes, num_ids = logits.shape[-1], label_ids.shape[-1]
    keep = _broadcast_mask(mask, logits.shape)
    if _is_concrete(label_ids):
        ids_np = np.asarray(label_ids)
        bad_np = (ids_np < -1) | (ids_np >= num_classes)
        if np.any(bad_np):
            raise ValueError(
                f"label_ids must be class indices in [0, {num_classes}) or -1 for "
                f"padding; got {int(ids_np[bad_np].flat[0])}."
            )
    bad_ids = (label_ids < -1) | (label_ids >= num_classes)

    s = logits.astype(_compute_dtype(logits))
    half_margin = 0.5 * scale * margin
    # a: exponents of the negative term; -a + 2*half_margin: of the positive term.
    a = scale * (s - _row_threshold(threshold, s)) + half_margin
    neg = _neg(a.dtype)
    if keep is not None:
        a = jnp.where(keep, a, neg)

    safe_ids = jnp.where(label_ids >= 0, label_ids, 0) % num_classes
    same = label_ids[..., :, None] == label_ids[..., None, :]
    earlier = lax.broadcasted_iota(jnp.int32, same.shape, same.ndim - 1) < (
        lax.broadcasted_iota(jnp.int32, same.shape, same.ndim - 2)
    )
    repeated = jnp.any(same & earlier, axis=-1)
    valid = (label_ids >= 0) & ~bad_ids & ~repeated
    if keep is not None:
        valid &= jnp.take_along_axis(keep, safe_ids, axis=-1)
    a_pos = jnp.take_along_axis(a, safe_ids, axis=-1)
    pos_term = _log1p_sum_exp(2.0 * half_margin - a_pos, valid)

    # tau = max(0, largest negative exponent). With few ids a chain of K
    # comparisons fused into one max-reduction finds it without any [..., C]
    # temporary; with many, it is among the top K + 1 exponents (at most K of
    # them are positives).
    listed = jnp.where(valid, label_ids, -1)
    a_sg = lax.stop_gradient(a)
    if num_ids <= SPARSE_FUSED_MAX_IDS:
        cls = lax.broadcasted_iota(label_ids.dtype, a.shape, a.ndim - 1)
        is_pos = cls < 0
        for i in range(num_ids):
            is_pos = is_pos | (cls == listed[..., i : i + 1])
        max_neg = jnp.max(jnp.where(is_pos, neg, a_sg), axis=-1)
    else:
        top_a, top_ids = lax.top_k(a_sg, min(num_ids + 1, num_classes))
        top_is_pos = jnp.any(top_ids[..., :, None] == listed[..., None, :], axis=-1)
        max_neg = jnp.max(jnp.where(top_is_pos, neg, top_a), axis=-1)
    tau = lax.stop_gradient(jnp.maximum(max_neg, 0.0))[..., None]
    sum_all = jnp.sum(jnp.exp(_cap(a, tau) - tau), axis=-1)
    sum_pos = jnp.sum(jnp.where(valid, jnp.exp(_cap(a_pos, tau) - tau), 0.0), -1)
    sum_neg = jnp.maximum(sum_all - sum_pos, 0.0)
    tau = tau[..., 0]
    neg_term = tau + jnp.log1p(jnp.expm1(-tau) + sum_neg)
    return _nan_where(jnp.any(bad_ids, axis=-1), neg_term + pos_term)


def soft_multilabel_crossentropy(
    logits: Float[ArrayLike, "*batch C"],
    targets: Float[ArrayLike, "*batch C"],
    *,
    eps: float = 1e-7,
    mask: Shaped[ArrayLike, "..."] | None = None,
) -> Float[Array, "*batch"]:
    r"""Soft-label multi-label cross-entropy (Su 2022, kexue.fm/archives/9064).

    First-order truncation of soft-label BCE (reference section 8):

    .. math::
        L = \log\Big(1 + \sum_i t_i e^{-s_i}\Big)
          + \log\Big(1 + \sum_i (1 - t_i) e^{s_i}\Big),

    evaluated as ``log(1 + sum exp(-s + log t)) + log(1 + sum exp(s +
    log(1 - t)))``. Its gradient vanishes iff ``t_i = sigmoid(2 s_i)`` (read
    probabilities with :func:`multilabel_probs`), and hard labels ``t = y``
    recover :func:`multilabel_crossentropy` exactly.

    Numerics (reference section 11): the ``t e^{-s}`` term of a class is dropped
    where ``t < eps`` and its ``(1 - t) e^{s}`` term where ``1 - t < eps``, so
    ``log 0`` never occurs and very negative (masked) logits with near-zero
    targets cannot leak through ``log eps``. Unlike a plain clip, targets inside
    ``[eps, 1 - eps]`` and the values 0 and 1 are used exactly.

    Args:
        logits: scores, shape ``[..., C]``.
        targets: soft labels in ``[0, 1]``, shape ``[..., C]``.
        eps: drop threshold, ``0 < eps < 0.5``.
        mask: optional boolean array broadcastable to ``logits``; ``False``
            excludes a class exactly.

    Returns:
        The loss per example, shape ``logits.shape[:-1]``.

    Raises:
        ValueError: for bad ``eps``/shapes, or (when concrete) targets outside
            ``[0, 1]``.

    References:
        J. Su, kexue.fm/archives/9064 (2022), reference section 8.
    """
    eps = _check_eps(eps)
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    _check_class_axis("logits", logits)
    chex.assert_equal_shape([logits, targets])
    keep = _broadcast_mask(mask, logits.shape)
    _raise_if_not_unit_interval("targets", targets)

    dtype = _compute_dtype(logits)
    s, t = logits.astype(dtype), targets.astype(dtype)
    use_pos = t >= eps
    use_neg = (1.0 - t) >= eps
    # Safe dummies in the unused branches keep log/log1p (and their gradients)
    # finite.
    log_t = jnp.log(jnp.where(use_pos, t, 1.0))
    log_1mt = jnp.log1p(-jnp.where(use_neg, t, 0.0))
    pos_term = _log1p_sum_exp(log_t - s, _and(use_pos, keep))
    neg_term = _log1p_sum_exp(s + log_1mt, _and(use_neg, keep))
    return _nan_where(_not_unit_interval_rows(targets), pos_term + neg_term)


def multilabel_probs(logits: Float[ArrayLike, "*batch C"]) -> Float[Array, "*batch C"]:
    r"""Class probabilities ``sigmoid(2 s)`` implied by the multi-label CE.

    The soft-label loss is stationary at :math:`t_i = \sigma(2 s_i)` (reference
    section 8), so these, not :math:`\sigma(s)`, are calibrated probabilities
    of a model trained with :func:`soft_multilabel_crossentropy` (or the hard
    loss). ``multilabel_probs(s) > 0.5`` iff ``s > 0``.

    Args:
        logits: scores, shape ``[..., C]``.

    Returns:
        Probabilities of the same shape and floating dtype as ``logits``.

    References:
        J. Su, kexue.fm/archives/9064 (2022).
    """
    logits = jnp.asarray(logits)
    _check_class_axis("logits", logits)
    return jax.nn.sigmoid(2 * logits)


def multilabel_predict(
    logits: Float[ArrayLike, "*batch C"],
    threshold: float | Float[ArrayLike, "..."] = 0.0,
) -> Bool[Array, "*batch C"]:
    r"""Threshold decision rule: class ``c`` is predicted iff ``s_c > s_0``.

    With the default ``s_0 = 0`` this is the threshold-free rule of the
    multi-label CE (reference section 5): no sigmoid, no tuned 0.5 cut-off.
    Pass the ``threshold`` used in :func:`multilabel_crossentropy` for the
    general form.

    Args:
        logits: scores, shape ``[..., C]``.
        threshold: threshold logit, a scalar or an array of shape
            ``logits.shape[:-1]``.

    Returns:
        Boolean predicted label sets, shape ``[..., C]``.

    References:
        J. Su, kexue.fm/archives/7359 (2020).
    """
    logits = jnp.asarray(logits)
    _check_class_axis("logits", logits)
    return logits > _row_threshold(threshold, logits)


# ---------------------------------------------------------------------------
# n-way m-class and combinatorial losses
# ---------------------------------------------------------------------------


def nxm_crossentropy(
    logits: Float[ArrayLike, "*batch n m"],
    targets: Float[ArrayLike, "*batch n m"],
    *,
    variant: str = "analog",
) -> Float[Array, "*batch"]:
    r"""n-way m-class losses L1 ("analog") and L3 ("centered") (kexue.fm 9158).

    Scores ``s_ij`` and soft labels ``t_ij`` (rows sum to 1) for ``n`` samples
    or slots ``i`` and ``m`` classes ``j``. The class-balancing sum over
    samples sits inside the log, so the loss couples the ``n`` rows.

    ``variant="analog"`` (L1, first-order truncation of summed softmax CE):

    .. math::
        L_1 = \sum_j \log\Big(1 + \sum_i \sum_{k \ne j}
              t_{ij} e^{-s_{ij} + s_{ik}}\Big).

    Good for hard labels; ``softmax(s) = t`` is not stationary and its
    soft-label optimum has no closed form.

    ``variant="centered"`` (L3, reverse-engineered so that
    ``t = softmax(s)`` is stationary), with :math:`\bar s_i = \frac1m\sum_j
    s_{ij}`:

    .. math::
        L_3 = \sum_j \log\Big(1 + \sum_i t_{ij} e^{-s_{ij} + \bar s_i}\Big).

    L3 is consistent in theory but poor in practice: it vanishes as soon as
    ``s_ij`` is far above the row mean, whether or not the target is the row
    maximum, and it gets worse as labels become hard (reference section 9).
    For ``m = 2`` they reduce to :func:`soft_multilabel_crossentropy` over the
    ``n`` axis with ``s = s_i1 - s_i2`` (L1) and ``s = (s_i1 - s_i2) / 2`` (L3).

    ``log sum_{k != j} exp(s_ik)`` is computed without cancellation (relative
    to the largest other score), so L1 stays finite and accurate for
    ``|logits|`` up to ``1e4``.

    Args:
        logits: scores, shape ``[..., n, m]`` with ``m >= 2``.
        targets: soft labels in ``[0, 1]`` whose rows (last axis) sum to 1
            (within ``NXM_ROW_SUM_ATOL``), shape ``[..., n, m]``.
        variant: ``"analog"`` (L1) or ``"centered"`` (L3).

    Returns:
        The loss per group of ``n`` rows, shape ``logits.shape[:-2]``
        (batch-coupled over ``n`` by definition).

    Raises:
        ValueError: for an unknown ``variant``, bad shapes, or (when concrete)
            targets outside ``[0, 1]`` or rows not summing to 1.

    References:
        J. Su, "n个m分类", kexue.fm/archives/9158 (2022), reference section 9.
    """
    if variant not in NXM_VARIANTS:
        raise ValueError(f"variant must be one of {NXM_VARIANTS}; got {variant!r}.")
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    if logits.ndim < 2 or logits.shape[-1] < 2:
        raise ValueError(
            "logits must have shape [..., n, m] with m >= 2; got shape "
            f"{logits.shape}."
        )
    chex.assert_equal_shape([logits, targets])
    _raise_if_not_unit_interval("targets", targets)
    if _is_concrete(targets):
        row_sums = np.asarray(targets, np.float64).sum(-1)
        if np.any(np.abs(row_sums - 1.0) > NXM_ROW_SUM_ATOL):
            worst = row_sums.flat[np.argmax(np.abs(row_sums - 1.0))]
            raise ValueError(
                "targets rows (last axis) must sum to 1 within "
                f"{NXM_ROW_SUM_ATOL}; got a row summing to {worst:.6g}."
            )

    dtype = _compute_dtype(logits)
    s, t = logits.astype(dtype), targets.astype(dtype)
    used = t > 0
    log_t = jnp.log(jnp.where(used, t, 1.0))
    if variant == "analog":
        exponent = log_t - s + _logsumexp_others(s)
    else:
        exponent = log_t - s + jnp.mean(s, axis=-1, keepdims=True)
    loss = jnp.sum(_log1p_sum_exp(exponent, used, axis=-2), axis=-1)
    bad_rows = _not_unit_interval_rows(targets) | (
        jnp.abs(jnp.sum(t, axis=-1) - 1.0) > NXM_ROW_SUM_ATOL
    )
    return _nan_where(jnp.any(bad_rows, axis=-1), loss)


def topk_subset_crossentropy(
    logits: Float[ArrayLike, "*batch C"],
    labels: Shaped[ArrayLike, "*batch C"],
    k: int,
) -> Float[Array, "*batch"]:
    r"""Combinatorial "choose k of C" softmax cross-entropy (Su 2020, 7359).

    The softmax over all ``C choose k`` label subsets (reference section 3):

    .. math::
        L = \log Z_k - \sum_{c \in \Omega_{pos}} s_c, \qquad
        Z_k = \sum_{i_1 < \dots < i_k} e^{s_{i_1} + \dots + s_{i_k}}
            = e_k(e^{s_1}, \dots, e^{s_C}),

    the k-th elementary symmetric polynomial of :math:`e^{s}`. The post
    evaluates :math:`Z_k` with Newton's identities
    :math:`k Z_k = \sum_{p=1}^k (-1)^{p-1} Z_{k-p} S_p`, whose alternating signs
    cancel catastrophically. Here :math:`\log Z_k` comes from the all-positive
    recursion :math:`e_j(x_{1..c}) = e_j(x_{1..c-1}) + x_c\, e_{j-1}(x_{1..c-1})`
    as a ``lax.scan`` of ``logaddexp`` over the classes (``O(C k)`` work), so
    it stays finite and accurate for ``|logits|`` up to ``1e4``. Predict the
    top-``k`` scores.

    Args:
        logits: scores, shape ``[..., C]``.
        labels: 0/1 labels with exactly ``k`` ones per example, shape
            ``[..., C]``.
        k: subset size, a Python int with ``1 <= k <= C``.

    Returns:
        The loss per example (``>= 0``), shape ``logits.shape[:-1]``.

    Raises:
        ValueError: for bad ``k``/shapes, or (when concrete) labels outside
            {0, 1} or rows without exactly ``k`` ones.

    References:
        J. Su, kexue.fm/archives/7359 (2020), reference section 3.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_class_axis("logits", logits)
    num_classes = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a Python int in [1, {num_classes}]; got {k!r}.")
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}] (C); got {k}.")
    k = int(k)
    chex.assert_equal_shape([logits, labels])
    _raise_if_not_binary("labels", labels)
    if _is_concrete(labels):
        counts = np.sum(np.asarray(labels) != 0, axis=-1)
        if np.any(counts != k):
            raise ValueError(
                f"labels must have exactly k={k} ones per example; found a row "
                f"with {int(counts.flat[np.argmax(counts != k)])}."
            )

    s = logits.astype(_compute_dtype(logits))
    pos = labels != 0
    log_zk = _log_elementary_symmetric(s, k)
    loss = log_zk - jnp.sum(jnp.where(pos, s, 0.0), axis=-1)
    bad = _nonbinary_rows(labels) | (jnp.sum(pos, axis=-1) != k)
    return _nan_where(bad, loss)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _compute_dtype(x: Array) -> jnp.dtype:
    """At least float32: float16/bfloat16 are upcast, float64 is kept."""
    return jnp.result_type(x.dtype, jnp.float32)


def _neg(dtype: jnp.dtype) -> Array:
    """Dtype-aware stand-in for -inf: half the most negative finite value."""
    return jnp.asarray(jnp.finfo(dtype).min / 2, dtype)


def _log1p_sum_exp(x: Array, where: Array | None = None, axis: int = -1) -> Array:
    """Stable log(1 + sum(exp(x))) over ``axis``; entries with where=False drop."""
    if where is not None:
        x = jnp.where(where, x, _neg(x.dtype))
    # max(0, max x); initial=0 also covers an empty axis.
    shift = lax.stop_gradient(jnp.max(x, axis, keepdims=True, initial=0.0))
    total = jnp.sum(jnp.exp(x - shift), axis)
    shift = jnp.squeeze(shift, axis)
    # log(1 + sum e^x) = shift + log(e^-shift + sum e^(x - shift)), via log1p so
    # that small losses keep full relative precision when shift = 0.
    return shift + jnp.log1p(jnp.expm1(-shift) + total)


def _logsumexp_others(x: Array) -> Array:
    """out[..., j] = log sum_{k != j} exp(x[..., k]), without cancellation."""
    top = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1) == jnp.argmax(
        x, axis=-1, keepdims=True
    )
    x_sg = lax.stop_gradient(x)
    m1 = jnp.max(x_sg, axis=-1, keepdims=True)
    m2 = jnp.max(jnp.where(top, _neg(x.dtype), x_sg), axis=-1, keepdims=True)
    # Not the argmax: subtract own term from the sum relative to the max (>= 1
    # remains: the argmax). The argmax: cap every score at the second largest
    # m2 so its own term is exactly 1 and >= 1 remains after removing it.
    e1 = jnp.exp(x - m1)
    e2 = jnp.exp(_cap(x, m2) - m2)
    rest = jnp.where(
        top,
        jnp.sum(e2, axis=-1, keepdims=True) - e2,
        jnp.sum(e1, axis=-1, keepdims=True) - e1,
    )
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.where(top, m2, m1) + jnp.log(jnp.maximum(rest, tiny))


def _log_elementary_symmetric(s: Array, k: int) -> Array:
    """log e_k(exp(s)) over the last axis by the all-positive recursion."""
    neg = _neg(s.dtype)
    # init[..., j] = log e_j(empty set): 0 for j = 0, -inf otherwise.
    init = jnp.where(jnp.arange(k + 1) == 0, 0.0, neg).astype(s.dtype)
    init = jnp.broadcast_to(init, s.shape[:-1] + (k + 1,))

    def step(log_e, s_c):
        shifted = jnp.concatenate(
            [jnp.full_like(log_e[..., :1], neg), log_e[..., :-1]], axis=-1
        )
        return jnp.logaddexp(log_e, shifted + s_c[..., None]), None

    log_e, _ = lax.scan(step, init, jnp.moveaxis(s, -1, 0))
    return log_e[..., k]


def _cap(x: Array, cap: Array) -> Array:
    """min(x, cap) whose gradient is 1 at ties (jnp.minimum would give 1/2)."""
    return jnp.where(x > cap, cap, x)


def _row_threshold(threshold: ArrayLike, s: Array) -> Array:
    """Threshold logit as ``[..., 1]`` in the dtype of ``s [..., C]``."""
    threshold = jnp.asarray(threshold)
    if threshold.ndim and threshold.shape != s.shape[:-1]:
        raise ValueError(
            "threshold must be a scalar or have shape logits.shape[:-1] = "
            f"{s.shape[:-1]}; got shape {threshold.shape}."
        )
    return jnp.broadcast_to(threshold, s.shape[:-1])[..., None].astype(s.dtype)


def _and(a: Array, b: Array | None) -> Array:
    return a if b is None else a & b


def _broadcast_mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> Array | None:
    """Boolean mask broadcast to ``shape`` (True = class participates)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    try:
        chex.assert_is_broadcastable(mask.shape, shape)
    except AssertionError as err:
        raise ValueError(
            f"mask of shape {mask.shape} must broadcast to logits shape {shape}."
        ) from err
    return jnp.broadcast_to(mask != 0, shape)


def _nan_where(bad: Array, loss: Array) -> Array:
    return jnp.where(bad, jnp.nan, loss)


def _nonbinary_rows(labels: Array) -> Array:
    if labels.dtype == jnp.bool_:
        return jnp.zeros(labels.shape[:-1], bool)
    return jnp.any((labels != 0) & (labels != 1), axis=-1)


def _not_unit_interval_rows(targets: Array) -> Array:
    return jnp.any(~((targets >= 0) & (targets <= 1)), axis=-1)


def _is_concrete(x: Array) -> bool:
    """False for tracers (inside jit/vmap/grad), whose values are unknown."""
    return not isinstance(x, jax.core.Tracer)


def _raise_if_not_binary(name: str, labels: Array) -> None:
    if not _is_concrete(labels) or labels.dtype == jnp.bool_:
        return
    values = np.asarray(labels)
    bad = ~((values == 0) | (values == 1))
    if np.any(bad):
        raise ValueError(
            f"{name} must contain only 0 and 1 (hard labels); got "
            f"{values[bad].flat[0]!r} at index {np.argwhere(bad)[0].tolist()}."
        )


def _raise_if_not_unit_interval(name: str, targets: Array) -> None:
    if not _is_concrete(targets):
        return
    values = np.asarray(targets)
    bad = ~((values >= 0) & (values <= 1))
    if np.any(bad):
        raise ValueError(
            f"{name} must lie in [0, 1]; got {values[bad].flat[0]!r} at index "
            f"{np.argwhere(bad)[0].tolist()}."
        )


def _check_class_axis(name: str, x: Array) -> None:
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(
            f"{name} must have a non-empty class axis [..., C]; got shape {x.shape}."
        )


def _check_circle_hparams(scale: float, margin: float) -> tuple[float, float]:
    if not _is_finite_number(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0; got {scale!r}.")
    if not _is_finite_number(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0; got {margin!r}.")
    return float(scale), float(margin)


def _check_eps(eps: float) -> float:
    if not _is_finite_number(eps) or not 0 < eps < 0.5:
        raise ValueError(f"eps must be a number with 0 < eps < 0.5; got {eps!r}.")
    return float(eps)


def _is_finite_number(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(x)
