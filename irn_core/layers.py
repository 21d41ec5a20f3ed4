"""The implicit residual layer (SPEC §1; journal §2.2, eqs 11, 12, 14).

One θ-step maps x to the solution y of

    y = x + h · Φ(γ, x, y),   one_leg (eq 12): Φ = F(γ, (1−θ)x + θy),
                              convex  (eq 11): Φ = (1−θ)F(γ, x) + θF(γ, y).

θ = 0 is the explicit (forward-Euler) ResNet layer y = x + hF(x) and calls no solver; θ = 0.5 is the
implicit midpoint (one_leg) or trapezoidal (convex) rule; θ = 1 is backward Euler. The forward solve
starts from the explicit step and runs under ``torch.no_grad()``; gradients come from the
implicit-function theorem (:mod:`irn_core.autograd`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call

from .autograd import ImplicitStep, StepProblem
from .normalization import normalization_scope, solve_constants
from .solvers.base import SolverError, SolverSpec, SolverStats
from .solvers.linear import LINEAR_SOLVERS
from .solvers.nonlinear import NONLINEAR_SOLVERS

__all__ = ["ThetaLayer", "ImplicitBlock", "ImplicitLayer", "ThetaMethod", "ConvergenceWarning", "PHIS", "assign_names",
           "solver_stats", "implicit_layers", "theta_layers", "constraint_projections", "DEFAULT_THETA", "DEFAULT_PHI", "DEFAULT_SOLVER",
           "DEFAULT_BACKWARD", "DEFAULT_INITIAL_GUESS", "DEFAULT_RETURNS"]

PHIS = ("one_leg", "convex")
INITIAL_GUESSES = ("explicit", "previous")
RETURNS = ("solution", "update")
DEFAULT_INITIAL_GUESS, DEFAULT_RETURNS = "explicit", "solution"
NONCONVERGENCE_POLICIES = ("warn", "raise", "ignore")

SolverArg = Union[str, Dict[str, Any], SolverSpec]

DEFAULT_THETA = 0.0  # explicit (a ResNet step) unless told: the one θ default of the library, models and suites
DEFAULT_PHI = "one_leg"
DEFAULT_SOLVER: Dict[str, Any] = {"name": "anderson", "tol": 1e-5, "max_iter": 100, "mode": "rms"}  # per-entry RMS: any state size, float32
DEFAULT_BACKWARD: Dict[str, Any] = {"name": "gmres", "tol": 1e-6, "max_iter": 50}


class ConvergenceWarning(UserWarning):
    """A forward or backward solve of an implicit layer missed its tolerance."""


def _check_theta(theta: float) -> float:
    theta = float(theta)
    if not 0.0 <= theta <= 1.0:
        raise ValueError(f"theta must be in [0, 1] (0 explicit, 0.5 midpoint, 1 backward Euler), got {theta}")
    return theta


def _check_phi(phi: str) -> str:
    if phi not in PHIS:
        raise ValueError(f"unknown phi {phi!r}; valid: {', '.join(PHIS)}")
    return phi


def phi_value(field: nn.Module, x: torch.Tensor, y: torch.Tensor, theta: float, phi: str,
              fx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Φ(γ, x, y) of eq 12 (one_leg) or eq 11 (convex). ``fx`` = F(x) if already known (convex)."""
    if phi == "one_leg":
        return field((1.0 - theta) * x + theta * y)
    if fx is None:
        fx = field(x)
    return (1.0 - theta) * fx + theta * field(y)


