"""Stability analysis of θ-method layers and learned fields (SPEC §1, §3; journal eq 13, Figs 3, 9, 11).

No plotting here: functions return arrays/tensors for ``bench.report`` or a notebook.

- :func:`stability_function`, :func:`stability_region`: R(z) = (1 + (1−θ)z)/(1 − θz) (eq 13).
- :func:`jacobian_eigenvalues`, :func:`trajectory_spectra`: eigenvalues of the exact ∂F/∂y per sample
  (small states; z = hλ lies in the stability region where |R(z)| ≤ 1).
- :func:`rollout`: the learned field integrated in continuous time with ``scipy.integrate.solve_ivp``
  (per-step fields piecewise constant: field_at(t) on [(t−1)h, th)).
- :func:`lipschitz_upper_bound`, :func:`lipschitz_lower_bound`, :func:`jacobian_norm`: Lipschitz estimates.
"""
from __future__ import annotations

import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .solvers.base import prepare_forward_ad

__all__ = [
    "stability_function", "stability_region", "jacobian", "jacobian_eigenvalues", "trajectory_spectra",
    "rollout", "theta_rollout", "jacobian_norm", "lipschitz_lower_bound", "lipschitz_upper_bound",
]


def stability_function(z, theta: float):
    """R(z) = (1 + (1−θ)z) / (1 − θz) for complex z (numpy array, scalar or torch tensor) (eq 13)."""
    theta = float(theta)
    if not 0.0 <= theta <= 1.0:
        raise ValueError(f"theta must be in [0, 1], got {theta}")
    return (1 + (1 - theta) * z) / (1 - theta * z)


def stability_region(theta: float, re: Tuple[float, float] = (-5.0, 5.0), im: Tuple[float, float] = (-5.0, 5.0),
                     n: Union[int, Tuple[int, int]] = 201) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|R(z)| on an n_re × n_im grid of the complex plane: returns (Z, |R(Z)|, |R(Z)| ≤ 1).

    Z has shape (n_im, n_re) (rows = imaginary part, as for ``imshow``/``contour``); the pole z = 1/θ
    gives |R| = inf.
    """
    nr, ni = (n, n) if isinstance(n, int) else n
    X, Y = np.meshgrid(np.linspace(re[0], re[1], nr), np.linspace(im[0], im[1], ni))
    Z = X + 1j * Y
    with np.errstate(divide="ignore", invalid="ignore"):
        R = np.abs(stability_function(Z, theta))  # NaN/inf only at the pole z = 1/θ
    R = np.where(np.isnan(R), np.inf, R)
    return Z, R, R <= 1.0


def jacobian(field: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Exact per-sample Jacobians ∂F(y_b)/∂y_b, shape (batch, d, d) with d = y[0].numel().

    Uses ``torch.func.jacrev`` vmapped over the batch (the field must act per sample, e.g. no batch norm
    in training mode).
    """
    shape = y.shape[1:]

    def f_single(v):
        return field(v.reshape(1, *shape)).reshape(-1)

    flat = y.detach().reshape(y.shape[0], -1)
    with torch.enable_grad():
        J = torch.func.vmap(torch.func.jacrev(f_single))(flat)
    return J.detach()


