"""Class counts and class debt (SPEC section 3, OREAL Eq. 3).

The class debt splits a round's budget ``B`` over classes so that the labeled set becomes as balanced as
possible: ``d`` minimises ``sum_c (n_c + d_c)^2`` subject to ``sum_c d_c = B``, ``d_c >= 0`` integer. That is
the same as handing out the budget one unit at a time to the class with the lowest current count (water
filling), ties to the lowest class index. :func:`class_debt` computes it in closed form.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from oreal._checks import INT64_MAX, check_bool_tensor, check_int, check_int_tensor, check_real, validate_nonnegative

__all__ = ["class_counts", "class_debt"]


def class_counts(labels: Tensor, num_classes: int, *, validate_args: bool = True) -> Tensor:
    """Count how many entries of ``labels`` carry each class; negative entries (e.g. ``-1``) are skipped.

    Typical use: ``class_counts(dominant[labeled], C)`` gives OREAL's ``n_c``, the number of labeled
    superpixels per dominant class.

    Args:
        labels (Tensor[*]): integer class ids in ``[0, C)``, or negative for "no class".
        num_classes: ``C``.
        validate_args: check that no id is ``>= C`` (host sync).

    Returns:
        Tensor[C]: int64 counts, on ``labels``' device.

    Example:
        >>> class_counts(torch.tensor([0, 2, 2, -1]), 4)
        tensor([1, 0, 2, 0])
    """
    check_int_tensor(labels, "labels")
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    check_real(labels, "labels")
    if validate_args and labels.numel() and bool((labels >= num_classes).any()):
        raise ValueError(f"Expected `labels` to hold class ids < num_classes = {num_classes} (or negative for "
                         f"none), but found {int(labels.max())}")
    lab = labels.reshape(-1).long()
    key = torch.where(lab < 0, num_classes, lab)
    out = torch.zeros(num_classes + 1, dtype=torch.long, device=labels.device)
    out.scatter_add_(0, key, torch.ones_like(key))
    return out[:num_classes]


def class_debt(labeled_counts: Tensor, budget: int, *, class_mask: Optional[Tensor] = None,
               validate_args: bool = True) -> Tensor:
    """Split ``budget`` over classes by water filling: the debt ``d`` of OREAL's Eq. 3.

    ``d`` minimises ``sum_c (n_c + d_c)^2`` with ``sum_c d_c = budget``, which is what giving one unit at a
    time to the class with the lowest current count ``n_c + d_c`` produces; ties go to the lowest class index.
    Computed in closed form with one sort, without a loop over the budget and without host syncs: sort the
    counts, find the water level ``L`` the budget reaches, fill every class below it to ``L``, then hand the
    remaining ``r < k`` units to the ``r`` lowest-indexed of the ``k`` classes standing at ``L``. Exact for every
    budget and count up to ``2**63 - 1`` (no int64 wrap-around); budgets above ``2**62 / C`` are computed in
    Python integers over the ``C`` counts (one host sync).

    Args:
        labeled_counts (Tensor[C]): integer ``n_c >= 0``.
        budget: ``B >= 0``.
        class_mask (Tensor[C], bool, optional): ``False`` leaves a class out of balancing (debt 0), e.g. a
            void class. At least one class must be ``True`` when ``budget > 0``.
        validate_args: check that counts are non-negative (host sync).

    Returns:
        Tensor[C]: int64 debt with ``sum == budget``.

    Example:
        >>> class_debt(torch.tensor([5, 0, 2, 2]), 6)
        tensor([0, 4, 1, 1])
        >>> class_debt(torch.tensor([5, 0, 2, 2]), 6, class_mask=torch.tensor([True, False, True, True]))
        tensor([0, 0, 3, 3])
    """
    check_int_tensor(labeled_counts, "labeled_counts", ndim=1)
    check_real(labeled_counts, "labeled_counts")
    budget = check_int(budget, "budget", minimum=0)
    num_classes = labeled_counts.shape[0]
    if num_classes == 0:
        raise ValueError("Expected `labeled_counts` to have at least one class, but got shape (0,)")
    if class_mask is not None:
        check_bool_tensor(class_mask, "class_mask", (num_classes,))
        if class_mask.device != labeled_counts.device:
            raise ValueError(f"Expected `class_mask` on {labeled_counts.device} like `labeled_counts`, "
                             f"but got {class_mask.device}")
        if budget > 0 and not bool(class_mask.any()):
            raise ValueError(f"`class_mask` leaves no class to balance, so a budget of {budget} cannot be spent")
    if validate_args:
        validate_nonnegative(labeled_counts, "labeled_counts")
    counts = labeled_counts.long()
    dev = counts.device
    if class_mask is None:
        class_mask = torch.ones(num_classes, dtype=torch.bool, device=dev)
    if num_classes * (budget + 1) > _DEVICE_LIMIT:
        # Astronomical budgets: the same water level in Python integers over the C counts (one host sync).
        debt = _debt_exact(counts.tolist(), budget, class_mask.tolist())
        return torch.tensor(debt, dtype=torch.long, device=dev)
    # Only counts relative to the lowest balanced class matter, and a class B or more above it never gets a unit:
    # shifted and capped at B, every intermediate below stays under C * (B + 1) <= 2^62, so int64 cannot wrap.
    lowest = torch.where(class_mask, counts, INT64_MAX).amin()
    rel = (counts - lowest).clamp(0, budget)
    # Masked classes sort last (past any level the budget can reach) and never fill.
    key = torch.where(class_mask, rel, budget + 1)
    sorted_counts = key.sort(stable=True).values
    j = torch.arange(1, num_classes + 1, device=dev)
    prefix = sorted_counts.cumsum(0)
    # cost_j: units needed to raise the j lowest classes to the j-th lowest count; non-decreasing in j.
    cost = j * sorted_counts - prefix
    k = ((cost <= budget) & (j <= class_mask.sum())).sum().clamp_min(1)  # classes below the water line
    level = (budget + prefix[k - 1]) // k
    debt = torch.where(class_mask, (level - rel).clamp_min(0), 0)
    remainder = budget - debt.sum()
    at_level = class_mask & (rel <= level)
    rank = at_level.long().cumsum(0)  # 1-based rank by class index among classes at the level
    return debt + (at_level & (rank <= remainder)).long()


# The int64 path of class_debt holds values up to C * (B + 1); beyond this it switches to Python integers.
_DEVICE_LIMIT = 1 << 62


def _debt_exact(counts: List[int], budget: int, mask: List[bool]) -> List[int]:
    """:func:`class_debt` in Python integers (no overflow): the same sort and water level over the C counts."""
    order = sorted((counts[c], c) for c in range(len(counts)) if mask[c])
    if not order:
        return [0] * len(counts)
    k, prefix = 1, order[0][0]
    for j in range(2, len(order) + 1):
        value = order[j - 1][0]
        if j * value - (prefix + value) > budget:
            break
        k, prefix = j, prefix + value
    level = (budget + prefix) // k
    debt = [max(level - n, 0) if m else 0 for n, m in zip(counts, mask)]
    remainder = budget - sum(debt)
    for c in range(len(counts)):
        if remainder > 0 and mask[c] and counts[c] <= level:
            debt[c] += 1
            remainder -= 1
    return debt
