"""Segmentation on an EfficientNet-Lite0 encoder: a light FPN-style head over the stride 4/8/16/32 features.

Head (``dim`` = 64 channels by default): 1x1 lateral convolutions (BN, ReLU) at strides 8, 16, 32, the stride-32
one gated by global context as in LR-ASPP (``sigmoid(1x1(avgpool(f32)))``); top-down sum with bilinear
upsampling; a 3x3 convolution at stride 8; concatenation with a ``dim / 2``-channel lateral of the stride-4
features and a 1x1 fusion; ``Dropout2d`` (0.1, so MC dropout gives real samples); a 1x1 classifier; bilinear
upsampling to the input size. The model takes ImageNet-normalised images (``models._Normalize`` does it).

``freeze=True`` keeps the pretrained encoder in eval mode without gradients and caches its features per
distinct input image in a process-wide cache, keyed by a BLAKE2 hash of the image's bytes, shape and dtype, of
the weights file and, on the CPU, of torch's thread count (1 and 2 threads give features that differ in the last
bits, so a run never reads features another thread count computed). The images of a pool, their flips and the
val/test images go through the encoder once per process, whatever the model instance (the AL loop builds a new
model per round); entries are also written to ``$OREAL_CACHE/features/`` (``~/.cache/oreal`` by default, next to
the superpixel cache) so later processes read them instead of running the encoder
(``OREAL_FEATURE_DISK_CACHE=0`` turns that off). Each image goes through the encoder alone (batch of one), so
cached and fresh features are bit-identical and results do not depend on which batch first met an image. The
frozen encoder is not part of ``state_dict()``: saved states hold the head only.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet import CHANNELS, efficientnet_lite0

FEATURE_CACHE_BYTES = 2 ** 31  # features kept per process; beyond that they are computed on the fly
_CACHE: dict = {}
_CACHE_USED = [0]
_KEYS = itertools.count()
_IMAGENET_KEY = "lite0-imagenet"


def _disk_path(k):
    """File of a cached entry under ``$OREAL_CACHE/features`` (set ``OREAL_FEATURE_DISK_CACHE=0`` to disable);
    the torch version is part of the path (another build may compute other bits)."""
    if os.environ.get("OREAL_FEATURE_DISK_CACHE", "1") == "0" or not k[0].startswith(_IMAGENET_KEY) or k[3] != "cpu":
        return None
    from .superpixels import default_cache_dir

    name = hashlib.blake2b(repr(k).encode(), digest_size=16).hexdigest()
    return Path(default_cache_dir()) / "features" / f"{k[0]}-torch{torch.__version__}" / f"{name}.pt"


def _disk_get(k):
    path = _disk_path(k)
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged entry is recomputed (and rewritten)
        return None


def _disk_put(k, feats):
    path = _disk_path(k)
    if path is None:
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save([t.clone() for t in feats], f)
        os.replace(tmp, path)
    except BaseException as e:  # read-only or full disk: the memory cache still works; never leave a .tmp
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if not isinstance(e, OSError):
            raise


def clear_feature_cache():
    """Empty the process-wide cache of frozen-encoder features."""
    _CACHE.clear()
    _CACHE_USED[0] = 0


def _cbr(cin, cout, k=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _FrozenEncoder:
    """Holds the frozen encoder outside the module tree (not in ``state_dict``, not deep-copied: every copy
    of the model, e.g. the EMA copy made by training, shares it and the cache)."""

    def __init__(self, encoder, key):
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.key = key

    def __deepcopy__(self, memo):
        return self

    @torch.no_grad()
    def __call__(self, x):
        enc = self.encoder
        if next(enc.parameters()).device != x.device:
            enc.to(x.device)
        feats = []
        for img in x:
            h = hashlib.blake2b(img.detach().cpu().contiguous().numpy().tobytes(), digest_size=16)
            # the thread count changes the CPU convolutions' last bits: features of another count are other bits
            threads = torch.get_num_threads() if img.device.type == "cpu" else 0
            k = (self.key, tuple(img.shape), str(img.dtype), str(img.device), h.hexdigest(), threads)
            f = _CACHE.get(k)
            if f is None:
                f = _disk_get(k)
                if f is None:
                    f = [t[0] for t in enc.features(img[None])[1:]]
                    _disk_put(k, f)
                size = sum(t.numel() * t.element_size() for t in f)
                if _CACHE_USED[0] + size <= FEATURE_CACHE_BYTES:  # read from disk or computed: kept in memory
                    _CACHE[k] = f
                    _CACHE_USED[0] += size
            feats.append(f)
        return [torch.stack(level) for level in zip(*feats)]


class Lite0FPN(nn.Module):
    """EfficientNet-Lite0 encoder + FPN-style head; ``(N, 3, H, W)`` normalised -> logits ``(N, C, H, W)``."""

    def __init__(self, num_classes, encoder, *, freeze=False, dim=64, dropout=0.1):
        super().__init__()
        if freeze:
            # an encoder passed in directly gets a key of its own (never reused in this process, never on disk)
            self._frozen = (encoder if isinstance(encoder, _FrozenEncoder)
                            else _FrozenEncoder(encoder, f"encoder-{next(_KEYS)}"))
        else:
            self.encoder = encoder
        c4, c8, c16, c32 = CHANNELS[1:]
        self.lat4, self.lat8, self.lat16, self.lat32 = _cbr(c4, dim // 2), _cbr(c8, dim), _cbr(c16, dim), _cbr(c32, dim)
        self.gate = nn.Conv2d(c32, dim, 1)
        self.smooth = _cbr(dim, dim, 3)
        self.fuse = _cbr(dim + dim // 2, dim)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x):
        return F.interpolate(self.low_logits(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def low_logits(self, x):
        """The logits before the final upsampling, ``(N, C, H/4, W/4)``: ``forward(x)`` is their bilinear
        upsampling to ``x``'s size (training samples them at the labeled pixels only, ``train.sampled_logits``)."""
        f4, f8, f16, f32 = self._frozen(x) if hasattr(self, "_frozen") else self.encoder.features(x)[1:]
        p = self.lat32(f32) * torch.sigmoid(self.gate(f32.mean((2, 3), keepdim=True)))
        p = F.interpolate(p, size=f16.shape[-2:], mode="bilinear", align_corners=False) + self.lat16(f16)
        p = F.interpolate(p, size=f8.shape[-2:], mode="bilinear", align_corners=False) + self.lat8(f8)
        p = self.smooth(p)
        p = F.interpolate(p, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        p = self.fuse(torch.cat([p, self.lat4(f4)], 1))
        return self.cls(self.drop(p))


_IMAGENET = ("imagenet", "default")
_SHARED: dict = {}


def build_lite0_fpn(num_classes, *, weights=None, weights_backbone=None, freeze=False, **kwargs):
    """``weights_backbone``: ``None`` (random encoder) or ``"imagenet"`` / ``"DEFAULT"`` (the ImageNet
    weights of the ``pretrained`` extra, loaded offline). There are no pretrained segmentation weights
    (``weights`` must stay ``None``). ``freeze=True`` needs the ImageNet encoder."""
    if weights is not None:
        raise ValueError(f"the lite0 models have no pretrained segmentation weights; leave weights=None "
                         f"(got {weights!r}); weights_backbone='imagenet' loads the ImageNet encoder")
    if weights_backbone is not None and str(weights_backbone).lower() not in _IMAGENET:
        raise ValueError(f"Expected argument `weights_backbone` to be None or 'imagenet', but got {weights_backbone!r}")
    pretrained = weights_backbone is not None
    if freeze and not pretrained:
        raise ValueError("a frozen encoder needs the ImageNet weights: pass weights_backbone='imagenet' "
                         "(the loop's --pretrained)")
    if freeze:
        if _SHARED.get("frozen") is None:  # one frozen ImageNet encoder per process, shared by all models
            from .efficientnet import weights_path

            with open(weights_path(), "rb") as f:  # the weights' digest keys the disk cache
                digest = hashlib.file_digest(f, "blake2b").hexdigest()[:16] if hasattr(hashlib, "file_digest") \
                    else hashlib.blake2b(f.read()).hexdigest()[:16]
            with torch.random.fork_rng(devices=[]):  # building it must not move the caller's seeded RNG: the
                # head's initialisation would then depend on whether this process had built the encoder before
                _SHARED["frozen"] = _FrozenEncoder(efficientnet_lite0(pretrained=True, with_head=False),
                                                   f"{_IMAGENET_KEY}-{digest}")
        encoder = _SHARED["frozen"]
    else:
        encoder = efficientnet_lite0(pretrained=pretrained, with_head=False)
    return Lite0FPN(num_classes, encoder, freeze=freeze, **kwargs)
