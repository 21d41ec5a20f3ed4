"""Convolutional θ-networks for image classification (journal §3.4 example 4 and the authors' code).

- ``resnet18_preact``: pre-activation ResNet-18 layout (stages of ``blocks`` residual layers at
  width·[1, 2, 4, 8] channels), every residual layer a :class:`~irn_core.layers.ThetaLayer` whose
  field is a pre-activation conv field (by default wrapped as F^{−3,1}, eq 19). Between stages a
  transition BN–ReLU–conv3×3 stride 2 doubles the channels (it changes the shape, so it cannot be a
  residual θ-step; ResNet-18's projection shortcuts are replaced by it). Head: BN–ReLU–avgpool–linear.
- ``mnist_compact``: the authors' Nov-2020 MNIST network: 7×7 stride-2 stem with 8 channels, three
  :class:`~irn_core.layers.ImplicitBlock` at 8/16/32 channels separated by stride-2 3×3
  convolutions, ReLU, global average pool, linear.
- ``mnist_e831e4c``: the authors' MNIST network at commit e831e4c, exactly (AUTHORS-CODE §2.4): an
  implicit block on the raw image, 6/12/24 channels, gated F^{a,b} fields with stability-derived limits.

Both take images in [0, 1] and normalise inside (``normalize: {mean, std}``), so corruptions act on
[0, 1] pixels before normalisation. The fields have no batch norm (a field is re-evaluated many times
per solve; batch statistics would change the equation being solved).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..fields import ConvField, xavier_unit_frobenius_
from ..layers import ImplicitBlock, ThetaLayer
from ..normalization import EigenGates, GatedEigenRangeField, eig_limits_from_stability
from .common import make_field, make_normalize, split_layer

__all__ = ["resnet18_preact", "mnist_compact", "mnist_e831e4c", "ImageNet"]


def _down(size: int) -> int:
    return (size - 1) // 2 + 1  # k=3,p=1,s=2 and k=7,p=3,s=2


class ImageNet(nn.Module):
    """normalize → stem → body → head (a plain container that keeps the parts addressable)."""

    def __init__(self, normalize: nn.Module, stem: nn.Module, body: nn.Module, head: nn.Module):
        super().__init__()
        self.normalize, self.stem, self.body, self.head = normalize, stem, body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(self.normalize(x))))


def _head(channels: int, num_classes: int, bn: bool) -> nn.Module:
    parts = ([nn.BatchNorm2d(channels)] if bn else []) + [
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*parts)


def resnet18_preact(layer: Optional[Dict[str, Any]] = None, in_channels: int = 1, num_classes: int = 10,
                    width: int = 8, blocks: Sequence[int] = (2, 2, 2, 2), h: float = 1.0, image_size: int = 28,
                    activation: str = "relu", normalize: Optional[Dict[str, Sequence[float]]] = None) -> ImageNet:
    """Pre-activation ResNet-18 with θ-layers (journal example 4: width 8, field F^{−3,1}).

    Options: ``layer`` (theta/phi/solver/backward/field, see common); ``in_channels``; ``num_classes``;
    ``width`` channels of the first stage; ``blocks`` residual θ-layers per stage (len = stages);
    ``h`` step of every layer; ``image_size`` input side (for the conv spectral norms);
    ``activation`` of the fields; ``normalize`` {mean, std} or null.
    """
    kw, field_cfg = split_layer(layer)
    blocks = [int(b) for b in blocks]
    if not blocks or any(b < 0 for b in blocks):
        raise ValueError(f"blocks must be a non-empty list of counts >= 0, got {blocks}")
    stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
    body, c, size = [], width, int(image_size)
    for s, nb in enumerate(blocks):
        if s > 0:
            body.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)))
            c, size = 2 * c, _down(size)
        for _ in range(nb):
            field = make_field(ConvField(c, activation=activation), field_cfg, (c, size, size))
            body.append(ThetaLayer(field, h=h, **kw))
    return ImageNet(make_normalize(normalize), stem, nn.Sequential(*body), _head(c, num_classes, bn=True))


def mnist_compact(layer: Optional[Dict[str, Any]] = None, in_channels: int = 1, num_classes: int = 10,
                  channels: Sequence[int] = (8, 16, 32), steps: int = 1, h: float = 1.0, image_size: int = 28,
                  activation: str = "relu", normalize: Optional[Dict[str, Sequence[float]]] = None) -> ImageNet:
    """The authors' compact MNIST network: 7×7/2 stem → ImplicitBlock(c₁) → conv3×3/2 → … → pool → linear.

    Options: ``layer``; ``in_channels``; ``num_classes``; ``channels`` of the blocks (default 8/16/32);
    ``steps`` θ-steps per block (one shared field per block); ``h``; ``image_size``; ``activation``;
    ``normalize``.
    """
    kw, field_cfg = split_layer(layer)
    channels = [int(c) for c in channels]
    if not channels:
        raise ValueError("channels must be non-empty")
    size = _down(int(image_size))
    stem = nn.Conv2d(in_channels, channels[0], 7, stride=2, padding=3)
    body = []
    for i, c in enumerate(channels):
        if i > 0:
            body.append(nn.Conv2d(channels[i - 1], c, 3, stride=2, padding=1))
            size = _down(size)
        field = make_field(ConvField(c, activation=activation), field_cfg, (c, size, size))
        body.append(ImplicitBlock(field, steps=steps, h=h, **kw))
    return ImageNet(make_normalize(normalize), stem, nn.Sequential(*body), _head(channels[-1], num_classes, bn=False))


def _gated_block(channels: int, size: int, steps: int, h: float, limits, learnable_scale: bool, learnable_ends: bool,
                 spectral_norm: Optional[str], kw: Dict[str, Any]) -> ImplicitBlock:
    """``steps`` time-indexed pre-activation conv fields (one per step) sharing one set of gates."""
    gates = EigenGates(limits, (channels, size, size), learnable_scale, learnable_ends)
    fields = [GatedEigenRangeField(xavier_unit_frobenius_(ConvField(channels)), gates, spectral_norm,
                                   init_iterations=5) for _ in range(steps)]
    return ImplicitBlock(fields, steps=steps, h=h, **kw)


def mnist_e831e4c(layer: Optional[Dict[str, Any]] = None, in_channels: int = 1, num_classes: int = 10,
                  channels: Sequence[int] = (6, 12, 24), steps: int = 2, h: float = 1.0, image_size: int = 28,
                  stability_limits: Optional[Sequence[float]] = (0.2, 1.0, 1.2), spectral_norm: Optional[str] = "exact",
                  learnable_scale: bool = True, learnable_ends: bool = True,
                  normalize: Optional[Dict[str, Sequence[float]]] = None) -> ImageNet:
    """The authors' MNIST network of journal example 4 at commit e831e4c (AUTHORS-CODE §2.4, ex_MNIST.py:129-151):

        block(C_in×28×28) → Conv(C_in, c₁, 7, s2, p3, no bias) → MaxPool(3, s2) → block(c₁) → Conv(c₁, c₂, 3, s2, p1,
        no bias) → block(c₂) → Conv(c₂, c₃, 3, s2, p1, no bias) → block(c₃) → AvgPool → Linear(c₃, classes)

    Every block: ``steps`` θ-steps of size ``h`` with one pre-activation conv field per step
    (ReLU→Conv3×3→ReLU→Conv3×3, biases; weights :func:`~irn_core.fields.xavier_unit_frobenius_`), each wrapped
    as :class:`~irn_core.normalization.GatedEigenRangeField` with the block's shared gates. Eigenvalue limits:
    :func:`~irn_core.normalization.eig_limits_from_stability` of θ and ``stability_limits`` (null: (−1, 0, 1)).
    The authors' θ runs: the defaults (32,420 parameters); "plain": θ = 0, ``stability_limits: null``,
    ``spectral_norm: null``, nothing learnable; "1-Lipschitz": the same with ``spectral_norm: exact``.
    Pixels are not normalised by default (``normalize: null``), as in the authors' code.
    """
    kw, field_cfg = split_layer(layer)
    if field_cfg:
        raise ValueError("mnist_e831e4c builds its own fields; layer.field is not used "
                         "(use stability_limits, spectral_norm, learnable_scale, learnable_ends)")
    channels = [int(c) for c in channels]
    if len(channels) != 3 or any(c < 1 for c in channels):
        raise ValueError(f"channels must be three positive counts, got {channels}")
    theta = float(kw.get("theta", 0.0))
    limits = (-1.0, 0.0, 1.0) if stability_limits is None else eig_limits_from_stability(theta, stability_limits)
    blk = dict(steps=int(steps), h=float(h), limits=limits, learnable_scale=bool(learnable_scale),
               learnable_ends=bool(learnable_ends), spectral_norm=spectral_norm, kw=kw)
    size = int(image_size)
    first = _gated_block(in_channels, size, **blk)
    size = _down(size)
    size = (size - 3) // 2 + 1  # MaxPool2d(3, stride 2), no padding
    stem = nn.Sequential(first, nn.Conv2d(in_channels, channels[0], 7, stride=2, padding=3, bias=False),
                         nn.MaxPool2d(3, stride=2))
    body = [_gated_block(channels[0], size, **blk)]
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        size = _down(size)
        body += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), _gated_block(c_out, size, **blk)]
    head = nn.Sequential(nn.AvgPool2d(size), nn.Flatten(), nn.Linear(channels[-1], num_classes))
    return ImageNet(make_normalize(normalize), stem, nn.Sequential(*body), head)
