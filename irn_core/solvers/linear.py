"""Linear solvers for the implicit backward (SPEC §1, eq 17): solve A v = b per sample.

Contract: ``solve(A, b, *, tol, max_iter, mode, **opts) -> (v, SolverStats)``, ``A`` a linear map on
tensors shaped like ``b`` acting independently on each sample (dimension 0). In the backward pass
A v = v − h (∂Φ/∂y)ᵀ v, applied with vector–Jacobian products. Residuals are ‖b − A v‖ per sample,
absolute (``mode="abs"``) or relative to ‖b‖ (``mode="rel"``, the default: gradients have no natural
scale).
"""
from __future__ import annotations

import time
from typing import Callable, Tuple

import torch

from .base import BestIterate, Registry, SolverError, SolverStats, batch_norm, check_mode

__all__ = ["LINEAR_SOLVERS", "register_linear", "get_linear", "neumann", "gmres", "direct"]

LINEAR_SOLVERS = Registry("linear")
register_linear = LINEAR_SOLVERS.register
get_linear = LINEAR_SOLVERS.get

LinOp = Callable[[torch.Tensor], torch.Tensor]


def _measure(r: torch.Tensor, bnorm: torch.Tensor, mode: str) -> torch.Tensor:
    rn = batch_norm(r)
    if mode == "rel":
        return rn / bnorm.clamp_min(torch.finfo(r.dtype).tiny)
    return rn


def _stats(name, best, it, nfe, t0, init_res, hist, tol, mode):
    return SolverStats(solver=name, iterations=it, residual=best.res, converged=best.res <= tol, nfe=nfe,
                       wall_time=time.perf_counter() - t0, init_residual=init_res, history=hist, tol=tol,
                       mode=mode)


@register_linear("neumann")
def neumann(A: LinOp, b: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 50,
            mode: str = "rel") -> Tuple[torch.Tensor, SolverStats]:
    """Truncated Neumann series v = Σ_{i<k} Mⁱ b for (I − M) v = b, M = I − A.

    The residual of the partial sum is exactly the next term, b − A v_k = Mᵏ b, so it costs one
    product per term. Converges iff the spectral radius of M = h ∂Φ/∂y is below 1.
    """
    check_mode(mode)
    t0 = time.perf_counter()
    bnorm = batch_norm(b)
    v = b.clone()
    term = b
    nfe = 0
    init_res = _measure(b, bnorm, mode)  # residual of v = 0
    term = b - A(b)  # M b
    nfe += 1
    res = _measure(term, bnorm, mode)
    best = BestIterate(v, res)
    hist = [float(res.max())]
    it = 1
    while it < max_iter and not bool(((best.res <= tol) | ~torch.isfinite(res)).all()):
        v = v + term
        term = term - A(term)
        nfe += 1
        it += 1
        res = _measure(term, bnorm, mode)
        best.update(v, res)
        hist.append(float(res.max()))
    return best.y, _stats("neumann", best, it, nfe, t0, init_res, hist, tol, mode)


