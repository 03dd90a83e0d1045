"""Small networks of the compact-CNN families, each built around its paper's signature block.

Written from the papers, at toy width and depth (random init; no pretrained weights can be
fetched here), so that every family's blocks go through export, ``store add``, int8 and serving:

- MobileNetV2 (Sandler et al., 2018): inverted residual with a linear bottleneck.
- MobileNetV3 (Howard et al., 2019): h-swish and squeeze-and-excitation with a hard sigmoid.
- ShuffleNetV2 (Ma et al., 2018): channel split, two branches, concatenation, channel shuffle.
- GhostNet (Han et al., 2020): the ghost module, half the features from cheap depthwise ops.
- MobileNeXt (Zhou et al., 2020): the sandglass block, depthwise at both wide ends, the
  shortcut between the wide representations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CLASSES = 10


def conv_bn(inp: int, out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]


def head(inp: int, width: int, act: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    return nn.Sequential(
        *conv_bn(inp, width), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, CLASSES)
    )


# -- MobileNetV2 ------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """1x1 expansion, ReLU6; depthwise 3x3, ReLU6; 1x1 projection with no activation (linear
    bottleneck); the shortcut joins the narrow ends."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.residual = stride == 1 and inp == out
        self.body = nn.Sequential(
            *conv_bn(inp, hidden),
            nn.ReLU6(),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(),
            *conv_bn(hidden, out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2() -> nn.Module:
    return nn.Sequential(
        *conv_bn(3, 16, 3, 2),
        nn.ReLU6(),
        InvertedResidual(16, 16, 1, 1),
        InvertedResidual(16, 24, 2, 6),
        InvertedResidual(24, 24, 1, 6),
        InvertedResidual(24, 32, 2, 6),
        InvertedResidual(32, 32, 1, 6),
        head(32, 128),
    )


# -- MobileNetV3 ------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Global pooling, 1x1 reduction, ReLU, 1x1 expansion, hard sigmoid: a gate per channel."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        squeezed = max(8, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeezed, 1),
            nn.ReLU(),
            nn.Conv2d(squeezed, channels, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class V3Block(nn.Module):
    """MobileNetV3's bneck: inverted residual with h-swish or ReLU, and SE after the depthwise."""

    def __init__(self, inp: int, hidden: int, out: int, kernel: int, stride: int, se: bool, hswish: bool):
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if hswish else nn.ReLU
        self.residual = stride == 1 and inp == out
        self.body = nn.Sequential(
            *conv_bn(inp, hidden),
            act(),
            *conv_bn(hidden, hidden, kernel, stride, groups=hidden),
            act(),
            *([SqueezeExcite(hidden)] if se else []),
            *conv_bn(hidden, out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v3() -> nn.Module:
    return nn.Sequential(
        *conv_bn(3, 16, 3, 2),
        nn.Hardswish(),
        V3Block(16, 16, 16, 3, 2, se=True, hswish=False),
        V3Block(16, 72, 24, 3, 2, se=False, hswish=False),
        V3Block(24, 96, 40, 5, 2, se=True, hswish=True),
        V3Block(40, 120, 40, 5, 1, se=True, hswish=True),
        head(40, 128, nn.Hardswish),
    )


# -- ShuffleNetV2 -----------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Stride 1: split the channels, transform one half (1x1, depthwise 3x3, 1x1), concatenate,
    shuffle. Stride 2: both halves see the whole input and are downsampled."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out // 2
        branch_in = inp if stride == 2 else inp // 2
        self.branch = nn.Sequential(
            *conv_bn(branch_in, half),
            nn.ReLU(),
            *conv_bn(half, half, 3, stride, groups=half),
            *conv_bn(half, half),
            nn.ReLU(),
        )
        self.shortcut = (
            nn.Sequential(*conv_bn(inp, inp, 3, 2, groups=inp), *conv_bn(inp, half), nn.ReLU())
            if stride == 2
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            y = torch.cat((kept, self.branch(transformed)), dim=1)
        else:
            y = torch.cat((self.shortcut(x), self.branch(x)), dim=1)
        return channel_shuffle(y)


def shufflenet_v2() -> nn.Module:
    return nn.Sequential(
        *conv_bn(3, 24, 3, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        ShuffleUnit(24, 48, 2),
        ShuffleUnit(48, 48, 1),
        ShuffleUnit(48, 96, 2),
        ShuffleUnit(96, 96, 1),
        head(96, 128, nn.ReLU),
    )


# -- GhostNet ---------------------------------------------------------------------------------


class GhostModule(nn.Module):
    """A 1x1 convolution makes ``out / ratio`` intrinsic features; cheap depthwise 3x3 ops make
    the rest (the "ghosts") from them; both are concatenated."""

    def __init__(self, inp: int, out: int, relu: bool, ratio: int = 2) -> None:
        super().__init__()
        self.out = out
        intrinsic = math.ceil(out / ratio)
        act: list[nn.Module] = [nn.ReLU()] if relu else []
        self.primary = nn.Sequential(*conv_bn(inp, intrinsic), *act)
        self.cheap = nn.Sequential(*conv_bn(intrinsic, intrinsic * (ratio - 1), 3, groups=intrinsic), *act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)
        return torch.cat((intrinsic, self.cheap(intrinsic)), dim=1)[:, : self.out]


class GhostBottleneck(nn.Module):
    """Ghost module (expand, ReLU), depthwise stride 2 if downsampling, optional SE, ghost module
    (project, linear); an identity shortcut, or depthwise + 1x1 when the shape changes."""

    def __init__(self, inp: int, hidden: int, out: int, stride: int, se: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [GhostModule(inp, hidden, relu=True)]
        if stride == 2:
            layers += conv_bn(hidden, hidden, 3, 2, groups=hidden)
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(GhostModule(hidden, out, relu=False))
        self.body = nn.Sequential(*layers)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and inp == out
            else nn.Sequential(*conv_bn(inp, inp, 3, stride, groups=inp), *conv_bn(inp, out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def ghostnet() -> nn.Module:
    return nn.Sequential(
        *conv_bn(3, 16, 3, 2),
        nn.ReLU(),
        GhostBottleneck(16, 16, 16, 1, se=False),
        GhostBottleneck(16, 48, 24, 2, se=False),
        GhostBottleneck(24, 72, 24, 1, se=False),
        GhostBottleneck(24, 72, 40, 2, se=True),
        head(40, 128, nn.ReLU),
    )


# -- MobileNeXt -------------------------------------------------------------------------------


class Sandglass(nn.Module):
    """Depthwise 3x3, ReLU6 on the wide input; 1x1 reduction (linear); 1x1 expansion, ReLU6;
    depthwise 3x3 (strided when downsampling, linear). The shortcut joins the wide ends."""

    def __init__(self, inp: int, out: int, stride: int, reduction: int) -> None:
        super().__init__()
        narrow = inp // reduction
        self.residual = stride == 1 and inp == out
        self.body = nn.Sequential(
            *conv_bn(inp, inp, 3, groups=inp),
            nn.ReLU6(),
            *conv_bn(inp, narrow),
            *conv_bn(narrow, out),
            nn.ReLU6(),
            *conv_bn(out, out, 3, stride, groups=out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenext() -> nn.Module:
    return nn.Sequential(
        *conv_bn(3, 32, 3, 2),
        nn.ReLU6(),
        Sandglass(32, 32, 1, 2),
        Sandglass(32, 48, 2, 4),
        Sandglass(48, 48, 1, 4),
        Sandglass(48, 64, 2, 4),
        Sandglass(64, 64, 1, 4),
        head(64, 128),
    )


# arch (variant name prefix) -> (family, constructor)
FAMILIES = {
    "mnv2": ("mobilenet_v2", mobilenet_v2),
    "mnv3": ("mobilenet_v3", mobilenet_v3),
    "shufflev2": ("shufflenet_v2", shufflenet_v2),
    "ghost": ("ghostnet", ghostnet),
    "mnext": ("mobilenext", mobilenext),
}


def build(arch: str, seed: int = 0) -> nn.Module:
    """The family's network with random weights (fixed by ``seed``), in eval mode.

    What training would roughly leave behind is set from noise images: batch-norm statistics,
    and a classifier bias that centres the logits. With default statistics the activations of a
    random network fade layer by layer, and a shared feature direction gives every image the
    same class; the int8 agreement gate would then pass trivially.
    """
    torch.manual_seed(seed)
    model = FAMILIES[arch][1]()
    classifier = next(m for m in model.modules() if isinstance(m, nn.Linear))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batches below
    noise = [torch.randn(16, 3, 64, 64) for _ in range(2)]
    features: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda _m, args, _out: features.append(args[0]))
    with torch.no_grad():
        model.train()
        for batch in noise:
            model(batch)
        model.eval()
        features.clear()
        for batch in noise:
            model(batch)
        hook.remove()
        classifier.bias.copy_(-classifier.weight @ torch.cat(features).mean(0))
    return model


def export(model: nn.Module, path: str) -> None:
    """Export as users do: float NCHW, dynamic batch, height and width."""
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 96, 96),),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
    )
