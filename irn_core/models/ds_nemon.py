"""``resnet_ds`` (ResNet-D / ResNet-S CIFAR networks, SPEC §4) and ``nemon`` (SPEC §5) built on
:mod:`irn_core.variants`.

resnet_ds (SPEC §4, reproduces every entry of Zhang & Schaeffer's Table 5.2): 3×3 conv stem (no bias, periodic
padding) to ``channels`` c, BN, ReLU → **n** residual layers (c) → 2D pooling layer → **n − 1** layers (2c) → 2D
pooling layer → **n − 1** layers (4c) → global average pool → linear **without bias**. The 2D pooling layer (eq 4.4)
is the average-pool + zero-channel-pad shortcut plus one learnable 3×3 stride-2 filter (ResNet-D: A ≥ 0 and its BN
fixed; ResNet-S: BN trainable). Initialisation: stem variance-scaling uniform, residual and pooling filters He
normal, FC truncated normal σ = 0.02 (*inferred*: lost in the paper), biases 0, BN γ = 1, β = 0. ``form``:

- ``post_activation`` (the paper): explicit ResNetDLayer / ResNetSLayer x ↦ σ(x ∓ …) with batch norm;
  ``layer.theta`` must be absent or 0 (use form: theta for θ-methods).
- ``theta``: each stage is one ImplicitBlock of n (then n − 1, n − 1) θ-steps, one field F_D = −A₂σ(A₁x + b₁) or
  F_S = −Aᵀσ(Ax + b) per step (no outer σ, no batch norm: see irn_core.variants), step ``h``; the same explicit
  pooling layers (the ablation the paper does not have). With no batch norm to set their scale, every filter of
  a field is kept at ‖A‖₂ ≤ 1 (exact for periodic padding; set at initialisation, projected after each optimiser
  step), so Lip(F) ≤ 1 (*inferred*: the paper has no θ-form). Without it, He-initialised filters give Lip(F) ≫ 1
  (ResNet-D's non-negative A₂ sums 9c positive weights) and at θ = 1 the first forward neither converges nor
  stays bounded (activations 600 → 7·10³ → 1·10⁵ over the stages, 50 Anderson iterations each).

Depth as the paper counts it (distinct filters and weights): ResNet-D 6n (n = 3, 6, 9, 12 ↔ 18, 36, 54, 72),
ResNet-S 3n + 2 (↔ 11, 20, 29, 38). ResNet-D's A₂ ≥ 0 and pooling A ≥ 0 are kept by their ``project_()`` after
every optimiser step (bench.train calls every such hook).

nemon: x = σ(Ax + Bu + b), logits = Cx + c with A ℓ∞-parameterised (μ∞ ≤ m). ``kind: dense``: u is the
flattened image; ``kind: conv``: u = avgpool(ReLU(conv3×3(image))) flattened (a convolutional input
injection; the equilibrium itself is dense, irn_core.variants has no convolutional ℓ∞ A).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from .. import variants
from .common import make_normalize, split_layer

__all__ = ["resnet_ds", "nemon", "stage_sizes"]


class _Net(nn.Module):
    def __init__(self, normalize, stem, body, head):
        super().__init__()
        self.normalize, self.stem, self.body, self.head = normalize, stem, body, head

    def forward(self, x):
        return self.head(self.body(self.stem(self.normalize(x))))


FORMS = ("post_activation", "theta")
VARIANTS = ("D", "S")


def resnet_ds(layer: Optional[Dict[str, Any]] = None, variant: str = "D", n: int = 3, channels: int = 16,
              in_channels: int = 3, num_classes: int = 10, form: str = "post_activation", h: float = 1.0,
              batch_norm: bool = True, padding_mode: str = "circular",
              normalize: Optional[Dict[str, Sequence[float]]] = None) -> nn.Module:
    """ResNet-D/-S (Zhang & Schaeffer). Options: ``layer``; ``variant`` D | S; ``n`` layers per stage;
    ``channels`` c of the first stage (16); ``in_channels``; ``num_classes``; ``form``
    post_activation | theta; ``h`` θ-step size; ``batch_norm`` (of the post-activation and pooling layers);
    ``padding_mode`` circular (periodic, the paper) | zeros; ``normalize`` {mean, std}."""
    kw, field_cfg = split_layer(layer)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; valid: {', '.join(FORMS)}")
    if field_cfg:
        raise ValueError("resnet_ds fields are structured (A₂ ≥ 0, Aᵀ); layer.field options are not supported")
    n, c = int(n), int(channels)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if form == "post_activation":
        if kw.get("theta", 0.0) != 0.0:
            raise ValueError("form post_activation is the explicit paper network; set form: theta for θ > 0")
        extra = sorted(set(kw) - {"theta"})
        if extra:
            raise ValueError(f"layer option(s) {', '.join(extra)} need form: theta")
    stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, padding_mode=padding_mode, bias=False),
                         nn.BatchNorm2d(c), nn.ReLU())
    pool_cls = variants.ResNetDPooling if variant == "D" else variants.ResNetSPooling
    body = []
    for s_, layers in enumerate(stage_sizes(n)):
        if s_ > 0:
            body.append(pool_cls(c, batch_norm=batch_norm, padding_mode=padding_mode))
            c *= 2
        if layers == 0:
            continue
        if form == "post_activation":
            cls = variants.ResNetDLayer if variant == "D" else variants.ResNetSLayer
            body.extend(cls(c, kind="conv", batch_norm=batch_norm, padding_mode=padding_mode) for _ in range(layers))
        else:
            make = variants.resnet_d_block if variant == "D" else variants.resnet_s_block
            lk = dict(kw)
            theta = lk.pop("theta", 0.0)
            body.append(make(c, steps=layers, theta=theta, h=h, shared=False, kind="conv",
                             padding_mode=padding_mode, lipschitz=1.0 if padding_mode == "circular" else None, **lk))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes, bias=False))
    net = _Net(make_normalize(normalize), stem, nn.Sequential(*body), head)
    _paper_init(net)
    return net


def stage_sizes(n: int) -> tuple:
    """Residual layers per stage: n, n − 1, n − 1 (SPEC §4; the pooling layers count as depth)."""
    return (n, n - 1, n - 1)


@torch.no_grad()
def _paper_init(net: nn.Module) -> None:
    """Stem: variance-scaling uniform; residual and pooling filters: He normal (the constrained ones made
    non-negative); FC: truncated normal σ = 0.02 (*inferred*); biases 0 (BN: γ = 1, β = 0 by construction)."""
    stem_conv = net.stem[0]
    nn.init.kaiming_uniform_(stem_conv.weight, nonlinearity="relu")
    for m in net.body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in net.body.modules():
        if isinstance(m, variants.ResNetDField):
            m.A2.weight.abs_()
        elif isinstance(m, variants.ResNetDPooling):
            m.A.weight.abs_()
        if isinstance(m, (variants.ResNetDField, variants.ResNetSField)) and m.lipschitz is not None:
            m.scale_to_lipschitz_()
    nn.init.trunc_normal_(net.head[2].weight, std=0.02, a=-0.04, b=0.04)


KINDS = ("dense", "conv", "conv_equilibrium")


def nemon(layer: Optional[Dict[str, Any]] = None, kind: str = "dense", hidden: int = 100, channels: int = 64,
          pool: int = 4, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, m: float = 0.0,
          activation: str = "relu", learn_d: bool = True,
          normalize: Optional[Dict[str, Sequence[float]]] = None) -> nn.Module:
    """NEMON classifier. Options: ``layer`` (solver, backward, on_nonconvergence only — NEMON is not a
    θ-method; its default solver is the average iteration picard_average); ``kind`` dense (the authors' FC model) |
    conv (a conv stem into the dense equilibrium: NOT the authors' model, kept for the runs that used it) |
    conv_equilibrium (the authors' conv model: :class:`~irn_core.variants.NEMONConvLayer` with ``channels`` (64 MNIST,
    81 CIFAR) and 5×5 circular kernels on the image padded by 1, then avg-pool 4 → Linear; default solver the
    authors' nemon_average with α₀ = 0.5);
    ``hidden`` equilibrium units (100); ``channels`` (64) and ``pool`` (output side of the pooling) of
    the conv injection; ``in_channels``; ``image_size``; ``num_classes``; ``m`` (μ∞ bound, < 1);
    ``activation``; ``learn_d``; ``normalize``."""
    kw, field_cfg = split_layer(layer, defaults=False)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    bad = sorted((set(kw) - {"solver", "backward", "on_nonconvergence"}) | ({"field"} if field_cfg else set()))
    if bad:
        raise ValueError(f"nemon is not a θ-method: layer option(s) {', '.join(bad)} do not apply; "
                         "valid: solver, backward, on_nonconvergence")
    if kind == "conv_equilibrium":
        body = variants.NEMONConvLayer(in_channels, channels, 5, m=m, **kw)
        side = (image_size + 2) // 4
        head = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(channels * side * side, num_classes))
        return _Net(make_normalize(normalize), nn.Identity(), body, head)
    if kind == "dense":
        stem = nn.Flatten()
        n_in = in_channels * image_size * image_size
    else:
        stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        n_in = channels * pool * pool
    body = variants.NEMONLayer(n_in, hidden, out_features=num_classes, m=m, activation=activation,
                               learn_d=learn_d, **kw)
    return _Net(make_normalize(normalize), stem, body, nn.Identity())

