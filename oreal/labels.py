"""From a :class:`oreal.Selection` to what an annotation tool and a training loop need.

- :func:`region_masks`: the pixel mask of each pick (one ``(H, W)`` plane per pick, in pick order).
- :func:`selection_mask`: the picks as an ``(N, S)`` bool mask, to OR into the labeled set passed as ``exclude``.
- :func:`partial_labels`: the training label map: every pixel of a labeled superpixel gets its class, every other
  pixel ``ignore_index``.
- :func:`relabel_superpixels`: superpixel maps as tools produce them (scikit-image SLIC starts at 1, OpenCV at 0,
  others leave gaps) made contiguous per image, with the ``S`` that :func:`oreal.select` needs.

One round of an active-learning loop with these::

    labeled = torch.zeros(N, S, dtype=torch.bool)         # nothing labeled yet
    sp_labels = torch.full((N, S), -1)                    # class of each labeled superpixel, -1 = unlabeled
    sel = oreal.select(probs, sp_map, labeled_counts, budget, num_superpixels=S, exclude=labeled)
    masks = oreal.labels.region_masks(sel, sp_map)        # (B, H, W): show these to the annotator
    sp_labels[sel.image, sel.superpixel] = answers        # (B,) classes they gave, -1 = nothing to label
    labeled |= oreal.labels.selection_mask(sel, N, S)
    target = oreal.labels.partial_labels(sp_map, sp_labels, ignore_index=255)   # train with ignore_index=255

Torch only; results live on ``sp_map``'s device; inputs are never modified.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from oreal._checks import (
    check_choice,
    check_int,
    check_int_tensor,
    check_same_device,
    check_shape,
    extremes,
    validate_ids,
    validate_nonnegative,
)
from oreal.aggregate import check_sp_map

__all__ = ["region_masks", "selection_mask", "partial_labels", "relabel_superpixels"]


def _picks(selection: Any) -> Tuple[Tensor, Tensor]:
    """``(image, superpixel)`` of a Selection (or any object with those two int64 ``(B,)`` attributes)."""
    try:
        image, superpixel = selection.image, selection.superpixel
    except AttributeError:
        raise TypeError(f"Expected argument `selection` to be an oreal.Selection (with `image` and `superpixel`), "
                        f"but got {type(selection).__name__}") from None
    check_int_tensor(image, "selection.image", ndim=1)
    check_int_tensor(superpixel, "selection.superpixel", ndim=1)
    check_shape(superpixel, "selection.superpixel", tuple(image.shape), "to match selection.image")
    return image.long(), superpixel.long()


def region_masks(selection: Any, sp_map: Tensor, *, unit: str = "superpixel", validate_args: bool = True) -> Tensor:
    """The pixel mask of each pick of ``selection``, in pick order.

    ``masks[b, h, w] = sp_map[image[b], h, w] == superpixel[b]`` (``unit="superpixel"``), or, for pixel-level
    selections (``balent_pixel``, whose ``superpixel`` is the flat pixel index ``h * W + w``, ``unit="pixel"``),
    the single pixel ``(superpixel[b] // W, superpixel[b] % W)``.

    ``selection.image`` indexes the first dimension of ``sp_map``: for a selection from
    :class:`oreal.stream.StreamingSelector`, whose ``image`` holds the global ids given with the batches, pass the
    maps stacked so that row ``i`` is image id ``i`` (with ids = dataset indices, the dataset's maps in order).

    Args:
        selection (oreal.Selection): the picks; ``image`` and ``superpixel`` int64 ``(B,)``.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel (with
            ``unit="pixel"`` only its shape and device are used).
        unit: ``"superpixel"`` or ``"pixel"``.
        validate_args: check that every pick lies in ``sp_map`` (image in ``[0, N)``; a superpixel present in its
            image, or a pixel index in ``[0, H * W)``); host syncs.

    Returns:
        Tensor[B, H, W]: bool, on ``sp_map.device``. Deterministic; memory ``B * H * W`` bytes.

    Example:
        >>> import oreal
        >>> g = torch.Generator().manual_seed(42)
        >>> sp_map = torch.tensor([[[0, 0, 1], [2, 2, 1]], [[0, 1, 1], [0, 1, -1]]])  # 2 images, 2 x 3 pixels
        >>> probs = torch.randn(2, 3, 2, 3, generator=g).softmax(dim=1)
        >>> sel = oreal.strategies.query("entropy", probs=probs, sp_map=sp_map, num_superpixels=3, budget=2)
        >>> sel.image.tolist(), sel.superpixel.tolist()
        ([1, 1], [0, 1])
        >>> region_masks(sel, sp_map).int()
        tensor([[[1, 0, 0],
                 [1, 0, 0]],
        <BLANKLINE>
                [[0, 1, 1],
                 [0, 1, 0]]], dtype=torch.int32)
        >>> region_masks(oreal.Selection(*[torch.tensor([1])] * 2, torch.tensor([-1]), torch.tensor([0.])),
        ...              sp_map, unit="pixel").int()   # pixel-level pick: flat index 1 of image 1
        tensor([[[0, 1, 0],
                 [0, 0, 0]]], dtype=torch.int32)
    """
    image, superpixel = _picks(selection)
    check_choice(unit, "unit", ("superpixel", "pixel"))
    check_int_tensor(sp_map, "sp_map", ndim=3)
    n, h, w = sp_map.shape
    image, superpixel = image.to(sp_map.device), superpixel.to(sp_map.device)
    if validate_args:
        validate_ids(image, "selection.image", 0, n, "image indices of sp_map")
        if unit == "pixel":
            validate_ids(superpixel, "selection.superpixel", 0, h * w, "flat pixel indices h * W + w")
        else:
            validate_nonnegative(superpixel, "selection.superpixel")
    if unit == "pixel":
        masks = torch.zeros(image.shape[0], h * w, dtype=torch.bool, device=sp_map.device)
        masks[torch.arange(image.shape[0], device=sp_map.device), superpixel] = True
        return masks.reshape(-1, h, w)
    masks = sp_map[image] == superpixel[:, None, None]
    if validate_args and image.numel():
        empty = ~masks.flatten(1).any(1)
        if bool(empty.any()):
            b = int(empty.nonzero()[0, 0])
            raise ValueError(f"Expected every pick to be a superpixel present in its image, but pick {b} (image "
                             f"{int(image[b])}, superpixel {int(superpixel[b])}) has no pixel in sp_map; was the "
                             f"selection made with this sp_map (rows = image ids)?")
    return masks


def selection_mask(selection: Any, num_images: int, num_superpixels: int, *, validate_args: bool = True) -> Tensor:
    """The picks as a bool ``(N, S)`` mask: ``mask[image[b], superpixel[b]] = True`` for every pick ``b``.

    OR it into the labeled set you pass as ``exclude`` next round (``labeled |= selection_mask(sel, N, S)``).
    For pixel-level selections (``balent_pixel``) pass ``num_superpixels = H * W`` and reshape the result to
    ``(N, H, W)``, the ``exclude`` that strategy takes.

    Args:
        selection (oreal.Selection): the picks; ``image`` and ``superpixel`` int64 ``(B,)``.
        num_images: ``N``, rows of the mask (image ids must be below it).
        num_superpixels: ``S``, columns of the mask.
        validate_args: check that ids lie in ``[0, N)`` and ``[0, S)`` (host sync).

    Returns:
        Tensor[N, S]: bool, on ``selection.image.device``. Repeated picks set the same entry.

    Example:
        >>> import oreal
        >>> sel = oreal.Selection(torch.tensor([1, 0]), torch.tensor([2, 0]), torch.tensor([-1, -1]),
        ...                       torch.tensor([0.9, 0.5]))
        >>> selection_mask(sel, 2, 3)
        tensor([[ True, False, False],
                [False, False,  True]])
    """
    image, superpixel = _picks(selection)
    num_images = check_int(num_images, "num_images", minimum=0)
    num_superpixels = check_int(num_superpixels, "num_superpixels", minimum=1)
    check_same_device(superpixel, "selection.superpixel", image, "selection.image")
    if validate_args:
        validate_ids(image, "selection.image", 0, num_images, "image ids")
        validate_ids(superpixel, "selection.superpixel", 0, num_superpixels, "superpixel ids")
    mask = torch.zeros(num_images, num_superpixels, dtype=torch.bool, device=image.device)
    mask[image, superpixel] = True
    return mask


def partial_labels(sp_map: Tensor, sp_labels: Tensor, *, ignore_index: int = 255,
                   validate_args: bool = True) -> Tensor:
    """Training label maps from superpixel labels: ``out[n, h, w] = sp_labels[n, sp_map[n, h, w]]`` where that is
    ``>= 0``, ``ignore_index`` elsewhere (unlabeled superpixels, ``-1`` pixels of ``sp_map``).

    Train on it with ``CrossEntropyLoss(ignore_index=ignore_index)``.

    Args:
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)``, ``-1`` for no superpixel.
        sp_labels (Tensor[N, S]): integer class of each superpixel, ``-1`` = unlabeled (or labeled but with nothing
            to label, e.g. a superpixel whose pixels are all void).
        ignore_index: the value written to every pixel without a label (any integer).
        validate_args: check the ids of ``sp_map`` and that ``sp_labels >= -1`` (host syncs).

    Returns:
        Tensor[N, H, W]: int64, on ``sp_map.device``. Deterministic.

    Example:
        >>> sp_map = torch.tensor([[[0, 0, 1], [2, 2, -1]]])
        >>> partial_labels(sp_map, torch.tensor([[4, -1, 0]]), ignore_index=255)
        tensor([[[  4,   4, 255],
                 [  0,   0, 255]]])
    """
    check_int_tensor(sp_map, "sp_map", ndim=3)
    check_int_tensor(sp_labels, "sp_labels", ndim=2)
    ignore_index = check_int(ignore_index, "ignore_index", minimum=-(2 ** 63))
    n, s = sp_map.shape[0], sp_labels.shape[1]
    if sp_labels.shape[0] != n or s == 0:
        raise ValueError(f"`sp_labels` must have shape (N, S) with N = {n} images to match sp_map and S >= 1, "
                         f"got {tuple(sp_labels.shape)}")
    check_same_device(sp_labels, "sp_labels", sp_map, "sp_map")
    check_sp_map(sp_map, s, validate_args=validate_args)
    if validate_args and sp_labels.numel() and int(sp_labels.min()) < -1:
        raise ValueError(f"Expected `sp_labels` to hold class ids >= 0 or -1 (unlabeled), but found "
                         f"{int(sp_labels.min())}")
    lab = sp_labels.long()
    lab = torch.where(lab >= 0, lab, ignore_index)
    lab = torch.cat([lab, lab.new_full((n, 1), ignore_index)], 1)  # column S: pixels with sp id -1
    idx = torch.where(sp_map >= 0, sp_map.long(), s)
    return torch.gather(lab, 1, idx.reshape(n, idx.shape[1] * idx.shape[2])).reshape(sp_map.shape)


def relabel_superpixels(sp_map: Any, *, ignore: Optional[int] = None) -> Tuple[Tensor, int]:
    """Make superpixel ids contiguous per image: ``0 .. k_n - 1`` in **sorted order of the original ids** (ours).

    The id of each pixel becomes the rank of its id among the ids present in its image, so a map from scikit-image
    SLIC (``start_label=1``) has 1 subtracted, an OpenCV map (ids from 0, no gaps) is unchanged, and a map with
    gaps is compacted. ``-1`` (no superpixel) stays ``-1``; ``ignore`` names one more id to turn into ``-1`` (e.g.
    ``0`` where a tool marks unsegmented pixels with 0). ``S = max_n k_n`` is the ``num_superpixels`` to pass to
    :func:`oreal.select`; images with fewer superpixels leave the ids ``k_n .. S - 1`` empty, and empty
    superpixels are never picked. A pick's id maps back to the original through the sorted unique ids of its image.

    Args:
        sp_map (Tensor[N, H, W] or array-like): integer ids ``>= 0`` or ``-1`` (a numpy array is accepted). Not
            modified.
        ignore: an id to treat as "no superpixel" (mapped to ``-1``), or ``None``.

    Returns:
        (Tensor[N, H, W], int): the new map (int64, a new tensor on the input's device) and ``S`` (``0`` when no
        image has a superpixel). Deterministic; one ``torch.unique`` over the pool (host sync).

    Example:
        >>> sp = torch.tensor([[[1, 1, 2], [5, 5, 2]], [[3, 3, 3], [7, -1, 7]]])  # SLIC-style ids from 1, gaps
        >>> new, S = relabel_superpixels(sp)
        >>> new.tolist(), S
        ([[[0, 0, 1], [2, 2, 1]], [[0, 0, 0], [1, -1, 1]]], 3)
        >>> relabel_superpixels(sp, ignore=3)[0][1].tolist()
        [[-1, -1, -1], [0, -1, 0]]
    """
    if not isinstance(sp_map, Tensor):
        try:
            sp_map = torch.as_tensor(sp_map)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"Expected argument `sp_map` to be a torch.Tensor or an integer array, but got "
                            f"{type(sp_map).__name__}") from None
    check_int_tensor(sp_map, "sp_map", ndim=3)
    if ignore is not None:
        ignore = check_int(ignore, "ignore", minimum=-(2 ** 63))
    n = sp_map.shape[0]
    x = sp_map.long()
    if ignore is not None:
        x = torch.where(x == ignore, -1, x)
    if x.numel() == 0:
        return x.clone(), 0
    lo, hi = (int(v) for v in extremes(x))
    if lo < -1:
        raise ValueError(f"Expected `sp_map` to hold superpixel ids >= 0 or -1 (no superpixel), but found {lo}")
    valid = x >= 0
    span = hi + 1  # ids of image i map to keys i * span + id, so one sorted unique ranks every image's ids
    if n * span >= 2 ** 62:
        raise ValueError(f"Superpixel ids up to {hi} over {n} images are too large to relabel in int64 keys")
    img = torch.arange(n, device=x.device).view(n, 1, 1)
    keys = torch.where(valid, img * span + x, -1)
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    has_invalid = bool(uniq[0] < 0)
    uniq = uniq[1:] if has_invalid else uniq
    inverse = inverse - int(has_invalid)
    counts = torch.bincount(uniq // span, minlength=n) if uniq.numel() else torch.zeros(n, dtype=torch.long,
                                                                                        device=x.device)
    first = torch.cumsum(counts, 0) - counts  # rank of the first id of each image among all keys
    out = torch.where(valid, inverse - first.view(n, 1, 1), -1)
    return out, int(counts.max()) if n else 0
