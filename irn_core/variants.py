"""Stable variants: ResNet-D, ResNet-S (SPEC §4; Zhang & Schaeffer) and NEMON (SPEC §5).

ResNet-D / -S come in two uses:

- explicit, as in the paper (post-activation, eqs 3.8/3.10, 4.1/4.2):
  D: x_{n+1} = σ(x_n − A₂σ(A₁x_n + b₁) + b₂) with A₂ ≥ 0 entrywise,
  S: x_{n+1} = σ(x_n − Aᵀσ(Ax_n + b)), Aᵀ the exact adjoint of A (conv: transposed convolution with
  the same weight); with ``batch_norm=True`` a BN follows each A (the second one with fixed
  γ = 1, β = 0, as in the paper);
- implicit (new; the ablation the papers do not have): the *fields*
  F_D(x) = −A₂σ(A₁x + b₁) and F_S(x) = −Aᵀσ(Ax + b) inside a ThetaLayer / ImplicitBlock, i.e.
  y = x + hΦ(x, y). There is no outer σ and no batch norm: batch statistics would change with every
  solver iterate (the map would not be a fixed function of y), and BN's running-statistics update
  would run once per iteration, so batch norm cannot live inside an implicit field.

A₂ ≥ 0 is kept by :func:`project_nonnegative` — call it after every optimiser step.

NEMON: x = σ(Ax + Bu + b), y = Cx + c with A from :class:`~irn_core.linf.LInfParam`
(μ∞ ≤ m < 1), solved by the average iteration (solver ``"picard_average"``) and differentiated by the
implicit-function theorem (:class:`~irn_core.autograd.ImplicitStep` with h = 1 and Φ(·, x) = σ(Ax + Bu + b)).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .autograd import ImplicitStep, StepProblem
from .fields import make_activation
from .layers import DEFAULT_BACKWARD, ImplicitBlock, ImplicitLayer, ThetaLayer
from .linf import LInfParam, linf_log_norm
from .operators import circular_conv_norm, conv2d_adjoint
from .solvers.base import SolverError
from .solvers.linear import LINEAR_SOLVERS
from .solvers.nonlinear import NONLINEAR_SOLVERS

__all__ = [
    "ResNetDField", "ResNetSField", "ResNetDLayer", "ResNetSLayer", "ResNetDPooling", "ResNetSPooling", "project_nonnegative",
    "resnet_d_block", "resnet_s_block", "NEMONLayer", "nemon_lipschitz_bound", "KINDS",
]

KINDS = ("conv", "linear")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    return kind


def _linear_op(kind: str, cin: int, cout: int, kernel_size: int, bias: bool, padding_mode: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(cin, cout, bias=bias)
    return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias, padding_mode=padding_mode)


class ResNetDField(nn.Module):
    """F_D(x) = −A₂σ(A₁x + b₁) with A₂ ≥ 0 entrywise ("decay", eq 3.8 without the outer σ and b₂).

    ``kind="conv"``: A₁, A₂ are 3×3 convolutions on ``channels`` (periodic padding by default, as in the
    paper); ``kind="linear"``: dense on vectors of size ``channels``. ``hidden`` is the width of
    σ(A₁x + b₁) (default ``channels``). A₂ is initialised non-negative; keep it so with
    :meth:`project_` / :func:`project_nonnegative` after each optimiser step.
    """

    def __init__(self, channels: int, kind: str = "conv", hidden: Optional[int] = None, kernel_size: int = 3,
                 activation: str = "relu", padding_mode: str = "circular", bias: bool = True,
                 lipschitz: Optional[float] = None):
        super().__init__()
        self.kind = _check_kind(kind)
        self.lipschitz = _check_lipschitz(lipschitz, kind, padding_mode)
        hidden = int(hidden or channels)
        self.A1 = _linear_op(kind, channels, hidden, kernel_size, bias, padding_mode)
        self.A2 = _linear_op(kind, hidden, channels, kernel_size, False, padding_mode)
        self.act = make_activation(activation)
        with torch.no_grad():
            if bias:
                nn.init.zeros_(self.A1.bias)
            self.A2.weight.abs_()

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.A1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.A2(self.hidden(x))

    @torch.no_grad()
    def project_(self) -> None:
        """A₂ ← max(A₂, 0) (the constraint of ResNet-D); with ``lipschitz``: each filter's ‖A‖₂ ≤ √lipschitz."""
        self.A2.weight.clamp_(min=0.0)
        if self.lipschitz is not None:
            _clip_norm_(self.A1.weight, self.lipschitz ** 0.5)
            _clip_norm_(self.A2.weight, self.lipschitz ** 0.5)

    @torch.no_grad()
    def scale_to_lipschitz_(self) -> None:
        """A₁, A₂ ← A / ‖A‖₂ · √lipschitz (at initialisation): Lip(F_D) ≤ ‖A₂‖‖A₁‖ = lipschitz."""
        for w in (self.A1.weight, self.A2.weight):
            w.mul_(self.lipschitz ** 0.5 / circular_conv_norm(w))