@register_linear("gmres")
def gmres(A: LinOp, b: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 50, mode: str = "rel",
          restart: int = 20, x0: torch.Tensor | None = None) -> Tuple[torch.Tensor, SolverStats]:
    """Batched restarted GMRES(restart): one Krylov space per sample, modified Gram–Schmidt Arnoldi,
    Givens rotations for the small least-squares problem; the true residual is recomputed at each
    restart. ``max_iter`` counts products with A.
    """
    check_mode(mode)
    if restart < 1:
        raise ValueError(f"gmres restart must be >= 1, got {restart}")
    t0 = time.perf_counter()
    shape = b.shape
    B, n = shape[0], b[0].numel()
    dt, dev = b.dtype, b.device
    tiny = torch.finfo(dt).tiny ** 0.5
    # GMRES is scale-invariant: solve for b / s so that right-hand sides far below 1 (gradients of ~1e-30
    # occur in training) do not fall under the breakdown threshold; rescale at the end. s is the power of
    # two nearest max|b| (not ‖b‖, whose square underflows for a float32 1e-30 vector): scaling by it is
    # exact, so every iterate is bit-for-bit the unscaled one times 1/s and results do not change.
    _, expo = torch.frexp(b.reshape(B, n).abs().amax(dim=1))  # max|b| = m·2^expo, m in [0.5, 1); 0 -> expo 0
    scale = torch.ldexp(torch.ones(B, dtype=dt, device=dev), expo)[:, None]
    bf = b.reshape(B, n) / scale
    bnorm_s = bf.norm(dim=1)

    def measure(r_scaled: torch.Tensor) -> torch.Tensor:
        rn = batch_norm(r_scaled)
        if mode == "rel":
            return rn / bnorm_s.clamp_min(torch.finfo(dt).tiny)
        return rn * scale[:, 0]

    nfe = 0
    if x0 is None:
        x = torch.zeros_like(bf)
        r = bf.clone()
    else:
        x = x0.reshape(B, n) / scale
        x = torch.where(torch.isfinite(x).all(dim=1, keepdim=True), x, torch.zeros_like(x))
        r = bf - A(x.reshape(shape)).reshape(B, n)
        nfe += 1
    res = measure(r)
    init_res = res.clone()
    best = BestIterate(x, res)
    hist = []
    it = 0
    while it < max_iter and not bool((best.res <= tol).all()):
        beta = r.norm(dim=1)
        k_max = min(restart, max_iter - it)
        V = torch.zeros(B, k_max + 1, n, dtype=dt, device=dev)
        H = torch.zeros(B, k_max + 1, k_max, dtype=dt, device=dev)
        cs = torch.zeros(B, k_max, dtype=dt, device=dev)
        sn = torch.zeros(B, k_max, dtype=dt, device=dev)
        gv = torch.zeros(B, k_max + 1, dtype=dt, device=dev)
        gv[:, 0] = beta
        V[:, 0] = r / beta.clamp_min(tiny)[:, None]
        k = 0
        for j in range(k_max):
            w = A(V[:, j].reshape(shape)).reshape(B, n)
            nfe += 1
            it += 1
            for i in range(j + 1):  # modified Gram–Schmidt
                hij = (w * V[:, i]).sum(dim=1)
                H[:, i, j] = hij
                w = w - hij[:, None] * V[:, i]
            hn = w.norm(dim=1)
            H[:, j + 1, j] = hn
            V[:, j + 1] = torch.where((hn > tiny)[:, None], w / hn.clamp_min(tiny)[:, None], torch.zeros_like(w))
            for i in range(j):  # apply the previous rotations to the new column
                a, c = H[:, i, j].clone(), H[:, i + 1, j].clone()
                H[:, i, j] = cs[:, i] * a + sn[:, i] * c
                H[:, i + 1, j] = -sn[:, i] * a + cs[:, i] * c
            a, c = H[:, j, j].clone(), H[:, j + 1, j].clone()
            den = torch.sqrt(a * a + c * c)
            ok = den > tiny
            cs[:, j] = torch.where(ok, a / den.clamp_min(tiny), torch.ones_like(a))
            sn[:, j] = torch.where(ok, c / den.clamp_min(tiny), torch.zeros_like(a))
            H[:, j, j] = torch.where(ok, den, a)
            H[:, j + 1, j] = 0.0
            gv[:, j + 1] = -sn[:, j] * gv[:, j]
            gv[:, j] = cs[:, j] * gv[:, j]
            k = j + 1
            est = measure(gv[:, j + 1 : j + 2])
            hist.append(float(est.max()))
            if bool((est <= tol).all()):
                break
        R = H[:, :k, :k]
        diag = R.diagonal(dim1=1, dim2=2)
        R = R - torch.diag_embed(diag) + torch.diag_embed(torch.where(diag.abs() > tiny, diag, torch.ones_like(diag)))
        yk = torch.linalg.solve_triangular(R, gv[:, :k, None], upper=True)[..., 0]
        x = x + (yk[:, None, :] @ V[:, :k])[:, 0]
        r = bf - A(x.reshape(shape)).reshape(B, n)
        nfe += 1
        res = measure(r)
        best.update(x, res)
        if not bool(torch.isfinite(res).all()):
            break
    return (best.y * scale).reshape(shape), _stats("gmres", best, it, nfe, t0, init_res, hist, tol, mode)


@register_linear("direct")
def direct(A: LinOp, b: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 1, mode: str = "rel",
           max_dim: int = 4096) -> Tuple[torch.Tensor, SolverStats]:
    """Dense direct solve: assemble each sample's matrix column by column (n products with A on the
    unit vectors, all samples at once) and call ``torch.linalg.solve``. For small states; the test
    oracle. ``tol``/``max_iter`` only decide the reported convergence flag.
    """
    check_mode(mode)
    t0 = time.perf_counter()
    shape = b.shape
    B, n = shape[0], b[0].numel()
    if n > max_dim:
        raise SolverError(f"direct linear solve: state size {n} exceeds max_dim={max_dim}; use gmres")
    bf = b.reshape(B, n)
    bnorm = bf.norm(dim=1)
    cols = []
    e = torch.zeros(B, n, dtype=b.dtype, device=b.device)
    for i in range(n):
        e.zero_()
        e[:, i] = 1.0
        cols.append(A(e.reshape(shape)).reshape(B, n))
    M = torch.stack(cols, dim=2)
    x = torch.linalg.solve(M, bf)
    r = bf - A(x.reshape(shape)).reshape(B, n)
    res = _measure(r, bnorm, mode)
    best = BestIterate(x, res)
    return x.reshape(shape), _stats("direct", best, 1, n + 1, t0, _measure(bf, bnorm, mode), [float(res.max())], tol, mode)