class ImplicitLayer:
    """The protocol of every implicit layer (θ-method layers, NEMON): a name, a non-convergence policy, and the
    forward/backward :class:`SolverStats` of its last call, one entry per solve (None where no solver ran) —
    what :func:`implicit_layers` finds and :func:`solver_stats` reports."""

    def _configure_reporting(self, on_nonconvergence: str, name: Optional[str]) -> None:
        if on_nonconvergence not in NONCONVERGENCE_POLICIES:
            raise ValueError(
                f"on_nonconvergence must be one of {', '.join(NONCONVERGENCE_POLICIES)}, got {on_nonconvergence!r}"
            )
        self.on_nonconvergence = on_nonconvergence
        self.name = name
        self._warned: set = set()
        self._fwd: List[Optional[SolverStats]] = []
        self._bwd: List[Optional[SolverStats]] = []

    @property
    def layer_name(self) -> str:
        return self.name or type(self).__name__

    @property
    def forward_stats(self) -> List[Optional[SolverStats]]:
        """Stats of every forward solve of the last call."""
        return list(self._fwd)

    @property
    def backward_stats(self) -> List[Optional[SolverStats]]:
        """Stats of every backward (IFT) solve of the last backward pass."""
        return list(self._bwd)

    @property
    def last_stats(self):
        """The forward stats of the last call (one solve: a SolverStats or None; multi-step layers: the list)."""
        return self._fwd[0] if self._fwd else None

    @property
    def last_backward_stats(self):
        """The backward stats of the last backward pass (as :attr:`last_stats`)."""
        return self._bwd[0] if self._bwd else None

    def _report(self, stats: SolverStats, where: str) -> None:
        """Apply the non-convergence policy (warn once per call site, raise, or ignore) to one solve's stats."""
        if stats.all_converged or self.on_nonconvergence == "ignore":
            return
        n_bad = int((~stats.converged).sum())
        msg = (f"{self.layer_name}: {where} solve ({stats.solver}) did not reach tol={stats.tol:g} "
               f"({stats.mode}) for {n_bad}/{stats.converged.numel()} samples after {stats.iterations} "
               f"iterations (max residual {stats.max_residual:.3g})")
        if self.on_nonconvergence == "raise":
            raise SolverError(msg)
        if where not in self._warned:  # one warning per layer per call-site
            self._warned.add(where)
            warnings.warn(msg + "; further warnings of this layer are suppressed", ConvergenceWarning,
                          stacklevel=4)


class ThetaMethod(ImplicitLayer):
    """The configuration shared by the θ-method layers (ThetaLayer, ImplicitBlock, TimeIndexedBlock): θ, Φ, solvers,
    initial guess, and the trajectory kept for the regularisers."""

    def _configure(self, theta, phi, solver, backward, on_nonconvergence, name, initial_guess=DEFAULT_INITIAL_GUESS,
                   returns=DEFAULT_RETURNS):
        if initial_guess not in INITIAL_GUESSES:
            raise ValueError(f"initial_guess must be one of {', '.join(INITIAL_GUESSES)}, got {initial_guess!r}")
        if returns not in RETURNS:
            raise ValueError(f"returns must be one of {', '.join(RETURNS)}, got {returns!r}")
        self.initial_guess, self.returns = initial_guess, returns
        self.theta = _check_theta(theta)
        self.phi = _check_phi(phi)
        self.solver = NONLINEAR_SOLVERS.resolve(DEFAULT_SOLVER if solver is None else solver)
        self.backward = LINEAR_SOLVERS.resolve(DEFAULT_BACKWARD if backward is None else backward)
        self._configure_reporting(on_nonconvergence, name)
        # keep_trajectory: store the states [y_0, …, y_T] of the last forward (with their graph) in
        # ``last_trajectory`` so trajectory regularisers (eq 20) can use them after the model's forward.
        self.keep_trajectory = False
        self.last_trajectory: Optional[List[torch.Tensor]] = None

    @property
    def layer_name(self) -> str:
        return self.name or f"{type(self).__name__}(theta={self.theta})"

    def _step(self, field: nn.Module, x: torch.Tensor, h: float, record: List[SolverStats],
              record_bwd: List[Optional[SolverStats]]) -> torch.Tensor:
        """One θ-step y = x + hΦ(γ, x, y) from x, solved forward and differentiated by the IFT."""
        theta, phi = self.theta, self.phi
        if theta == 0.0:
            record.append(None)
            record_bwd.append(None)
            return x + h * field(x)
        with torch.no_grad(), solve_constants():  # W̃, gates: computed once per solve (weights are fixed in it)
            fx = field(x) if (phi == "convex" or self.initial_guess == "explicit") else None
            # the explicit step ("no worse than an explicit layer"), or the previous state (the authors' z₀ = x)
            y0 = x + h * fx if self.initial_guess == "explicit" else x
            if phi == "one_leg":
                if theta == 1.0:
                    g = lambda y: x + h * field(y)  # noqa: E731
                else:
                    g = lambda y: x + h * field((1.0 - theta) * x + theta * y)  # noqa: E731
            else:
                c = x + h * (1.0 - theta) * fx
                g = lambda y: c + (h * theta) * field(y)  # noqa: E731
            try:
                y, stats = self.solver(g, y0)
            except SolverError as e:
                raise SolverError(f"{self.layer_name}: forward solve failed: {e}") from e
            stats.nfe += int(fx is not None)
            # "update": the layer returns x + hΦ(γ, x, ŷ) at the solver's ŷ (the authors' ode.py:336), one more
            # F-evaluation; a solve skipped at the initial guess x then gives the explicit step, not x.
            out = g(y) if self.returns == "update" else y
            stats.nfe += int(self.returns == "update")
        if not bool(torch.isfinite(out).all()):
            raise SolverError(f"{self.layer_name}: forward solve ({stats.solver}) returned NaN/Inf")
        record.append(stats)
        self._report(stats, "forward")
        named = dict(field.named_parameters())
        params = list(named.values())
        if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in params)):
            record_bwd.append(None)
            return out
        slot = len(record_bwd)
        record_bwd.append(None)

        def on_stats(st: SolverStats, slot=slot) -> None:
            record_bwd[slot] = st
            self._report(st, "backward")

        def backward_solve(A, b):
            v, st = self.backward(A, b)
            if not bool(torch.isfinite(v).all()):
                raise SolverError(f"{self.layer_name}: backward solve ({st.solver}) returned NaN/Inf")
            return v, st

        # The backward re-evaluates Φ with exactly the tensors of this forward (parameters and buffers
        # as they were, even if the module is re-parametrised or swapped, e.g. by functional_call): directly
        # when the module still holds them (the common case; re-binding them costs ~1 ms on a small MLP),
        # else through functional_call.
        frozen = {**dict(field.named_buffers()), **named}
        slots = [(d, k, t) for m in field.modules() for d in (m._parameters, m._buffers)
                 for k, t in d.items() if t is not None]

        def bound(z):
            if all(d.get(k) is t for d, k, t in slots):
                return field(z)
            return functional_call(field, frozen, (z,))
        problem = StepProblem(
            phi=lambda x_, y_: phi_value(bound, x_, y_, theta, phi),
            h=h, y=y, params=params, backward_solve=backward_solve, on_stats=on_stats,
            out=None if out is y else out,
        )
        return ImplicitStep.apply(problem, x, *params)