class ResNetSField(nn.Module):
    """F_S(x) = −Aᵀσ(Ax + b) ("symmetric", parabolic; eq 3.10 without the outer σ), one filter A.

    ``kind="conv"``: A is a convolution channels → ``hidden`` (3×3, periodic padding by default) and Aᵀ
    its exact adjoint (``conv_transpose2d`` with the same weight; the circular halo is folded back);
    ``kind="linear"``: A is a dense ``hidden × channels`` matrix.
    """

    def __init__(self, channels: int, kind: str = "conv", hidden: Optional[int] = None, kernel_size: int = 3,
                 activation: str = "relu", padding_mode: str = "circular", bias: bool = True,
                 lipschitz: Optional[float] = None):
        super().__init__()
        self.kind = _check_kind(kind)
        self.lipschitz = _check_lipschitz(lipschitz, kind, padding_mode)
        hidden = int(hidden or channels)
        self.A = _linear_op(kind, channels, hidden, kernel_size, bias, padding_mode)
        self.act = make_activation(activation)
        with torch.no_grad():
            if bias:
                nn.init.zeros_(self.A.bias)

    def adjoint(self, z: torch.Tensor, x_shape) -> torch.Tensor:
        """Aᵀz (no bias)."""
        if self.kind == "linear":
            return z @ self.A.weight
        return conv2d_adjoint(z, self.A, self.A.weight, tuple(x_shape[1:]))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.A(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.adjoint(self.hidden(x), x.shape)

    @torch.no_grad()
    def scale_to_lipschitz_(self) -> None:
        """A ← A / ‖A‖₂ · √lipschitz (at initialisation): Lip(F_S) ≤ ‖A‖² = lipschitz (< 2: non-expansive)."""
        self.A.weight.mul_(self.lipschitz ** 0.5 / circular_conv_norm(self.A.weight))


    @torch.no_grad()
    def project_(self) -> None:
        """With ``lipschitz``: ‖A‖₂ ≤ √lipschitz after each optimiser step (nothing otherwise)."""
        if self.lipschitz is not None:
            _clip_norm_(self.A.weight, self.lipschitz ** 0.5)


def _check_lipschitz(lipschitz: Optional[float], kind: str, padding_mode: str) -> Optional[float]:
    if lipschitz is None:
        return None
    if kind != "conv" or padding_mode != "circular" or not lipschitz > 0:
        raise ValueError("lipschitz needs a periodic-padding conv field and a value > 0 "
                         f"(got kind={kind!r}, padding_mode={padding_mode!r}, lipschitz={lipschitz!r})")
    return float(lipschitz)


@torch.no_grad()
def _clip_norm_(weight: torch.Tensor, bound: float) -> None:
    """weight ← weight / max(1, ‖A‖₂ / bound), ‖A‖₂ of the periodic convolution (exact)."""
    norm = circular_conv_norm(weight)
    weight.div_(torch.clamp(norm / bound, min=1.0))


class ResNetDLayer(nn.Module):
    """Explicit post-activation ResNet-D layer x ↦ σ(x − A₂σ(A₁x + b₁) + b₂) (eq 4.1).

    ``batch_norm=True`` (the paper's network, SPEC §4): A₁ → BN (trainable: its β is b₁) → ReLU → A₂ → BN with
    γ = 1, β = 0 fixed (so it cannot flip the sign of the A₂ term) → x − (·) → ReLU; no other biases:
    18w² + 2w parameters. Without batch norm: the biases b₁ (in A₁) and b₂.
    """

    def __init__(self, channels: int, kind: str = "conv", hidden: Optional[int] = None, kernel_size: int = 3,
                 batch_norm: bool = False, padding_mode: str = "circular"):
        super().__init__()
        self.field = ResNetDField(channels, kind, hidden, kernel_size, "relu", padding_mode, bias=not batch_norm)
        hidden = int(hidden or channels)
        bn = nn.BatchNorm2d if kind == "conv" else nn.BatchNorm1d
        self.bn1 = bn(hidden) if batch_norm else nn.Identity()
        self.bn2 = bn(channels, affine=False) if batch_norm else nn.Identity()
        shape = (channels, 1, 1) if kind == "conv" else (channels,)
        self.b2 = None if batch_norm else nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.field
        z = f.act(self.bn1(f.A1(x)))
        y = x - self.bn2(f.A2(z))
        return F.relu(y if self.b2 is None else y + self.b2)


class ResNetSLayer(nn.Module):
    """Explicit post-activation ResNet-S layer x ↦ σ(x − Aᵀσ(Ax + b)) (eq 4.2).

    Non-expansive when ‖A‖₂² ≤ 2 (without batch norm). ``batch_norm=True`` (SPEC §4): A → BN (trainable: its β
    is b) → ReLU → Aᵀ → BN fixed (γ = 1, β = 0) → x − (·) → ReLU, no conv bias: 9w² + 2w parameters.
    """

    def __init__(self, channels: int, kind: str = "conv", hidden: Optional[int] = None, kernel_size: int = 3,
                 batch_norm: bool = False, padding_mode: str = "circular"):
        super().__init__()
        self.field = ResNetSField(channels, kind, hidden, kernel_size, "relu", padding_mode, bias=not batch_norm)
        hidden = int(hidden or channels)
        bn = nn.BatchNorm2d if kind == "conv" else nn.BatchNorm1d
        self.bn1 = bn(hidden) if batch_norm else nn.Identity()
        self.bn2 = bn(channels, affine=False) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.field
        z = f.act(self.bn1(f.A(x)))
        return F.relu(x - self.bn2(f.adjoint(z, x.shape)))


class ResNetSPooling(nn.Module):
    """The 2D pooling layer of ResNet-S (eq 4.4): x ↦ σ(E·P(x) − BN(A ∗₂ x)), P = 2×2 average pooling (stride 2),
    E = zero channel padding c → 2c (no parameters), A = ONE learnable 3×3 stride-2 filter c → 2c (periodic
    padding); BN trainable (its β is the bias b). Without batch norm, A carries the bias b (θ-form networks)."""

    def __init__(self, channels: int, batch_norm: bool = True, padding_mode: str = "circular",
                 affine: bool = True):
        super().__init__()
        c = int(channels)
        self.A = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, padding_mode=padding_mode, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(2 * c, affine=affine) if batch_norm else nn.Identity()
        self.channels = c
        if not batch_norm:
            with torch.no_grad():
                nn.init.zeros_(self.A.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, 0, self.channels))
        return F.relu(shortcut - self.bn(self.A(x)))


