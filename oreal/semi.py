"""Semi-supervised active learning with pseudo-label refinement (PLAR; Ma, Karakus and Rosin 2025; SPEC §5).

Unlabeled pixels get pseudo labels from the model (:func:`pseudo_labels`). The refinement (:func:`refine`)
checks each pseudo label against class prototypes built from the labeled pixels' features
(:func:`class_prototypes`, the cluster assumption): a pseudo label is accepted, corrected to another class, or
left undecided. Acquisition then prefers the regions the refinement could not decide
(:func:`undecided_fraction`, :func:`prefer_undecided`, :func:`query_undecided`).

The paper does not publish the exact rules; ``docs/semi.md`` gives ours, with the choices marked **(ours)**.
Features may be far larger than the label map's class scores: every pass reads them in blocks of
``block_size`` label pixels and never builds a ``pixels x pixels`` matrix (the largest temporaries are
``block_size x D`` and ``block_size x C``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from oreal._checks import (
    check_bool_tensor,
    check_flag,
    check_float,
    check_ignore_index,
    check_int,
    check_int_tensor,
    check_same_device,
    check_shape,
    compute_dtype,
    validate_finite,
    validate_ids,
    validate_probabilities,
    validate_unit_interval,
)
from oreal._proto import (
    BLOCK_SIZE,
    Grid,
    blocks,
    check_features,
    check_fraction,
    grid,
    pixel_features,
)
from oreal import strategies
from oreal.aggregate import check_sp_map, flat_index, scatter_rows
from oreal.select import Selection

__all__ = ["Prototypes", "PseudoLabels", "Refined", "class_prototypes", "pseudo_labels", "refine",
           "undecided_fraction", "prefer_undecided", "query_undecided"]


class Prototypes(NamedTuple):
    """Class prototypes of :func:`class_prototypes`.

    Attributes:
        vectors (Tensor[C, D]): unit-norm prototype of each class, zeros for a class without labeled pixels.
        counts (Tensor[C]): int64 labeled pixels per class.
    """

    vectors: Tensor
    counts: Tensor


class PseudoLabels(NamedTuple):
    """Pseudo labels of :func:`pseudo_labels`: ``labels (N, H, W)`` int64 and ``confidence (N, H, W)``."""

    labels: Tensor
    confidence: Tensor


class Refined(NamedTuple):
    """The result of :func:`refine`.

    Attributes:
        labels (Tensor[N, H, W]): int64 training labels: the given labels, accepted and corrected pseudo labels,
            ``ignore_index`` where undecided.
        undecided (Tensor[N, H, W]): bool, unlabeled pixels the refinement could not decide.
        corrected (Tensor[N, H, W]): bool, unlabeled pixels whose pseudo label was replaced.
        prototypes (Tensor[C, D]): the class prototypes used.
        thresholds (Tensor[C]): the per-class acceptance thresholds ``tau_c`` (``inf`` for a class without
            labeled pixels).
    """

    labels: Tensor
    undecided: Tensor
    corrected: Tensor
    prototypes: Tensor
    thresholds: Tensor


def _check_labels(labels: object, num_classes: int, ignore_index: int, validate_args: bool) -> Tensor:
    check_int_tensor(labels, "labels", ndim=3)
    check_ignore_index(ignore_index, num_classes)
    if validate_args:
        validate_ids(labels, "labels", 0, num_classes, "class ids", extra=ignore_index)
    return labels


def _prototypes(features: Grid, labels: Tensor, num_classes: int, ignore_index: int, mode: str,
                block_size: int) -> Prototypes:
    n, h, w = labels.shape
    flat = labels.reshape(-1).long()
    labeled = ((flat != ignore_index) & (flat >= 0) & (flat < num_classes)).nonzero().squeeze(1)
    sums = torch.zeros(num_classes, features.table.shape[1], dtype=torch.float64, device=labels.device)
    for part in blocks(labeled.numel(), block_size):
        pos = labeled[part]
        sums.index_add_(0, flat[pos], pixel_features(features, pos, h, w, mode).double())
    counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
    counts.index_add_(0, flat[labeled], torch.ones_like(labeled))
    vectors = torch.nn.functional.normalize(sums, dim=1).to(features.table.dtype)
    return Prototypes(vectors, counts)


def class_prototypes(features: Tensor, labels: Tensor, num_classes: int, *, ignore_index: int = 255,
                     mode: str = "bilinear", block_size: int = BLOCK_SIZE, validate_args: bool = True) -> Prototypes:
    """Class prototypes from the labeled pixels' features (SPEC §5's reading of PLAR).

    ``mu_c = normalize(sum_{x : y(x) = c} f(x) / ||f(x)||)``: the direction of the mean of the unit feature
    vectors of the class's labeled pixels **(ours: normalising before averaging, so that every pixel counts
    once whatever its feature norm; the cosine similarity only sees directions)**. Sums are accumulated in
    float64. Features of another resolution than ``labels`` are read at each label pixel bilinearly
    (``mode="bilinear"``, as ``F.interpolate(..., align_corners=False)``) or from the cell holding its centre
    (``mode="nearest"``), in blocks of ``block_size`` pixels; the result does not depend on ``block_size``
    beyond float64 rounding. Deterministic on the CPU (``index_add_`` on CUDA may reorder the sums).

    Args:
        features (Tensor[N, D, h, w]): a model layer's features, any spatial size.
        labels (Tensor[N, H, W]): partial labels, class ids in ``[0, C)``, ``ignore_index`` where unlabeled.
        num_classes: ``C``.
        ignore_index: the value of unlabeled pixels (outside ``[0, C)``).
        mode: ``"bilinear"`` or ``"nearest"``.
        block_size: label pixels per block, ``>= 1``.
        validate_args: check label values and finite features (host sync).

    Returns:
        Prototypes: ``vectors (C, D)`` in the compute dtype (float32 for half features), ``counts (C,)``.

    Example:
        >>> features = torch.tensor([[[[1.0, 3.0]], [[0.0, 4.0]]]])  # N=1, D=2, one row of two pixels
        >>> proto = class_prototypes(features, torch.tensor([[[1, 1]]]), 2)
        >>> proto.vectors  # mean of (1, 0) and (0.6, 0.8), normalised
        tensor([[0.0000, 0.0000],
                [0.8944, 0.4472]])
        >>> proto.counts
        tensor([0, 2])
    """
    check_int_tensor(labels, "labels", ndim=3)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    features, block_size = check_features(features, labels.shape[0], mode, block_size)
    check_same_device(features, "features", labels, "labels")
    _check_labels(labels, num_classes, ignore_index, validate_args)
    if validate_args:
        validate_finite(features, "features")
    return _prototypes(grid(features), labels, num_classes, ignore_index, mode, block_size)


def _check_probs_labels(probs: object, labels: Optional[Tensor], ignore_index: int, validate_args: bool) -> None:
    check_float(probs, "probs", ndim=4)
    n, c, h, w = probs.shape
    check_ignore_index(ignore_index, c)
    if labels is not None:
        check_int_tensor(labels, "labels", ndim=3)
        check_shape(labels, "labels", (n, h, w), "= (N, H, W) to match probs")
        check_same_device(labels, "labels", probs, "probs")
        _check_labels(labels, c, ignore_index, validate_args)
    if validate_args:
        validate_probabilities(probs)


def pseudo_labels(probs: Tensor, labels: Optional[Tensor] = None, *, threshold: float = 0.0,
                  ignore_index: int = 255, validate_args: bool = True) -> PseudoLabels:
    """The model's pseudo labels and their confidence: ``y_hat(x) = argmax_c p_c(x)``, ``kappa(x) = max_c p_c(x)``.

    Ties go to the lowest class. Where ``labels`` holds a class, the pseudo label is that class with confidence
    1. Pixels whose confidence is below ``threshold`` get ``ignore_index`` (plain confidence-thresholded pseudo
    labelling; 0, the default, keeps every pixel). Deterministic.

    Args:
        probs (Tensor[N, C, H, W]): softmax probabilities.
        labels (Tensor[N, H, W], optional): partial labels, ``ignore_index`` where unlabeled.
        threshold: minimum confidence, in ``[0, 1]``.
        ignore_index: value of pixels without a pseudo label (outside ``[0, C)``).
        validate_args: check probabilities and label values (host sync).

    Returns:
        PseudoLabels: ``labels (N, H, W)`` int64 and ``confidence (N, H, W)`` in the compute dtype.

    Example:
        >>> probs = torch.tensor([[[[0.9, 0.4, 0.5]], [[0.1, 0.6, 0.5]]]])
        >>> pseudo_labels(probs, threshold=0.55)  # the 0.5/0.5 tie goes to class 0, below the threshold
        PseudoLabels(labels=tensor([[[  0,   1, 255]]]), confidence=tensor([[[0.9000, 0.6000, 0.5000]]]))
        >>> pseudo_labels(probs, torch.tensor([[[255, 255, 1]]])).labels
        tensor([[[0, 1, 1]]])
    """
    _check_probs_labels(probs, labels, ignore_index, validate_args)
    threshold = check_fraction(threshold, "threshold")
    p = probs.to(compute_dtype(probs))
    confidence, pseudo = p.max(dim=1)  # the indices are argmax's: the first maximum, the lowest class
    if labels is not None:
        given = labels != ignore_index
        pseudo = torch.where(given, labels.long(), pseudo)
        confidence = torch.where(given, torch.ones_like(confidence), confidence)
    return PseudoLabels(torch.where(confidence >= threshold, pseudo, ignore_index), confidence)


def _lower_quantile(values: Tensor, groups: Tensor, num_groups: int, q: float) -> Tensor:
    """Per group, the ``ceil(q * n)``-th smallest value (at least the first); ``inf`` for an empty group. The
    product is exact for ``q`` as written, its shortest decimal (``repr``): 0.07 of 100 values is the 7th, where
    the float product ``0.07 * 100`` rounds up to ``7.000000000000001`` and would take the 8th."""
    order = values.sort(stable=True).indices
    order = order[groups[order].sort(stable=True).indices]  # by group, ascending values within a group
    counts = torch.zeros(num_groups, dtype=torch.long, device=values.device)
    counts.index_add_(0, groups, torch.ones_like(groups))
    start = counts.cumsum(0) - counts
    exact = Fraction(repr(float(q)))  # integer ceilings on the host, one per group
    rank = torch.tensor([max(math.ceil(exact * n), 1) - 1 for n in counts.tolist()], dtype=torch.long,
                        device=values.device)
    pick = (start + torch.minimum(rank, (counts - 1).clamp_min(0))).clamp_max(max(values.numel() - 1, 0))
    sorted_values = values[order] if values.numel() else values.new_zeros(1)
    return torch.where(counts > 0, sorted_values[pick], float("inf"))


def refine(features: Tensor, probs: Tensor, labels: Tensor, *, ignore_index: int = 255, quantile: float = 0.5,
           trust: Optional[float] = None, mode: str = "bilinear", block_size: int = BLOCK_SIZE,
           validate_args: bool = True) -> Refined:
    """Pseudo-label auto-refinement (PLAR): accept, correct or leave undecided each unlabeled pixel's pseudo label.

    With unit features ``f(x)``, prototypes ``mu_c`` (:func:`class_prototypes`) and ``s_c(x) = cos(f(x), mu_c)``
    (``-inf`` for a class without labeled pixels):

    - thresholds: ``tau_c`` = the lower ``quantile`` (the median by default) of ``s_c(x)`` over the labeled pixels
      of class ``c``: the ``ceil(quantile * n_c)``-th smallest (at least the first; the product exact for
      ``quantile`` as written, so 0.07 of 100 is the 7th); ``inf`` when ``n_c = 0``;
    - for an unlabeled pixel, pseudo label ``y = argmax_c p_c(x)`` and nearest prototype ``k = argmax_c s_c(x)``
      (ties to the lower class); ``A = s_y(x) >= tau_y`` (the pseudo label is as typical of its class as
      the class's own median labeled pixel), ``B = s_k(x) >= tau_k``;
    - accepted (label ``y``) when ``y = k`` and ``A``, or ``y != k``, ``A`` and not ``B``;
      corrected (label ``k``) when ``y != k``, ``B`` and not ``A``;
      undecided otherwise: no class supports the pixel, or both ``y`` and ``k`` do (two clusters claim it)
      **(ours: the paper does not publish its rule)**;
    - with ``trust`` set, pixels with confidence ``max_c p_c(x) >= trust`` keep ``y`` unchecked **(ours)**.

    Labeled pixels keep their label and are never undecided. Without any labeled pixel every unlabeled pixel
    is undecided (but for those that ``trust`` accepts). The features are laid out once channels-last (one copy of
    their size), then read in two blocked passes (prototypes, then similarities); the other extra memory is a few
    ``block_size x D`` and ``block_size x C`` temporaries and three pixel-sized vectors, never
    ``pixels x pixels``. The labels do not depend on ``block_size`` except for a similarity within float rounding
    of a threshold. Deterministic on the CPU.

    Args:
        features (Tensor[N, D, h, w]): a model layer's features, any spatial size (read per label pixel as in
            :func:`class_prototypes`).
        probs (Tensor[N, C, H, W]): softmax probabilities.
        labels (Tensor[N, H, W]): partial labels, class ids in ``[0, C)``, ``ignore_index`` where unlabeled.
        ignore_index: value of unlabeled and undecided pixels (outside ``[0, C)``).
        quantile: which quantile of the labeled pixels' similarities is the threshold, in ``[0, 1]``.
        trust: confidence from which a pseudo label is kept without a check, in ``[0, 1]``; None checks all.
        mode: ``"bilinear"`` or ``"nearest"``.
        block_size: label pixels per block, ``>= 1``.
        validate_args: check probabilities, labels and finite features (host sync).

    Returns:
        Refined: ``labels``, ``undecided``, ``corrected`` (each ``(N, H, W)``), ``prototypes (C, D)``,
        ``thresholds (C,)``.

    Example:
        >>> features = torch.tensor([[[[1.0, 1.0, 0.0, 0.5, 1.0, 0.2, 1.0]], [[0.0, 0.5, 1.0, 1.0, 0.2, 1.0, 1.0]]]])
        >>> labels = torch.tensor([[[0, 0, 1, 1, 255, 255, 255]]])  # the last three pixels are unlabeled
        >>> p0 = torch.tensor([0.9, 0.9, 0.1, 0.1, 0.6, 0.8, 0.4])
        >>> out = refine(features, torch.stack([p0, 1 - p0]).reshape(1, 2, 1, 7), labels)
        >>> out.thresholds  # the lower median of each class's two labeled pixels' similarities
        tensor([0.9732, 0.9732])
        >>> out.labels  # pixel 4 accepted (0), pixel 5 corrected (0 -> 1), pixel 6 (1, 1) undecided
        tensor([[[  0,   0,   1,   1,   0,   1, 255]]])
        >>> out.undecided.nonzero()[:, 2].tolist(), out.corrected.nonzero()[:, 2].tolist()
        ([6], [5])
    """
    _check_probs_labels(probs, labels, ignore_index, validate_args)
    n, c, h, w = probs.shape
    features, block_size = check_features(features, n, mode, block_size)
    check_same_device(features, "features", probs, "probs")
    quantile = check_fraction(quantile, "quantile")
    trust = check_fraction(trust, "trust", allow_none=True)
    if validate_args:
        validate_finite(features, "features")
    features = grid(features)
    proto = _prototypes(features, labels, c, ignore_index, mode, block_size)
    p = probs.to(compute_dtype(probs))
    confidence, pseudo = (t.reshape(-1) for t in p.max(dim=1))  # indices: argmax's first maximum
    flat_labels = labels.reshape(-1).long()
    given = flat_labels != ignore_index
    ref = torch.where(given, flat_labels, pseudo)  # the class each pixel is checked against
    total = n * h * w
    dtype = proto.vectors.dtype
    ref_sim = torch.empty(total, dtype=dtype, device=probs.device)
    near_sim = torch.empty(total, dtype=dtype, device=probs.device)
    near = torch.empty(total, dtype=torch.long, device=probs.device)
    absent = proto.counts == 0
    for part in blocks(total, block_size):
        pos = torch.arange(part.start, part.stop, device=probs.device)
        sim = pixel_features(features, pos, h, w, mode) @ proto.vectors.T  # (b, C)
        sim = sim.masked_fill(absent, float("-inf"))
        ref_sim[part] = sim.gather(1, ref[part, None]).squeeze(1)
        near_sim[part], near[part] = sim.max(dim=1)  # indices: the first maximum, the lower class
    thresholds = _lower_quantile(ref_sim[given], flat_labels[given], c, quantile)
    supports_y = ref_sim >= thresholds[ref]
    supports_k = near_sim >= thresholds[near]
    same = near == ref
    accept = torch.where(same, supports_y, supports_y & ~supports_k)
    corrected = ~same & supports_k & ~supports_y & ~given
    if trust is not None:
        accept |= confidence >= trust
        corrected &= ~(confidence >= trust)
    undecided = ~given & ~accept & ~corrected
    out = torch.where(corrected, near, ref)
    out = torch.where(undecided, ignore_index, out)
    shape = (n, h, w)
    return Refined(out.reshape(shape), undecided.reshape(shape), corrected.reshape(shape), proto.vectors,
                   thresholds)


def undecided_fraction(undecided: Tensor, sp_map: Tensor, num_superpixels: int, *,
                       validate_args: bool = True) -> Tensor:
    """The region score of PLAR-guided acquisition: ``u_g = mean_{x in g} [x undecided]``.

    Args:
        undecided (Tensor[N, H, W]): bool, e.g. :func:`refine`'s ``undecided``.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
        num_superpixels: ``S``.
        validate_args: check superpixel ids (host sync).

    Returns:
        Tensor[N, S]: float32 in ``[0, 1]``; 0 for an empty superpixel. Deterministic on the CPU.

    Example:
        >>> undecided = torch.tensor([[[True, False, True, True]]])
        >>> undecided_fraction(undecided, torch.tensor([[[0, 0, 1, -1]]]), 3)
        tensor([[0.5000, 1.0000, 0.0000]])
    """
    num_superpixels = check_sp_map(sp_map, num_superpixels, validate_args=validate_args)
    check_bool_tensor(undecided, "undecided", tuple(sp_map.shape))
    check_same_device(undecided, "undecided", sp_map, "sp_map")
    src = undecided.reshape(undecided.shape[0], undecided.shape[1] * undecided.shape[2]).float()
    return scatter_rows(src, flat_index(sp_map, num_superpixels), num_superpixels, "mean")


_FRACTIONS = "undecided fractions"  # of undecided_fraction


def prefer_undecided(scores: Tensor, fraction: Tensor, *, validate_args: bool = True) -> Tensor:
    """Re-weight a strategy's superpixel scores by the undecided fraction: ``s'_g = s_g * u_g`` **(ours)**.

    A superpixel the refinement decided entirely (``u_g = 0``) scores 0, one it could not decide at all keeps
    its score; in between, the score is the strategy's uncertainty spread over the pixels that still need an
    annotator. Ranking ``s'`` with :func:`oreal.topk` (or :func:`oreal.greedy_per_class` for class columns)
    keeps every tie rule of those functions. Only meaningful for non-negative scores (every score of
    :mod:`oreal.uncertainty` but BalEnt); ``validate_args`` rejects negative ones. For the hard rule of the
    paper (only undecided regions go to the annotator) use :func:`query_undecided`.

    Args:
        scores (Tensor[N, S] or Tensor[N, S, C]): superpixel scores ``>= 0`` (class columns are each weighted).
        fraction (Tensor[N, S]): :func:`undecided_fraction`.
        validate_args: check that the scores are finite and non-negative and the fractions in ``[0, 1]`` (host
            sync).

    Returns:
        Tensor: the shape of ``scores``, in the promoted dtype of both.

    Example:
        >>> prefer_undecided(torch.tensor([[0.8, 0.5, 0.9]]), torch.tensor([[0.5, 1.0, 0.0]]))
        tensor([[0.4000, 0.5000, 0.0000]])
    """
    check_float(scores, "scores")
    check_float(fraction, "fraction", ndim=2)
    if scores.ndim not in (2, 3) or tuple(scores.shape[:2]) != tuple(fraction.shape):
        raise ValueError(f"Expected argument `scores` to have shape (N, S) or (N, S, C) with (N, S) = "
                         f"{tuple(fraction.shape)} to match `fraction`, but got {tuple(scores.shape)}")
    check_same_device(scores, "scores", fraction, "fraction")
    if validate_args:
        validate_unit_interval(fraction, "fraction", _FRACTIONS)
        validate_finite(scores, "scores")
        if scores.numel() and bool((scores < 0).any()):
            raise ValueError(f"Expected `scores` to be non-negative for the product rule, but found "
                             f"{float(scores.min()):.4g}; use query_undecided's filter rule instead")
    return scores * (fraction[..., None] if scores.ndim == 3 else fraction)


def query_undecided(name: str, *, fraction: Tensor, min_fraction: float = 0.5, backfill: bool = True,
                    budget: int, exclude: Optional[Tensor] = None, allow_partial: bool = False,
                    **query_args: Any) -> Selection:
    """Any strategy of :func:`oreal.strategies.query`, restricted to the regions the refinement left undecided.

    The rule **(ours; the paper sends only undecided regions to the annotator)**: the strategy runs on the
    candidates with ``u_g >= min_fraction`` (:func:`undecided_fraction`; the others are added to ``exclude``),
    with its own scores, tie rules and class balancing. When fewer than ``budget`` of them exist and
    ``backfill`` is true, the strategy runs again on the remaining candidates (everything not excluded and not
    picked yet) for the rest of the budget, with the same inputs. The picks of the first run come first.
    Without ``backfill``, or when the pool itself is too small, the usual rule holds: fewer candidates than
    asked raise a ``ValueError`` unless ``allow_partial``. Deterministic whenever the strategy is (``random``
    draws from its generator in both runs).

    Args:
        name: a superpixel strategy of :func:`oreal.strategies.available` (not the pixel-level
            ``balent_pixel``).
        fraction (Tensor[N, S]): :func:`undecided_fraction`, values in ``[0, 1]`` (checked unless
            ``validate_args=False`` is among ``query_args``; host sync).
        min_fraction: the least undecided fraction of a superpixel the first run may pick, in ``[0, 1]``
            (0.5 by default: most of its pixels undecided).
        backfill: complete the budget from the other candidates when too few are undecided.
        budget: number of picks ``B >= 0``.
        exclude (Tensor[N, S] bool, optional): superpixels that must not be picked (already labeled).
        allow_partial: with fewer candidates than ``budget`` overall, return them all instead of raising.
        **query_args: every other argument of :func:`oreal.strategies.query` (``sp_map``, ``num_superpixels``,
            ``probs``, ``labeled_counts``, options, ...).

    Returns:
        Selection: as :func:`oreal.strategies.query`.

    Example:
        >>> g = torch.Generator().manual_seed(42)
        >>> probs = torch.randn(1, 3, 4, 4, generator=g).softmax(dim=1)
        >>> sp_map = torch.arange(4).repeat_interleave(4).reshape(1, 4, 4)  # four horizontal strips
        >>> fraction = torch.tensor([[0.0, 1.0, 0.25, 0.75]])
        >>> sel = query_undecided("entropy", fraction=fraction, budget=3, probs=probs, sp_map=sp_map,
        ...                       num_superpixels=4)
        >>> sel.superpixel[:2].sort().values.tolist(), len(sel.superpixel)  # strips 1 and 3 come first
        ([1, 3], 3)
    """
    min_fraction = check_fraction(min_fraction, "min_fraction")
    check_flag(allow_partial, "allow_partial")
    if strategies.requirements(name)["pixels"]:
        raise ValueError(f"Expected a superpixel strategy, but got the pixel-level {name!r} (its units are pixels, "
                         f"not the superpixels of `fraction`)")
    check_float(fraction, "fraction", ndim=2)
    if query_args.get("validate_args", True):
        validate_unit_interval(fraction, "fraction", _FRACTIONS)
    sp_map, num_superpixels = query_args.get("sp_map"), query_args.get("num_superpixels")
    if isinstance(sp_map, Tensor) and sp_map.ndim == 3 and isinstance(num_superpixels, int):
        check_shape(fraction, "fraction", (sp_map.shape[0], num_superpixels), "= (N, S) to match sp_map")
    budget = check_int(budget, "budget", minimum=0)
    if exclude is not None:
        check_bool_tensor(exclude, "exclude", tuple(fraction.shape))
        check_same_device(exclude, "exclude", fraction, "fraction")
    base = torch.zeros(fraction.shape, dtype=torch.bool, device=fraction.device) if exclude is None else exclude
    first = strategies.query(name, budget=budget, exclude=base | (fraction < min_fraction), allow_partial=True,
                             **query_args)
    rest = budget - first.image.numel()
    if rest == 0 or not backfill:
        if rest and not allow_partial:
            raise ValueError(f"Expected a budget of at most the {first.image.numel()} undecided candidate "
                             f"superpixels (u_g >= {min_fraction}), but got budget = {budget}; pass "
                             f"backfill=True or allow_partial=True")
        return first
    taken = base.clone()
    taken[first.image, first.superpixel] = True
    second = strategies.query(name, budget=rest, exclude=taken, allow_partial=True, **query_args)
    total = first.image.numel() + second.image.numel()
    if total < budget and not allow_partial:
        raise ValueError(f"Expected a budget of at most the {total} candidate superpixels (non-empty, not "
                         f"excluded), but got budget = {budget}; pass allow_partial=True to take all {total}")
    return Selection(*(torch.cat([a, b]) for a, b in zip(first, second)))
