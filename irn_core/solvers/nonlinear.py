"""Nonlinear solvers for the implicit step: find y with y = g(y) (SPEC §1, "Forward").

Contract (one for all): ``solve(g, y0, *, tol, max_iter, mode, **opts) -> (y, SolverStats)``.
``g`` is the fixed-point map of the θ-step, g(y) = x + hΦ(γ, x, y); the residual is
r(y) = g(y) − y, measured per sample (``mode="abs"``: ‖r‖, ``mode="rel"``: ‖r‖ / (‖g(y)‖ + ε), ``mode="rms"``:
‖r‖ / √n, n the entries of one sample — the default, a tolerance that means the same on any state size).
A solve stops when every sample meets ``tol`` and returns, per sample, the lowest-residual iterate.
Solvers are called under ``torch.no_grad()`` by the layers: no graph survives the solve.
"""
from __future__ import annotations

import time
from typing import Callable, Tuple

import torch

from .base import (BestIterate, Registry, SolverStats, all_done, batch_norm, check_initial, check_mode, finish,
                   prepare_forward_ad, residual_norm, start)

__all__ = ["NONLINEAR_SOLVERS", "register_nonlinear", "get_nonlinear", "fixed_point", "anderson", "lbfgs", "newton_krylov"]

NONLINEAR_SOLVERS = Registry("nonlinear")
register_nonlinear = NONLINEAR_SOLVERS.register
get_nonlinear = NONLINEAR_SOLVERS.get

Map = Callable[[torch.Tensor], torch.Tensor]


@register_nonlinear("fixed_point")
def fixed_point(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 200, mode: str = "abs",
                damping: float = 1.0) -> Tuple[torch.Tensor, SolverStats]:
    """Picard iteration y_{k+1} = (1−β)y_k + β g(y_k) with damping β ∈ (0, 1] (β = 1: plain Picard).

    Converges when θ·h·Lip(F) < 1 (Banach); beyond that it reports non-convergence.
    """
    check_mode(mode)
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"fixed_point damping must be in (0, 1], got {damping}")
    t0, gy, res, best = start("fixed_point", g, y0, mode)
    y, nfe, init_res = y0, 1, res.clone()
    hist = []
    it = 0
    while it < max_iter and not all_done(best, res, tol):
        y = gy if damping == 1.0 else (1.0 - damping) * y + damping * gy
        gy = g(y)
        nfe += 1
        it += 1
        res = residual_norm(gy - y, gy, mode)
        best.update(y, res)
        hist.append(float(res.max()))
    return finish("fixed_point", best, it, nfe, t0, init_res, hist, tol, mode)


@register_nonlinear("anderson")
def anderson(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100, mode: str = "abs",
             m: int = 5, lam: float = 1e-8, beta: float = 1.0) -> Tuple[torch.Tensor, SolverStats]:
    """Anderson acceleration (type II) with memory ``m`` and mixing ``beta``.

    The mixing weights α solve min ‖Σ α_i G_i‖² s.t. Σα_i = 1 (G_i = g(y_i) − y_i), as the bordered
    system [[0, 1ᵀ], [1, GGᵀ + λ·max diag(GGᵀ)·I]] — regularised relative to the residual scale, so it
    stays solvable when the G_i are (near) linearly dependent; a batch whose system is still singular
    falls back to the pseudo-inverse.
    """
    check_mode(mode)
    if m < 1:
        raise ValueError(f"anderson memory m must be >= 1, got {m}")
    t0 = time.perf_counter()
    shape = y0.shape
    B = shape[0]
    n = y0[0].numel()
    dt, dev = y0.dtype, y0.device
    x0 = y0.reshape(B, n)
    f0 = g(y0).reshape(B, n)
    nfe = 1
    check_initial(f0, "anderson")
    res = residual_norm(f0 - x0, f0, mode)
    init_res = res.clone()
    best = BestIterate(x0, res)
    hist = []
    it = 0
    if bool((best.res <= tol).all()) or max_iter <= 0:
        return _finish_flat("anderson", best, shape, it, nfe, t0, init_res, hist, tol, mode)
    X = torch.zeros(B, m, n, dtype=dt, device=dev)
    F = torch.zeros(B, m, n, dtype=dt, device=dev)
    X[:, 0], F[:, 0] = x0, f0
    k = 1
    eye = torch.eye(m, dtype=dt, device=dev)
    tiny = torch.finfo(dt).eps
    while it < max_iter:
        if k == 1:
            xk = F[:, 0].clone()  # first step: plain Picard
        else:
            nk = min(k, m)
            Gk = F[:, :nk] - X[:, :nk]
            GG = Gk @ Gk.transpose(1, 2)
            finite = torch.isfinite(GG).all(dim=(1, 2))
            if not bool(finite.all()):  # diverged samples: keep their system solvable (they stay non-finite)
                GG = torch.where(finite[:, None, None], GG, eye[:nk, :nk].expand_as(GG))
            scale = GG.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(tiny)
            H = torch.zeros(B, nk + 1, nk + 1, dtype=dt, device=dev)
            H[:, 0, 1:] = 1.0
            H[:, 1:, 0] = 1.0
            H[:, 1:, 1:] = GG + (lam * scale + tiny * scale)[:, None, None] * eye[:nk, :nk]
            rhs = torch.zeros(B, nk + 1, 1, dtype=dt, device=dev)
            rhs[:, 0] = 1.0
            sol, info = torch.linalg.solve_ex(H, rhs)
            bad = (info != 0) | ~torch.isfinite(sol).all(dim=(1, 2))
            if bool(bad.any()):
                sol = torch.where(bad[:, None, None], torch.linalg.pinv(H) @ rhs, sol)
            alpha = sol[:, 1:, 0]
            xk = beta * (alpha[:, None] @ F[:, :nk])[:, 0] + (1 - beta) * (alpha[:, None] @ X[:, :nk])[:, 0]
        fk = g(xk.reshape(shape)).reshape(B, n)
        nfe += 1
        it += 1
        res = residual_norm(fk - xk, fk, mode)
        best.update(xk, res)
        hist.append(float(res.max()))
        X[:, k % m], F[:, k % m] = xk, fk
        k += 1
        if all_done(best, res, tol):
            break
    return _finish_flat("anderson", best, shape, it, nfe, t0, init_res, hist, tol, mode)