class ResNetDPooling(ResNetSPooling):
    """The 2D pooling layer of ResNet-D: as :class:`ResNetSPooling` with A ≥ 0 (initialised non-negative, kept so by
    :meth:`project_`) and BN fixed (γ = 1, β = 0) — 9·c·2c parameters."""

    def __init__(self, channels: int, batch_norm: bool = True, padding_mode: str = "circular"):
        super().__init__(channels, batch_norm, padding_mode, affine=False)
        with torch.no_grad():
            self.A.weight.abs_()

    @torch.no_grad()
    def project_(self) -> None:
        """A ← max(A, 0)."""
        self.A.weight.clamp_(min=0.0)


@torch.no_grad()
def project_nonnegative(model: nn.Module) -> int:
    """Apply every ResNet-D projection (A₂ ≥ 0, pooling A ≥ 0) in ``model``; call after each optimiser step. Returns
    the count."""
    n = 0
    for m in model.modules():
        if isinstance(m, (ResNetDField, ResNetDPooling)):
            m.project_()
            n += 1
    return n


def _block(field_cls, channels: int, steps: int, theta: float, h: Optional[float], shared: bool,
           field_kw: Dict[str, Any], layer_kw: Dict[str, Any]):
    if steps == 1 and shared:
        return ThetaLayer(field_cls(channels, **field_kw), theta=theta, h=1.0 if h is None else h, **layer_kw)
    fields = field_cls(channels, **field_kw) if shared else [field_cls(channels, **field_kw) for _ in range(steps)]
    return ImplicitBlock(fields, steps=steps, theta=theta, h=h, **layer_kw)


