"""NEMON's average iteration as a nonlinear solver (SPEC §5; Jafarpour et al.).

For a fixed-point map g: y_{k+1} = (1 − α) y_k + α g(y_k) (Krasnosel'skii–Mann averaging), with a
per-sample α that is divided by ``shrink`` (1.5) whenever the residual ‖g(y) − y‖ does not fall below
``ratio`` (0.85) times the previous one. For the NEMON equation x = σ(Ax + Bu + b) with μ∞(A) < 1 it
converges for small enough α; for a θ-step it is a damped Picard iteration that adapts its damping.

Caveat: with the authors' ``ratio=0.85`` α keeps shrinking whenever the contraction factor at the
admissible α is above 0.85 (e.g. A with a strongly negative diagonal, where α ≲ 1/(1 − min aᵢᵢ) and the
factor is ≈ 1 − α), and the iteration stalls; ``ratio=1.0`` (shrink only when the residual grows) is
robust there.

Registered as ``"picard_average"`` (a name that keeps the registry's listing order of the existing
solvers; it is the NEMON paper's "average iteration").
"""
from __future__ import annotations

from typing import Tuple

import torch

from .base import SolverStats, all_done, check_mode, finish, residual_norm, start
from .nonlinear import Map, register_nonlinear

__all__ = ["picard_average"]


@register_nonlinear("picard_average")
def picard_average(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 200, mode: str = "abs",
                   alpha: float = 1.0, shrink: float = 1.5, ratio: float = 0.85,
                   min_alpha: float = 1e-4) -> Tuple[torch.Tensor, SolverStats]:
    """Average iteration y ← (1−α)y + α g(y), α ÷ ``shrink`` per sample when ‖r_{k+1}‖ > ``ratio``·‖r_k‖."""
    check_mode(mode)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"picard_average alpha must be in (0, 1], got {alpha}")
    if shrink <= 1.0 or not 0.0 < ratio <= 1.0:
        raise ValueError(f"picard_average needs shrink > 1 and ratio in (0, 1], got shrink={shrink}, ratio={ratio}")
    t0, gy, res, best = start("picard_average", g, y0, mode)
    y, nfe, init_res = y0, 1, res.clone()
    a = torch.full_like(res, float(alpha))
    view = (-1,) + (1,) * (y0.dim() - 1)
    hist = []
    it = 0
    while it < max_iter and not all_done(best, res, tol):
        y = y + a.view(view) * (gy - y)
        gy = g(y)
        nfe += 1
        it += 1
        new = residual_norm(gy - y, gy, mode)
        slow = ~(new < ratio * res)
        a = torch.where(slow, (a / shrink).clamp_min(min_alpha), a)
        res = new
        best.update(y, res)
        hist.append(float(res.max()))
    return finish("picard_average", best, it, nfe, t0, init_res, hist, tol, mode)
