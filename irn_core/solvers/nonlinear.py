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

import numpy as np
import torch
from torch.optim.lbfgs import _strong_wolfe  # torch's own line search: the driver below reproduces its optimiser

from .base import (Progress, Registry, SolverStats, batch_norm, check_mode, check_stall,
                   prepare_forward_ad, residual_norm, scale_residual, to_host)

__all__ = ["NONLINEAR_SOLVERS", "register_nonlinear", "get_nonlinear", "fixed_point", "anderson", "lbfgs", "newton_krylov"]

NONLINEAR_SOLVERS = Registry("nonlinear")
register_nonlinear = NONLINEAR_SOLVERS.register
get_nonlinear = NONLINEAR_SOLVERS.get

Map = Callable[[torch.Tensor], torch.Tensor]

@register_nonlinear("fixed_point")
def fixed_point(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 200, mode: str = "abs",
                damping: float = 1.0, stall: int = 0) -> Tuple[torch.Tensor, SolverStats]:
    """Picard iteration y_{k+1} = (1−β)y_k + β g(y_k) with damping β ∈ (0, 1] (β = 1: plain Picard).

    Converges when θ·h·Lip(F) < 1 (Banach); beyond that it reports non-convergence. ``stall`` > 0: stop after
    that many iterations without progress (:class:`~irn_core.solvers.base.Progress`).
    """
    check_mode(mode)
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"fixed_point damping must be in (0, 1], got {damping}")
    t0 = time.perf_counter()
    gy = g(y0)
    pr = Progress(y0, residual_norm(gy - y0, gy, mode), tol, max_iter, check_stall(stall), ("fixed_point", gy))
    y, nfe = y0, 1
    while not pr.done:
        y = gy if damping == 1.0 else (1.0 - damping) * y + damping * gy
        gy = g(y)
        nfe += 1
        pr.update(y, residual_norm(gy - y, gy, mode))
    return pr.finish("fixed_point", nfe, t0, mode)


