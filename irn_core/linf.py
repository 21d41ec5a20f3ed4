"""The ℓ∞ parameterisation of NEMON (SPEC §5; Jafarpour et al.): A = m·I + D⁻¹ÂD − diag(|Â|·1), whose weighted
log-norm μ∞(DAD⁻¹) ≤ m < 1 makes x = σ(Ax + Bu + b) well posed for every Â, d."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["LInfParam", "linf_log_norm"]


def linf_log_norm(A: torch.Tensor, d: Optional[torch.Tensor] = None) -> torch.Tensor:
    """μ∞(A) = maxᵢ (aᵢᵢ + Σ_{j≠i} |aᵢⱼ|); with ``d`` the weighted log-norm μ∞(DAD⁻¹), D = diag(exp d)
    (the log-norm of the norm ‖x‖ = ‖Dx‖∞)."""
    if d is not None:
        A = torch.exp(d)[:, None] * A * torch.exp(-d)[None, :]
    diag = torch.diagonal(A)
    off = A.abs().sum(dim=1) - diag.abs()
    return (diag + off).max()


class LInfParam(nn.Module):
    """A = m·I + D⁻¹ÂD − diag(|Â|·1), D = diag(exp d) (SPEC §5, NEMON's parameterisation).

    Since diag(·) commutes with D, A = D⁻¹(m·I + Â − diag(|Â|·1))D, hence the D-weighted log-norm
    μ∞(DAD⁻¹) = m + maxᵢ(Âᵢᵢ − |Âᵢᵢ|) ≤ m for every Â, d (and μ∞(A) ≤ m itself when d = 0). With
    m < 1 the implicit equation x = σ(Ax + Bu + b) is well posed for slope-restricted σ (slopes in [0, 1]).
    ``learn_d=False`` keeps D = I.
    """

    def __init__(self, n: int, m: float = 0.0, learn_d: bool = True, init_std: Optional[float] = None):
        super().__init__()
        self.n, self.m = int(n), float(m)
        std = init_std if init_std is not None else 1.0 / math.sqrt(n)
        self.A_hat = nn.Parameter(torch.randn(n, n) * std)
        d = torch.zeros(n)
        if learn_d:
            self.d = nn.Parameter(d)
        else:
            self.register_buffer("d", d)

    def forward(self) -> torch.Tensor:
        Ah = self.A_hat
        e = torch.exp(self.d)
        A = Ah * (1.0 / e)[:, None] * e[None, :]  # D⁻¹ÂD
        A = A - torch.diag(Ah.abs().sum(dim=1)) + self.m * torch.eye(self.n, dtype=Ah.dtype, device=Ah.device)
        return A

    def log_norm(self) -> torch.Tensor:
        """μ∞(DAD⁻¹) ≤ m."""
        return linf_log_norm(self(), self.d)

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}"