class ThetaLayer(ThetaMethod, nn.Module):
    """One implicit residual layer y = x + hΦ(γ, x, y) (eqs 11/12, 14).

    Args:
        field: the vector field F, any module called as ``field(y)`` on the state's shape.
        theta: θ ∈ [0, 1]. 0 = explicit ResNet (no solver), 0.5 = midpoint/trapezoidal, 1 = backward Euler.
        h: step size.
        phi: ``"one_leg"`` (eq 12, default) or ``"convex"`` (eq 11).
        solver: nonlinear solver, a registered name or ``{"name": ..., "tol": ..., "max_iter": ..., **opts}``.
        backward: linear solver of the IFT backward, same forms.
        on_nonconvergence: ``"warn"`` (once per layer and call-site), ``"raise"`` or ``"ignore"``.
        initial_guess: ``"explicit"`` (the solve starts from x + hF(x)) or ``"previous"`` (from x, as the
            authors' code: AUTHORS-CODE §1.5).
        returns: ``"solution"`` (y = the solver's ŷ) or ``"update"`` (y = x + hΦ(γ, x, ŷ), one more
            F-evaluation, as the authors' code; a solve accepted at ŷ = x then returns the explicit step).
            The gradient is the IFT gradient at ŷ (eq 17) either way.

    After each call ``last_stats`` holds the forward SolverStats (None at θ = 0) and, once backward has
    run, ``last_backward_stats`` the backward ones.
    """

    def __init__(self, field: nn.Module, theta: float = DEFAULT_THETA, h: float = 1.0, phi: str = DEFAULT_PHI,
                 solver: Optional[SolverArg] = None, backward: Optional[SolverArg] = None,
                 on_nonconvergence: str = "warn", name: Optional[str] = None, initial_guess: str = DEFAULT_INITIAL_GUESS,
                 returns: str = DEFAULT_RETURNS):
        nn.Module.__init__(self)
        self._configure(theta, phi, solver, backward, on_nonconvergence, name, initial_guess, returns)
        self.field = field
        self.h = float(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._fwd, self._bwd = [], []
        with normalization_scope(self):  # one power-iteration step per forward (training), none per solver iteration
            y = self._step(self.field, x, self.h, self._fwd, self._bwd)
        self.last_trajectory = [x, y] if self.keep_trajectory else None
        return y

    @property
    def steps(self) -> int:
        return 1

    def field_at(self, t: int) -> nn.Module:
        """F(γ_t, ·) of step t (a single step: t = 1)."""
        return self.field

    def extra_repr(self) -> str:
        return f"theta={self.theta}, h={self.h}, phi={self.phi}, solver={self.solver.name}, backward={self.backward.name}"


class ImplicitBlock(ThetaMethod, nn.Module):
    """T implicit steps y_t = y_{t−1} + hΦ(γ_t, y_{t−1}, y_t), t = 1..T, y_0 = x (eq 14).

    ``field`` is one module shared by all steps, or a sequence of T modules (γ_t piecewise constant,
    one field per step). ``h = horizon / steps`` (give ``horizon`` or ``h``; default h = 1).
    ``forward(x, return_trajectory=True)`` also returns the list [y_0, …, y_T].
    """

    def __init__(self, field: Union[nn.Module, Sequence[nn.Module]], steps: int, theta: float = DEFAULT_THETA,
                 h: Optional[float] = None, horizon: Optional[float] = None, phi: str = DEFAULT_PHI,
                 solver: Optional[SolverArg] = None, backward: Optional[SolverArg] = None,
                 on_nonconvergence: str = "warn", name: Optional[str] = None, initial_guess: str = DEFAULT_INITIAL_GUESS,
                 returns: str = DEFAULT_RETURNS):
        nn.Module.__init__(self)
        self._configure(theta, phi, solver, backward, on_nonconvergence, name, initial_guess, returns)
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if h is not None and horizon is not None:
            raise ValueError("give either h or horizon, not both")
        if horizon is not None:
            h = float(horizon) / steps
        self.h = 1.0 if h is None else float(h)
        if self.h <= 0:
            raise ValueError(f"step size h must be positive, got {self.h}")
        self.steps = steps
        if isinstance(field, nn.Module) and not isinstance(field, (nn.ModuleList, list, tuple)):
            self.fields = nn.ModuleList([field])
            self.shared = True
        else:
            fields = list(field)
            if len(fields) != steps:
                raise ValueError(f"one field per step needs {steps} fields, got {len(fields)}")
            self.fields = nn.ModuleList(fields)
            self.shared = False

    @property
    def horizon(self) -> float:
        return self.h * self.steps

    def field_at(self, t: int) -> nn.Module:
        """F(γ_t, ·) of step t = 1..T."""
        return self.fields[0] if self.shared else self.fields[t - 1]

    def forward(self, x: torch.Tensor, return_trajectory: bool = False):
        self._fwd, self._bwd = [], []
        keep = return_trajectory or self.keep_trajectory
        traj = [x]
        y = x
        with normalization_scope(self):  # one power-iteration step per forward (training), none per solver iteration
            for t in range(1, self.steps + 1):
                y = self._step(self.field_at(t), y, self.h, self._fwd, self._bwd)
                if keep:
                    traj.append(y)
        self.last_trajectory = traj if self.keep_trajectory else None
        return (y, traj) if return_trajectory else y

    @property
    def last_stats(self) -> List[Optional[SolverStats]]:
        """Forward stats of the last call, one per step (None at θ = 0)."""
        return list(self._fwd)

    @property
    def last_backward_stats(self) -> List[Optional[SolverStats]]:
        """Backward stats of the last backward, one per step (None where no backward ran)."""
        return list(self._bwd)

    def extra_repr(self) -> str:
        return (f"steps={self.steps}, h={self.h}, theta={self.theta}, phi={self.phi}, shared={self.shared}, "
                f"solver={self.solver.name}, backward={self.backward.name}")


def assign_names(model: nn.Module) -> nn.Module:
    """Name every implicit layer after its qualified module path (for warnings and logs)."""
    for qual, mod in model.named_modules():
        if isinstance(mod, ImplicitLayer) and mod.name is None:
            mod.name = qual or type(mod).__name__
    return model


def implicit_layers(model: nn.Module) -> Dict[str, ImplicitLayer]:
    """Every implicit layer in ``model`` (θ-method layers and NEMON) by qualified module path."""
    return {(q or type(m).__name__): m for q, m in model.named_modules() if isinstance(m, ImplicitLayer)}


def theta_layers(model: nn.Module) -> Dict[str, ThetaMethod]:
    """The θ-method layers of ``model`` (those with a trajectory, for the regularisers of eq 20), by module path."""
    return {q: m for q, m in implicit_layers(model).items() if isinstance(m, ThetaMethod)}


def constraint_projections(model: nn.Module) -> List[Callable[[], None]]:
    """The ``project_()`` method of every module of ``model`` that keeps a constraint by projection (e.g. ResNet-D's
    A₂ ≥ 0): a training loop calls each after every optimiser step (find them once, not per step)."""
    return [m.project_ for m in model.modules() if callable(getattr(m, "project_", None))]


def solver_stats(model: nn.Module) -> Dict[str, Dict[str, List[Optional[SolverStats]]]]:
    """Forward/backward stats of the last call of every implicit layer in ``model``, by module path."""
    return {q: {"forward": m.forward_stats, "backward": m.backward_stats} for q, m in implicit_layers(model).items()}
