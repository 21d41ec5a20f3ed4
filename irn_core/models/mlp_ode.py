"""``mlp_ode``: an MLP vector field in one ImplicitBlock (journal §3 examples 1–3, arxiv-v1 examples).

x (batch, n_in) → lift to the state y_0 ∈ R^d (d = dims[0]): zero augmentation [x, 0] (``lift: zeros``) or a learned
affine map W x + b (``lift: linear``, arXiv v1's 2019 code) → T θ-steps
y_t = y_{t−1} + hΦ(γ_t, y_{t−1}, y_t) → readout:

- ``output: state``      y_T, shape (batch, d)
- ``output: last``       the last ``out_features`` coordinates of y_T (ex1: g(y_T) = last component)
- ``output: trajectory`` all states stacked, shape (batch, T+1, d): ODE tasks compare y_j with
                         data z(t_j) (ex2, ex3); the task picks the steps of its sample times
- ``output: linear``     a linear classifier on y_T with ``out_features`` outputs (spirals)

With ``time_fields: {count: K, span: S}`` the block is a :class:`~irn_core.time_indexed.TimeIndexedBlock`: K fields
over absolute time [0, S] and inputs ``[z(t₀), t₀]`` (the last column is each sample's start time; ex2 as the
authors generate it).

:meth:`MLPODE.rollout` runs the same (shared-field) block beyond its horizon, for extrapolation.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..fields import MLPField
from ..layers import ImplicitBlock
from ..time_indexed import TimeIndexedBlock, TimeIndexedField
from .common import make_field, split_layer

__all__ = ["MLPODE", "mlp_ode"]

OUTPUTS = ("state", "last", "trajectory", "linear")
LIFTS = ("zeros", "linear")


class MLPODE(nn.Module):
    def __init__(self, block: ImplicitBlock, augment: int, output: str, head: Optional[nn.Module],
                 out_features: Optional[int], input_map: Optional[nn.Module] = None):
        super().__init__()
        self.block = block
        self.input_map = input_map
        self.augment = int(augment)
        self.output = output
        self.head = head
        self.out_features = out_features

    @property
    def h(self) -> float:
        return self.block.h

    @property
    def horizon(self) -> float:
        return self.block.horizon

    def lift(self, x: torch.Tensor) -> torch.Tensor:
        """y_0 = [x, 0]: zero augmentation of the input to the state dimension (or W x + b with ``lift: linear``)."""
        if self.input_map is not None:
            return self.input_map(x)
        if self.augment == 0:
            return x
        return torch.cat([x, x.new_zeros(x.shape[0], self.augment)], dim=1)

    def _read(self, y: torch.Tensor, traj) -> torch.Tensor:
        if self.output == "state":
            return y
        if self.output == "last":
            return y[:, -self.out_features:]
        if self.output == "linear":
            return self.head(y)
        return torch.stack(traj, dim=1)

    @property
    def timed(self) -> bool:
        return isinstance(self.block, TimeIndexedBlock)

    def _split_time(self, x: torch.Tensor):
        return (x[:, :-1], x[:, -1]) if self.timed else (x, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, t0 = self._split_time(x)
        args = (self.lift(x),) if t0 is None else (self.lift(x), t0)
        if self.output == "trajectory":
            y, traj = self.block(*args, return_trajectory=True)
        else:
            y, traj = self.block(*args), None
        return self._read(y, traj)

    def rollout(self, x: torch.Tensor, horizon: float) -> torch.Tensor:
        """Trajectory (batch, S+1, d) of S = horizon / h steps from y_0 = lift(x).

        Beyond the block's own T steps the block is applied again from its last state (the discrete
        map extrapolated; needs a shared field, one F for all steps)."""
        steps = int(round(horizon / self.block.h))
        if steps < 1 or abs(steps * self.block.h - horizon) > 1e-6 * max(1.0, horizon):
            raise ValueError(f"horizon {horizon} is not a positive multiple of the step h={self.block.h}")
        if self.timed:
            if steps != self.block.steps:
                raise ValueError(f"a time-indexed block rolls out over its own {self.block.steps} steps only")
            z, t0 = self._split_time(x)
            return torch.stack(self.block(self.lift(z), t0, return_trajectory=True)[1], dim=1)
        if steps > self.block.steps and not self.block.shared:
            raise ValueError("rollout beyond the block's steps needs a shared field (one F for all steps)")
        y = self.lift(x)
        traj = [y]
        for _ in range(math.ceil(steps / self.block.steps)):
            y, part = self.block(y, return_trajectory=True)
            traj.extend(part[1:])
        return torch.stack(traj[: steps + 1], dim=1)


def mlp_ode(layer: Optional[Dict[str, Any]] = None, dims: Sequence[int] = (2, 10, 10, 10, 2),
            activation: str = "gelu", bias_last: bool = True, init: str = "xavier_uniform", steps: int = 5,
            h: Optional[float] = None, horizon: Optional[float] = None, shared: bool = True, augment: int = 0,
            output: str = "state", out_features: Optional[int] = None,
            time_fields: Optional[Dict[str, float]] = None, activation_last: bool = False, lift: str = "zeros",
            in_features: Optional[int] = None, antisymmetric: bool = False, head_init: str = "default") -> MLPODE:
    """Build an :class:`MLPODE`.

    Options: ``dims`` field sizes [d, w1, …, d]; ``activation`` (relu, gelu, tanh, …); ``bias_last``;
    ``init`` (xavier_uniform | xavier_unit_frobenius | normal_spectral_radius | default); ``activation_last`` σ after
    the field's last layer too (``dims: [d, d]`` is σ(W y + b)); ``antisymmetric`` W − Wᵀ in place of every W
    (``dims: [d, d]`` with ``activation_last`` is σ((W − Wᵀ) y + b)); ``steps`` T; ``h`` or ``horizon`` (h = horizon/T; default h=1);
    ``shared`` one field for all steps (else one per step); ``augment`` zero coordinates appended to
    the input (input size = d − augment); ``lift: linear`` instead maps the ``in_features`` inputs to the state by a
    learned W x + b (Xavier-uniform, bias zero); ``output`` state | last | trajectory | linear;
    ``out_features`` for last (default 1) and linear (required); ``head_init`` of the linear output: ``default``
    (PyTorch's) or ``xavier_uniform`` (bias zero: Keras's Dense, arXiv v1's code). Paper settings:
    ex1 dims [2,10,10,10,2] gelu bias_last=False T=5 augment=1 output=last;
    ex2 dims [1,4,4,1] relu T=20 horizon=2 shared=False field eig_range [-25,-15] output=trajectory;
    ex3 dims [2,20,20,20,20,2] relu T=50 h=0.2 output=trajectory; arXiv v1 ex1 dims [5,5] relu activation_last
    init=normal_spectral_radius lift=linear in_features=1 horizon=1 output=linear; arXiv v1 ex2 (its code) dims [6,6]
    tanh activation_last antisymmetric lift=linear in_features=2 shared=False output=linear head_init=xavier_uniform.
    ``time_fields: {count, span}``: K fields over
    absolute time (see the module docstring).
    """
    kw, field_cfg = split_layer(layer)
    if not isinstance(dims, (list, tuple)) or len(dims) < 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise ValueError(f"dims must be a list of at least 2 positive integers [d, w1, ..., d], got {dims!r}")
    dims = [int(d) for d in dims]
    if dims[0] != dims[-1]:
        raise ValueError(f"mlp_ode dims must start and end with the state size, got {dims}")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
    if not 0 <= int(augment) < dims[0]:
        raise ValueError(f"augment must be in [0, {dims[0]}), got {augment}")
    if lift not in LIFTS:
        raise ValueError(f"unknown lift {lift!r}; valid: {', '.join(LIFTS)}")
    d = dims[0]
    input_map = None
    if lift == "linear":
        if int(augment) != 0 or in_features is None or isinstance(in_features, bool) or int(in_features) < 1:
            raise ValueError(f"lift: linear needs in_features >= 1 and augment 0, got in_features={in_features!r}, "
                             f"augment={augment!r}")
        input_map = nn.Linear(int(in_features), d)
        nn.init.xavier_uniform_(input_map.weight)
        nn.init.zeros_(input_map.bias)
    elif in_features is not None:
        raise ValueError("in_features is for lift: linear (with lift: zeros the input size is d - augment)")

    def one():
        return make_field(MLPField(dims, activation=activation, bias_last=bias_last, init=init,
                                   activation_last=activation_last, antisymmetric=bool(antisymmetric)), field_cfg, (d,))

    if time_fields is not None:
        tf = dict(time_fields)
        if set(tf) != {"count", "span"} or int(tf["count"]) < 1 or not float(tf["span"]) > 0:
            raise ValueError(f"time_fields must be {{count: K >= 1, span: S > 0}}, got {time_fields!r}")
        if h is None:
            h = (1.0 if horizon is None else float(horizon) / int(steps))
        block = TimeIndexedBlock(TimeIndexedField([one() for _ in range(int(tf["count"]))], float(tf["span"])),
                                 steps=int(steps), h=float(h), **kw)
    else:
        field = one() if shared else [one() for _ in range(int(steps))]
        block = ImplicitBlock(field, steps=steps, h=h, horizon=horizon, **kw)
    head = None
    if output == "last":
        out_features = 1 if out_features is None else int(out_features)
        if not 1 <= out_features <= d:
            raise ValueError(f"out_features must be in [1, {d}] for output 'last', got {out_features}")
    elif output == "linear":
        if out_features is None:
            raise ValueError("output 'linear' needs out_features (the number of classes)")
        head = nn.Linear(d, int(out_features))
        if head_init == "xavier_uniform":
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
    if head_init not in ("default", "xavier_uniform"):
        raise ValueError(f"unknown head_init {head_init!r}; valid: default, xavier_uniform")
    if head_init != "default" and head is None:
        raise ValueError("head_init is for output: linear (the only output with a learned head)")
    return MLPODE(block, int(augment), output, head, out_features, input_map)
