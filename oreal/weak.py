"""Weak multi-class superpixel labels (Hwang et al. 2023; OREAL section 5 and Table 4; SPEC sections 3, 5, 6).

Instead of one dominant class, the annotator names every class present in a picked superpixel. A weak label
set is held as a ``(N, S, C)`` bool tensor ``weak``: ``weak[n, s, c]`` is ``True`` when class ``c`` was named
for superpixel ``s`` of image ``n``; a row of all ``False`` means "not labeled". ``Y_g`` below is the set of
classes named for the superpixel ``g = n * S + s``.

- :func:`weak_labels`: the weak oracle's answer from ground truth; :func:`clicks`: its cost, one click per
  class named; :func:`presence_counts`: OREAL's ``n_c`` under weak labels (presence counting).
- :func:`weak_loss`: the stage-1 losses (cross-entropy, Merged Positive, Prototypical Pixel) on
  ``q = softmax(logits / T)``, differentiable.
- :func:`prototype_pseudo_labels`: stage 2, a pseudo label map from prototypical pixels' features.

``docs/weak.md`` has the formulas, the normalisations and the choices marked **(ours)**.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from oreal._checks import (
    all_finite,
    check_bool_tensor,
    check_float,
    check_ignore_index,
    check_number,
    check_same_device,
    check_tensor,
    compute_dtype,
    validate_finite,
    validate_probabilities,
)
from oreal._proto import BLOCK_SIZE, blocks, check_features, check_fraction, grid, pixel_features
from oreal.aggregate import check_sp_map, count_rows, flat_index, scatter_rows, superpixel_label_counts

__all__ = ["WeakLoss", "weak_labels", "clicks", "presence_counts", "weak_loss", "prototype_pixels",
           "prototype_pseudo_labels"]


def _check_weak(weak: object, shape: tuple, like: Tensor, like_name: str) -> Tensor:
    check_bool_tensor(weak, "weak", shape)
    check_same_device(weak, "weak", like, like_name)
    return weak


def _check_labeled(weak: Tensor, labeled: Optional[Tensor]) -> Tensor:
    """``weak`` restricted to the rows of ``labeled (N, S)`` (all rows when ``labeled`` is None)."""
    check_tensor(weak, "weak")
    if weak.ndim != 3:
        raise ValueError(f"Expected argument `weak` to have shape (N, S, C), but got {tuple(weak.shape)}")
    check_bool_tensor(weak, "weak", tuple(weak.shape))
    if labeled is None:
        return weak
    check_bool_tensor(labeled, "labeled", tuple(weak.shape[:2]))
    check_same_device(labeled, "labeled", weak, "weak")
    return weak & labeled[..., None]


def weak_labels(labels: Tensor, sp_map: Tensor, num_superpixels: int, num_classes: int, *,
                ignore_index: int = 255, min_share: float = 0.0, validate_args: bool = True) -> Tensor:
    """The weak oracle: the set of classes present in each superpixel, from ground truth.

    Class ``c`` is named for superpixel ``g`` when ``m_gc > 0`` and its share ``m_gc / sum_c' m_gc' >= min_share``,
    with ``m_gc`` the number of ground-truth pixels of class ``c`` in ``g`` (``ignore_index`` pixels do not count).
    The share is a correctly rounded float64 division, so a share that is the decimal ``min_share`` reaches it (7
    of 100 pixels at ``min_share=0.07``; the product ``0.07 * 100`` rounds up to ``7.000000000000001``).
    The dominant class (:func:`oreal.dominant_labels`: most pixels, ties to the lowest id) is always named, so a
    superpixel with any valid pixel gets a non-empty set whatever ``min_share`` **(ours)**. Superpixels with no
    valid pixel get an empty set. Deterministic, integer counts only (no floating-point sums).

    Args:
        labels (Tensor[N, H, W]): integer class ids in ``[0, C)`` or ``ignore_index``.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
        num_superpixels: ``S``.
        num_classes: ``C``.
        ignore_index: label value that is never named.
        min_share: minimum share of a superpixel's valid pixels for a class to be named, in ``[0, 1]``; 0 (the
            default) names every class present.
        validate_args: check ids and labels are in range (host sync).

    Returns:
        Tensor[N, S, C]: bool, the answer for every superpixel of the pool (mask it with the labeled ones).

    Example:
        >>> labels = torch.tensor([[[0, 0, 0, 1], [2, 2, 255, 255]]])
        >>> sp_map = torch.tensor([[[0, 0, 0, 0], [1, 1, 2, 2]]])
        >>> weak_labels(labels, sp_map, 3, 3).long()  # superpixel 2 holds only ignored pixels
        tensor([[[1, 1, 0],
                 [0, 0, 1],
                 [0, 0, 0]]])
        >>> weak_labels(labels, sp_map, 3, 3, min_share=0.5)[0, 0].long()  # class 1 holds 1/4 of superpixel 0
        tensor([1, 0, 0])
    """
    min_share = check_fraction(min_share, "min_share")
    counts = superpixel_label_counts(labels, sp_map, num_superpixels, num_classes, ignore_index=ignore_index,
                                     validate_args=validate_args)
    total = counts.sum(dim=-1, keepdim=True)
    named = (counts > 0) & (counts.double() / total.double().clamp_min(1) >= min_share)
    dominant = torch.zeros_like(named).scatter_(-1, counts.argmax(dim=-1, keepdim=True), True)
    return named | (dominant & (total > 0))


def clicks(weak: Tensor, labeled: Optional[Tensor] = None) -> Tensor:
    """Annotation cost of weak labels (SPEC §6): one click per class named, ``sum_g |Y_g|``.

    Args:
        weak (Tensor[N, S, C]): bool weak label sets.
        labeled (Tensor[N, S], bool, optional): count only these superpixels (all rows when None).

    Returns:
        Tensor: int64 scalar.

    Example:
        >>> weak = torch.tensor([[[True, True, False], [False, False, True]]])
        >>> clicks(weak), clicks(weak, torch.tensor([[False, True]]))
        (tensor(3), tensor(1))
    """
    return _check_labeled(weak, labeled).sum()


def presence_counts(weak: Tensor, labeled: Optional[Tensor] = None) -> Tensor:
    """OREAL's class counts ``n_c`` under weak labels: a labeled superpixel counts once for every class it holds.

    ``n_c = #{g labeled : c in Y_g}`` (SPEC §3, presence counting, as the OREAL authors' code counts). It
    replaces ``oreal.class_counts(dominant[labeled], C)`` as the ``labeled_counts`` of :func:`oreal.select`,
    :func:`oreal.class_debt` and the class-balanced strategies; the debt still splits the round's budget of
    superpixels. ``sum_c n_c`` equals :func:`clicks`.

    Args:
        weak (Tensor[N, S, C]): bool weak label sets.
        labeled (Tensor[N, S], bool, optional): count only these superpixels (all rows when None).

    Returns:
        Tensor[C]: int64 counts.

    Example:
        >>> weak = torch.tensor([[[True, True, False], [False, True, False]]])
        >>> presence_counts(weak)
        tensor([1, 2, 0])
    """
    return _check_labeled(weak, labeled).sum(dim=(0, 1))


class WeakLoss(NamedTuple):
    """The stage-1 loss of :func:`weak_loss` and its three terms (each already a mean, before weighting)."""

    total: Tensor
    ce: Tensor
    mp: Tensor
    pp: Tensor


def _check_pool(scores: Tensor, name: str, sp_map: Tensor, num_superpixels: int, weak: Tensor,
                validate_args: bool) -> int:
    """Shapes and devices shared by the loss and stage 2: ``scores (N, C, H, W)``, ``sp_map``, ``weak``."""
    check_float(scores, name, ndim=4)
    n, c, h, w = scores.shape
    num_superpixels = check_sp_map(sp_map, num_superpixels, shape=(n, h, w), like=scores, like_name=name,
                                   validate_args=validate_args)
    _check_weak(weak, (n, num_superpixels, c), scores, name)
    return num_superpixels


def weak_loss(logits: Tensor, sp_map: Tensor, weak: Tensor, num_superpixels: int, *, temperature: float = 0.1,
              ce_weight: float = 16.0, mp_weight: float = 8.0, pp_weight: float = 1.0,
              validate_args: bool = True) -> WeakLoss:
    """Stage-1 loss on weak labels (Hwang et al. 2023; SPEC §5), differentiable in ``logits``.

    With ``q(x) = softmax(logits(x) / T)`` and ``Y_g`` the classes named for superpixel ``g``:

    - ``ce = mean over pixels x of one-class superpixels (|Y_g| = 1) of -ln q_y(x)``, ``Y_g = {y}``;
    - ``mp = mean over pixels x of multi-class superpixels (|Y_g| >= 2) of -ln sum_{c in Y_g} q_c(x)``
      (Merged Positive);
    - ``pp = mean over pairs (g, c), c in Y_g, of -ln max_{x in g} q_c(x)`` (Prototypical Pixel), over every
      labeled superpixel, one-class ones included;
    - ``total = ce_weight * ce + mp_weight * mp + pp_weight * pp`` (16, 8, 1 by default).

    Normalisation **(ours)**: each term is a mean over all its pixels (or pairs) of the whole batch, so a large
    superpixel weighs in proportion to its pixels; a term with no pixel (no pair) is 0 and contributes no
    gradient. Pixels with ``sp_map == -1`` and superpixels with an empty row in ``weak`` take no part.
    Computed in log space, ``ln q = log_softmax(z / T)`` and ``-ln sum_{c in Y} q_c = -logsumexp_{c in Y} ln q_c``
    (the largest logit subtracted first, so large logits keep the digits of ``ln q``; clamped at 0 where rounding
    leaves it an ulp below, with the formula's gradient), so it stays finite wherever ``z / T`` is
    (``validate_args`` checks that it does not overflow). The maxima over superpixels are one ``scatter_reduce``
    per class plane; on ties the gradient is split evenly among the tied pixels
    (``torch.scatter_reduce``'s rule). Deterministic on the CPU; on CUDA the sums may differ between calls in the
    last bits (``scatter_add``).

    Args:
        logits (Tensor[N, C, H, W]): raw model outputs (half precision is computed in float32).
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
        weak (Tensor[N, S, C]): bool weak label sets (rows of all ``False`` = not labeled).
        num_superpixels: ``S``.
        temperature: ``T > 0`` (0.1, Hwang et al.).
        ce_weight, mp_weight, pp_weight: weights ``>= 0`` of the three terms.
        validate_args: check ids and finiteness (host sync).

    Returns:
        WeakLoss: ``total``, ``ce``, ``mp``, ``pp``, scalars in the compute dtype, on ``logits``' device.

    Example:
        >>> logits = torch.tensor([[[[2.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]]])  # N=1, C=2, H=1, W=3
        >>> sp_map = torch.tensor([[[0, 1, 1]]])
        >>> weak = torch.tensor([[[True, False], [True, True]]])
        >>> loss = weak_loss(logits, sp_map, weak, 2, temperature=1.0)
        >>> # superpixel 1 names both classes, so mp = -ln 1 = 0; pp = mean(-ln q0(x0), -ln 0.5, -ln q1(x2))
        >>> round(loss.ce.item(), 4), loss.mp.item(), round(loss.pp.item(), 4)
        (0.1269, 0.0, 0.3778)
        >>> round(loss.total.item(), 4)  # 16 * ce + 8 * mp + 1 * pp
        2.4086
    """
    num_superpixels = _check_pool(logits, "logits", sp_map, num_superpixels, weak, validate_args)
    temperature = check_number(temperature, "temperature", positive=True)
    weights = [check_number(x, name, positive=False) for x, name in ((ce_weight, "ce_weight"), (mp_weight, "mp_weight"),
                                                       (pp_weight, "pp_weight"))]
    n, c = logits.shape[:2]
    s = num_superpixels
    z = logits.to(compute_dtype(logits)).reshape(n, c, sp_map.shape[1] * sp_map.shape[2]) / temperature  # (N, C, P)
    if validate_args and not all_finite(z):  # one pass over z, which also covers the logits
        validate_finite(logits, "logits")
        largest = float(logits.detach().abs().max())
        raise ValueError(f"Expected `logits / temperature` to be finite in {z.dtype}, but it overflows: the largest "
                         f"|logit| is {largest:.4g} and temperature={temperature:g}; use a larger temperature or "
                         f"smaller logits")
    index = flat_index(sp_map, s)  # (N, P), S = spill bin for -1 pixels
    # Each pixel's label set, (N, C, P): the row of its superpixel (an empty row for the spill bin).
    rows = torch.cat([weak, weak.new_zeros(n, 1, c)], dim=1).transpose(1, 2)
    in_set = rows.gather(2, index[:, None].expand(-1, c, -1))
    size = in_set.sum(dim=1)
    # Outside labeled superpixels the set is made "every class", so the term is 0 and no -inf - -inf appears.
    in_set = in_set | (size == 0)[:, None]
    # ln q by log_softmax, which subtracts the largest logit first: z - logsumexp(z) would subtract two nearly
    # equal large numbers and lose the digits of ln q (2 % at logits of 6e4 in float32)
    log_q = torch.log_softmax(z, dim=1)
    term = -torch.logsumexp(log_q.masked_fill(~in_set, float("-inf")), dim=1)  # -ln sum_{c in Y} q_c, (N, P)
    # -ln sum_Y q >= 0, but where Y holds (nearly) all the mass rounding can leave it an ulp below 0: the value is
    # clamped at 0, its gradient stays the formula's (detach), so training is the same as without the clamp
    term = term + (term.clamp_min(0) - term).detach()
    zero = z.new_zeros(())
    one, multi = size == 1, size >= 2
    ce = torch.where(one, term, zero).sum() / one.sum().clamp_min(1)
    mp = torch.where(multi, term, zero).sum() / multi.sum().clamp_min(1)
    # Prototypical pixel: max over each superpixel of ln q_c, one scatter per class plane.
    best = torch.stack([scatter_rows(plane, index, s, "max") for plane in log_q.unbind(1)], dim=-1)  # (N, S, C)
    pairs = weak & (count_rows(index, s) > 0)[..., None]
    pp = -torch.where(pairs, best, zero).sum() / pairs.sum().clamp_min(1)
    total = weights[0] * ce + weights[1] * mp + weights[2] * pp
    return WeakLoss(total, ce, mp, pp)


def prototype_pixels(probs: Tensor, sp_map: Tensor, weak: Tensor, num_superpixels: int, *,
                     validate_args: bool = True) -> Tensor:
    """The prototypical pixel of every (superpixel, named class): ``argmax_{x in g} p_c(x)`` for ``c in Y_g``.

    Ties go to the lowest flat position ``h * W + w``. Exact (max and min reductions only), deterministic.

    Args:
        probs (Tensor[N, C, H, W]): class probabilities (only their order within a superpixel matters: with
            ``validate_args=False`` any per-class confidence, e.g. logits, gives the same pixels).
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
        weak (Tensor[N, S, C]): bool weak label sets.
        num_superpixels: ``S``.
        validate_args: check ids and probabilities (host sync).

    Returns:
        Tensor[N, S, C]: int64 flat position ``h * W + w`` of the prototypical pixel where ``weak`` is ``True``
        and the superpixel is not empty, ``-1`` elsewhere.

    Example:
        >>> probs = torch.tensor([[[[0.9, 0.6, 0.2, 0.2]], [[0.1, 0.4, 0.8, 0.8]]]])
        >>> weak = torch.tensor([[[True, True], [False, True]]])
        >>> prototype_pixels(probs, torch.tensor([[[0, 0, 1, 1]]]), weak, 2)  # a tie in superpixel 1
        tensor([[[ 0,  1],
                 [-1,  2]]])
    """
    num_superpixels = _check_pool(probs, "probs", sp_map, num_superpixels, weak, validate_args)
    if validate_args:
        validate_probabilities(probs)
    return _prototype_pixels(probs, flat_index(sp_map, num_superpixels), weak, num_superpixels)


def _prototype_pixels(probs: Tensor, index: Tensor, weak: Tensor, num_superpixels: int) -> Tensor:
    n, c = probs.shape[:2]
    s = num_superpixels
    dtype = compute_dtype(probs)
    pixels = probs.shape[-2] * probs.shape[-1]  # not -1 in reshape: N may be 0
    flat = probs.reshape(n, c, pixels)
    position = torch.arange(pixels, device=probs.device, dtype=torch.float64).expand(n, -1)  # exact below 2^53
    inside = index < s
    out = torch.empty(n, s, c, dtype=torch.long, device=probs.device)
    for k in range(c):  # one pass per class; every superpixel of the batch at once
        plane = flat[:, k].to(dtype)
        best = scatter_rows(plane, index, s, "max")
        at_best = inside & (plane == torch.cat([best, best[:, :1]], dim=1).gather(1, index))
        first = scatter_rows(torch.where(at_best, position, float("inf")), index, s, "min")
        out[:, :, k] = first.long()
    valid = weak & (count_rows(index, s) > 0)[..., None]
    return torch.where(valid, out, -1)


def prototype_pseudo_labels(features: Tensor, probs: Tensor, sp_map: Tensor, weak: Tensor, num_superpixels: int,
                            *, ignore_index: int = 255, mode: str = "bilinear", block_size: int = BLOCK_SIZE,
                            validate_args: bool = True) -> Tensor:
    """Stage 2 of weak-label training: a pseudo label map from prototypical pixels (SPEC §5, Hwang et al.).

    For every labeled superpixel ``g`` and class ``c in Y_g`` the prototype ``f_gc`` is the feature vector of
    the prototypical pixel ``argmax_{x in g} p_c(x)`` (:func:`prototype_pixels`). Every pixel ``x`` of ``g``
    takes the class of its most similar prototype among its own superpixel's label set:
    ``y(x) = argmax_{c in Y_g} cos(f(x), f_gc)``, ties to the lower class. A one-class superpixel therefore
    gets its class everywhere. Pixels of unlabeled superpixels (empty rows of ``weak``) and pixels with
    ``sp_map == -1`` get ``ignore_index``.

    Features may have another resolution than ``probs`` and ``sp_map`` (a backbone's stride): each label pixel
    reads its feature bilinearly interpolated at the pixel centre (``mode="bilinear"``, the same values as
    ``F.interpolate(features, (H, W), mode="bilinear", align_corners=False)``) or from the feature cell holding
    the pixel centre (``mode="nearest"``) **(ours)**. The feature map is never upsampled as a whole: pixels of
    multi-class superpixels are processed in blocks of ``block_size``, each holding ``block_size x D`` values
    (one-class superpixels need no feature); the result does not depend on ``block_size``. Deterministic.

    Args:
        features (Tensor[N, D, h, w]): a model layer's features, any spatial size.
        probs (Tensor[N, C, H, W]): class probabilities that pick the prototypical pixels.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
        weak (Tensor[N, S, C]): bool weak label sets (rows of all ``False`` = not labeled).
        num_superpixels: ``S``.
        ignore_index: value of pixels without a pseudo label.
        mode: ``"bilinear"`` or ``"nearest"``, how label pixels read low-resolution features.
        block_size: label pixels per block (memory bound), ``>= 1``.
        validate_args: check ids, probabilities and finite features (host sync).

    Returns:
        Tensor[N, H, W]: int64 pseudo labels in ``[0, C)``, ``ignore_index`` elsewhere.

    Example:
        >>> g = torch.Generator().manual_seed(42)
        >>> probs = torch.randn(1, 3, 4, 4, generator=g).softmax(dim=1)
        >>> features = torch.randn(1, 8, 2, 2, generator=g)  # stride 2
        >>> sp_map = torch.tensor([[[0, 0, 1, 1]] * 4])  # two vertical strips
        >>> weak = torch.tensor([[[True, False, True], [False, False, False]]])  # strip 1 not labeled
        >>> pseudo = prototype_pseudo_labels(features, probs, sp_map, weak, 2)
        >>> pseudo[0, :, 2:].unique().tolist(), set(pseudo[0, :, :2].flatten().tolist()) <= {0, 2}
        ([255], True)
    """
    num_superpixels = _check_pool(probs, "probs", sp_map, num_superpixels, weak, validate_args)
    n, c, h, w = probs.shape
    features, block_size = check_features(features, n, mode, block_size)
    check_same_device(features, "features", probs, "probs")
    ignore_index = check_ignore_index(ignore_index, c)
    if validate_args:
        validate_probabilities(probs)
        validate_finite(features, "features")
    s = num_superpixels
    index = flat_index(sp_map, s)
    proto_pos = _prototype_pixels(probs, index, weak, s)  # (N, S, C), -1 where no prototype
    pixels = h * w
    keys = (proto_pos >= 0).nonzero()  # (K, 3): n, s, c of every prototype, in that (sorted) order
    globals_ = keys[:, 0] * pixels + proto_pos[keys[:, 0], keys[:, 1], keys[:, 2]]
    features = grid(features)
    protos = torch.cat([pixel_features(features, globals_[part], h, w, mode)
                        for part in blocks(globals_.numel(), block_size)] + [features.table[:0]])
    # slot[n, s, c]: row of the prototype in `protos`, -1 where none; the spill row S (-1 pixels) has none.
    slot = torch.full((n, s + 1, c), -1, dtype=torch.long, device=probs.device)
    slot[keys[:, 0], keys[:, 1], keys[:, 2]] = torch.arange(keys.shape[0], device=probs.device)
    # Per pixel: the size of its superpixel's set and, for one-class sets, the class (no features needed).
    named = slot[:, :s] >= 0
    size = torch.cat([named.sum(-1), named.new_zeros(n, 1, dtype=torch.long)], dim=1).gather(1, index)
    only = torch.cat([named.long().argmax(-1), index.new_zeros(n, 1)], dim=1).gather(1, index)
    out = torch.where(size == 1, only, ignore_index).reshape(-1)
    todo = (size >= 2).reshape(-1).nonzero().squeeze(1)
    superpixel_of = index.reshape(-1)
    for part in blocks(todo.numel(), block_size):
        pos = todo[part]
        feat = pixel_features(features, pos, h, w, mode)  # (b, D), unit norm
        rows = slot[pos // pixels, superpixel_of[pos]]  # (b, C)
        best = torch.full((pos.numel(),), float("-inf"), dtype=feat.dtype, device=feat.device)
        label = torch.zeros(pos.numel(), dtype=torch.long, device=feat.device)
        for k in range(c):  # ascending class order with a strict > keeps the lower class on ties
            has = (rows[:, k] >= 0).nonzero().squeeze(1)  # only the pixels whose set holds k
            sim = (feat[has] * protos[rows[has, k]]).sum(dim=1)
            better = sim > best[has]
            best[has] = torch.where(better, sim, best[has])
            label[has] = torch.where(better, k, label[has])
        out[pos] = label
    return out.reshape(n, h, w)
