"""Feature machinery shared by the prototype methods of :mod:`oreal.weak` and :mod:`oreal.semi`.

Features come from a model layer, ``(N, D, h, w)``, often at a lower resolution than the label map
``(N, H, W)``. They are never upsampled as a whole: a block of label pixels (flat positions
``p = n * H * W + y * W + x``) reads its feature vectors on demand, bilinearly interpolated exactly as
``F.interpolate(features, (H, W), mode="bilinear", align_corners=False)`` would give them, or from the cell that
holds the pixel centre (``mode="nearest"``, ``F.interpolate``'s ``"nearest-exact"``). Each vector is then
L2-normalised, so a dot product is a cosine similarity. The feature map is laid out once channels-last
(:func:`grid`, one copy of the input's size) so that each vector is a contiguous row; the extra memory of a
block is a few ``block_size x D`` (the four bilinear corners); nothing of size ``pixels x pixels`` or
``D x H x W`` is ever built. ``benchmarks/bench_weak_semi.py`` times block sizes: on the shared 2-core
development machine ``2^12`` and ``2^16`` ran within 25% of the default ``2^14``, ``2^10`` up to 1.8x slower
(per-block overhead); ``2^14`` holds 16 MiB per temporary at ``D = 256``.
"""

from __future__ import annotations

import numbers
from typing import Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from oreal._checks import check_choice, check_float, check_int, compute_dtype

MODES = ("bilinear", "nearest")

#: Default number of label pixels per block: ``block_size x D`` values are held per block and class.
BLOCK_SIZE = 1 << 14

#: ``F.normalize``'s floor on the norm: an all-zero feature vector stays zero (cosine similarity 0 to anything).
EPS = 1e-12


class Grid(NamedTuple):
    """A feature map laid out for row gathers: ``table (N * h * w, D)`` in the compute dtype, and its size."""

    table: Tensor
    height: int
    width: int


def check_features(features: object, n: int, mode: str, block_size: int) -> Tuple[Tensor, int]:
    """Check ``features (N, D, h, w)`` against the batch size of the labels, the mode and the block size."""
    feats = check_float(features, "features", ndim=4)
    if feats.shape[0] != n:
        raise ValueError(f"Expected argument `features` to have shape (N, D, h, w) with N = {n} to match the "
                         f"label map, but got {tuple(feats.shape)}")
    if min(feats.shape[1:]) < 1:
        raise ValueError(f"Expected argument `features` to have D, h, w >= 1, but got shape {tuple(feats.shape)}")
    check_choice(mode, "mode", MODES)
    return feats, check_int(block_size, "block_size", minimum=1)


def grid(features: Tensor) -> Grid:
    """Channels-last rows of ``features (N, D, h, w)``: one copy of the input's size (none when it already is
    channels-last in the compute dtype), so that each pixel's vector is one contiguous row to gather."""
    n, dim, h, w = features.shape
    table = features.permute(0, 2, 3, 1).to(compute_dtype(features)).reshape(n * h * w, dim)
    return Grid(table, h, w)


def check_fraction(x: object, name: str, *, allow_none: bool = False) -> Optional[float]:
    """A plain number in ``[0, 1]`` (or None when ``allow_none``)."""
    if x is None and allow_none:
        return None
    what = "None or a number" if allow_none else "a number"
    if isinstance(x, bool) or not isinstance(x, numbers.Real):  # numpy scalars too
        raise TypeError(f"Expected argument `{name}` to be {what} in [0, 1], but got {type(x).__name__} {x!r}")
    if not 0.0 <= x <= 1.0:  # NaN fails this too
        raise ValueError(f"Expected argument `{name}` to be {what} in [0, 1], but got {x!r}")
    return float(x)


def blocks(total: int, block_size: int) -> Iterator[slice]:
    """Ranges ``[lo, hi)`` of at most ``block_size`` flat positions covering ``[0, total)``, as slices."""
    for lo in range(0, total, block_size):
        yield slice(lo, min(lo + block_size, total))


def _source(out_pos: Tensor, size_in: int, size_out: int, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """Bilinear source cells and weight of output rows (or columns) ``out_pos``, ``align_corners=False``."""
    src = ((out_pos.to(dtype) + 0.5) * (size_in / size_out) - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(size_in - 1)
    hi = (lo + 1).clamp_max(size_in - 1)
    return lo, hi, src - lo.to(dtype)


def pixel_features(features: Grid, pos: Tensor, height: int, width: int, mode: str) -> Tensor:
    """L2-normalised feature vectors ``(b, D)`` of label pixels at flat positions ``pos (b,)``.

    ``pos = n * H * W + y * W + x`` for a label map of size ``(H, W)``; ``features`` is a :func:`grid`.
    """
    table, h, w = features
    dtype = table.dtype
    n = pos // (height * width)
    y = (pos // width) % height
    x = pos % width
    if mode == "nearest":
        cy = ((y.to(torch.float64) + 0.5) * (h / height)).floor().long().clamp_max(h - 1)
        cx = ((x.to(torch.float64) + 0.5) * (w / width)).floor().long().clamp_max(w - 1)
        out = table[(n * h + cy) * w + cx]
    else:
        y0, y1, wy = _source(y, h, height, dtype)
        x0, x1, wx = _source(x, w, width, dtype)
        wy, wx = wy[:, None], wx[:, None]
        r0, r1 = (n * h + y0) * w, (n * h + y1) * w
        top = torch.lerp(table[r0 + x0], table[r0 + x1], wx)
        bottom = torch.lerp(table[r1 + x0], table[r1 + x1], wx)
        out = torch.lerp(top, bottom, wy)
    return F.normalize(out, dim=1, eps=EPS)
