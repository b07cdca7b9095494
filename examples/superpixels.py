"""Superpixels for the example loop: :func:`oreal.superpixels.compute` with the example's default cache folder.

SEEDS (the OREAL paper's choice), OpenCV SLIC (SLICO) or scikit-image SLIC; ids ``0..k-1`` per image, ``S`` the
largest ``k``. Maps are cached under ``$OREAL_CACHE`` or ``~/.cache/oreal`` (see :mod:`oreal.superpixels`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from oreal.superpixels import METHODS, compute

__all__ = ["METHODS", "compute_superpixels", "default_cache_dir"]


def default_cache_dir():
    return Path(os.environ.get("OREAL_CACHE", Path.home() / ".cache" / "oreal"))


def compute_superpixels(images: np.ndarray, *, method="seeds", num_superpixels=100, iterations=10,
                        cache_dir=None, **extra):
    """Superpixel maps for ``images (N, H, W, 3) uint8``.

    Returns ``(sp_map int64 (N, H, W) numpy, S)``. ``cache_dir=None`` uses ``$OREAL_CACHE`` or
    ``~/.cache/oreal``; ``cache_dir=False`` disables the cache.
    """
    if cache_dir is None:
        cache_dir = default_cache_dir()
    sp, S = compute(images, method=method, count=num_superpixels, iterations=iterations,
                    cache_dir=None if cache_dir is False else cache_dir, **extra)
    return sp.numpy(), S