@register_nonlinear("anderson")
def anderson(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 100, mode: str = "abs",
             m: int = 5, lam: float = 1e-8, beta: float = 1.0, stall: int = 0) -> Tuple[torch.Tensor, SolverStats]:
    """Anderson acceleration (type II) with memory ``m`` and mixing ``beta``.

    The mixing weights α solve min ‖Σ α_i G_i‖² s.t. Σα_i = 1 (G_i = g(y_i) − y_i), as the bordered
    system [[0, 1ᵀ], [1, GGᵀ + λ·max diag(GGᵀ)·I]] — regularised relative to the residual scale, so it
    stays solvable when the G_i are (near) linearly dependent; a sample whose system is still singular takes
    the plain step from its latest iterate (α = that iterate's unit vector). The next iterate is
    Σα_i (y_i + β G_i) = Σα_i g(y_i) − (1−β) Σα_i G_i.

    Cost per iteration beyond the F-evaluation: on the device, the new residual written into the history in place,
    one batched matvec for the new row of the Gram matrix ⟨G_i, G_new⟩ (O(m·n); the matrix is never recomputed) and
    one for the mixing; that row (m numbers per sample) is the iteration's one host read, and the Gram matrix, the
    residual norm (its diagonal), the (m+1)×(m+1) systems and the stop test live on the host in float64.
    """
    check_mode(mode)
    if m < 1:
        raise ValueError(f"anderson memory m must be >= 1, got {m}")
    stall = check_stall(stall)
    t0 = time.perf_counter()
    shape = y0.shape
    B, n = shape[0], y0[0].numel()
    dt, dev = y0.dtype, y0.device
    x = y0.reshape(B, n)
    f = g(y0).reshape(B, n)
    r = f - x
    pr = Progress(x, residual_norm(r, f, mode), tol, max_iter, stall, ("anderson", f))
    nfe = 1
    if pr.done:
        return pr.finish("anderson", nfe, t0, mode, shape)
    mk = min(m, max_iter + 1)  # never more memory than there will be iterates
    F = torch.empty(B, mk, n, dtype=dt, device=dev)  # g(y_i)
    G = torch.empty(B, mk, n, dtype=dt, device=dev)  # g(y_i) − y_i
    F[:, 0], G[:, 0] = f, r
    # the bordered system [[0, 1ᵀ], [1, GGᵀ]] on the host (float64); its GG block, ⟨G_i, G_j⟩, gets one new row and
    # column per iteration
    H = np.zeros((B, mk + 1, mk + 1))
    H[:, 0, 1:] = H[:, 1:, 0] = 1.0
    H[:, 1, 1] = to_host(batch_norm(r)) ** 2
    rhs = np.zeros((B, mk + 1))
    rhs[:, 0] = 1.0
    eye = np.eye(mk)
    diag = np.arange(1, mk + 1)
    eps = float(torch.finfo(dt).eps)
    xk = f if beta == 1.0 else x + beta * r  # first step: (damped) Picard
    k = 1  # iterates stored so far
    with np.errstate(all="ignore"):  # a diverged sample's inf/NaN stays in its own system
        while True:
            fk = g(xk.reshape(shape)).reshape(B, n)
            nfe += 1
            slot, nk = k % mk, min(k + 1, mk)
            rk = torch.sub(fk, xk, out=G[:, slot])  # written in place: no transient residual tensor
            F[:, slot] = fk
            row = torch.bmm(G[:, :nk], rk.unsqueeze(2)).squeeze(2)  # ⟨G_i, G_k⟩, i < nk
            if mode == "rel":
                row = torch.cat([row, batch_norm(fk).unsqueeze(1)], dim=1)
            row = to_host(row)  # the iteration's one host read
            H[:, 1 + slot, 1:nk + 1] = row[:, :nk]
            H[:, 1:nk + 1, 1 + slot] = row[:, :nk]
            rn = np.sqrt(np.maximum(row[:, slot], 0.0))  # ‖G_k‖ from the Gram diagonal
            if pr.update(xk, scale_residual(rn, row[:, nk] if mode == "rel" else None, n, mode, dt)):
                break
            k += 1
            Hk = H[:, :nk + 1, :nk + 1].copy()
            d = diag[:nk]
            Hk[:, d, d] += (lam + eps) * np.maximum(Hk[:, d, d].max(axis=1), eps)[:, None]
            sol, info = torch.linalg.solve_ex(torch.from_numpy(Hk), torch.from_numpy(rhs[:, :nk + 1]))
            alpha = sol.numpy()[:, 1:]
            bad = (info.numpy() != 0) | ~np.isfinite(alpha).all(axis=1)
            if bad.any():  # singular, or a diverged sample: its plain step (the others are untouched)
                alpha = alpha.copy()
                alpha[bad] = eye[slot, :nk]
            a = torch.from_numpy(np.ascontiguousarray(alpha)).to(device=dev, dtype=dt)
            xk = torch.bmm(a.unsqueeze(1), F[:, :nk]).squeeze(1)  # Σ_i α_i g(y_i), per sample
            if beta != 1.0:
                xk = xk - (1.0 - beta) * torch.bmm(a.unsqueeze(1), G[:, :nk]).squeeze(1)
    return pr.finish("anderson", nfe, t0, mode, shape)


class _Converged(Exception):
    pass


