"""Mean-field CRF refinement of segmentation probabilities, in a local window (SPEC section 5, Kasarla et al. 2019).

The region-based AL method of Kasarla et al. refines the network's predictions with a fully connected CRF
(Krähenbühl and Koltun 2011) before it measures superpixel uncertainty ("SP + CRF"). The CRF has the unary
``-ln p_i(l)`` of the network's probabilities and a Potts pairwise term weighted by two Gaussian kernels:

- spatial (smoothness): ``k_s(i, j) = w_s exp(-|x_i - x_j|^2 / (2 sigma_s^2))``
- bilateral (appearance): ``k_b(i, j) = w_b exp(-|x_i - x_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2))``

with ``x`` the pixel position (row, column, in pixels) and ``I`` the colour (in 0-255 units). Mean-field
inference starts from ``Q = p`` and repeats::

    Q_i(l) <- softmax_l( ln p_i(l) + sum_{j != i} k(i, j) Q_j(l) )

which is the Potts update ``exp(-U_i(l) - sum_j k(i, j) sum_{l' != l} Q_j(l'))`` with the label-independent term
``sum_j k(i, j)`` dropped (it cancels in the softmax).

**The approximation.** Exact dense inference sums over all pairs, ``O((HW)^2)`` per iteration. Like ConvCRF
(Teichmann and Cipolla 2018), :func:`crf_refine` sums only over ``j`` in a ``window x window`` square centred on
``i``: kernels are truncated to zero outside it. With a window of at least ``2 * max(H, W) - 1`` it is the exact
dense CRF (the tests compare it with a dense reference); with smaller windows the bilateral kernel, whose spatial
width (80 px by default) is larger than the window, acts as a colour-similarity kernel over the window.

**Downsampled messages** (``blur``, also as ConvCRF). With ``blur = b > 1`` the messages are computed on a grid
``b`` times coarser: ``Q`` and the colours are averaged over ``b x b`` cells (partial cells at the border average
their pixels), the windowed kernels are evaluated between cell centres (positions in full-resolution pixels, so
the sigmas keep their meaning and the window reaches ``b`` times farther), and each pixel receives its cell's
message. The unary and ``Q`` stay at full resolution. ``blur = 1`` is the plain windowed CRF above.

Cost: ``iterations * (window^2 - 1) * C * H * W / blur^2`` multiply-adds plus a few full-resolution passes per
iteration; kernels are computed once per call and shared by the iterations. Images are processed in blocks, so
the extra memory is bounded whatever ``N``. ``benchmarks/bench_crf.py`` measures a pool pass.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from oreal._checks import (
    check_float,
    check_images,
    check_int,
    check_number,
    compute_dtype,
    extremes,
    validate_probabilities,
)

__all__ = ["crf_refine", "CRF_DEFAULTS"]

#: Default kernel parameters: the appearance and smoothness kernels of Krähenbühl and Koltun 2011
#: (``w = 10, sigma_xy = 80, sigma_rgb = 13``; ``w = 3, sigma = 3``), 5 mean-field iterations, a 7 x 7 window on
#: the full-resolution grid (``blur = 1``).
CRF_DEFAULTS = {"iterations": 5, "window": 7, "blur": 1, "spatial_weight": 3.0, "spatial_sigma": 3.0,
                "bilateral_weight": 10.0, "bilateral_sigma_xy": 80.0, "bilateral_sigma_color": 13.0}

# Images per block: the kernels of a block (window^2 / 2 planes of H x W) stay below this many elements.
_BLOCK_ELEMENTS = 1 << 24


def check_crf_options(iterations: object, window: object, blur: object, spatial_weight: object,
                      spatial_sigma: object, bilateral_weight: object, bilateral_sigma_xy: object,
                      bilateral_sigma_color: object) -> Tuple[int, int, int, float, float, float, float, float]:
    """The CRF parameters, checked (shared by :func:`crf_refine` and the CRF strategies)."""
    iterations = check_int(iterations, "iterations", minimum=0)
    window = check_int(window, "window", minimum=1)
    if window % 2 == 0:
        raise ValueError(f"Expected argument `window` to be an odd integer (a square centred on the pixel), "
                         f"but got {window}")
    blur = check_int(blur, "blur", minimum=1)
    return (iterations, window, blur,
            check_number(spatial_weight, "spatial_weight", positive=False),
            check_number(spatial_sigma, "spatial_sigma", positive=True),
            check_number(bilateral_weight, "bilateral_weight", positive=False),
            check_number(bilateral_sigma_xy, "bilateral_sigma_xy", positive=True),
            check_number(bilateral_sigma_color, "bilateral_sigma_color", positive=True))


def check_crf_images(images: object, spatial: tuple, like: Tensor, validate_args: bool) -> Tensor:
    """``images`` fit ``probs`` (N, H, W, device); with ``validate_args``, floating point colours lie in [0, 1] and
    integer ones in [0, 255]."""
    images = check_images(images, spatial, like, "probs")
    if validate_args and images.numel() and images.dtype != torch.uint8:
        lo, hi = extremes(images)
        if images.is_floating_point():
            if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))) or lo < 0 or hi > 1:
                raise ValueError(f"Expected floating point `images` to hold colours in [0, 1] (integer images are "
                                 f"read as 0-255), but got values in [{float(lo):.4g}, {float(hi):.4g}]; divide "
                                 f"0-255 images by 255 or pass them as uint8")
        elif lo < 0 or hi > 255:
            raise ValueError(f"Expected integer `images` to hold colours in [0, 255], but got values in [{int(lo)}, "
                             f"{int(hi)}]; scale other ranges (e.g. 16-bit) to 0-255 or to floats in [0, 1]")
    return images


def _colours(images: Tensor, dtype: torch.dtype) -> Tensor:
    """``(N, channels, H, W)`` colours in 0-255 units in ``dtype``."""
    x = images.to(dtype)
    if images.is_floating_point():
        x = x * 255
    return (x if x.ndim == 4 else x.unsqueeze(1)).contiguous()


def _half_offsets(window: int) -> List[Tuple[int, int]]:
    """One offset ``(dy, dx)`` of each symmetric pair ``+-o`` in the window (the centre left out)."""
    r = window // 2
    return [(dy, dx) for dy in range(0, r + 1) for dx in range(-r, r + 1) if dy > 0 or dx > 0]


def _spans(dy: int, dx: int, h: int, w: int) -> Tuple[slice, slice, slice, slice]:
    """Row and column slices of the pixels ``i`` and their partners ``j = i + (dy, dx)`` inside the image."""
    return (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)),
            slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))


def _kernels(colours: Tensor, offsets: List[Tuple[int, int]], params: Tuple[float, ...], blur: int) -> List[Tensor]:
    """``k(i, i + o)`` for each offset ``o`` (in grid cells of ``blur`` pixels) on the cells where both ends lie in
    the image, ``(n, Hv, Wv)``."""
    w_s, sigma_s, w_b, sigma_xy, sigma_c = params
    h, w = colours.shape[-2:]
    out = []
    for dy, dx in offsets:
        yi, xi, yj, xj = _spans(dy, dx, h, w)
        d2 = float(dy * dy + dx * dx) * blur * blur
        diff = (colours[:, :, yi, xi] - colours[:, :, yj, xj]).square().sum(1)
        k = torch.exp(diff * (-0.5 / sigma_c ** 2) - d2 / (2 * sigma_xy ** 2)) * w_b
        out.append(k + w_s * math.exp(-d2 / (2 * sigma_s ** 2)))
    return out


def _coarse(x: Tensor, blur: int) -> Tensor:
    """Average over ``blur x blur`` cells; partial cells at the border average the pixels they have."""
    if blur == 1:
        return x
    h, w = x.shape[-2:]
    hc, wc = -(-h // blur), -(-w // blur)
    padded = F.pad(x, (0, wc * blur - w, 0, hc * blur - h))
    sums = padded[..., ::blur, ::blur].clone()
    for a in range(blur):  # strided slices in a fixed order (a reduction over the cell dims is much slower)
        for b in range(blur):
            if a or b:
                sums += padded[..., a::blur, b::blur]
    rows = torch.full((hc, 1), float(blur), dtype=x.dtype, device=x.device)
    rows[-1] = h - (hc - 1) * blur
    cols = torch.full((1, wc), float(blur), dtype=x.dtype, device=x.device)
    cols[0, -1] = w - (wc - 1) * blur
    return sums / (rows * cols)


def _fine(x: Tensor, blur: int, h: int, w: int) -> Tensor:
    """Each pixel takes its cell's value."""
    if blur == 1:
        return x
    *lead, hc, wc = x.shape
    cells = x[..., :, None, :, None].expand(*lead, hc, blur, wc, blur)
    return cells.reshape(*lead, hc * blur, wc * blur)[..., :h, :w]


