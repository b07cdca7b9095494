"""Segmentation models for the example loop. Every model maps ``images float (N, 3, H, W)`` in ``[0, 1]``
to ``logits (N, C, H, W)`` (ImageNet normalisation is done inside). ``weights=None`` everywhere by
default: nothing is downloaded unless the caller asks for pretrained weights.

- ``small``: a CPU-friendly U-Net-like encoder-decoder (~0.1 M parameters), dropout before the classifier
  (so MC-dropout strategies work);
- ``deeplabv3_resnet50`` / ``deeplabv3_resnet101``: torchvision's DeepLabV3 (the OREAL paper's model);
- ``lraspp_mobilenet_v3_large``: torchvision's LR-ASPP MobileNetV3-Large, with dropout added before both
  of its classifiers (torchvision's has none, so MC-dropout samples would all be equal);
- ``vit``: a small ViT segmenter (patch embedding + transformer encoder + upsampling head);
- ``lite0_fpn``: an FPN-style head on an EfficientNet-Lite0 encoder (``examples/efficientnet.py``), ImageNet
  encoder weights with ``weights_backbone="imagenet"`` (offline, from the ``pretrained`` extra);
- ``lite0_fpn_frozen``: the same with the pretrained encoder frozen; its features are computed once per
  distinct input image and cached in memory, so training costs only the head.

Every model has dropout before its last layer, so ``examples.train.predict_mc`` gets real MC samples.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("small", "deeplabv3_resnet50", "deeplabv3_resnet101", "lraspp_mobilenet_v3_large", "vit", "lite0_fpn",
          "lite0_fpn_frozen")

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class _Normalize(nn.Module):
    def __init__(self, net, dict_output=False):
        super().__init__()
        self.net = net
        self.dict_output = dict_output
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        out = self.net((x - self.mean) / self.std)
        if self.dict_output:
            out = out["out"]
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


def _block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SmallEncoderDecoder(nn.Module):
    """Three-level U-Net-style encoder-decoder; works for any H, W (skips are resized when odd)."""

    def __init__(self, num_classes, width=16, dropout=0.1):
        super().__init__()
        w = width
        self.e1, self.e2, self.e3 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.d2, self.d1 = _block(4 * w + 2 * w, 2 * w), _block(2 * w + w, w)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(w, num_classes, 1)

    def forward(self, x):
        f1 = self.e1(x)
        f2 = self.e2(F.max_pool2d(f1, 2, ceil_mode=True))
        f3 = self.e3(F.max_pool2d(f2, 2, ceil_mode=True))
        u2 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        g2 = self.d2(torch.cat([u2, f2], 1))
        u1 = F.interpolate(g2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        g1 = self.d1(torch.cat([u1, f1], 1))
        return self.cls(self.drop(g1))


class ViTSegmenter(nn.Module):
    """Small ViT segmenter: ``patch x patch`` patch embedding, a pre-norm transformer encoder, a linear
    per-token class head and a light convolutional refinement at full resolution. Positional embeddings
    are learned on a ``grid x grid`` grid and bilinearly resized to the input's token grid."""

    def __init__(self, num_classes, patch=8, dim=96, depth=4, heads=4, grid=16, dropout=0.1):
        super().__init__()
        self.patch = patch
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, dim, grid, grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        self.refine = nn.Sequential(nn.Conv2d(num_classes + 3, 32, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(32, num_classes, 3, padding=1))

    def forward(self, x):
        N, _, H, W = x.shape
        ph, pw = math.ceil(H / self.patch) * self.patch, math.ceil(W / self.patch) * self.patch
        xp = F.pad(x, (0, pw - W, 0, ph - H))
        t = self.embed(xp)
        gh, gw = t.shape[-2:]
        t = t + F.interpolate(self.pos, size=(gh, gw), mode="bilinear", align_corners=False)
        tok = self.encoder(t.flatten(2).transpose(1, 2))
        self.token_grid = (gh, gw)  # lets examples.models.features lay the dropout's tokens out as a map
        logits = self.head(self.drop(self.norm(tok))).transpose(1, 2).reshape(N, -1, gh, gw)
        logits = F.interpolate(logits, size=(ph, pw), mode="bilinear", align_corners=False)[..., :H, :W]
        return logits + self.refine(torch.cat([logits, x], 1))


def build_model(name, num_classes, *, weights=None, weights_backbone=None, **kwargs):
    """Build a model by name (see ``MODELS``). ``weights`` / ``weights_backbone`` go to torchvision for the
    torchvision models (``None`` = random init, nothing downloaded); the small models have no pretrained
    weights and refuse them. The lite0 models take ``weights_backbone="imagenet"`` (or ``"DEFAULT"``, what the
    loop's ``--pretrained`` passes): the ImageNet encoder of the ``pretrained`` extra, read offline."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if name == "small":
        if weights is not None or weights_backbone is not None:
            raise ValueError("the 'small' model has no pretrained weights; leave weights=None")
        return _Normalize(SmallEncoderDecoder(num_classes, **kwargs))
    if name == "vit":
        if weights is not None or weights_backbone is not None:
            raise ValueError("the 'vit' model has no pretrained weights; leave weights=None")
        return _Normalize(ViTSegmenter(num_classes, **kwargs))
    if name in ("lite0_fpn", "lite0_fpn_frozen"):
        from .lite0_seg import build_lite0_fpn

        return _Normalize(build_lite0_fpn(num_classes, weights=weights, weights_backbone=weights_backbone,
                                          freeze=name == "lite0_fpn_frozen", **kwargs))
    from torchvision.models import segmentation as seg

    if name in ("deeplabv3_resnet50", "deeplabv3_resnet101", "lraspp_mobilenet_v3_large"):
        fn = getattr(seg, name)
        if weights is not None:
            # torchvision's pretrained heads have 21 classes: load them, then replace the classifier
            net = fn(weights=weights, **kwargs)
            _replace_head(net, name, num_classes)
        else:
            net = fn(weights=None, weights_backbone=weights_backbone, num_classes=num_classes, **kwargs)
        if name.startswith("lraspp"):
            head = net.classifier
            head.low_classifier = nn.Sequential(nn.Dropout2d(0.1), head.low_classifier)
            head.high_classifier = nn.Sequential(nn.Dropout2d(0.1), head.high_classifier)
        return _Normalize(net, dict_output=True)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def _replace_head(net, name, num_classes):
    if name.startswith("deeplabv3"):
        last = net.classifier[-1]
        net.classifier[-1] = nn.Conv2d(last.in_channels, num_classes, 1)
        if getattr(net, "aux_classifier", None) is not None:
            last = net.aux_classifier[-1]
            net.aux_classifier[-1] = nn.Conv2d(last.in_channels, num_classes, 1)
    else:
        net.classifier.low_classifier = nn.Conv2d(net.classifier.low_classifier.in_channels, num_classes, 1)
        net.classifier.high_classifier = nn.Conv2d(net.classifier.high_classifier.in_channels, num_classes, 1)


def feature_layer(model):
    """The layer whose input is a model's penultimate features: its last dropout module, the one MC dropout
    samples. For ``small``, ``vit`` and the ``lite0`` models the dropout sits right before the 1x1 classifier,
    so its input is exactly what the classifier reads; for ``lraspp`` it is the high-level branch's classifier
    input (128 channels, stride 8); for ``deeplabv3`` torchvision's ASPP output (256 channels, before the head's
    3x3 convolution)."""
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not drops:
        raise ValueError(f"{type(model).__name__} has no dropout layer before its classifier, so it has no "
                         f"penultimate features to read")
    return drops[-1]


@torch.no_grad()
def features(model, images):
    """``(logits (N, C, H, W), features (N, D, h, w))`` in eval mode: the logits and the penultimate features
    (the input of :func:`feature_layer`, read by a forward hook, any stride). A ViT's tokens ``(N, T, D)`` are
    laid out on its token grid."""
    layer, seen = feature_layer(model), []
    hook = layer.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    try:
        model.eval()
        logits = model(images)
    finally:
        hook.remove()
    f = seen[-1]
    if f.ndim == 3:  # (N, T, D) tokens of the ViT
        owner = next(m for m in model.modules() if getattr(m, "drop", None) is layer)
        f = f.transpose(1, 2).reshape(f.shape[0], f.shape[2], *owner.token_grid)
    return logits, f


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