def _lbfgs_run(fg: Callable[[torch.Tensor], Tuple[float, torch.Tensor]], x: torch.Tensor, *, lr: float,
               max_iter: int, max_eval: int, tolerance_grad: float, tolerance_change: float, history_size: int,
               line_search: str | None, state: dict) -> torch.Tensor:
    """``torch.optim.LBFGS.step`` for one flat tensor, operation for operation (torch 2.14's lbfgs.py: the same
    two-loop recursion, the same 0-dim tensors where it keeps them, its own ``_strong_wolfe``), without the
    optimiser's per-closure costs: no parameter clone / restore around each line-search trial (a trial point is
    x + t·d, the value torch's in-place ``add_`` then ``copy_`` gives), no flat-gradient gather, no ``zero_grad``, no
    profiler hooks. ``fg(x) -> (float loss, flat gradient)``; the gradient must be a fresh tensor. Returns the final
    x; ``state["n_iter"]`` counts the iterations begun (as torch's state does, also when ``fg`` raises). Tested
    against ``torch.optim.LBFGS`` iterate for iterate. Host reads: as torch's, the loss of every closure and the
    scalar tests of every iteration and line-search step (curvature, directional derivative, the stops) — about
    six per iteration on CUDA, inherent to the algorithm being reproduced."""
    loss, flat_grad = fg(x)
    evals = 1
    if flat_grad.abs().max() <= tolerance_grad:
        return x
    old_dirs: list = []
    old_stps: list = []
    ro: list = []
    al: list = [None] * history_size
    d = t = prev_flat_grad = None
    H_diag = 1
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] = n_iter
        if n_iter == 1:
            d = flat_grad.neg()
        else:
            y = flat_grad.sub(prev_flat_grad)
            s = d.mul(t)
            ys = y.dot(s)
            if ys > 1e-10:
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                H_diag = ys / y.dot(y)
            q = flat_grad.neg()
            for i in range(len(old_dirs) - 1, -1, -1):
                al[i] = old_stps[i].dot(q) * ro[i]
                q.add_(old_dirs[i], alpha=-al[i])
            d = r = torch.mul(q, H_diag)
            for i in range(len(old_dirs)):
                be_i = old_dirs[i].dot(r) * ro[i]
                r.add_(old_stps[i], alpha=al[i] - be_i)
        prev_flat_grad, prev_loss = flat_grad, loss  # fg returns fresh tensors: no copy needed
        t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if n_iter == 1 else lr
        gtd = flat_grad.dot(d)
        if gtd > -tolerance_change:
            break
        if line_search is not None:
            loss, flat_grad, t, ls_evals = _strong_wolfe(lambda x0, step, dd: fg(x0.add(dd, alpha=step)), x, t, d,
                                                         loss, flat_grad, gtd, max_ls=max_eval - evals)
            x = x.add(d, alpha=t)
            opt_cond = flat_grad.abs().max() <= tolerance_grad
        else:
            x = x.add(d, alpha=t)
            ls_evals = 0
            if n_iter != max_iter:
                loss, flat_grad = fg(x)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
                ls_evals = 1
        evals += ls_evals
        if n_iter == max_iter or evals >= max_eval or opt_cond:
            break
        if d.mul(t).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
            break
    return x


LBFGS_OBJECTIVES = ("half_sum", "batch_mean")
LBFGS_STOPS = ("best", "zero_gradient")


