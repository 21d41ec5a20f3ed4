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

import numpy as np
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
    st = SolverStats(solver=name, iterations=it, residual=best.res, converged=best.res <= tol, nfe=nfe,
                     wall_time=time.perf_counter() - t0, init_residual=init_res, history=hist, tol=tol, mode=mode)
    st.stop = "converged" if st.all_converged else ("diverged" if not bool(torch.isfinite(best.res).all())
                                                    else "max_iter")
    return st


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


#: vectors of GMRES's first basis block: the IFT backwards of the paper models converge in 5–8 iterations
GMRES_FIRST_BLOCK = 8


@register_linear("gmres")
def gmres(A: LinOp, b: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 50, mode: str = "rel",
          restart: int = 20, x0: torch.Tensor | None = None) -> Tuple[torch.Tensor, SolverStats]:
    """Batched restarted GMRES(restart): one Krylov space per sample; the true residual is recomputed at each
    restart. ``max_iter`` counts products with A.

    Per Arnoldi step on the device: one product with A and a block classical Gram–Schmidt with
    re-orthogonalisation (CGS2: two batched matvecs against the stored basis each way, as stable as modified
    Gram–Schmidt at a constant number of kernels instead of 2(j+1)); the basis is allocated uninitialised. The new
    Hessenberg column — (j+2) numbers per sample — is then read to the host, where the Givens rotations, the
    residual estimate and the convergence test run in float64: that read is the iteration's one host
    synchronisation, and the small least-squares problem costs no device kernels at all.

    Memory: the basis grows as the iterations need it — room for :data:`GMRES_FIRST_BLOCK` vectors first, the
    whole restart cycle only if the cycle goes on (one copy) — and a new vector is stored only when another
    iteration will use it: a backward that converges within 8 iterations allocates 8 vectors, not restart + 1,
    and the basis is freed before the restart's residual is computed. The iterates are bitwise those of a basis
    allocated whole.
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
        r = bf  # never written in place
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
    # host copies (float64) of what the estimate needs: ‖r̃‖ = |g_{j+1}| -> the solver's residual measure
    denom = (bnorm_s.clamp_min(torch.finfo(dt).tiny) if mode == "rel" else 1.0 / scale[:, 0]).double().cpu().numpy()
    stop = ""
    while it < max_iter and not bool((best.res <= tol).all()):
        beta = r.norm(dim=1)
        k_max = min(restart, max_iter - it)
        V = torch.empty(B, min(k_max, GMRES_FIRST_BLOCK), n, dtype=dt, device=dev)  # grown below if needed
        V[:, 0] = r / beta.clamp_min(tiny)[:, None]
        r = v_next = None  # the basis holds r now; v_next: the newest vector, stored when the next iteration uses it
        H = np.zeros((B, k_max + 1, k_max))  # rotated Hessenberg (= R above the diagonal), host, float64
        cs, sn = np.ones((B, k_max)), np.zeros((B, k_max))
        gv = np.zeros((B, k_max + 1))
        gv[:, 0] = beta.double().cpu().numpy()
        k = 0
        for j in range(k_max):
            if j > 0:  # the previous iteration's new vector, stored now that this iteration uses it
                if j == V.shape[1]:  # the first block is full: room for the whole cycle (one copy)
                    grown = V.new_empty(B, k_max, n)
                    grown[:, :j] = V
                    V = grown
                    del grown
                V[:, j] = v_next
            w = A(V[:, j].reshape(shape)).reshape(B, n)
            nfe += 1
            it += 1
            Vj = V[:, :j + 1]
            h = torch.bmm(Vj, w.unsqueeze(2))  # CGS2: project out twice
            w = w - torch.bmm(Vj.transpose(1, 2), h).squeeze(2)
            h2 = torch.bmm(Vj, w.unsqueeze(2))
            w = w - torch.bmm(Vj.transpose(1, 2), h2).squeeze(2)
            hn = w.norm(dim=1)
            v_next = torch.where((hn > tiny)[:, None], w / hn.clamp_min(tiny)[:, None], 0.0)
            col = torch.cat([(h + h2).squeeze(2), hn[:, None]], dim=1).double().cpu().numpy()  # the host read
            for i in range(j):  # the previous rotations, applied to the new column
                a, c = col[:, i].copy(), col[:, i + 1]
                col[:, i] = cs[:, i] * a + sn[:, i] * c
                col[:, i + 1] = -sn[:, i] * a + cs[:, i] * c
            a, c = col[:, j], col[:, j + 1]
            den = np.hypot(a, c)
            ok = den > tiny
            safe = np.where(ok, den, 1.0)
            cs[:, j] = np.where(ok, a / safe, 1.0)
            sn[:, j] = np.where(ok, c / safe, 0.0)
            col[:, j] = np.where(ok, den, a)
            col[:, j + 1] = 0.0
            H[:, :j + 2, j] = col
            gv[:, j + 1] = -sn[:, j] * gv[:, j]
            gv[:, j] = cs[:, j] * gv[:, j]
            k = j + 1
            est = np.abs(gv[:, j + 1]) / denom
            hist.append(float(est.max()))
            if bool((est <= tol).all()):
                break
        R = H[:, :k, :k]
        diag = np.einsum("bii->bi", R)
        R[:, np.arange(k), np.arange(k)] = np.where(np.abs(diag) > tiny, diag, 1.0)
        yk = np.linalg.solve(R, gv[:, :k, None])  # upper triangular, k ≤ restart: a host solve of a tiny system
        yk = torch.from_numpy(yk[:, :, 0]).to(dtype=dt, device=dev)
        x = x + torch.bmm(yk.unsqueeze(1), V[:, :k]).squeeze(1)
        del V, Vj, v_next  # free the basis (and the views into it) before the product below
        r = bf - A(x.reshape(shape)).reshape(B, n)
        nfe += 1
        res = measure(r)
        best.update(x, res)
        if not bool(torch.isfinite(res).all()):
            stop = "diverged"
            break
    out = _stats("gmres", best, it, nfe, t0, init_res, hist, tol, mode)
    out.stop = stop or out.stop
    return (best.y * scale).reshape(shape), out


@register_linear("direct")
def direct(A: LinOp, b: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 1, mode: str = "rel",
           max_dim: int = 4096) -> Tuple[torch.Tensor, SolverStats]:
    """Dense direct solve: assemble each sample's matrix column by column (n products with A on the
    unit vectors, all samples at once) and call ``torch.linalg.solve``. For small states; the test
    oracle. ``nfe`` = n; the reported residual is the assembled system's (‖b − M x‖, no further product
    with A). ``tol``/``max_iter`` only decide the reported convergence flag.
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
    r = bf - torch.bmm(M, x.unsqueeze(2)).squeeze(2)  # the assembled system's residual: no further product with A
    res = _measure(r, bnorm, mode)
    best = BestIterate(x, res)
    return x.reshape(shape), _stats("direct", best, 1, n, t0, _measure(bf, bnorm, mode), [float(res.max())], tol, mode)
