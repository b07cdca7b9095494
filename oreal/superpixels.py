"""Superpixel maps for a batch of images, ready for :func:`oreal.select`: SEEDS or SLIC, cached on disk.

Needs the ``superpixels`` extra (``pip install "oreal[superpixels]"``: OpenCV with the contrib modules and
scikit-image); both are imported only when a map is computed, so ``import oreal`` needs torch alone.

Methods (``method=``):

- ``"seeds"``: SEEDS (Van den Bergh et al. 2012, OpenCV contrib ``cv2.ximgproc``), the OREAL paper's choice.
  SEEDS quantises the count to its block grid; with ``levels=None`` the number of levels (4, 3, 2, 1) whose count
  lands closest to ``count`` is used (more levels first on ties: finer boundaries). Only grids that fit the image
  are tried (OpenCV's SEEDS crashes or never returns on the others, e.g. ``count=100`` on a 16x16 image); where
  none fits, a ``ValueError`` says so.
- ``"slic"``: SLICO (zero-parameter SLIC, OpenCV contrib) with region size ``round(sqrt(H * W / count))``, at most
  the image's shorter side (a larger one crashes OpenCV), and label connectivity enforced; images need at least
  2x2 pixels.
- ``"skimage_slic"``: SLIC of scikit-image (``skimage.segmentation.slic``, in CIE Lab) with
  ``n_segments=count``.

Every map is relabelled to contiguous ids ``0 .. k_n - 1`` per image in sorted order of the tool's ids
(:func:`oreal.labels.relabel_superpixels`), and ``S = max_n k_n`` is returned with it; images with fewer
superpixels leave ids ``k_n .. S - 1`` empty, which the selection treats as non-candidates.

Caching (``cache_dir=``, off by default): each image's map is stored as ``.npy`` under
``cache_dir/superpixels/<method>-<key>/<image hash>.npy``, where ``key`` hashes every parameter and the version of
the library that computed it, and the image hash covers its bytes and shape; a change of parameter, image or
library version never reuses a stale map. Writes are atomic (write to a temporary name, then rename), so
processes sharing a cache do not read half-written files; an unreadable entry is recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from oreal._checks import check_choice, check_flag, check_int, check_number, extremes
from oreal.labels import relabel_superpixels

__all__ = ["METHODS", "compute", "compute_one"]

METHODS = ("seeds", "slic", "skimage_slic")

_OPTIONS: Dict[str, Dict[str, Any]] = {  # option name -> default, per method
    "seeds": {"levels": None, "prior": 2, "bins": 5, "double_step": False},
    "slic": {"ruler": 10.0},
    "skimage_slic": {"compactness": 10.0, "sigma": 0.0},
}

_EXTRA = 'pip install "oreal[superpixels]"'


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise ImportError(f"oreal.superpixels needs OpenCV with the contrib modules for SEEDS and SLIC: {_EXTRA}") \
            from None
    if not hasattr(cv2, "ximgproc"):
        raise ImportError(f"cv2.ximgproc is missing: OpenCV without the contrib modules is installed; uninstall "
                          f"opencv-python and {_EXTRA} (it installs opencv-contrib-python)")
    return cv2


def _skimage_slic() -> Any:
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise ImportError(f"oreal.superpixels needs scikit-image for method='skimage_slic': {_EXTRA}") from None
    return slic


def _params(method: str, count: int, iterations: int, options: Dict[str, Any]) -> Dict[str, Any]:
    check_choice(method, "method", METHODS)
    count = check_int(count, "count", minimum=1)
    iterations = check_int(iterations, "iterations", minimum=1)
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for method {method!r}; expected some of "
                         f"{sorted(_OPTIONS[method])}")
    p = dict(_OPTIONS[method], **options)
    if method == "seeds":
        check_flag(p["double_step"], "double_step", kind="option")
        p.update(levels=None if p["levels"] is None else check_int(p["levels"], "levels", minimum=1),
                 prior=check_int(p["prior"], "prior", minimum=0), bins=check_int(p["bins"], "bins", minimum=1))
    else:  # ruler and compactness > 0, sigma >= 0
        for name in p:
            p[name] = check_number(p[name], name, positive=name != "sigma", kind="option")
    return dict(p, method=method, count=count, iterations=iterations)


def compute_one(image: Any, *, method: str = "seeds", count: int = 100, iterations: int = 10,
                **options: Any) -> Any:
    """The superpixel map of one image, with the tool's own ids (not relabelled, not cached).

    Args:
        image (ndarray[H, W, 3]): uint8 RGB.
        method, count, iterations, options: as in :func:`compute`.

    Returns:
        ndarray[H, W]: int32 ids as the tool gives them (SEEDS and OpenCV SLIC from 0, scikit-image from 1).

    Example:
        >>> import numpy as np
        >>> image = np.zeros((24, 32, 3), np.uint8); image[:, 16:] = 255  # two flat halves
        >>> sp = compute_one(image, method="slic", count=4)
        >>> sp.shape, sp.dtype.name
        ((24, 32), 'int32')
        >>> set(np.unique(sp[:, :16])).isdisjoint(np.unique(sp[:, 16:]))  # no superpixel spans both halves
        True
    """
    return _compute_one(_check_image(image), _params(method, count, iterations, options))


def _check_image(image: Any) -> Any:
    import numpy as np

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else \
            type(image).__name__
        raise ValueError(f"Expected `image` to be a uint8 RGB numpy array of shape (H, W, 3), but got {desc}")
    return np.ascontiguousarray(image)


def _compute_one(image: Any, p: Dict[str, Any]) -> Any:
    import numpy as np

    H, W = image.shape[:2]
    if p["method"] == "skimage_slic":
        slic = _skimage_slic()
        labels = slic(image, n_segments=p["count"], compactness=p["compactness"], max_num_iter=p["iterations"],
                      sigma=p["sigma"], start_label=1, channel_axis=-1)
        return labels.astype(np.int32)
    cv2 = _cv2()
    lab_img = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    if p["method"] == "seeds":
        def make(levels: int) -> Any:
            return cv2.ximgproc.createSuperpixelSEEDS(W, H, 3, p["count"], levels, p["prior"], p["bins"],
                                                      p["double_step"])

        # OpenCV's SEEDS crashes or never returns where its block grid does not fit the image: only grids that fit
        levels = [lv for lv in ((4, 3, 2, 1) if p["levels"] is None else (p["levels"],))
                  if _seeds_grid_fits(W, H, p["count"], lv)]
        if not levels:
            raise ValueError(f"SEEDS cannot divide a {H}x{W} image into count={p['count']} superpixels with "
                             f"levels={p['levels']}: its block grid does not fit (OpenCV's SEEDS would crash); use "
                             f"a larger image or another count, or method='slic' / 'skimage_slic'")
        # the count closest to the one asked for, more levels first on ties (each grid built once)
        s = min((make(lv) for lv in levels), key=lambda s: abs(s.getNumberOfSuperpixels() - p["count"]))
        s.iterate(lab_img, p["iterations"])
    else:
        if min(H, W) < 2:
            raise ValueError(f"OpenCV's SLIC needs an image of at least 2x2 pixels, but got {H}x{W}; use "
                             f"method='skimage_slic'")
        # at most the image's shorter side: a larger region crashes OpenCV's SLIC
        region = min(max(2, int(round((H * W / p["count"]) ** 0.5))), H, W)
        s = cv2.ximgproc.createSuperpixelSLIC(lab_img, cv2.ximgproc.SLICO, region, p["ruler"])
        s.iterate(p["iterations"])
        s.enforceLabelConnectivity(25)
    return s.getLabels().astype(np.int32)


def _seeds_grid_fits(width: int, height: int, count: int, levels: int) -> bool:
    """Whether OpenCV's SEEDS can lay its block grid on the image: its ``initialize`` (at least 10 superpixels and
    2 levels; ``h = floor(sqrt(count * H / W))`` rows and ``floor(h * W / H)`` columns of superpixels; levels dropped
    until the bottom blocks are at least one pixel; each level halves the blocks per row and column) must keep two
    levels and at least one block per row and column on every level. Where it does not, OpenCV divides by zero,
    loops forever or reads out of bounds. Mirrors its float32 arithmetic."""
    import numpy as np

    count, levels = max(count, 10), max(levels, 2)
    rows = int(np.sqrt(np.float32(count) * np.float32(height) / np.float32(width)))
    cols = rows * width // height
    if rows < 1 or cols < 1:
        return False
    for lv in range(levels, 1, -1):
        bw = np.float32(width) / np.float32(cols) / np.float32(1 << (lv - 1))
        bh = np.float32(height) / np.float32(rows) / np.float32(1 << (lv - 1))
        if bw >= 1 and bh >= 1:
            return (width // math.ceil(bw)) >> (lv - 1) >= 1 and (height // math.ceil(bh)) >> (lv - 1) >= 1
    return False


def _version(method: str) -> str:
    if method == "skimage_slic":
        import skimage

        return f"skimage {skimage.__version__}"
    return f"opencv {_cv2().__version__}"


def _as_numpy_images(images: Any) -> Tuple[Any, Optional[torch.device]]:
    """``(N, H, W, 3)`` uint8 numpy images and the device of the input (``None`` for numpy)."""
    import numpy as np

    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected `images` as a Tensor[N, 3, H, W] (channels first), but got shape "
                             f"{tuple(images.shape)}")
        device = images.device
        x = images.detach()
        if x.is_floating_point():
            lo, hi = (float(v) for v in extremes(x)) if x.numel() else (0.0, 1.0)  # NaN propagates
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError("Expected float `images` in [0, 1] (or uint8 in [0, 255]), but got NaN or "
                                 "infinite values")
            if lo < 0 or hi > 1:
                raise ValueError(f"Expected float `images` in [0, 1] (or uint8 in [0, 255]), but got values in "
                                 f"[{lo:.4g}, {hi:.4g}]; pass the images before normalisation")
            x = (x.float() * 255).round()
        elif x.dtype != torch.uint8:
            raise TypeError(f"Expected `images` to be uint8 or float in [0, 1], but got {x.dtype}")
        return x.to("cpu", torch.uint8).permute(0, 2, 3, 1).contiguous().numpy(), device
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"Expected `images` as a uint8 numpy array of shape (N, H, W, 3) (channels last), but "
                             f"got a {images.dtype} array of shape {images.shape}")
        return images, None
    raise TypeError(f"Expected `images` to be a numpy array (N, H, W, 3) or a torch.Tensor (N, 3, H, W), but got "
                    f"{type(images).__name__}")


def compute(images: Any, *, method: str = "seeds", count: int = 100, iterations: int = 10,
            cache_dir: Union[str, os.PathLike, None] = None, **options: Any) -> Tuple[Tensor, int]:
    """Superpixel maps of a batch of images, relabelled and ready for :func:`oreal.select`.

    Args:
        images: ``ndarray[N, H, W, 3]`` uint8 RGB (channels last), or ``Tensor[N, 3, H, W]`` (channels first)
            uint8, or float in ``[0, 1]`` (multiplied by 255 and rounded; normalised images are rejected). Not
            modified.
        method: ``"seeds"``, ``"slic"`` (OpenCV SLICO) or ``"skimage_slic"`` (scikit-image); see the module
            docstring.
        count: about how many superpixels per image (the tools take it as a target; the actual ``k_n`` varies).
        iterations: iterations of the method.
        cache_dir: a folder for the on-disk cache (see the module docstring; ``~`` is expanded), or ``None`` for
            no cache (ours: nothing is written unless asked).
        **options: ``seeds``: ``levels`` (``None`` = best of 4..1), ``prior`` (2), ``bins`` (5), ``double_step``
            (False); ``slic``: ``ruler`` (10.0); ``skimage_slic``: ``compactness`` (10.0), ``sigma`` (0.0).

    Returns:
        (Tensor[N, H, W], int): int64 ids ``0 .. k_n - 1`` per image (sorted order of the tool's ids) on the device
        of a tensor input (CPU for numpy), and ``S = max_n k_n``. Deterministic for a given library version.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> images = rng.integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
        >>> sp_map, S = compute(images, method="slic", count=24)
        >>> sp_map.shape, sp_map.dtype, int(sp_map.max()) == S - 1, int(sp_map.min())
        (torch.Size([2, 32, 48]), torch.int64, True, 0)
    """
    import numpy as np

    params = _params(method, count, iterations, options)
    arr, device = _as_numpy_images(images)
    cdir = None
    if cache_dir is not None:
        key = hashlib.sha1(json.dumps(dict(params, version=_version(method)), sort_keys=True).encode()).hexdigest()
        cdir = Path(cache_dir).expanduser() / "superpixels" / f"{method}-{key[:12]}"
    maps = []
    for im in arr:
        im = np.ascontiguousarray(im)
        path = None
        if cdir is not None:
            path = cdir / f"{hashlib.sha1(im.tobytes() + str(im.shape).encode()).hexdigest()}.npy"
            cached = _load(path, im.shape[:2])
            if cached is not None:
                maps.append(cached)
                continue
        m = _compute_one(im, params)
        if path is not None:
            _atomic_save_npy(path, m)
        maps.append(m)
    h, w = arr.shape[1:3]
    stacked = torch.from_numpy(np.stack(maps).astype(np.int64)) if maps else torch.zeros(0, h, w, dtype=torch.long)
    sp_map, S = relabel_superpixels(stacked)
    return (sp_map if device is None else sp_map.to(device)), S


def _load(path: Path, shape: Tuple[int, int]) -> Any:
    import numpy as np

    if not path.is_file():
        return None
    try:
        m = np.load(path)
    except (OSError, ValueError, EOFError):  # EOFError: an empty file (e.g. left by a crash before a flush)
        return None  # unreadable entry: recomputed and overwritten
    return m if m.shape == tuple(shape) and m.dtype.kind == "i" else None


def _atomic_save_npy(path: Path, arr: Any) -> None:
    """Save under a unique temporary name (created like any file, so the umask applies), then rename."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