@register_nonlinear("lbfgs")
def lbfgs(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 200, mode: str = "abs",
          history_size: int = 10, lr: float = 1.0, line_search: str = "strong_wolfe",
          max_eval: int | None = None, stall: int = 0, objective: str = "half_sum", stop: str = "best",
          min_gradients: int = 0, tolerance_grad: float = 0.0,
          tolerance_change: float = 0.0) -> Tuple[torch.Tensor, SolverStats]:
    """Minimise the squared residual by L-BFGS with a strong-Wolfe line search (the authors' choice, §2.2.1):
    ``torch.optim.LBFGS``'s algorithm, operation for operation (:func:`_lbfgs_run`). Each evaluation (closure) is
    one F-forward plus one VJP w.r.t. y only; the map's parameters are never touched. ``iterations`` counts L-BFGS
    iterations, ``nfe`` the initial residual plus one per closure (the authors' "iterations" are the closures:
    ``nfe`` − 1); the history has one entry per closure.

    objective: ``half_sum`` ½Σ_i‖r_i‖², or ``batch_mean`` mean_i ‖r_i‖² (the authors': the scale sets L-BFGS's
        first step, min(1, 1/‖∇‖₁), and what ``tolerance_change`` means).
    stop: ``best`` — stop at the first closure where every sample's best residual meets ``tol`` and return each
        sample's lowest-residual iterate (the library's contract); ``zero_gradient`` — the authors' rule
        (nonlinear.py:18-56 at e831e4c): a closure computes the gradient while the current iterate's residual exceeds
        ``tol`` for some sample or fewer than ``min_gradients`` closures ran, else it returns a zero gradient, which
        ends L-BFGS by its own tests (as do ``tolerance_grad`` / ``tolerance_change``); the solve returns L-BFGS's
        final iterate.
    max_eval: closures at most (default ``max_iter``·5/4, torch's).
    """
    check_mode(mode)
    stall = check_stall(stall)
    ls = None if line_search in (None, "none") else line_search
    if ls not in (None, "strong_wolfe"):
        raise ValueError(f"lbfgs line_search must be 'strong_wolfe' or 'none', got {line_search!r}")
    if objective not in LBFGS_OBJECTIVES:
        raise ValueError(f"lbfgs objective must be one of {', '.join(LBFGS_OBJECTIVES)}, got {objective!r}")
    if stop not in LBFGS_STOPS:
        raise ValueError(f"lbfgs stop must be one of {', '.join(LBFGS_STOPS)}, got {stop!r}")
    if min_gradients < 0 or tolerance_grad < 0 or tolerance_change < 0:
        raise ValueError("lbfgs min_gradients, tolerance_grad and tolerance_change must be >= 0")
    t0 = time.perf_counter()
    with torch.no_grad():
        gy = g(y0)
    evals = max_eval or max_iter * 5 // 4
    pr = Progress(y0, residual_norm(gy - y0, gy, mode), tol, evals if max_iter > 0 else 0, stall, ("lbfgs", gy))
    state = {"nfe": 1, "last": None}
    if pr.done:
        return pr.finish("lbfgs", 1, t0, mode)
    scale = 1.0 / y0.shape[0] if objective == "batch_mean" else 0.5
    authors = stop == "zero_gradient"
    shape = y0.shape

    def fg(x):  # one closure at the flat point x (a fresh tensor): the objective and its gradient w.r.t. y only
        y = x.view(shape).requires_grad_(True)
        with torch.enable_grad():
            gy = g(y)
            r = gy - y
            loss = scale * r.pow(2).sum()
        res = residual_norm(r.detach(), gy.detach(), mode)
        state["nfe"] += 1
        if authors:  # the gradient only while not converged or fewer than min_gradients closures ran
            host, yd = to_host(res), y.detach()
            state["last"] = (yd, host)
            pr.update(yd, host)
            if bool((host > tol).any()) or state["nfe"] - 2 < min_gradients:
                grad = torch.autograd.grad(loss, y)[0].view(-1)
            else:
                grad = torch.zeros_like(x)
        else:
            (grad,) = torch.autograd.grad(loss, y)
            if pr.update(y.detach(), res) and pr.stop != "max_iter":
                raise _Converged
            grad = grad.view(-1)
        return float(loss), grad

    y = y0.detach().reshape(-1).clone()
    with torch.no_grad():
        try:
            y = _lbfgs_run(fg, y, lr=lr, max_iter=max_iter, max_eval=evals, tolerance_grad=tolerance_grad,
                           tolerance_change=tolerance_change, history_size=history_size, line_search=ls,
                           state=state)
        except _Converged:
            pass
        y = y.view(shape)
        at = None
        if authors:  # L-BFGS's final iterate; its residual is the last closure's when it sits there (the usual case)
            last_y, last_r = state["last"]
            if not torch.equal(last_y, y):
                gy = g(y)
                last_r = to_host(residual_norm(gy - y, gy, mode))
                state["nfe"] += 1
            at = (y, last_r)
    it = state.get("n_iter", 0)
    out, stats = pr.finish("lbfgs", state["nfe"], t0, mode, at=at)
    stats.iterations = it
    if authors and stats.stop == "stalled" and it >= max_iter:
        stats.stop = "max_iter"
    return out, stats


@register_nonlinear("newton_krylov")
def newton_krylov(g: Map, y0: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 50, mode: str = "abs",
                  inner_tol: float = 1e-4, inner_max_iter: int = 30, restart: int = 30,
                  max_backtracks: int = 8, stall: int = 0) -> Tuple[torch.Tensor, SolverStats]:
    """Inexact Newton on r(y) = y − g(y): each step solves (I − ∂g/∂y) d = −r by batched GMRES on
    Jacobian–vector products (``torch.func.jvp``, forward mode), then backtracks per sample until
    ‖r‖ decreases (Armijo on ‖r‖). Converges where Picard cannot (θ·h·Lip(F) > 1, stiff fields).
    A step in which no sample can decrease ‖r‖ along its Newton direction ends the solve as ``"stalled"``.
    """
    from .linear import gmres

    check_mode(mode)
    stall = check_stall(stall)
    prepare_forward_ad()
    t0 = time.perf_counter()
    y = y0
    gy = g(y)
    nfe = 1
    r = y - gy
    rn = batch_norm(r)
    pr = Progress(y, residual_norm(r, gy, mode), tol, max_iter, stall, ("newton_krylov", gy))
    view = (-1,) + (1,) * (y0.dim() - 1)
    while not pr.done:
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
        if not bool(accepted.any()):  # no sample could decrease ‖r‖ along the Newton direction
            pr.stop = "stalled"
            break
        y, gy = y_new, gy_new
        r = y - gy
        rn = rn_new
        pr.update(y, residual_norm(r, gy, mode))
    return pr.finish("newton_krylov", nfe, t0, mode)
