"""Linear operators of weight layers (SPEC §2; journal Algorithm 1).

- :func:`conv2d_adjoint`: Aᵀy of a convolution's linear part (zero or circular padding, autograd otherwise).
- :func:`circular_conv_norm`: the exact ‖A‖₂ of a periodic 3×3 convolution (Sedghi, Gupta & Long 2019).
- :func:`power_iteration`: Algorithm 1, μ = ‖A v‖ with v ← AᵀA v / ‖AᵀA v‖.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv2d_adjoint", "circular_conv_norm", "power_iteration"]

def _circular_pad_adjoint(z: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Adjoint of ``F.pad(x, (pw, pw, ph, ph), mode="circular")``: fold the halo back onto x."""
    if ph:
        H = z.shape[-2] - 2 * ph
        x = z[..., ph:ph + H, :].clone()
        x[..., H - ph:H, :] += z[..., :ph, :]
        x[..., :ph, :] += z[..., ph + H:, :]
        z = x
    if pw:
        W = z.shape[-1] - 2 * pw
        x = z[..., pw:pw + W].clone()
        x[..., W - pw:W] += z[..., :pw]
        x[..., :pw] += z[..., pw + W:]
        z = x
    return z


def _conv_geometry(conv: nn.Conv2d):
    pad = conv.padding
    if isinstance(pad, str):
        return None
    return tuple(pad)


def conv2d_adjoint(y: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """Aᵀy for the linear part A of ``conv`` (no bias) on inputs of shape (N, *input_shape).

    Zero padding: ``conv_transpose2d`` with the same weight, stride, padding, dilation, groups (and the
    output padding that restores the input shape). Circular padding: ``conv_transpose2d`` without
    padding, then the halo is folded back (adjoint of circular padding). Anything else: autograd VJP.
    """
    pad = _conv_geometry(conv)
    H, W = int(input_shape[-2]), int(input_shape[-1])
    if pad is not None and conv.padding_mode in ("zeros", "circular"):
        ph, pw = pad
        circ = conv.padding_mode == "circular"
        p_t = (0, 0) if circ else (ph, pw)
        tH, tW = (H + 2 * ph, W + 2 * pw) if circ else (H, W)
        sH, sW = conv.stride
        dH, dW = conv.dilation
        kH, kW = weight.shape[-2:]
        nat_H = (y.shape[-2] - 1) * sH - 2 * p_t[0] + dH * (kH - 1) + 1
        nat_W = (y.shape[-1] - 1) * sW - 2 * p_t[1] + dW * (kW - 1) + 1
        op = (tH - nat_H, tW - nat_W)
        if 0 <= op[0] < max(sH, dH) and 0 <= op[1] < max(sW, dW):
            z = F.conv_transpose2d(y, weight, None, conv.stride, p_t, op, conv.groups, conv.dilation)
            return _circular_pad_adjoint(z, ph, pw) if circ else z
    # generic fallback: exact adjoint by autograd
    with torch.enable_grad():
        x = torch.zeros(y.shape[0], *input_shape, dtype=y.dtype, device=y.device, requires_grad=True)
        out = conv._conv_forward(x, weight, None)
        (g,) = torch.autograd.grad(out, x, y, create_graph=torch.is_grad_enabled() and weight.requires_grad)
    return g


def circular_conv_norm(weight: torch.Tensor, size: int = 32) -> torch.Tensor:
    """‖A‖₂ of a 3×3 convolution with periodic padding on a ``size``×``size`` grid, exactly: the largest singular value
    over the DFT frequencies of the c_out×c_in kernel matrices (Sedghi, Gupta & Long 2019)."""
    k = torch.fft.fft2(weight, s=(size, size))  # (c_out, c_in, size, size)
    return torch.linalg.matrix_norm(k.permute(2, 3, 0, 1), ord=2).max()


def _normalize(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v / v.norm().clamp_min(eps)


def power_iteration(A: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, iterations: int = 20,
                    adjoint: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    eps: float = 1e-12) -> Tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1: μ = ‖A v‖, v ← AᵀA v / ‖AᵀA v‖, for a linear map A on tensors shaped like v.

    ``adjoint`` is Aᵀ; when omitted it is ½∂μ²/∂v by autograd (the paper's formulation). Returns
    (μ, v) with v normalised; μ is a lower bound of ‖A‖₂ that converges to it.
    """
    v = _normalize(v.detach(), eps)
    mu = torch.zeros((), dtype=v.dtype, device=v.device)
    with torch.no_grad():
        for _ in range(int(iterations)):
            if adjoint is None:
                with torch.enable_grad():
                    vv = v.detach().requires_grad_(True)
                    Av = A(vv)
                    (w,) = torch.autograd.grad(0.5 * Av.pow(2).sum(), vv)
                mu = Av.detach().norm()
            else:
                Av = A(v)
                mu = Av.norm()
                w = adjoint(Av)
            v = _normalize(w, eps)
        mu = A(v).norm()
    return mu, v
