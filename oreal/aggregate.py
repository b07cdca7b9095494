"""Superpixel reductions (SPEC sections 2 and 6).

A superpixel map ``sp_map`` is an integer ``(N, H, W)`` tensor of ids local to each image, in ``[0, S)``;
``-1`` marks pixels that belong to no superpixel and are ignored. ``S = num_superpixels`` is an argument, never
computed from the map (that would sync with the host). Results are indexed ``(N, S)``, or ``(N, S, C)`` for
scores with a class column, so ``out.reshape(N * S, ...)`` is indexed by the global id ``g = n * S + s``.

Empty superpixels (no pixel in the map) get the value 0 and a pixel count of 0; they are never candidates for
selection (see :func:`oreal.candidates`).

Determinism: max and min are exact and deterministic on every device. Sums and means add floating point
numbers through ``scatter_add``, whose order is not fixed on CUDA, so on GPUs they may differ between calls in the
last bits; on the CPU they add in pixel order, deterministic and the same whatever the number of threads.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from oreal._checks import (
    all_finite,
    check_choice,
    check_float,
    check_ignore_index,
    check_int,
    check_int_tensor,
    check_same_device,
    check_shape,
    compute_dtype,
    validate_ids,
)

__all__ = [
    "aggregate",
    "superpixel_max",
    "superpixel_mean",
    "superpixel_min",
    "superpixel_sum",
    "superpixel_counts",
    "superpixel_label_counts",
    "dominant_labels",
]

REDUCTIONS = ("max", "mean", "min", "sum")


def check_sp_map(sp_map: Tensor, num_superpixels: int, *, shape: Optional[tuple] = None,
                 like: Optional[Tensor] = None, like_name: str = "probs", validate_args: bool = True) -> int:
    """Check ``sp_map`` (and ``num_superpixels``, which is returned as an int)."""
    check_int_tensor(sp_map, "sp_map", ndim=3)
    num_superpixels = check_int(num_superpixels, "num_superpixels", minimum=1)
    if shape is not None:
        check_shape(sp_map, "sp_map", shape, f"= (N, H, W) to match {like_name}")
    if like is not None:
        check_same_device(sp_map, "sp_map", like, like_name)
    if validate_args:
        validate_ids(sp_map, "sp_map", 0, num_superpixels, "superpixel ids", extra=-1)
    return num_superpixels


def flat_index(sp_map: Tensor, num_superpixels: int) -> Tensor:
    """``(N, H*W)`` int64 ids with ``-1`` sent to the spill bin ``S`` (dropped after reducing)."""
    sp = sp_map.reshape(sp_map.shape[0], sp_map.shape[1] * sp_map.shape[2]).long()  # not (0, -1): N may be 0
    return torch.where(sp < 0, num_superpixels, sp)


_IDENTITY = {"max": float("-inf"), "min": float("inf"), "sum": 0, "mean": 0}

# Pixels per slab when reducing class planes on the CPU: a slab is as many whole images as fit in CPU_CHUNK pixels,
# or, where fewer than two fit, a run of CPU_CHUNK pixels of one image (max, min) or the same run of pixels of up to
# CPU_IMAGES images side by side, CPU_CHUNK pixels in all (sums). Every class of a slab is transformed at once into
# scratch buffers of ``C * CPU_CHUNK`` values (9.5 MiB of float32 at C = 19), reused for every slab; where a transform
# needs several buffers (mean aggregation's binary entropy: three), slabs are half as long, so that they stay in a
# 32 MiB last-level cache (0.84 to 0.91 of the time of full-length slabs). Every slab costs a few parallel regions
# and ~C + 3 kernel calls, which dominate in shorter slabs (and under load from other processes).
# `benchmarks/bench_select.py --chunk N` measures it.
CPU_CHUNK = 1 << 17

# Images side by side in a slab of large images, for sums: each image is a row of the slab's scatters, so torch's
# threads can share them (one row per image), and every image's pixels are still added in pixel order, slab after
# slab. Max and min have rows enough (CPU_PARTS per image) and ran 5 to 10 % slower side by side.
CPU_IMAGES = 4

# Scatter kernels on the CPU are split over threads by rows only (one thread reduces a row in index order), so for
# max and min every slab's run of pixels of an image is reduced as CPU_PARTS rows of equal length into as many partial
# results, combined at the end: torch's threads share the rows, and a single image uses both cores as well. The split
# depends on the shapes only, and max and min are exact, so the result is the same bits whatever the number of
# threads. Sums keep one row per image, added in pixel order: the same values in the same order give the same sum
# wherever they lie in the image (two partial sums would group the values of a superpixel by its position).
CPU_PARTS = 4


def _scatter_into(out: Tensor, index: Tensor, src: Tensor, reduce: str, dim: int = -1) -> None:
    """Reduce ``src`` into ``out`` along ``dim`` (the last by default) by ``index`` (the same shape as ``src``)."""
    if reduce in ("sum", "mean"):
        out.scatter_add_(dim, index, src)
    else:
        out.scatter_reduce_(dim, index, src, "amax" if reduce == "max" else "amin", include_self=True)


def _finish(out: Tensor, reduce: str, counts: Tensor) -> Tensor:
    """Empty superpixels (``counts == 0``) get 0; means divide by the counts."""
    if reduce == "mean":
        return out / counts.clamp_min(1)
    return torch.where(counts > 0, out, torch.zeros((), dtype=out.dtype, device=out.device))


def scatter_rows(src: Tensor, index: Tensor, num_superpixels: int, reduce: str) -> Tensor:
    """Reduce ``src (N, P)`` into ``(N, S)`` by ``index (N, P)`` (values in ``[0, S]``, S = spill bin).

    The reduction starts from its identity with ``include_self=True`` (several times faster on the CPU than
    ``include_self=False``); empty bins are then set to 0 and means divided, using the pixel counts.
    """
    out = torch.full((src.shape[0], num_superpixels + 1), _IDENTITY[reduce], dtype=src.dtype, device=src.device)
    _scatter_into(out, index, src, reduce)
    out = out[:, :num_superpixels]
    return out if reduce == "sum" else _finish(out, reduce, count_rows(index, num_superpixels))


def count_rows(index: Tensor, num_superpixels: int) -> Tensor:
    """Pixels per superpixel, ``(N, S)`` int64, from a :func:`flat_index`."""
    ones = torch.ones((), dtype=torch.long, device=index.device).expand_as(index)  # no index-sized copy
    return scatter_rows(ones, index, num_superpixels, "sum")


def _combine(acc: Tensor, reduce: str) -> Tensor:
    """The partial results ``(N, C, parts, S)`` of a max or min combined (sums have one part)."""
    if acc.shape[2] == 1:
        return acc[:, :, 0]
    return acc.amax(2) if reduce == "max" else acc.amin(2)


def _slabs(n: int, pixels: int, on_cpu: bool, chunk: int, side: int) -> list:
    """``(rows, columns)`` slices of the slabs: on the CPU as many whole images as fit in ``chunk`` pixels if that is
    at least two (or all there are), else the same run of pixels of up to ``side`` images, ``chunk`` pixels in all,
    the runs of an image in pixel order; on GPUs everything at once."""
    if not on_cpu or not n or not pixels:
        return [(slice(0, n), slice(0, pixels))] if n and pixels else []
    group = chunk // pixels
    if group >= min(n, 2):
        return [(slice(r, min(r + group, n)), slice(0, pixels)) for r in range(0, n, group)]
    side = min(n, side)
    run = max(1, chunk // side)
    return [(slice(r, min(r + side, n)), slice(lo, min(lo + run, pixels)))
            for r in range(0, n, side) for lo in range(0, pixels, run)]


def per_class(score: Tensor, index: Tensor, num_superpixels: int, reduce: str, identity: Optional[float] = None, *,
              transform: Optional[Callable[[Tensor, List[Tensor], tuple], Tensor]] = None, scratch: int = 1,
              visit: Optional[Callable[[Tensor, Tensor], None]] = None, with_counts: bool = False):
    """Reduce a ``(N, C, H, W)`` score class by class into ``(N, S, C)``, without a full-size temporary.

    The values are visited in slabs ``(N', C', P')``: on the CPU every class of several whole images, or of a run of
    pixels of one image or, for sums, of up to ``CPU_IMAGES`` images side by side (:func:`_slabs`), on GPUs one class
    plane at a time; the extra memory is ``scratch`` slab-sized buffers instead of an expanded index or a transformed
    copy. Before the reduction a slab may be rewritten, all its classes at once, by ``transform(slab, buffers, where)``
    (``slab`` in the input dtype, ``buffers`` a list of ``scratch`` same-shaped tensors in the compute dtype that it may
    write into, ``where`` the ``(rows, columns)`` slices of the images and flattened pixel positions ``h * W + w`` the
    slab covers; it returns the values, in the compute dtype; half inputs are upcast where it does not transform).
    ``visit(slab, values)``, when given, sees every raw input slab, with all classes, and its transformed values, to
    check them while they are in cache (CPU only; ``ValueError`` on other devices). ``identity``, when given, is a start
    value no pixel can beat (0 for a ``max`` of ``min(p, 1 - p)``): empty superpixels then keep it and the pixel-count
    fix-up is skipped; otherwise empty superpixels get 0. ``with_counts=True`` also returns the pixel counts ``(N, S)``
    int64 (those of :func:`count_rows`), computed along.

    On the CPU torch's threads share the rows of every scatter, each row reduced by one thread in pixel order: for max
    and min each image's pixels of a slab are ``CPU_PARTS`` rows with partial results combined at the end, for sums
    the images are the rows. A score whose classes are innermost in memory (``channels_last``) keeps that layout: one
    scatter along the pixels reduces every class of a slab, each class in pixel order, and the threads share the
    classes. The result does not depend on the number of threads or on the layout.
    """
    n, c = score.shape[:2]
    dtype = compute_dtype(score)
    flat = score.reshape(n, c, score.shape[-2] * score.shape[-1])
    pixels = flat.shape[-1]
    on_cpu = score.device.type == "cpu"
    if visit is not None and not on_cpu:
        raise ValueError("per_class: `visit` needs whole-class slabs, which only the CPU path uses")
    block = max(c, 1) if on_cpu else 1
    # classes innermost in memory (channels_last): slabs, buffers and accumulators keep that layout, and one scatter
    # along the pixels reduces all classes, without transposing the input; its classes are what the threads share
    inner = on_cpu and c > 1 and flat.stride(1) == 1
    parts = CPU_PARTS if on_cpu and reduce in ("max", "min") and not inner else 1
    start = _IDENTITY[reduce] if identity is None else identity
    acc_shape = (n, parts, num_superpixels + 1, c) if inner else (n, c, parts, num_superpixels + 1)
    acc = torch.full(acc_shape, start, dtype=dtype, device=score.device)
    need_counts = with_counts or (reduce != "sum" and identity is None)
    counts = torch.zeros(n, parts, num_superpixels + 1, dtype=torch.long, device=score.device) if need_counts else None
    chunk = CPU_CHUNK if scratch <= 1 else max(1, CPU_CHUNK // 2)
    slabs = _slabs(n, pixels, on_cpu, chunk, 1 if parts > 1 else CPU_IMAGES)
    shape = (max((r.stop - r.start for r, _ in slabs), default=0), block,
             max((p.stop - p.start for _, p in slabs), default=0))
    buffers = [torch.empty((shape[0], shape[2], shape[1]), dtype=dtype, device=score.device).transpose(1, 2)
               if inner else torch.empty(shape, dtype=dtype, device=score.device) for _ in range(max(1, scratch))]
    for rows, columns in slabs:
        idx = index[rows, columns]
        split = parts if idx.shape[1] % parts == 0 else 1  # a slab that does not split evenly goes to part 0
        idx = idx.reshape(idx.shape[0], split, idx.shape[1] // split)
        if need_counts:
            ones = torch.ones((), dtype=counts.dtype, device=idx.device).expand_as(idx)  # no index-sized copy
            counts[rows, :split].scatter_add_(-1, idx, ones)
        for k0 in range(0, c, block):
            slab = flat[rows, k0:k0 + block, columns]
            views = [b[: slab.shape[0], : slab.shape[1], : slab.shape[2]] for b in buffers]
            if transform is not None:
                values = transform(slab, views, (rows, columns))
            else:  # half inputs upcast
                values = slab if slab.dtype == dtype else views[0].copy_(slab)
            if visit is not None:
                visit(slab, values)
            # one scatter for every class of the slab, each (image, class, part) row reduced in pixel order
            if inner:  # (N', split, P' / split, C) values into (N', split, S + 1, C)
                src = values.transpose(1, 2).reshape(*idx.shape, c)
                _scatter_into(acc[rows, :split], idx.unsqueeze(-1).expand_as(src), src, reduce, dim=2)
            else:  # (N', C', split, P' / split) values into (N', C', split, S + 1)
                src = values.reshape(values.shape[0], values.shape[1], *idx.shape[1:])
                _scatter_into(acc[rows, k0:k0 + block, :split], idx.unsqueeze(1).expand_as(src), src, reduce)
    if inner:
        acc = acc.permute(0, 3, 1, 2)
    out = _combine(acc[..., :num_superpixels], reduce)
    if counts is not None:
        counts = counts[..., :num_superpixels].sum(1)
    if reduce != "sum" and identity is None:
        out = _finish(out, reduce, counts[:, None])
    out = out.permute(0, 2, 1).contiguous()
    return (out, counts) if with_counts else out


def aggregate(score: Tensor, sp_map: Tensor, num_superpixels: int, reduce: str = "max", *,
              validate_args: bool = True) -> Tensor:
    """Reduce a pixel score over each superpixel: ``max``, ``mean``, ``min`` or ``sum`` over ``x in g``.

    Pixels with ``sp_map == -1`` are ignored; an empty superpixel gets 0.

    Args:
        score (Tensor[N, H, W] or Tensor[N, C, H, W]): a pixel score; with a class dimension every class column
            is reduced separately.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)`` or ``-1``.
        num_superpixels: ``S``, the number of superpixel ids per image.
        reduce: ``"max"``, ``"mean"``, ``"min"`` or ``"sum"``.
        validate_args: check that ids are in range (host sync).

    Returns:
        Tensor[N, S] or Tensor[N, S, C]: float32 for half inputs, else the score's dtype.

    Example:
        >>> score = torch.tensor([[[0.1, 0.9], [0.3, 0.5]]])
        >>> sp_map = torch.tensor([[[0, 0], [1, -1]]])
        >>> aggregate(score, sp_map, 3, "max")
        tensor([[0.9000, 0.3000, 0.0000]])
        >>> aggregate(score, sp_map, 3, "mean")
        tensor([[0.5000, 0.3000, 0.0000]])
    """
    check_float(score, "score")
    if score.ndim not in (3, 4):
        raise ValueError(f"Expected argument `score` to have shape (N, H, W) or (N, C, H, W), "
                         f"but got {tuple(score.shape)}")
    check_choice(reduce, "reduce", REDUCTIONS)
    spatial = (score.shape[0],) + tuple(score.shape[-2:])
    num_superpixels = check_sp_map(sp_map, num_superpixels, shape=spatial, like=score, like_name="score",
                                   validate_args=validate_args)
    if validate_args and not all_finite(score):
        raise ValueError("Expected `score` to contain only finite values, but found NaN or inf")
    index = flat_index(sp_map, num_superpixels)
    if score.ndim == 4:
        return per_class(score, index, num_superpixels, reduce)
    src = score.reshape(score.shape[0], score.shape[-2] * score.shape[-1]).to(compute_dtype(score))
    return scatter_rows(src, index, num_superpixels, reduce)


def superpixel_max(score: Tensor, sp_map: Tensor, num_superpixels: int, *, validate_args: bool = True) -> Tensor:
    """``max_{x in g} score(x)``; see :func:`aggregate`.

    Example:
        >>> superpixel_max(torch.tensor([[[0.1, 0.9]]]), torch.tensor([[[0, 0]]]), 1)
        tensor([[0.9000]])
    """
    return aggregate(score, sp_map, num_superpixels, "max", validate_args=validate_args)


def superpixel_mean(score: Tensor, sp_map: Tensor, num_superpixels: int, *, validate_args: bool = True) -> Tensor:
    """``mean_{x in g} score(x)``; see :func:`aggregate`.

    Example:
        >>> superpixel_mean(torch.tensor([[[0.1, 0.9]]]), torch.tensor([[[0, 0]]]), 1)
        tensor([[0.5000]])
    """
    return aggregate(score, sp_map, num_superpixels, "mean", validate_args=validate_args)


def superpixel_min(score: Tensor, sp_map: Tensor, num_superpixels: int, *, validate_args: bool = True) -> Tensor:
    """``min_{x in g} score(x)``; see :func:`aggregate`.

    Example:
        >>> superpixel_min(torch.tensor([[[0.1, 0.9]]]), torch.tensor([[[0, 0]]]), 1)
        tensor([[0.1000]])
    """
    return aggregate(score, sp_map, num_superpixels, "min", validate_args=validate_args)


def superpixel_sum(score: Tensor, sp_map: Tensor, num_superpixels: int, *, validate_args: bool = True) -> Tensor:
    """``sum_{x in g} score(x)``; see :func:`aggregate`.

    Example:
        >>> superpixel_sum(torch.tensor([[[0.25, 0.5]]]), torch.tensor([[[0, 0]]]), 1)
        tensor([[0.7500]])
    """
    return aggregate(score, sp_map, num_superpixels, "sum", validate_args=validate_args)


def superpixel_counts(sp_map: Tensor, num_superpixels: int, *, validate_args: bool = True) -> Tensor:
    """Number of pixels in each superpixel; ``-1`` pixels are not counted, so empty superpixels give 0.

    Args:
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)`` or ``-1``.
        num_superpixels: ``S``.
        validate_args: check that ids are in range (host sync).

    Returns:
        Tensor[N, S]: int64.

    Example:
        >>> superpixel_counts(torch.tensor([[[0, 0], [2, -1]]]), 3)
        tensor([[2, 0, 1]])
    """
    num_superpixels = check_sp_map(sp_map, num_superpixels, validate_args=validate_args)
    return count_rows(flat_index(sp_map, num_superpixels), num_superpixels)


def superpixel_label_counts(labels: Tensor, sp_map: Tensor, num_superpixels: int, num_classes: int, *,
                            ignore_index: int = 255, validate_args: bool = True) -> Tensor:
    """Histogram of ground-truth classes inside each superpixel.

    Args:
        labels (Tensor[N, H, W]): integer class ids in ``[0, C)`` or ``ignore_index``.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)`` or ``-1``.
        num_superpixels: ``S``.
        num_classes: ``C``.
        ignore_index: label value that is not counted (an integer outside ``[0, C)``).
        validate_args: check ids and labels are in range (host sync).

    Returns:
        Tensor[N, S, C]: int64 pixel counts.

    Example:
        >>> labels = torch.tensor([[[1, 1], [0, 255]]])
        >>> superpixel_label_counts(labels, torch.tensor([[[0, 0], [0, 1]]]), 2, 2)
        tensor([[[1, 2],
                 [0, 0]]])
    """
    check_int_tensor(labels, "labels", ndim=3)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    ignore_index = check_ignore_index(ignore_index, num_classes)
    num_superpixels = check_sp_map(sp_map, num_superpixels, shape=tuple(labels.shape), like=labels,
                                   like_name="labels", validate_args=validate_args)
    if validate_args:
        validate_ids(labels, "labels", 0, num_classes, "class ids", extra=ignore_index)
    n = labels.shape[0]
    index = flat_index(sp_map, num_superpixels)
    lab = labels.reshape(n, labels.shape[1] * labels.shape[2]).long()
    valid = (lab >= 0) & (lab < num_classes) & (lab != ignore_index)
    # One bin per (superpixel, class) plus a spill bin for ignored pixels and pixels outside any superpixel.
    spill = num_superpixels * num_classes
    key = torch.where(valid & (index < num_superpixels), index * num_classes + lab, spill)
    counts = scatter_rows(torch.ones_like(key), key, spill, "sum")
    return counts.reshape(n, num_superpixels, num_classes)


def dominant_labels(labels: Tensor, sp_map: Tensor, num_superpixels: int, num_classes: int, *,
                    ignore_index: int = 255, validate_args: bool = True) -> Tensor:
    """Dominant (most frequent) ground-truth class of each superpixel, the one-click annotation of SPEC §6.

    Ignored pixels do not vote; ties go to the lowest class id; a superpixel with no valid pixel gets ``-1``.

    Args:
        labels (Tensor[N, H, W]): integer class ids in ``[0, C)`` or ``ignore_index``.
        sp_map (Tensor[N, H, W]): integer superpixel ids in ``[0, S)`` or ``-1``.
        num_superpixels: ``S``.
        num_classes: ``C``.
        ignore_index: label value that does not vote (an integer outside ``[0, C)``).
        validate_args: check ids and labels are in range (host sync).

    Returns:
        Tensor[N, S]: int64 class ids or ``-1``.

    Example:
        >>> labels = torch.tensor([[[2, 1], [1, 2], [255, 255]]])
        >>> sp_map = torch.tensor([[[0, 0], [0, 0], [1, 1]]])
        >>> dominant_labels(labels, sp_map, 3, 3)  # 1 and 2 tie in superpixel 0; 1 and 2 are empty
        tensor([[ 1, -1, -1]])
    """
    counts = superpixel_label_counts(labels, sp_map, num_superpixels, num_classes, ignore_index=ignore_index,
                                     validate_args=validate_args)
    arg = counts.argmax(dim=-1)  # argmax returns the first maximal index: the lowest class id on ties
    return torch.where(counts.amax(dim=-1) > 0, arg, torch.full_like(arg, -1))