def resnet_d_block(channels: int, steps: int = 1, theta: float = 0.5, h: Optional[float] = None, shared: bool = False,
                   kind: str = "conv", hidden: Optional[int] = None, kernel_size: int = 3,
                   padding_mode: str = "circular", lipschitz: Optional[float] = None, **layer_kw):
    """θ-method ResNet-D: ImplicitBlock (or ThetaLayer for one shared step) with field F_D = −A₂σ(A₁x + b₁).

    ``shared=False``: one field per step (one γ_t per layer, as the paper's depth); ``layer_kw`` go to
    the layer (phi, solver, backward, …).
    """
    kw = dict(kind=kind, hidden=hidden, kernel_size=kernel_size, padding_mode=padding_mode, lipschitz=lipschitz)
    return _block(ResNetDField, channels, steps, theta, h, shared, kw, layer_kw)


def resnet_s_block(channels: int, steps: int = 1, theta: float = 0.5, h: Optional[float] = None, shared: bool = False,
                   kind: str = "conv", hidden: Optional[int] = None, kernel_size: int = 3,
                   padding_mode: str = "circular", lipschitz: Optional[float] = None, **layer_kw):
    """θ-method ResNet-S with field F_S = −Aᵀσ(Ax + b) (see :func:`resnet_d_block`)."""
    kw = dict(kind=kind, hidden=hidden, kernel_size=kernel_size, padding_mode=padding_mode, lipschitz=lipschitz)
    return _block(ResNetSField, channels, steps, theta, h, shared, kw, layer_kw)


# --------------------------------------------------------------------------------------------------
# NEMON
# --------------------------------------------------------------------------------------------------

