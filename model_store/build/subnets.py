"""Subnets of a pretrained EfficientNet-Lite: the same weights with some MBConv blocks skipped.

EfficientNet-Lite was trained with stochastic depth (drop-connect): during training each block
whose input and output shapes match was randomly replaced by its identity shortcut. At inference
such a block can therefore be left out and the network degrades gracefully, without fine-tuning.
A subnet is the set of blocks it keeps; it always keeps every block that changes the shape.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from model_store.manifest import Subnet


def _blocks(model: nn.Module) -> list[nn.Module]:
    return list(model._blocks)  # type: ignore[arg-type]


def skippable_blocks(model: nn.Module) -> tuple[int, ...]:
    """Indices of the blocks that are identity-skippable: the ones the package's forward adds
    to their own input (``id_skip``, stride 1, same channels in and out)."""
    skippable = []
    for index, block in enumerate(_blocks(model)):
        args = block._block_args
        if block.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
            skippable.append(index)
    return tuple(skippable)


def subnet_of(model: nn.Module, skipped: Iterable[int]) -> Subnet:
    """The subnet of ``model`` without the blocks ``skipped``; raises ``ValueError`` for a block
    that cannot be skipped."""
    skipped = set(skipped)
    wrong = skipped - set(skippable_blocks(model))
    if wrong:
        raise ValueError(f"blocks {sorted(wrong)} change the tensor's shape and cannot be skipped")
    total = len(_blocks(model))
    return Subnet(kept_blocks=tuple(i for i in range(total) if i not in skipped), total_blocks=total)


class SubnetModule(nn.Module):
    """``model`` running only ``subnet``'s blocks. Shares ``model``'s weights (nothing is copied).

    Besides ``forward`` it runs the network in pieces (``stem``, ``block``, ``head``), so the
    search can keep the activations of a common prefix and run only what differs.
    """

    def __init__(self, model: nn.Module, subnet: Subnet) -> None:
        super().__init__()
        if subnet.total_blocks != len(_blocks(model)):
            raise ValueError(
                f"subnet of a {subnet.total_blocks}-block network, model has {len(_blocks(model))}"
            )
        missing = set(range(subnet.total_blocks)) - set(subnet.kept_blocks) - set(skippable_blocks(model))
        if missing:
            raise ValueError(f"blocks {sorted(missing)} change the tensor's shape and must be kept")
        self.network = model
        self.kept_blocks = subnet.kept_blocks
        # In eval mode like ``model``: the exporter puts a module back in the mode it found it in,
        # and a fresh module's (training) would turn the shared network's batch norms to training.
        self.eval()

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        net = self.network
        return net._swish(net._bn0(net._conv_stem(images)))  # type: ignore[no-any-return,operator]

    def block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        # drop_connect_rate is only used in training; eval mode adds the shortcut unchanged.
        return self.network._blocks[index](x, drop_connect_rate=None)  # type: ignore[no-any-return,index,operator]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        net = self.network
        x = net._swish(net._bn1(net._conv_head(x)))  # type: ignore[operator]
        x = net._avg_pooling(x).flatten(1)  # type: ignore[operator]
        return net._fc(net._dropout(x))  # type: ignore[no-any-return,operator]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for index in self.kept_blocks:
            x = self.block(index, x)
        return self.head(x)