def _mean_field(probs: Tensor, colours: Tensor, iterations: int, window: int, blur: int,
                params: Tuple[float, ...]) -> Tensor:
    h, w = probs.shape[-2:]
    colours = _coarse(colours, blur)
    # Offsets that reach past the (coarse) image pair no pixels.
    offsets = [(dy, dx) for dy, dx in _half_offsets(window) if dy < colours.shape[-2] and abs(dx) < colours.shape[-1]]
    kernels = _kernels(colours, offsets, params, blur)
    unary = torch.log(probs)
    q = probs
    for _ in range(iterations):
        cells = _coarse(q, blur)
        hc, wc = cells.shape[-2:]
        message = torch.zeros_like(cells)
        for (dy, dx), k in zip(offsets, kernels):
            yi, xi, yj, xj = _spans(dy, dx, hc, wc)
            k = k.unsqueeze(1)
            # k(i, j) = k(j, i): one kernel plane serves both directions of the pair.
            message[:, :, yi, xi].addcmul_(k, cells[:, :, yj, xj])
            message[:, :, yj, xj].addcmul_(k, cells[:, :, yi, xi])
        q = _softmax(unary + _fine(message, blur, h, w))
    return q


def _softmax(z: Tensor) -> Tensor:
    """Softmax over dim 1, written out: ``torch.softmax`` rounds differently depending on how many images it runs
    on, these elementwise steps and a reduction over a non-innermost dimension do not."""
    z = z - z.amax(1, keepdim=True)
    e = z.exp_()
    return e.div_(e.sum(1, keepdim=True))