def nemon_lipschitz_bound(A: torch.Tensor, B: torch.Tensor, C: Optional[torch.Tensor] = None,
                          d: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Input–output Lipschitz bound ‖B‖∞‖C‖∞ / (1 − μ∞(A)⁺) of x = σ(Ax + Bu + b), y = Cx (SPEC §5).

    With ``d`` (D = diag(exp d)) the D-weighted version ‖CD⁻¹‖∞‖DB‖∞ / (1 − μ∞(DAD⁻¹)⁺), which reduces
    to the plain one at d = 0. ``C=None``: the bound of u ↦ x. Differentiable (a regulariser).
    Requires μ < 1 (otherwise the equation may be ill-posed): returns +inf there.
    """
    mu = linf_log_norm(A, d)
    if d is not None:
        e = torch.exp(d)
        B = e[:, None] * B
        C = None if C is None else C / e[None, :]
    nb = B.abs().sum(dim=1).max()
    nc = C.abs().sum(dim=1).max() if C is not None else torch.ones((), dtype=B.dtype, device=B.device)
    denom = 1.0 - torch.clamp(mu, min=0.0)
    if float(denom.detach()) <= 0:
        return torch.full((), math.inf, dtype=B.dtype, device=B.device)
    return nb * nc / denom


class NEMONLayer(ImplicitLayer, nn.Module):
    """Implicit layer x = σ(Ax + Bu + b), output y = Cx + c (or x if ``out_features`` is None) (SPEC §5).

    A = :class:`LInfParam` (μ∞ ≤ m; m < 1 required). Forward: ``solver`` (default NEMON's average
    iteration ``picard_average``) from x₀ = 0 under ``no_grad``; backward: the implicit-function theorem
    (I − ∂g/∂x)ᵀ v = ∇_x L with the ``backward`` linear solver, g(x) = σ(Ax + Bu + b). σ must be
    slope-restricted in [0, 1] (relu, tanh, ...). An :class:`~irn_core.layers.ImplicitLayer` like the θ-layers:
    found by ``implicit_layers``, its solves reported by ``solver_stats`` (``last_stats`` / ``last_backward_stats``).
    """

    def __init__(self, in_features: int, hidden: int, out_features: Optional[int] = None, m: float = 0.0,
                 activation: str = "relu", learn_d: bool = True,
                 solver: Optional[Union[str, Dict[str, Any]]] = None,
                 backward: Optional[Union[str, Dict[str, Any]]] = None, on_nonconvergence: str = "warn"):
        super().__init__()
        if not m < 1.0:
            raise ValueError(f"NEMON needs m < 1 for well-posedness (mu_inf(A) <= m), got {m}")
        self.A = LInfParam(hidden, m=m, learn_d=learn_d)
        self.B = nn.Linear(in_features, hidden)
        self.C = nn.Linear(hidden, out_features) if out_features is not None else None
        self.act = make_activation(activation)
        self.solver = NONLINEAR_SOLVERS.resolve(solver or {"name": "picard_average", "tol": 1e-6, "max_iter": 300})
        self.backward_solver = LINEAR_SOLVERS.resolve(backward or DEFAULT_BACKWARD)
        self._configure_reporting(on_nonconvergence, None)
        self.alpha_state: Dict[str, float] = {}  # nemon_average's α, kept across batches and epochs (the authors')

    def _solve(self, g, x0):
        if self.solver.name == "nemon_average":
            return self.solver(g, x0, state=self.alpha_state)
        return self.solver(g, x0)

    @staticmethod
    def _g(x, A, Bu, act):
        return act(x @ A.T + Bu)

    def equilibrium(self, u: torch.Tensor) -> torch.Tensor:
        """The fixed point x* = σ(Ax* + Bu + b), differentiable by the IFT."""
        A_mod, act = self.A, self.act
        with torch.no_grad():
            A = A_mod()
            Bu = self.B(u)
            x0 = torch.zeros_like(Bu)
            x, st = self._solve(lambda x: self._g(x, A, Bu, act), x0)
        if not bool(torch.isfinite(x).all()):
            raise SolverError(f"{self.layer_name}: forward solve returned NaN/Inf")
        self._fwd, self._bwd = [st], [None]
        self._report(st, "forward")
        # the backward rebuilds g with exactly the tensors of this forward (also under functional_call)
        a_state = {**dict(self.A.named_buffers()), **dict(self.A.named_parameters())}
        Bw, Bb = self.B.weight, self.B.bias
        names = list(a_state)
        params = [u, *a_state.values(), Bw, Bb]
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in params):
            return x

        def phi(_x, y):  # Φ(·, y) = g(y): the IFT of y = 0 + 1·Φ is that of the fixed point y = g(y)
            A_ = functional_call(A_mod, dict(zip(names, params[1:1 + len(names)])), ())
            return self._g(y, A_, F.linear(u, Bw, Bb), act)

        return self._ift(phi, x, params)

    def _ift(self, phi, x: torch.Tensor, params) -> torch.Tensor:
        """x as the output of the fixed point x = Φ(·, x), differentiated by the implicit-function theorem with the
        ``backward`` linear solver (its stats recorded and reported)."""
        def backward_solve(Aop, b):
            v, st_b = self.backward_solver(Aop, b)
            if not bool(torch.isfinite(v).all()):
                raise SolverError(f"{self.layer_name}: backward solve ({st_b.solver}) returned NaN/Inf")
            return v, st_b

        def on_stats(st_b):
            self._bwd[0] = st_b
            self._report(st_b, "backward")

        problem = StepProblem(phi=phi, h=1.0, y=x, params=params, backward_solve=backward_solve, on_stats=on_stats)
        return ImplicitStep.apply(problem, x.new_zeros(()), *params)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = self.equilibrium(u)
        return self.C(x) if self.C is not None else x

    def lipschitz_bound(self) -> torch.Tensor:
        """‖DB‖∞‖CD⁻¹‖∞ / (1 − μ∞(DAD⁻¹)⁺) (input–output, differentiable)."""
        return nemon_lipschitz_bound(self.A(), self.B.weight, None if self.C is None else self.C.weight, self.A.d)


class NEMONConvLayer(NEMONLayer):
    """The authors' convolutional NEMON (AUTHORS-CODE §7, NEmon.py:119-198): on an image zero-padded by 1,
    z = ρ(Wz + Ux), U = Conv2d(C_in, C, k) with circular padding, W z = (m − max|Â|·C) z + Â ⊛ z (circular, k×k),
    Â = g·A/‖A‖_F with a learnable scalar g (init 1), ρ = ReLU then a zeroed ``border``-pixel frame; output: the
    equilibrium z (B, C, H + 2, W + 2). Forward from z = 0 with ``solver`` (default the authors' nemon_average,
    α₀ = 0.5); backward by the implicit-function theorem like :class:`NEMONLayer`."""

    def __init__(self, in_channels: int, channels: int = 64, kernel: int = 5, m: float = 0.0, border: int = 2,
                 solver: Optional[Union[str, Dict[str, Any]]] = None,
                 backward: Optional[Union[str, Dict[str, Any]]] = None, on_nonconvergence: str = "warn"):
        nn.Module.__init__(self)
        if not m < 1.0:
            raise ValueError(f"NEMON needs m < 1, got {m}")
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd (circular 'same' padding), got {kernel}")
        self.m, self.border, self.pad, self.channels = float(m), int(border), kernel // 2, int(channels)
        self.U = nn.Conv2d(in_channels, channels, kernel)
        self.A = nn.Parameter(nn.Conv2d(channels, channels, kernel, bias=False).weight.detach().clone())
        self.g = nn.Parameter(torch.ones(()))
        self.C = None
        self.solver = NONLINEAR_SOLVERS.resolve(solver or {"name": "nemon_average", "alpha": 0.5})
        self.backward_solver = LINEAR_SOLVERS.resolve(backward or DEFAULT_BACKWARD)
        self._configure_reporting(on_nonconvergence, None)
        self.alpha_state = {}

    def _circ(self, z, w):
        p = self.pad
        return F.conv2d(F.pad(z, (p, p, p, p), mode="circular"), w)

    def weight(self, A=None, g=None) -> torch.Tensor:
        """Â = g·A/‖A‖_F."""
        A = self.A if A is None else A
        return (self.g if g is None else g) * A / torch.linalg.vector_norm(A)

    def _g_conv(self, z, A_eff, Ux):
        wz = (self.m - A_eff.abs().max() * self.channels) * z + self._circ(z, A_eff)
        out = torch.relu(wz + Ux)
        b = self.border
        if b:
            out = F.pad(out[..., b:-b, b:-b], (b, b, b, b))
        return out

    def equilibrium(self, u: torch.Tensor) -> torch.Tensor:
        u = F.pad(u, (1, 1, 1, 1))  # the authors' zero padding by 1 (28 -> 30)
        params = [u, self.A, self.g, self.U.weight, self.U.bias]
        with torch.no_grad():
            A_eff, Ux = self.weight(), self._circ(u, self.U.weight) + self.U.bias.view(1, -1, 1, 1)
            z, st = self._solve(lambda z: self._g_conv(z, A_eff, Ux), torch.zeros_like(Ux))
        if not bool(torch.isfinite(z).all()):
            raise SolverError(f"{self.layer_name}: forward solve returned NaN/Inf")
        self._fwd, self._bwd = [st], [None]
        self._report(st, "forward")
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in params):
            return z

        def phi(_x, y):  # Φ(·, y) = ρ(Wy + Ux) rebuilt from exactly this forward's tensors
            u_, A_, g_, Uw, Ub = params
            return self._g_conv(y, self.weight(A_, g_), self._circ(u_, Uw) + Ub.view(1, -1, 1, 1))

        return self._ift(phi, z, params)

    def lipschitz_bound(self) -> torch.Tensor:
        raise NotImplementedError("the conv NEMON's bound is the authors' FFT form (disabled in their runs)")