def jacobian_eigenvalues(field: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the exact Jacobian of F at each sample of y: complex tensor (batch, d)."""
    return torch.linalg.eigvals(jacobian(field, y))


def trajectory_spectra(layer, trajectory: Optional[Sequence[torch.Tensor]] = None, scaled: bool = False) -> List[torch.Tensor]:
    """Eigenvalues of ∂F(γ_t, y_t)/∂y_t along a layer's trajectory, t = 0..T (γ_0 := γ_1), each (batch, d).

    ``scaled=True`` returns z = hλ (to compare with :func:`stability_region`). ``trajectory`` defaults
    to ``layer.last_trajectory``.
    """
    traj = trajectory if trajectory is not None else layer.last_trajectory
    if traj is None:
        raise ValueError("no trajectory: pass trajectory= or set layer.keep_trajectory = True before the forward")
    out = []
    for t, y in enumerate(traj):
        ev = jacobian_eigenvalues(layer.field_at(max(t, 1)), y)
        out.append(ev * layer.h if scaled else ev)
    return out


def _segments(layer_or_field, t_end: float):
    """[(t0, t1, field)] covering [0, t_end]: per-step fields on [(t−1)h, th); beyond the horizon the last field."""
    if isinstance(layer_or_field, nn.Module) and hasattr(layer_or_field, "field_at") and hasattr(layer_or_field, "steps"):
        layer = layer_or_field
        h, T = float(layer.h), int(layer.steps)
        if getattr(layer, "shared", False) or T == 1:
            return [(0.0, t_end, layer.field_at(1))]
        segs = []
        for t in range(1, T + 1):
            a, b = (t - 1) * h, (t * h if t < T else max(t_end, t * h))
            if a >= t_end:
                break
            segs.append((a, min(b, t_end), layer.field_at(t)))
        return segs
    return [(0.0, t_end, layer_or_field)]


def rollout(layer_or_field, y0: torch.Tensor, t_eval: Union[Sequence[float], np.ndarray, torch.Tensor],
            method: str = "RK45", rtol: float = 1e-6, atol: float = 1e-8, **ivp_opts) -> Tuple[np.ndarray, torch.Tensor]:
    """Integrate y' = F(γ(t), y) from y(0) = y0 in continuous time with ``scipy.integrate.solve_ivp``.

    ``layer_or_field``: a ThetaLayer/ImplicitBlock (γ(t) piecewise constant: field_at(t) on
    [(t−1)h, th); the last field beyond the horizon, a shared field everywhere) or a field module.
    ``y0``: the batch of initial states, integrated together (one flattened system). ``t_eval``:
    increasing output times ≥ 0. Each constant piece is integrated separately (no step across a jump).
    Returns (times as numpy array, states of shape (len(t_eval), *y0.shape) as a tensor of y0's dtype).
    Use a stiff ``method`` ("Radau", "BDF", "LSODA") for stiff fields (ex2).
    """
    from scipy.integrate import solve_ivp

    t_eval = np.asarray(t_eval.detach().cpu() if isinstance(t_eval, torch.Tensor) else t_eval, dtype=np.float64)
    if t_eval.ndim != 1 or t_eval.size == 0 or np.any(np.diff(t_eval) < 0) or t_eval[0] < 0:
        raise ValueError("t_eval must be a non-empty increasing sequence of times >= 0")
    t_end = float(t_eval[-1])
    shape, dtype, device = y0.shape, y0.dtype, y0.device
    out = np.empty((t_eval.size, int(np.prod(shape))), dtype=np.float64)
    y = y0.detach().reshape(-1).cpu().double().numpy()
    k = 0
    while k < t_eval.size and t_eval[k] == 0.0:
        out[k] = y
        k += 1
    for a, b, field in _segments(layer_or_field, t_end):
        if k >= t_eval.size:
            break
        if b <= a:
            continue
        p = next(field.parameters(), None) if isinstance(field, nn.Module) else None
        fdtype = p.dtype if p is not None else dtype

        def rhs(t, v, field=field):
            with torch.no_grad():
                yt = torch.as_tensor(v, dtype=fdtype, device=device).reshape(shape)
                return field(yt).reshape(-1).double().cpu().numpy()

        last = b >= t_end
        j = k
        while j < t_eval.size and (t_eval[j] < b or (last and t_eval[j] <= b)):
            j += 1
        te = t_eval[k:j]  # the outputs in [a, b) ([a, b] on the last piece), a ≤ te since k follows on
        sol = solve_ivp(rhs, (a, b), y, method=method, t_eval=np.concatenate([te, [b]]) if (te.size == 0 or te[-1] != b) else te,
                        rtol=rtol, atol=atol, **ivp_opts)
        if not sol.success:
            raise RuntimeError(f"rollout: solve_ivp failed on [{a}, {b}]: {sol.message}")
        n = te.size
        out[k:k + n] = sol.y[:, :n].T
        k += n
        y = sol.y[:, -1]
    states = torch.as_tensor(out, dtype=dtype).reshape(t_eval.size, *shape).to(device)
    return t_eval, states


def theta_rollout(layer_or_field, y0: torch.Tensor, t_eval: Union[Sequence[float], np.ndarray, torch.Tensor],
                  theta: float = 0.5, h: float = 0.01, tol: float = 1e-5, max_iter: int = 50) -> Tuple[np.ndarray, torch.Tensor]:
    """The flow of y' = F(γ(t), y) approximated by one-leg θ-steps (eq 12) y_{k+1} = y_k + hF((1−θ)y_k + θy_{k+1}) of a
    small ``h`` — the authors' "continuous" solution of ex3 (θ = .5, h = 0.01; AUTHORS-CODE §2.3). Fields and
    ``t_eval`` as :func:`rollout`; every output time must be a multiple of ``h``. Each step is solved by Anderson to
    ``tol`` (per-sample RMS residual). A sample whose step finds no solution or whose state stops being finite is NaN
    from then on; the rest go on.
    Returns (times, states of shape (len(t_eval), *y0.shape))."""
    from .solvers import get_nonlinear

    t_eval = np.asarray(t_eval.detach().cpu() if isinstance(t_eval, torch.Tensor) else t_eval, dtype=np.float64)
    if t_eval.ndim != 1 or t_eval.size == 0 or np.any(np.diff(t_eval) < 0) or t_eval[0] < 0:
        raise ValueError("t_eval must be a non-empty increasing sequence of times >= 0")
    if not (0.0 <= theta <= 1.0 and h > 0):
        raise ValueError(f"theta must be in [0, 1] and h > 0, got {theta}, {h}")
    idx = np.rint(t_eval / h).astype(np.int64)
    if np.any(np.abs(idx * h - t_eval) > 1e-9 * np.maximum(1.0, t_eval)):
        raise ValueError(f"theta_rollout: every output time must be a multiple of h = {h}")
    anderson = get_nonlinear("anderson")
    segs = _segments(layer_or_field, float(t_eval[-1]))
    y = y0.detach().clone()
    alive = torch.isfinite(y.reshape(y.shape[0], -1)).all(1)
    out = torch.full((t_eval.size, *y.shape), float("nan"), dtype=y.dtype, device=y.device)
    j = 0
    with torch.no_grad():
        for k in range(int(idx[-1]) + 1):
            while j < idx.size and idx[j] == k:
                out[j] = y
                j += 1
            if k == idx[-1]:
                break
            t = k * h
            field = next((f for a, b, f in segs if a <= t < b), segs[-1][2])
            rows = alive.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            x = y[rows]
            fx = field(x)
            if theta == 0.0:
                new = x + h * fx
            else:
                y1 = x + h * fx  # the explicit step: the initial guess
                ok = torch.isfinite(y1.reshape(len(rows), -1)).all(1)
                new = torch.full_like(x, float("nan"))
                if bool(ok.any()):
                    xs = x[ok]
                    z, st = anderson(lambda z, xs=xs: xs + h * field((1.0 - theta) * xs + theta * z), y1[ok],
                                     tol=tol, mode="rms", max_iter=max_iter)
                    z[~st.converged] = float("nan")  # a step without a solution (the flow blew up within it)
                    new[ok] = z
            finite = torch.isfinite(new.reshape(len(rows), -1)).all(1)
            new[~finite] = float("nan")
            y[rows] = new
            alive[rows] = finite
    return t_eval, out


def jacobian_norm(field: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, iterations: int = 30,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-sample ‖∂F(y_b)/∂y_b‖₂ by power iteration on JᵀJ (JVP + VJP, matrix-free; a lower estimate
    converging to the true norm), shape (batch,)."""
    y = y.detach()
    B = y.shape[0]
    v = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device) if generator is None else \
        torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    view = (-1,) + (1,) * (y.dim() - 1)

    def nrm(t):
        return t.reshape(B, -1).norm(dim=1).clamp_min(1e-30)

    v = v / nrm(v).view(view)
    mu = torch.zeros(B, dtype=y.dtype, device=y.device)
    prepare_forward_ad()
    for _ in range(int(iterations) + 1):
        _, Jv = torch.func.jvp(field, (y,), (v,))
        mu = nrm(Jv)
        _, vjp_fn = torch.func.vjp(field, y)
        (w,) = vjp_fn(Jv)
        v = w / nrm(w).view(view)
    return mu.detach()


def lipschitz_lower_bound(field: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, iterations: int = 30,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """max over the samples of ‖∂F(y_b)/∂y_b‖₂ (power iteration): a lower bound of Lip(F) (scalar)."""
    return jacobian_norm(field, y, iterations, generator).max()


_ACT_LIP = {nn.ReLU: 1.0, nn.LeakyReLU: 1.0, nn.Tanh: 1.0, nn.Sigmoid: 0.25, nn.Softplus: 1.0, nn.Identity: 1.0,
            nn.ELU: 1.0, nn.GELU: 1.129, nn.SiLU: 1.0998, nn.Hardtanh: 1.0, nn.ReLU6: 1.0}


def _module_norm(m: nn.Module, input_shape, iterations: int) -> float:
    from .normalization import SpectralNorm, power_iteration, conv2d_adjoint

    if isinstance(m, SpectralNorm):
        W = m.normalized_weight().detach()
        m = m.module
    else:
        W = m.weight.detach()
    if isinstance(m, nn.Linear):
        return float(torch.linalg.matrix_norm(W, ord=2))
    if input_shape is None:
        raise ValueError("lipschitz_upper_bound: a convolution needs input_shape= (C, H, W)")
    v = torch.randn(*input_shape, dtype=W.dtype, device=W.device)
    mu, _ = power_iteration(lambda u: m._conv_forward(u[None], W, None)[0], v, iterations,
                            adjoint=lambda z: conv2d_adjoint(z[None], m, W, tuple(input_shape))[0])
    return float(mu) * (1.0 + 1e-3)  # the power iteration approaches ‖A‖₂ from below


def lipschitz_upper_bound(field: nn.Module, input_shape: Optional[Sequence[int]] = None, iterations: int = 100) -> float:
    """Π_i ‖W_i‖₂ · Π_j Lip(σ_j) for a feed-forward composition (journal §2.4.1: Lip(F) ≤ Π‖γ_i‖₂).

    Walks ``field.modules()`` in registration order and multiplies the norms of every Linear/Conv2d
    (spectrally normalised ones with their normalised weight; convolutions as operators on their input
    shape, ``input_shape`` of the state, which must be kept by the convolutions, e.g. 'same' padding)
    and the Lipschitz constants of known activations. :class:`EigenRangeField` gives
    |α+β|/2 + (β−α)/2 · max S · Lip(F^{−1,1}). Valid only for sequential compositions (MLPField,
    ConvField); other structures (skip connections, custom forwards) are not analysed.
    """
    from .normalization import EigenRangeField, SpectralNorm

    if isinstance(field, EigenRangeField):
        inner = lipschitz_upper_bound(field.field, input_shape, iterations)
        return abs(field.alpha + field.beta) / 2 + (field.beta - field.alpha) / 2 * float(field.scale().detach().max()) * inner
    bound = 1.0
    shape = tuple(input_shape) if input_shape is not None else None
    skip = set()
    for m in field.modules():
        if id(m) in skip:
            continue
        if isinstance(m, SpectralNorm):
            skip.add(id(m.module))
            bound *= _module_norm(m, shape, iterations)
            if isinstance(m.module, nn.Conv2d) and shape is not None:
                shape = (m.module.out_channels,) + tuple(shape[1:])
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            bound *= _module_norm(m, shape, iterations)
            if isinstance(m, nn.Conv2d) and shape is not None:
                shape = (m.out_channels,) + tuple(shape[1:])
        elif isinstance(m, tuple(_ACT_LIP)):
            bound *= next(v for k, v in _ACT_LIP.items() if isinstance(m, k))
        elif isinstance(m, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)) or \
                isinstance(m, nn.modules.batchnorm._BatchNorm):
            warnings.warn(f"lipschitz_upper_bound: {type(m).__name__} is not analysed; the bound is invalid",
                          stacklevel=2)
    return bound
