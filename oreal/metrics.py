"""Segmentation and active-learning metrics (SPEC section 6)."""

from __future__ import annotations

import math
import numbers
from typing import Sequence, Union

import torch
from torch import Tensor

from oreal._checks import (
    INT64_MAX,
    all_finite,
    check_ignore_index,
    check_int,
    check_int_tensor,
    check_same_device,
    check_shape,
    validate_ids,
    validate_nonnegative,
)

__all__ = ["confusion_matrix", "miou", "miou_from_confusion", "aualc"]

# the largest C whose C * C + 1 bins (the spill bin included) have int64 indices
_MAX_CLASSES = math.isqrt(INT64_MAX - 1)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = 255,
                     validate_args: bool = True) -> Tensor:
    """Confusion matrix ``M[t, p]`` = number of pixels of true class ``t`` predicted as ``p``.

    Pixels whose target is ``ignore_index`` are left out.

    Args:
        pred (Tensor[*]): integer predicted classes in ``[0, C)``.
        target (Tensor[*]): integer true classes in ``[0, C)`` or ``ignore_index``; same shape as ``pred``.
        num_classes: ``C``.
        ignore_index: target value to skip (an integer outside ``[0, C)``).
        validate_args: check value ranges (host sync).

    Returns:
        Tensor[C, C]: int64, rows = target, columns = prediction.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 255]), 2)
        tensor([[1, 1],
                [0, 1]])
    """
    check_int_tensor(pred, "pred")
    check_int_tensor(target, "target")
    check_shape(pred, "pred", tuple(target.shape), "to match target")
    check_same_device(pred, "pred", target, "target")
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    if num_classes > _MAX_CLASSES:
        raise ValueError(f"Expected argument `num_classes` to be at most {_MAX_CLASSES} (its C * C bins are "
                         f"counted in int64), but got {num_classes}")
    ignore_index = check_ignore_index(ignore_index, num_classes)
    if validate_args:
        validate_ids(pred, "pred", 0, num_classes, "class ids")
        validate_ids(target, "target", 0, num_classes, "class ids", extra=ignore_index)
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    valid = (t != ignore_index) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    spill = num_classes * num_classes
    key = torch.where(valid, t * num_classes + p, spill)
    out = torch.zeros(spill + 1, dtype=torch.long, device=target.device)
    out.scatter_add_(0, key, torch.ones_like(key))
    return out[:spill].reshape(num_classes, num_classes)


def miou_from_confusion(confusion: Tensor, *, per_class: bool = False, validate_args: bool = True) -> Tensor:
    """Mean intersection over union from a confusion matrix; classes absent from both prediction and truth
    (IoU 0/0) are left out of the mean.

    Args:
        confusion (Tensor[C, C]): rows = target, columns = prediction.
        per_class: return the ``C`` IoUs (NaN for absent classes) instead of their mean.
        validate_args: check that the counts are non-negative (host sync).

    Returns:
        Tensor (scalar, float64), or Tensor[C] with ``per_class=True``. NaN when no class is present.

    Example:
        >>> miou_from_confusion(torch.tensor([[1, 1], [0, 1]]))
        tensor(0.5000, dtype=torch.float64)
    """
    check_int_tensor(confusion, "confusion", ndim=2)
    check_shape(confusion, "confusion", (confusion.shape[0],) * 2, "(a square C x C matrix)")
    if validate_args:
        validate_nonnegative(confusion, "confusion")
    cm = confusion.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp / union  # 0/0 = NaN marks an absent class
    return iou if per_class else iou.nanmean()


def miou(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = 255,
         validate_args: bool = True) -> Tensor:
    """Mean IoU of a prediction (SPEC §6): confusion matrix, ignore index skipped, absent classes left out.

    Args:
        pred (Tensor[*]): integer predicted classes.
        target (Tensor[*]): integer true classes or ``ignore_index``.
        num_classes: ``C``.
        ignore_index: target value to skip (255 by default).
        validate_args: check value ranges (host sync).

    Returns:
        Tensor: float64 scalar in ``[0, 1]`` (NaN when no valid pixel).

    Example:
        >>> miou(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 255]]), 3)
        tensor(0.5000, dtype=torch.float64)
    """
    return miou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index=ignore_index,
                                                validate_args=validate_args), validate_args=False)  # counts


def _real_vector(x: object, name: str) -> Tensor:
    """A 1-D float64 CPU tensor of real numbers (not strings, bools or other objects)."""
    if isinstance(x, Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"Expected `{name}` to hold real numbers, but got a tensor of dtype {x.dtype}")
        return x.detach().to("cpu", torch.float64)
    try:
        values = list(x)  # type: ignore[call-overload]
    except TypeError as err:
        raise TypeError(f"Expected `{name}` to be a sequence of numbers, but got {type(x).__name__}") from err
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"Expected `{name}` to hold real numbers, but got {type(v).__name__} {v!r}")
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def aualc(budgets: Union[Sequence[float], Tensor], mious: Union[Sequence[float], Tensor],
          full_miou: float) -> float:
    """Area under the active-learning curve, normalised by full supervision (SPEC §6).

    ``trapezoid(mious, budgets) / (full_miou * (budgets[-1] - budgets[0]))``: 1.0 means as good as the fully
    supervised model at every step of the budget range.

    Args:
        budgets (Sequence[float]): labeled budget (e.g. clicks) at each round, strictly increasing, at least two.
        mious (Sequence[float]): mIoU after each round, same length.
        full_miou: mIoU of the fully supervised model, a number ``> 0`` (or a 0-d tensor).

    Returns:
        float

    Example:
        >>> aualc([0, 10, 20], [0.2, 0.4, 0.6], full_miou=0.8)
        0.5
    """
    b = _real_vector(budgets, "budgets")
    m = _real_vector(mious, "mious")
    if b.ndim != 1 or m.ndim != 1 or b.numel() != m.numel():
        raise ValueError(f"Expected `budgets` and `mious` to be 1-D of the same length, but got shapes "
                         f"{tuple(b.shape)} and {tuple(m.shape)}")
    if b.numel() < 2:
        raise ValueError(f"Expected at least two rounds to integrate over, but got {b.numel()}")
    if not (all_finite(b) and all_finite(m)):
        raise ValueError("Expected `budgets` and `mious` to be finite, but found NaN or inf")
    if not bool((b[1:] > b[:-1]).all()):
        raise ValueError(f"Expected `budgets` to be strictly increasing, but got {b.tolist()}")
    if isinstance(full_miou, Tensor) and full_miou.ndim == 0 and not full_miou.is_complex():
        full_miou = full_miou.item()
    if isinstance(full_miou, bool) or not isinstance(full_miou, numbers.Real):
        what = (f"a tensor of shape {tuple(full_miou.shape)}" if isinstance(full_miou, Tensor)
                else f"{type(full_miou).__name__} {full_miou!r}")
        raise TypeError(f"Expected argument `full_miou` to be a number, but got {what}")
    full = float(full_miou)
    if not 0 < full < float("inf"):
        raise ValueError(f"Expected `full_miou` to be a positive finite number, but got {full_miou!r}")
    area = torch.trapezoid(m, b)
    return float(area / (full * (b[-1] - b[0])))