def _finish_flat(name, best, shape, *args):
    best.y = best.y.reshape(shape)
    return finish(name, best, *args)


class _Converged(Exception):
    pass


@register_nonlinear("lbfgs")
def lbfgs(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 200, mode: str = "abs",
          history_size: int = 10, lr: float = 1.0, line_search: str = "strong_wolfe",
          max_eval: int | None = None) -> Tuple[torch.Tensor, SolverStats]:
    """Minimise ‖r(y)‖² = ‖g(y) − y‖² with ``torch.optim.LBFGS`` and a strong-Wolfe line search
    (the authors' choice, §2.2.1). Each evaluation is one F-forward plus one VJP w.r.t. y only; the
    map's parameters are never touched.
    """
    check_mode(mode)
    ls = None if line_search in (None, "none") else line_search
    if ls not in (None, "strong_wolfe"):
        raise ValueError(f"lbfgs line_search must be 'strong_wolfe' or 'none', got {line_search!r}")
    t0 = time.perf_counter()
    with torch.no_grad():
        gy = g(y0)
    check_initial(gy, "lbfgs")
    res = residual_norm(gy - y0, gy, mode)
    init_res = res.clone()
    best = BestIterate(y0, res)
    hist = []
    state = {"nfe": 1}
    if bool((best.res <= tol).all()) or max_iter <= 0:
        return finish("lbfgs", best, 0, 1, t0, init_res, hist, tol, mode)
    y = y0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([y], lr=lr, max_iter=max_iter, max_eval=max_eval or max_iter * 5,
                            tolerance_grad=0.0, tolerance_change=0.0, history_size=history_size,
                            line_search_fn=ls)

    def closure():
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            gy = g(y)
            r = gy - y
            loss = 0.5 * r.pow(2).sum()
            (grad,) = torch.autograd.grad(loss, y)
        state["nfe"] += 1
        with torch.no_grad():
            res = residual_norm(r.detach(), gy.detach(), mode)
            best.update(y.detach(), res)
            hist.append(float(res.max()))
        y.grad = grad
        if all_done(best, res, tol):
            raise _Converged
        return loss.detach()

    try:
        opt.step(closure)
    except _Converged:
        pass
    it = int(opt.state[opt._params[0]].get("n_iter", 0)) if opt.state else 0
    best.y = best.y.detach()
    return finish("lbfgs", best, it, state["nfe"], t0, init_res, hist, tol, mode)


@register_nonlinear("newton_krylov")
def newton_krylov(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 50, mode: str = "abs",
                  inner_tol: float = 1e-4, inner_max_iter: int = 30, restart: int = 30,
                  max_backtracks: int = 8) -> Tuple[torch.Tensor, SolverStats]:
    """Inexact Newton on r(y) = y − g(y): each step solves (I − ∂g/∂y) d = −r by batched GMRES on
    Jacobian–vector products (``torch.func.jvp``, forward mode), then backtracks per sample until
    ‖r‖ decreases (Armijo on ‖r‖). Converges where Picard cannot (θ·h·Lip(F) > 1, stiff fields).
    """
    from .linear import gmres

    check_mode(mode)
    prepare_forward_ad()
    t0 = time.perf_counter()
    y = y0
    gy = g(y)
    nfe = 1
    check_initial(gy, "newton_krylov")
    r = y - gy
    rn = batch_norm(r)
    res = residual_norm(r, gy, mode)
    init_res = res.clone()
    best = BestIterate(y, res)
    hist = []
    it = 0
    view = (-1,) + (1,) * (y0.dim() - 1)
    while it < max_iter and not all_done(best, res, tol):
        y_lin = y

        def J(v, y_lin=y_lin):
            _, jv = torch.func.jvp(g, (y_lin,), (v,))
            return v - jv

        d, lst = gmres(J, -r, tol=inner_tol, max_iter=inner_max_iter, restart=restart, mode="rel")
        nfe += lst.nfe
        t = torch.ones(y.shape[0], dtype=y.dtype, device=y.device)
        accepted = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        y_new, gy_new, rn_new = y, gy, rn
        for _ in range(max_backtracks + 1):
            y_try = y + t.view(view) * d
            gy_try = g(y_try)
            nfe += 1
            rn_try = batch_norm(y_try - gy_try)
            ok = (rn_try <= (1 - 1e-4 * t) * rn) & torch.isfinite(rn_try) & ~accepted
            y_new = torch.where(ok.view(view), y_try, y_new)
            gy_new = torch.where(ok.view(view), gy_try, gy_new)
            rn_new = torch.where(ok, rn_try, rn_new)
            accepted |= ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, 0.5 * t)
        it += 1
        if not bool(accepted.any()):  # no sample could decrease ‖r‖ along the Newton direction
            break
        y, gy = y_new, gy_new
        r = y - gy
        rn = rn_new
        res = residual_norm(r, gy, mode)
        best.update(y, res)
        hist.append(float(res.max()))
    return finish("newton_krylov", best, it, nfe, t0, init_res, hist, tol, mode)