def crf_refine(probs: Tensor, images: Tensor, *, iterations: int = 5, window: int = 7, blur: int = 1,
               spatial_weight: float = 3.0,
               spatial_sigma: float = 3.0, bilateral_weight: float = 10.0, bilateral_sigma_xy: float = 80.0,
               bilateral_sigma_color: float = 13.0, validate_args: bool = True) -> Tensor:
    """Refine softmax probabilities with a Potts CRF (spatial + bilateral Gaussian kernels), mean field in a window.

    See the module docstring for the model, the update and the window approximation. Every image is refined on
    its own, so the result for an image does not depend on the other images of the call (the same floats for
    any batching). Deterministic; runs on the input's device.

    Args:
        probs (Tensor[N, C, H, W]): softmax probabilities (half precision is computed in float32).
        images (Tensor[N, channels, H, W] or Tensor[N, H, W]): the images the probabilities belong to; integer
            dtypes are read as 0-255 colours, floating point ones as colours in ``[0, 1]``.
        iterations: mean-field iterations (``0`` returns ``probs`` in the compute dtype).
        window: odd side of the square of neighbours (grid cells) each pixel exchanges messages with; ``1`` = no
            pairwise term.
        blur: messages on a grid ``blur`` times coarser (see the module docstring); ``1`` = full resolution.
        spatial_weight, spatial_sigma: ``w_s`` and ``sigma_s`` (pixels) of the smoothness kernel.
        bilateral_weight, bilateral_sigma_xy, bilateral_sigma_color: ``w_b``, ``sigma_xy`` (pixels) and
            ``sigma_rgb`` (0-255 units) of the appearance kernel.
        validate_args: check probabilities and image values (host sync).

    Returns:
        Tensor[N, C, H, W]: refined probabilities (float32 for half inputs, else the input dtype).

    Example:
        >>> g = torch.Generator().manual_seed(42)
        >>> probs = torch.randn(1, 3, 6, 6, generator=g).softmax(dim=1)
        >>> images = torch.randint(0, 256, (1, 3, 6, 6), generator=g, dtype=torch.uint8)
        >>> refined = crf_refine(probs, images)
        >>> refined.shape, bool(torch.allclose(refined.sum(1), torch.ones(1, 6, 6)))
        (torch.Size([1, 3, 6, 6]), True)
        >>> torch.equal(crf_refine(probs, images, iterations=0), probs)
        True
    """
    check_float(probs, "probs", ndim=4)
    probs = probs.detach()  # refinement never needs gradients
    n, _, h, w = probs.shape
    check_crf_images(images, (n, h, w), probs, validate_args)
    iterations, window, blur, *params = check_crf_options(iterations, window, blur, spatial_weight, spatial_sigma,
                                                          bilateral_weight, bilateral_sigma_xy, bilateral_sigma_color)
    if validate_args and probs.numel():
        validate_probabilities(probs)
    # Contiguous (N, C, H, W): the sums over classes and colour channels then add in one order whatever the
    # caller's memory layout, so equal values give equal results (channels_last included).
    p = probs.to(compute_dtype(probs)).contiguous()
    if iterations == 0 or window == 1 or p.numel() == 0:
        return p.clone()  # never the caller's tensor itself
    per_image = (len(_half_offsets(window)) // (blur * blur) + 4 * p.shape[1]) * h * w
    block = max(1, _BLOCK_ELEMENTS // max(per_image, 1))
    parts = [_mean_field(part, _colours(img.detach(), p.dtype), iterations, window, blur, tuple(params))
             for part, img in zip(p.split(block), images.split(block))]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
