"""Top-k, OREAL's per-class greedy, and :func:`select` (SPEC section 3).

Candidates are indexed by the global superpixel id ``g = n * S + s``. Every selection here is deterministic:
scores are ranked with a stable sort, so among equal scores the lower ``g`` is picked first.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from oreal._checks import (
    ProbabilityCheck,
    check_bool_tensor,
    check_choice,
    check_flag,
    check_float,
    check_int,
    check_int_tensor,
    check_real,
    check_same_device,
    check_shape,
    compute_dtype,
    validate_finite,
    validate_nonnegative,
    validate_probabilities,
)
from oreal.aggregate import check_sp_map, count_rows, flat_index, per_class
from oreal.balance import class_debt
from oreal.uncertainty import _binary_entropy_into, _distance_from_certain, binary_entropy

__all__ = ["Selection", "candidates", "topk", "greedy_per_class", "select", "superpixel_ovr_entropy"]


class Selection(NamedTuple):
    """The superpixels picked in one round, in pick order, on the input's device.

    Attributes:
        image (Tensor[B]): int64 image index ``n`` of each pick.
        superpixel (Tensor[B]): int64 local superpixel id ``s`` of each pick (a flat pixel index ``h * W + w``
            for pixel-level strategies).
        cls (Tensor[B]): int64 class that took the pick, ``-1`` for methods without classes.
        score (Tensor[B]): the score the pick was ranked by.
    """

    image: Tensor
    superpixel: Tensor
    cls: Tensor
    score: Tensor


def candidates(sp_map: Tensor, num_superpixels: int, exclude: Optional[Tensor] = None, *,
               validate_args: bool = True) -> Tensor:
    """Superpixels that may be picked: non-empty and not in ``exclude``.

    Args:
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)`` or ``-1``.
        num_superpixels: ``S``.
        exclude (Tensor[N, S], bool, optional): ``True`` for superpixels that must not be picked (already
            labeled).
        validate_args: check that ids are in range (host sync).

    Returns:
        Tensor[N, S]: bool.

    Example:
        >>> sp_map = torch.tensor([[[0, 0], [2, -1]]])
        >>> candidates(sp_map, 3, torch.tensor([[True, False, False]]))
        tensor([[False, False,  True]])
    """
    num_superpixels = check_sp_map(sp_map, num_superpixels, validate_args=validate_args)
    if exclude is not None:
        check_bool_tensor(exclude, "exclude", (sp_map.shape[0], num_superpixels))
        check_same_device(exclude, "exclude", sp_map, "sp_map")
    return _candidates(flat_index(sp_map, num_superpixels), num_superpixels, exclude)


def _candidates(index: Tensor, num_superpixels: int, exclude: Optional[Tensor]) -> Tensor:
    return _nonempty_candidates(count_rows(index, num_superpixels), exclude)


def _nonempty_candidates(counts: Tensor, exclude: Optional[Tensor]) -> Tensor:
    nonempty = counts > 0
    return nonempty if exclude is None else nonempty & ~exclude


def _available_count(cand: Tensor, budget: int, allow_partial: bool) -> int:
    """Number of picks to return; the one host sync of a selection (its output size depends on it)."""
    check_flag(allow_partial, "allow_partial")
    check_real(cand, "candidates")
    available = int(cand.sum())
    if available >= budget:
        return budget
    if not allow_partial:
        raise ValueError(f"Expected a budget of at most the {available} candidate superpixels (non-empty, not "
                         f"excluded), but got budget = {budget}; pass allow_partial=True to take all {available}")
    return available


def empty_selection(budget: int, allow_partial: bool, device: torch.device, dtype: torch.dtype) -> Selection:
    """The selection from a pool without candidates: empty for ``budget == 0`` (or ``allow_partial``), else the
    usual "fewer candidates than budget" error."""
    _available_count(torch.zeros(0, dtype=torch.bool, device=device), budget, allow_partial)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return Selection(empty, empty, empty, torch.zeros(0, dtype=dtype, device=device))


def _ranking(values: Tensor, available: Tensor) -> Tensor:
    """Permutation putting available entries first, each part by descending value, ties by lower index."""
    perm = values.sort(descending=True, stable=True).indices
    return perm[(~available[perm]).sort(stable=True).indices]


def _check_scores(scores: Tensor, cand: Tensor, ndim: int, validate_args: bool) -> None:
    check_float(scores, "scores", ndim=ndim)
    check_bool_tensor(cand, "candidates", scores.shape[:1])
    check_same_device(cand, "candidates", scores, "scores")
    if validate_args:
        validate_finite(scores, "scores")


@torch.no_grad()
def topk(scores: Tensor, budget: int, *, candidates: Tensor, allow_partial: bool = False,
         validate_args: bool = True) -> tuple[Tensor, Tensor]:
    """The ``budget`` highest scores among candidates, in descending order; ties go to the lower index.

    Args:
        scores (Tensor[G]): one score per global superpixel id.
        budget: number of picks ``B >= 0``.
        candidates (Tensor[G], bool): which ids may be picked.
        allow_partial: return all candidates when there are fewer than ``budget`` instead of raising.
        validate_args: check that scores are finite (host sync).

    Returns:
        (Tensor[B] int64 indices, Tensor[B] their scores)

    Example:
        >>> scores = torch.tensor([0.3, 0.9, 0.3, 0.8])
        >>> topk(scores, 2, candidates=torch.tensor([True, False, True, True]))
        (tensor([3, 0]), tensor([0.8000, 0.3000]))
    """
    _check_scores(scores, candidates, 1, validate_args)
    budget = check_int(budget, "budget", minimum=0)
    take = _available_count(candidates, budget, allow_partial)
    index = _ranking(scores, candidates)[:take]
    return index, scores[index]


@torch.no_grad()
def greedy_per_class(scores: Tensor, debt: Tensor, labeled_counts: Tensor, *, candidates: Tensor,
                     allow_partial: bool = False, validate_args: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """OREAL's Algorithm 1: each class takes its debt of highest-scoring candidates, rarest class first.

    Classes are visited in ascending order of ``labeled_counts`` (ties by class index). Class ``c`` takes the
    ``debt[c]`` highest ``scores[:, c]`` among candidates not taken by an earlier class; score ties go to the
    lower index. No candidate is taken twice. Picks come out in visit order, each class's by descending score.

    The loop runs over the classes with a positive debt (two stable sorts of ``G`` scores each), never over the
    budget, and syncs with the host once, for the debts and the visiting order.

    Args:
        scores (Tensor[G, C]): per-class score of each global superpixel.
        debt (Tensor[C]): int64 picks per class, e.g. from :func:`oreal.class_debt`.
        labeled_counts (Tensor[C]): int64 labeled superpixels per class; sets the visiting order.
        candidates (Tensor[G], bool): which ids may be picked.
        allow_partial: with fewer candidates than ``debt.sum()``, return what the classes could take in visit
            order instead of raising.
        validate_args: check scores are finite and counts non-negative (host sync).

    Returns:
        (Tensor[B] int64 indices, Tensor[B] int64 class that took each pick, Tensor[B] its score in that column)

    Example:
        >>> scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6]])
        >>> debt, counts = torch.tensor([1, 1]), torch.tensor([4, 0])
        >>> greedy_per_class(scores, debt, counts, candidates=torch.ones(3, dtype=torch.bool))
        (tensor([1, 0]), tensor([1, 0]), tensor([0.7000, 0.9000]))
    """
    _check_scores(scores, candidates, 2, validate_args)
    num_g, num_classes = scores.shape
    for name, t in (("debt", debt), ("labeled_counts", labeled_counts)):
        check_int_tensor(t, name, ndim=1)
        check_shape(t, name, (num_classes,), "= (C,) to match scores")
        check_same_device(t, name, scores, "scores")
        if validate_args:
            validate_nonnegative(t, name)
    dev = scores.device
    available = candidates.clone()
    # Pick order key: (visit position, rank within the class); num_g * num_classes marks "not picked".
    key = torch.full((num_g,), num_g * num_classes, dtype=torch.long, device=dev)
    taker = torch.full((num_g,), -1, dtype=torch.long, device=dev)
    ranks = torch.arange(num_g, device=dev)
    visit = labeled_counts.long().sort(stable=True).indices
    # one host sync for the debts and the visiting order; a class without debt takes nothing and is skipped
    debts, visit = torch.stack([debt.long(), visit]).tolist()
    for position, c in enumerate(visit):
        if debts[c] <= 0:
            continue
        perm = _ranking(scores[:, c], available)
        # Available entries come first in perm, so rank < debts[c] takes only available ones (if enough remain).
        chosen_sorted = (ranks < debts[c]) & available[perm]
        chosen = torch.zeros_like(available).scatter_(0, perm, chosen_sorted)
        rank_of = torch.empty_like(ranks).scatter_(0, perm, ranks)
        key = torch.where(chosen, position * num_g + rank_of, key)
        taker = torch.where(chosen, c, taker)
        available &= ~chosen
    take = _available_count(candidates, check_int(sum(debts), "debt.sum()"), allow_partial)
    index = key.sort(stable=True).indices[:take]
    cls = taker[index]
    return index, cls, scores[index, cls]


@torch.no_grad()  # acquisition never needs gradients; probs that require grad are read as plain values
def superpixel_ovr_entropy(probs: Tensor, sp_map: Tensor, num_superpixels: int, aggregation: str = "max", *,
                           validate_args: bool = True) -> Tensor:
    """One-vs-rest entropy of each superpixel and class, OREAL's ``S[g, c]``, without a full-size temporary.

    ``max`` uses the exact shortcut of SPEC §2: the binary entropy is symmetric about 0.5 and increasing below
    it, so ``max_{x in g} h(p_c(x)) = h(max_{x in g} min(p_c(x), 1 - p_c(x)))``; the logarithms are taken on
    ``N * S * C`` numbers instead of ``N * C * H * W``. ``min(p, 1 - p)`` is exact in binary floating point, so
    the result is the binary entropy of the pixel that maximises ``h`` for every representable ``p``, down to
    the subnormals (the form ``h(0.5 - min |p - 0.5|)`` would round ``p < 1.5e-8`` to 0 in float32); that ``h`` is
    evaluated in float64 and rounded once, so it is the float64 literal max rounded to the input's precision (a
    float32 ``h`` of every pixel is not monotone to the last bit near 0.5, where its literal max can be one ulp off
    and pick another pixel). ``mean``
    averages ``h(p_c(x))`` one class plane at a time. Empty superpixels get 0.

    Args:
        probs (Tensor[N, C, H, W]): softmax probabilities.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)`` or ``-1``.
        num_superpixels: ``S``.
        aggregation: ``"max"`` (OREAL) or ``"mean"`` (the ablation).
        validate_args: check probabilities and ids (host sync).

    Returns:
        Tensor[N, S, C]: float32 for half inputs, else the input dtype.

    Example:
        >>> probs = torch.tensor([[[[0.5, 0.9]], [[0.5, 0.1]]]])  # (1, 2, 1, 2)
        >>> superpixel_ovr_entropy(probs, torch.zeros(1, 1, 2, dtype=torch.long), 1)
        tensor([[[0.6931, 0.6931]]])
    """
    check_float(probs, "probs", ndim=4)
    check_choice(aggregation, "aggregation", ("max", "mean"))
    n, _, h, w = probs.shape
    num_superpixels = check_sp_map(sp_map, num_superpixels, shape=(n, h, w), like=probs,
                                   validate_args=validate_args)
    return _checked_ovr_scores(probs, flat_index(sp_map, num_superpixels), num_superpixels, aggregation,
                               validate_args)[0]


def _checked_ovr_scores(probs: Tensor, index: Tensor, num_superpixels: int, aggregation: str,
                        validate_args: bool) -> tuple[Tensor, Tensor]:
    """:func:`_ovr_scores`; with ``validate_args`` the probabilities are checked along the pass on the CPU."""
    if not validate_args:
        return _ovr_scores(probs, index, num_superpixels, aggregation)
    if probs.device.type != "cpu":
        validate_probabilities(probs)
        return _ovr_scores(probs, index, num_superpixels, aggregation)
    check = ProbabilityCheck(probs)
    # max reduces min(p, 1 - p), which is negative exactly where p is outside [0, 1]; mean reduces h(p)
    out = _ovr_scores(probs, index, num_superpixels, aggregation,
                      visit=(lambda slab, values: check(slab, values)) if aggregation == "max" else
                      (lambda slab, values: check(slab)))
    check.raise_if_invalid()
    return out


def _ovr_scores(probs: Tensor, index: Tensor, num_superpixels: int, aggregation: str,
                visit: Optional[Callable[[Tensor, Tensor], None]] = None) -> tuple[Tensor, Tensor]:
    """``(N, S, C)`` scores and ``(N, S)`` pixel counts, in one pass over ``probs``."""
    if aggregation == "max":
        # max min(p, 1 - p) per superpixel; 0 is the identity (no pixel is lower), so empty ones give h(0) = 0.
        nearest_half, counts = per_class(probs, index, num_superpixels, "max", identity=0.0, visit=visit,
                                         transform=lambda slab, b, _: _distance_from_certain(slab, b[0]),
                                         with_counts=True)
        # h of the N * S * C maxima in float64, rounded once: the correctly rounded entropy of the pixel nearest 0.5
        return binary_entropy(nearest_half.double(), validate_args=False).to(nearest_half.dtype), counts
    return per_class(probs, index, num_superpixels, "mean", transform=lambda slab, b, _: _binary_entropy_into(slab, *b),
                     scratch=3, visit=visit, with_counts=True)


@torch.no_grad()  # acquisition never needs gradients; probs that require grad are read as plain values
def select(probs: Tensor, sp_map: Tensor, labeled_counts: Tensor, budget: int, *, num_superpixels: int,
           exclude: Optional[Tensor] = None, aggregation: str = "max", class_mask: Optional[Tensor] = None,
           allow_partial: bool = False, validate_args: bool = True) -> Selection:
    """OREAL: pick ``budget`` superpixels by one-vs-rest entropy, class debt and per-class greedy.

    1. ``S[g, c]`` = one-vs-rest entropy of class ``c`` aggregated over superpixel ``g`` (max by default,
       :func:`superpixel_ovr_entropy`).
    2. ``d = class_debt(labeled_counts, budget, class_mask=class_mask)`` (water filling, SPEC §3).
    3. :func:`greedy_per_class`: rarest class first, each class takes its ``d_c`` highest ``S[:, c]`` among
       candidates (non-empty, not excluded, not taken this round); ties to the lower ``g = n * S + s``.

    Deterministic, and the same bits whatever the number of threads; one host sync for the number of picks (plus
    the checks under ``validate_args``, which on the CPU run in the same pass over ``probs``). Peak extra memory is
    a scratch slab of ``C * 2^17`` values on the CPU for max, three of ``C * 2^16`` for mean (one class plane on
    GPUs) and a few ``(N, H, W)`` planes, not a copy of ``probs``. Runs under ``torch.no_grad()``: ``probs`` that
    require grad give the same picks and a score without a graph. An empty pool (``N = 0`` or ``H * W = 0``) gives
    an empty Selection for ``budget = 0`` and the "fewer candidates" error otherwise.

    Args:
        probs (Tensor[N, C, H, W]): softmax probabilities (float16/bfloat16 are computed in float32).
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
        labeled_counts (Tensor[C]): int64 ``n_c``, labeled superpixels per dominant class so far.
        budget: number of superpixels to pick, ``0 <= budget <=`` number of candidates.
        num_superpixels: ``S``, the number of superpixel ids per image.
        exclude (Tensor[N, S], bool, optional): superpixels that must not be picked (already labeled).
        aggregation: ``"max"`` (OREAL) or ``"mean"``.
        class_mask (Tensor[C], bool, optional): ``False`` leaves a class out of balancing.
        allow_partial: with fewer candidates than ``budget``, return them all instead of raising.
        validate_args: check probabilities, ids and counts (host syncs; turn off in tight loops).

    Returns:
        Selection: ``image``, ``superpixel``, ``cls``, ``score`` of each pick, in pick order, on
        ``probs.device``.

    Example:
        >>> g = torch.Generator().manual_seed(42)
        >>> probs = torch.randn(2, 3, 8, 8, generator=g).softmax(dim=1)
        >>> sp_map = torch.arange(4).repeat_interleave(2).repeat(2, 8, 1)  # 4 vertical strips per image
        >>> sel = select(probs, sp_map, torch.tensor([10, 0, 3]), 3, num_superpixels=4)
        >>> sel.cls.tolist()  # rarest class first: debt = [0, 3, 0]
        [1, 1, 1]
        >>> len(set(zip(sel.image.tolist(), sel.superpixel.tolist())))
        3
    """
    check_float(probs, "probs", ndim=4)
    n, num_classes = probs.shape[:2]
    if not num_classes:
        raise ValueError(f"Expected `probs` to have at least one class (C >= 1 in dim 1), but got shape "
                         f"{tuple(probs.shape)}")
    check_int_tensor(labeled_counts, "labeled_counts", ndim=1)
    check_shape(labeled_counts, "labeled_counts", (num_classes,), "= (C,) to match probs")
    check_same_device(labeled_counts, "labeled_counts", probs, "probs")
    budget = check_int(budget, "budget", minimum=0)
    if class_mask is not None:
        check_same_device(check_bool_tensor(class_mask, "class_mask", (num_classes,)), "class_mask", probs, "probs")
    check_choice(aggregation, "aggregation", ("max", "mean"))
    num_superpixels = check_sp_map(sp_map, num_superpixels, shape=(n,) + tuple(probs.shape[2:]), like=probs,
                                   validate_args=validate_args)
    if exclude is not None:
        check_bool_tensor(exclude, "exclude", (n, num_superpixels))
        check_same_device(exclude, "exclude", sp_map, "sp_map")
    check_real(probs, "probs")
    if probs.numel() == 0:  # an empty pool (N = 0 or H * W = 0) has no candidates
        if validate_args:
            validate_probabilities(probs)
        class_debt(labeled_counts, budget, class_mask=class_mask, validate_args=validate_args)
        return empty_selection(budget, allow_partial, probs.device, compute_dtype(probs))
    index = flat_index(sp_map, num_superpixels)  # once, for the scores and the candidates
    scores, counts = _checked_ovr_scores(probs, index, num_superpixels, aggregation, validate_args)
    cand = _nonempty_candidates(counts, exclude)
    debt = class_debt(labeled_counts, budget, class_mask=class_mask, validate_args=validate_args)
    index, cls, score = greedy_per_class(scores.reshape(n * num_superpixels, num_classes), debt, labeled_counts,
                                         candidates=cand.reshape(-1), allow_partial=allow_partial,
                                         validate_args=False)
    return Selection(index // num_superpixels, index % num_superpixels, cls, score)
