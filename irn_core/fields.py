"""Vector fields F(γ, y) for the implicit layers: any module called as ``field(y)``.

Two basic families used by the paper examples:
- :class:`MLPField` — F(y) = W_out σ(… σ(W_in y + b_in) …) (+ b_out), e.g. ex1's GELU MLP 2→10→10→10→2
  without a last bias, ex2/ex3's ReLU MLPs; with ``activation_last`` σ(W y + b), arXiv v1's one-layer field; with
  ``antisymmetric`` too σ((W − Wᵀ) y + b), the antisymmetric field of Haber & Ruthotto used by arXiv v1's code.
- :class:`ConvField` — pre-activation convolutional field F(y) = conv(σ(conv(σ(y)))) on feature maps.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["MLPField", "ConvField", "AntisymmetricLinear", "ACTIVATIONS", "INITS", "make_activation", "xavier_unit_frobenius_",
           "normal_spectral_radius_"]

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


@torch.no_grad()
def xavier_unit_frobenius_(module: nn.Module) -> nn.Module:
    """The authors' initialisation of a field (AUTHORS-CODE §1.3, rhs.py:68-81): every parameter whose
    name contains ``weight`` is drawn Xavier-uniform, then drawn again with gain 1/‖W₀‖_F of the first draw
    (so ‖W‖_F ≈ 1); every other parameter (biases) is set to zero. Draws from torch's global RNG in
    ``named_parameters`` order. Returns ``module``."""
    for name, p in module.named_parameters():
        if "weight" in name.rsplit(".", 1)[-1] and p.dim() >= 2:
            nn.init.xavier_uniform_(p)
            nn.init.xavier_uniform_(p, gain=1.0 / float(p.norm()))
        else:
            p.zero_()
    return module


@torch.no_grad()
def normal_spectral_radius_(weight: torch.Tensor) -> torch.Tensor:
    """arXiv v1 §3 Example 1: W drawn from the standard normal distribution, then normalised as W / ρ(W), ρ the
    spectral radius (the largest |eigenvalue|; W square). Draws from torch's global RNG. Returns ``weight``."""
    if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"normal_spectral_radius needs square weights (the spectral radius), got {tuple(weight.shape)}")
    weight.normal_()
    rho = torch.linalg.eigvals(weight.double()).abs().max()
    return weight.div_(rho.to(weight.dtype))


INITS = ("xavier_uniform", "xavier_unit_frobenius", "normal_spectral_radius", "default")


class _Skew(nn.Module):
    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return W - W.transpose(-1, -2)


class AntisymmetricLinear(nn.Linear):
    """y ↦ (W − Wᵀ) y + b (square W): a linear map with purely imaginary spectrum (Haber & Ruthotto 2017; the
    ``Antisym`` layer of arXiv v1's code, CustomLayers.py at the authors' first commit).

    ``weight`` *reads* as W − Wᵀ (a parametrisation; the stored W is ``parametrizations.weight.original``), so every
    reader of a Linear's weight — spectral normalisation, eigenvalue wrappers, Lipschitz bounds, penalties — sees the
    map that is applied. Initialise through :attr:`raw_weight`."""

    def __init__(self, features: int, bias: bool = True):
        super().__init__(features, features, bias=bias)
        parametrize.register_parametrization(self, "weight", _Skew())
        self._register_load_state_dict_pre_hook(self._stored_as_weight)

    @property
    def raw_weight(self) -> nn.Parameter:
        """The stored W (a Parameter): what initialisers write."""
        return self.parametrizations.weight.original

    @staticmethod
    def _stored_as_weight(state_dict, prefix, *args):
        # models saved before the parametrisation (2026-12-04) stored W under ``weight``: the same W
        old, new = prefix + "weight", prefix + "parametrizations.weight.original"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)


class MLPField(nn.Module):
    """Fully connected field on vectors: ``dims = [d, w1, …, wk, d]``, activation between layers.

    ``bias_last=False`` drops the bias of the output layer (ex1); ``activation_last=True`` applies the activation
    after the output layer too, so ``dims = [d, d]`` is σ(W y + b) (arXiv v1 §3). ``init``: ``"xavier_uniform"``
    (biases zero), ``"xavier_unit_frobenius"`` the authors' redraw (:func:`xavier_unit_frobenius_`),
    ``"normal_spectral_radius"`` N(0, 1) weights divided by their spectral radius, biases zero (arXiv v1 Example 1;
    square layers only), ``"default"`` PyTorch's. ``antisymmetric=True`` makes every layer
    :class:`AntisymmetricLinear` (square layers; init xavier_uniform or default, of W). An activation precedes every linear layer but the first, so the
    authors' "width w, depth k" MLP (k + 2 linear layers, the last activation before the bias-free output layer) is
    ``dims = [d] + [w] * (k + 1) + [d]``, ``bias_last=False``.
    """

    def __init__(self, dims: Sequence[int], activation: str = "relu", bias_last: bool = True,
                 init: str = "xavier_uniform", activation_last: bool = False, antisymmetric: bool = False):
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(f"MLPField dims must be >= 2 positive sizes, got {dims}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
        if init == "normal_spectral_radius" and any(a != b for a, b in zip(dims[:-1], dims[1:])):
            raise ValueError(f"init normal_spectral_radius needs square layers (dims all equal), got {dims}")
        if antisymmetric and any(a != b for a, b in zip(dims[:-1], dims[1:])):
            raise ValueError(f"antisymmetric needs square layers (dims all equal), got {dims}")
        if antisymmetric and init not in ("xavier_uniform", "default"):
            raise ValueError(f"antisymmetric takes init xavier_uniform or default (of W, before W - W^T), got {init!r}")
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            bias = bias_last or not last
            lin = AntisymmetricLinear(a, bias=bias) if antisymmetric else nn.Linear(a, b, bias=bias)
            if init == "xavier_uniform":
                nn.init.xavier_uniform_(lin.raw_weight if antisymmetric else lin.weight)
            elif init == "normal_spectral_radius":
                normal_spectral_radius_(lin.weight)
            if init in ("xavier_uniform", "normal_spectral_radius") and lin.bias is not None:
                nn.init.zeros_(lin.bias)
            layers.append(lin)
            if not last or activation_last:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)
        self.dims = dims
        if init == "xavier_unit_frobenius":
            xavier_unit_frobenius_(self)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class ConvField(nn.Module):
    """Pre-activation convolutional field on feature maps of ``channels`` channels (shape-preserving):
    F(y) = conv₂(σ(conv₁(σ(y)))), 'same' padding (``padding_mode`` zeros or circular).
    """

    def __init__(self, channels: int, kernel_size: int = 3, activation: str = "relu", hidden: int | None = None,
                 bias: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        hidden = hidden or channels
        pad = kernel_size // 2
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(channels, hidden, kernel_size, padding=pad, bias=bias, padding_mode=padding_mode)
        self.act2 = make_activation(activation)
        self.conv2 = nn.Conv2d(hidden, channels, kernel_size, padding=pad, bias=bias, padding_mode=padding_mode)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act2(self.conv1(self.act1(y))))
