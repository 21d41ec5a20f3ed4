"""Fields indexed by absolute time, as the authors' stiff-ODE example has them (AUTHORS-CODE §1.1, §2.2).

γ(t) is piecewise constant in *absolute* time: ``fields[k]`` acts on [kΔ, (k+1)Δ), Δ = span / len(fields), index
⌊t/Δ⌋ clamped to the last field (rhs.py:83-100). Each sample of a batch carries its own start time t₀, so one
θ-step may use different fields for different samples. The step from t to t + h evaluates the field at
t' = t + θh for θ < 1 and at t for θ = 1 (ode.py:290-294).

- :class:`TimeIndexedField` — the fields and the per-sample evaluation time (set before each call).
- :class:`TimeIndexedBlock` — T θ-steps of size h from per-sample start times, solved and differentiated like
  :class:`~irn_core.layers.ImplicitBlock` (same solvers, same implicit-function-theorem backward).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .layers import DEFAULT_INITIAL_GUESS, DEFAULT_RETURNS, ThetaMethod
from .normalization import normalization_scope

__all__ = ["TimeIndexedField", "TimeIndexedBlock"]


class TimeIndexedField(nn.Module):
    """F(γ(t), y) with γ piecewise constant on a grid of ``len(fields)`` intervals over [0, span]."""

    def __init__(self, fields: Sequence[nn.Module], span: float):
        super().__init__()
        if not len(fields):
            raise ValueError("TimeIndexedField needs at least one field")
        if not span > 0:
            raise ValueError(f"span must be positive, got {span}")
        self.fields = nn.ModuleList(fields)
        self.span = float(span)
        self.delta = self.span / len(self.fields)
        # per-sample evaluation times: a buffer (so the IFT backward re-evaluates with this call's times, see
        # ThetaLayer._step), not saved in the state_dict (its batch size varies)
        self.register_buffer("time", torch.zeros(1), persistent=False)

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """⌊t/Δ⌋ clamped to [0, len − 1] (a 1e-9 guard so that t = kΔ computed in floating point lands in k)."""
        return torch.clamp(torch.floor(t / self.delta + 1e-9).long(), 0, len(self.fields) - 1)

    def set_time(self, t: torch.Tensor) -> None:
        self.time = t.detach().reshape(-1).to(dtype=torch.float64)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        idx = self.index(self.time)
        if idx.numel() == 1:
            return self.fields[int(idx)](y)
        return _by_index(self.fields, idx, y)

    def active(self) -> nn.Module:
        """The field at the current times as a module that holds only the fields in use: the one field when every
        sample is in the same interval, else a view of the few fields the batch needs. Same values as ``self``;
        what a θ-step solves and differentiates, so the IFT backward re-binds and differentiates those parameters
        only (not all ``len(fields)`` fields: with 40 fields that was 40× the work), and the fields no sample used
        get no gradient (None, as in the authors' code), not a zero one."""
        idx = self.index(self.time)
        first = idx.reshape(-1)[:1]
        if idx.numel() == 1 or bool((idx == first).all()):
            return self.fields[int(first)]
        return _ActiveFields(self.fields, idx)


def _by_index(fields, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample i through ``fields[idx[i]]`` (one call per distinct index)."""
    if idx.numel() != y.shape[0]:
        raise ValueError(f"{idx.numel()} times for a batch of {y.shape[0]}")
    idx = idx.to(y.device)
    out = None
    for k in torch.unique(idx).tolist():
        pos = (idx == k).nonzero().reshape(-1)
        part = fields[k](y.index_select(0, pos))
        if out is None:
            out = part.new_zeros((y.shape[0],) + tuple(part.shape[1:]))
        out = out.index_copy(0, pos, part)
    return out


class _ActiveFields(nn.Module):
    """The fields a batch uses at fixed per-sample indices (see :meth:`TimeIndexedField.active`): the same
    parameter tensors as the parent's fields, only the used ones registered."""

    def __init__(self, fields: nn.ModuleList, idx: torch.Tensor):
        super().__init__()
        used = torch.unique(idx).tolist()
        self.parts = nn.ModuleDict({str(k): fields[k] for k in used})
        self.register_buffer("idx", idx, persistent=False)

    def __getitem__(self, k: int) -> nn.Module:
        return self.parts[str(k)]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return _by_index(self, self.idx, y)


class TimeIndexedBlock(ThetaMethod, nn.Module):
    """y_k = y_{k−1} + hΦ(γ(t'_k), y_{k−1}, y_k), t_k = t₀ + kh, k = 1..T, from per-sample start times t₀.

    ``forward(x, t0, return_trajectory=False)``; θ, Φ, solvers and policies as :class:`~irn_core.layers.ThetaLayer`.
    """

    def __init__(self, field: TimeIndexedField, steps: int, h: float, theta: float = 0.5, phi: str = "one_leg",
                 solver=None, backward=None, on_nonconvergence: str = "warn", name: Optional[str] = None,
                 initial_guess: str = DEFAULT_INITIAL_GUESS,
                 returns: str = DEFAULT_RETURNS):
        nn.Module.__init__(self)
        self._configure(theta, phi, solver, backward, on_nonconvergence, name, initial_guess, returns)
        if not isinstance(field, TimeIndexedField):
            raise TypeError("TimeIndexedBlock needs a TimeIndexedField")
        self.field = field
        self.steps, self.h = int(steps), float(h)
        if self.steps < 1 or not self.h > 0:
            raise ValueError(f"steps must be >= 1 and h > 0, got {steps}, {h}")
        self.shared = False

    @property
    def horizon(self) -> float:
        return self.h * self.steps

    @property
    def time_fields(self) -> List[nn.Module]:
        """All the fields in time order (for TV over consecutive fields)."""
        return list(self.field.fields)

    def field_at(self, t: int) -> nn.Module:  # pragma: no cover - the trajectory regularisers need a time
        raise NotImplementedError("a time-indexed block has no field per step: its field depends on each sample's time")

    def eval_time(self, t: torch.Tensor) -> torch.Tensor:
        """Where the step from t is evaluated: t + θh (θ < 1) or t (θ = 1), as the authors' code."""
        return t + self.theta * self.h if self.theta < 1.0 else t

    def forward(self, x: torch.Tensor, t0: torch.Tensor, return_trajectory: bool = False):
        self._fwd, self._bwd = [], []
        t0 = t0.reshape(-1).to(torch.float64)
        traj = [x]
        y = x
        with normalization_scope(self):
            for k in range(self.steps):
                self.field.set_time(self.eval_time(t0 + k * self.h))
                y = self._step(self.field.active(), y, self.h, self._fwd, self._bwd)
                traj.append(y)
        self.last_trajectory = traj if self.keep_trajectory else None
        return (y, traj) if return_trajectory else y

    @torch.no_grad()
    def explicit_rollout(self, x: torch.Tensor, t0: torch.Tensor, steps: int) -> torch.Tensor:
        """The same fields with θ = 0 and ``steps`` steps over the block's horizon (the authors' "continuous"
        solution of ex2: 1000 steps); (batch, steps + 1, …)."""
        t0 = t0.reshape(-1).to(torch.float64)
        h = self.horizon / int(steps)
        y, out = x, [x]
        for k in range(int(steps)):
            self.field.set_time(t0 + k * h)
            y = y + h * self.field(y)
            out.append(y)
        return torch.stack(out, dim=1)

    @property
    def last_stats(self):
        return list(self._fwd)

    @property
    def last_backward_stats(self):
        return list(self._bwd)

    def extra_repr(self) -> str:
        return (f"steps={self.steps}, h={self.h}, fields={len(self.field.fields)} over [0, {self.field.span}], "
                f"theta={self.theta}, solver={self.solver.name}, backward={self.backward.name}")
