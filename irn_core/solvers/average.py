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

``"nemon_average"`` is the same iteration exactly as the authors' code runs it (AUTHORS-CODE §7, splitting.py:12-66):
one scalar α for the whole batch; the error is the relative successive change over the whole batch,
‖y_{k+1} − y_k‖ / (1e-6 + ‖y_{k+1}‖); stop at ``tol`` (1e-2) or ``max_iter`` (300); α ÷ 1.5 when the error is
above 0.85 × the previous one; and α **persists** across calls (batches, epochs) through ``state`` — a dict the
layer owns — never increased.
"""
from __future__ import annotations

import time
from typing import Tuple

import torch

from .base import Progress, SolverStats, check_initial, check_mode, check_stall, residual_norm
from .nonlinear import Map, register_nonlinear

__all__ = ["picard_average", "nemon_average"]


@register_nonlinear("picard_average")
def picard_average(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 200, mode: str = "abs",
                   alpha: float = 1.0, shrink: float = 1.5, ratio: float = 0.85,
                   min_alpha: float = 1e-4, stall: int = 0) -> Tuple[torch.Tensor, SolverStats]:
    """Average iteration y ← (1−α)y + α g(y), α ÷ ``shrink`` per sample when ‖r_{k+1}‖ > ``ratio``·‖r_k‖."""
    check_mode(mode)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"picard_average alpha must be in (0, 1], got {alpha}")
    if shrink <= 1.0 or not 0.0 < ratio <= 1.0:
        raise ValueError(f"picard_average needs shrink > 1 and ratio in (0, 1], got shrink={shrink}, ratio={ratio}")
    stall = check_stall(stall)
    t0 = time.perf_counter()
    gy = g(y0)
    res = residual_norm(gy - y0, gy, mode)
    pr = Progress(y0, res, tol, max_iter, stall, ("picard_average", gy))
    y, nfe = y0, 1
    a = torch.full_like(res, float(alpha))
    view = (-1,) + (1,) * (y0.dim() - 1)
    while not pr.done:
        y = y + a.view(view) * (gy - y)
        gy = g(y)
        nfe += 1
        new = residual_norm(gy - y, gy, mode)
        slow = ~(new < ratio * res)
        a = torch.where(slow, (a / shrink).clamp_min(min_alpha), a)
        res = new
        pr.update(y, res)
    return pr.finish("picard_average", nfe, t0, mode)


@register_nonlinear("nemon_average")
def nemon_average(g: Map, y0: torch.Tensor, *, tol: float = 1e-2, max_iter: int = 300, alpha: float = 1.0,
                  shrink: float = 1.5, ratio: float = 0.85, state: dict = None) -> Tuple[torch.Tensor, SolverStats]:
    """The authors' averaged iteration: scalar α (from ``state["alpha"]`` when given, else ``alpha``, written back),
    batch-wide relative change as the error. The returned residual is that batch error for every sample."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"nemon_average alpha must be in (0, 1], got {alpha}")
    if shrink <= 1.0 or not 0.0 < ratio <= 1.0:
        raise ValueError(f"nemon_average needs shrink > 1 and ratio in (0, 1], got shrink={shrink}, ratio={ratio}")
    t0 = time.perf_counter()
    a = float(state.get("alpha", alpha)) if state is not None else float(alpha)
    gy = g(y0)
    check_initial(gy, "nemon_average")
    nfe, hist, it = 1, [], 0
    err = float(torch.linalg.vector_norm(gy - y0) / (1e-6 + torch.linalg.vector_norm(gy)))
    init = err
    y = y0
    if err > tol:  # else y0 is already a fixed point (from z = 0 the authors' first step would return it too)
        err = float("inf")
        while it < max_iter:
            y_new = (1.0 - a) * y + a * gy
            new = float(torch.linalg.vector_norm(y_new - y) / (1e-6 + torch.linalg.vector_norm(y_new)))  # one sync
            y, it = y_new, it + 1
            if new > ratio * err:
                a /= shrink
            err = new
            hist.append(err)
            if not err == err or err <= tol or it == max_iter:  # converged, NaN (the caller checks), or out of steps
                break
            gy = g(y)
            nfe += 1
    if state is not None:
        state["alpha"] = a
    n = y0.shape[0] if y0.dim() else 1
    res = torch.full((n,), err, dtype=y0.dtype, device=y0.device)
    return y, SolverStats(solver="nemon_average", iterations=it, residual=res, converged=res <= tol, nfe=nfe,
                          wall_time=time.perf_counter() - t0, init_residual=torch.full_like(res, init),
                          history=hist, tol=tol, mode="rel",
                          stop="converged" if err <= tol else ("diverged" if err != err else "max_iter"))
