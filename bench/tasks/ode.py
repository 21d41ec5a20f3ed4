"""Regression tasks of the journal paper: ex1 (sine), ex2 (stiff ODE), ex3 (Lotka–Volterra).

Field sizes follow the papers' formulas F = γ_out σ(γ_k σ(… σ(γ_in y + b_0) …) + b_k): "k hidden layers"
there means k square matrices γ_1..γ_k besides γ_in and γ_out, so ex1 is [2, 10×4, 2], ex2
[1, 4×3, 1], ex3 [2, 20×5, 2] (every size is a model option).
"""
from __future__ import annotations

import functools
from typing import Dict, Literal, Optional, Tuple

import numpy as np
import torch
from pydantic import Field, field_validator
from torch.utils.data import TensorDataset

from .base import Task, TaskOptions

__all__ = ["Ex1Sine", "Ex2Stiff", "Ex3Lotka", "stiff_solution", "lotka_rhs", "lotka_solution"]


def regression_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over sample points of ‖y_j − z_j‖² (sum over state coordinates), shape (batch,)."""
    if output.shape != target.shape:
        raise ValueError(f"output shape {tuple(output.shape)} does not match target shape {tuple(target.shape)}")
    err = (output - target) ** 2
    return err.sum(-1).reshape(err.shape[0], -1).mean(1)


def regression_metrics(output: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
    """Sums over the batch: ``loss`` (as :func:`regression_loss`), ``mse`` (mean over all coordinates), ``n``."""
    with torch.no_grad():
        per = regression_loss(output, target)
        mse = ((output - target) ** 2).reshape(output.shape[0], -1).mean(1)
        return {"n": float(output.shape[0]), "loss": float(per.sum()), "mse": float(mse.sum())}


class RegressionTask(Task):
    kind = "regression"

    def loss(self, output, target):
        return regression_loss(output, target).mean()

    def metrics(self, output, target):
        return regression_metrics(output, target)

    def metric_names(self):
        return ["loss", "mse"]


class TrajectoryTask(RegressionTask):
    """Targets are states z(t_j) at t_j = j·dt, j = 1..P (shape (batch, P, d)); inputs are z(0).

    ``forward`` rolls the model out to t_P (``model.rollout(x, t_P)``, trajectory (batch, S+1, d) on
    the model's own step grid) and ``select`` keeps the states at the sample times (S must be a
    multiple of P).
    """

    def target_horizon(self, targets: torch.Tensor) -> float:
        """t_P, the time of the last sample point of ``targets``."""
        raise NotImplementedError

    def forward(self, model, inputs, targets=None):
        if targets is None or not hasattr(model, "rollout"):
            return model(inputs)
        return model.rollout(inputs, horizon=self.target_horizon(targets))

    @staticmethod
    def select(traj: torch.Tensor, n_points: int) -> torch.Tensor:
        if traj.dim() != 3:
            raise ValueError(f"trajectory tasks need a model trajectory (batch, steps+1, d), got {tuple(traj.shape)}; "
                             "use mlp_ode with output: trajectory")
        s = traj.shape[1] - 1
        if s % n_points:
            raise ValueError(f"the model's {s} steps are not a multiple of the {n_points} sample points")
        return traj[:, s // n_points::s // n_points]

    def _loss_scale(self, target: torch.Tensor) -> float:
        """``loss_mean: points`` (default): per trajectory, the mean over the P sample points of ‖y_j − z_j‖²;
        ``entries_with_initial``: the mean over all (P + 1)·d entries including the (error-free) initial
        point, as the authors' code (AUTHORS-CODE §2.2-2.3): the same sum times P / ((P + 1) d)."""
        if getattr(self.options, "loss_mean", "points") == "points":
            return 1.0
        P, d = target.shape[1], target[0, 0].numel()
        return P / ((P + 1) * d)

    def loss(self, output, target):
        return super().loss(self.select(output, target.shape[1]), target) * self._loss_scale(target)

    def metrics(self, output, target):
        m = super().metrics(self.select(output, target.shape[1]), target)
        m["loss"] *= self._loss_scale(target)
        return m


# --------------------------------------------------------------------------------------- ex1
class Ex1Options(TaskOptions):
    n_train: int = Field(20, ge=2, description="evenly spaced training points")
    interval: Tuple[float, float] = (-5.0, 5.0)

    @field_validator("interval")
    @classmethod
    def _ordered(cls, v):
        if not v[0] < v[1]:
            raise ValueError(f"interval must be (low, high) with low < high, got {v}")
        return v
    n_test: int = Field(200, ge=2, description="evenly spaced test points on the same interval")
    steps: int = Field(5, ge=1, description="T of the default model")


class Ex1Sine(RegressionTask):
    """ex1: fit sin(x) from N = 20 points evenly spaced on [−5, 5] (journal §3.1).

    Inputs (batch, 1), targets sin(x) (batch, 1). The default model augments the input with a zero
    coordinate (state in R²) and reads the last coordinate of y_T. val: None (the paper has none);
    test: ``n_test`` evenly spaced points on the same interval. Data do not depend on the seed.
    """

    name = "ex1_sine"
    Options = Ex1Options

    def data(self, seed: int = 0):
        o = self.options
        x = torch.linspace(o.interval[0], o.interval[1], o.n_train).unsqueeze(1)
        xt = torch.linspace(o.interval[0], o.interval[1], o.n_test).unsqueeze(1)
        return TensorDataset(x, torch.sin(x)), None, TensorDataset(xt, torch.sin(xt))

    def default_model(self):
        return {"name": "mlp_ode", "dims": [2, 10, 10, 10, 2], "activation": "gelu", "bias_last": False,
                "steps": self.options.steps, "h": 1.0, "shared": True, "augment": 1, "output": "last",
                "layer": {"theta": 0.5, "phi": "one_leg"}}

    def default_train(self):
        return {"epochs": 3000, "batch_size": self.options.n_train, "optimizer": {"name": "adam", "lr": 1e-3},
                "scheduler": {"name": "plateau", "patience": 50, "cooldown": 50, "factor": 0.1, "monitor": "loss"}}

    def default_regularizers(self):
        return {"jacobian": {"weight": 0.1}, "divergence": {"weight": 0.0, "p": 2}}


# --------------------------------------------------------------------------------------- ex2
STIFF_RATE = 20.0


def stiff_solution(z0: np.ndarray, t: np.ndarray, t0: float = 0.0) -> np.ndarray:
    """Closed form of z' = −20(z − cos t), z(t0) = z0: z = (z0 − p(t0))e^{−20(t−t0)} + p(t),
    p(t) = (400 cos t + 20 sin t)/401. Broadcasts z0 (n,) against t (m,) to (n, m)."""
    lam = STIFF_RATE
    p = lambda s: (lam * lam * np.cos(s) + lam * np.sin(s)) / (lam * lam + 1.0)  # noqa: E731
    z0 = np.asarray(z0, dtype=np.float64)[:, None]
    t = np.asarray(t, dtype=np.float64)[None, :]
    return (z0 - p(t0)) * np.exp(-lam * (t - t0)) + p(t)


class Ex2Options(TaskOptions):
    points: int = Field(2, description="sample points per trajectory: the paper uses 2, 4 or 10")
    n_train: int = Field(100, ge=1, description="training trajectories")
    n_test: int = Field(100, ge=1, description="test trajectories (fresh initial conditions)")
    test_points: Optional[int] = Field(None, description="points per test trajectory (default: points)")
    z0_range: Tuple[float, float] = Field((-2.0, 2.0), description="uniform range of z(0) (inferred)")
    loss_mean: Literal["points", "entries_with_initial"] = Field(
        "points", description="mean over the sample points, or over all entries incl. t0 (the authors')")
    horizon: float = Field(2.0, gt=0, description="t ∈ [0, horizon]")
    steps: int = Field(20, ge=1, description="T of the default model (one field per step)")
    t0_range: Optional[Tuple[float, float]] = Field(
        None, description="random start times t0 ~ U[t0_range) (the authors': [0, 2)); inputs become [z(t0), t0] and "
                          "trajectories cover [t0, t0 + horizon]. Unset: every trajectory starts at t = 0")
    first_at_origin: bool = Field(False, description="the first trajectory of each split starts at (t0, z0) = (0, 0)")
    n_val: int = Field(0, ge=0, description="validation trajectories (the authors': 20)")

    @field_validator("points", "test_points")
    @classmethod
    def _pos(cls, v):
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v


class Ex2Stiff(TrajectoryTask):
    """ex2: learn the stiff ODE z' = −20(z − cos t) on [0, 2] (journal §3.2, eq 22–23).

    100 trajectories from z(0) ~ U(z0_range) (seeded), ``points`` states per trajectory at
    t_j = j·horizon/points (the paper: 2, 4 or 10; eq 23 samples t_0 + j/{1, 2, 5}). Inputs z(0)
    (batch, 1); targets (batch, points, 1), exact (closed form). val: None; test: ``n_test`` fresh
    trajectories from the seed's stream. The default model has T = 20 steps (h = 0.1), one field
    F^{−25,−15} per step, so points must divide 20.
    """

    name = "ex2_stiff"
    Options = Ex2Options

    def target_horizon(self, targets):
        return self.options.horizon

    def _split(self, z0: np.ndarray, points: int, t0: Optional[np.ndarray] = None) -> TensorDataset:
        t = np.arange(1, points + 1) * (self.options.horizon / points)
        if t0 is None:
            z = stiff_solution(z0, t)
            x = torch.tensor(z0, dtype=torch.float32)[:, None]
        else:  # each trajectory from its own start: z(t0 + t_j), exact (the authors: RK45, rtol 1e-3)
            z = np.stack([stiff_solution(z0[i:i + 1], t0[i] + t, t0=float(t0[i]))[0] for i in range(len(z0))])
            x = torch.tensor(np.stack([z0, t0], axis=1), dtype=torch.float32)
        return TensorDataset(x, torch.tensor(z, dtype=torch.float32)[:, :, None])

    def _authors_splits(self, seed: int):
        """The authors' draws (ex_stiff.py:47-66): a RandomState(seed); per split n start times, then n values."""
        o = self.options
        rng = np.random.RandomState(seed % (2 ** 32))
        out = []
        for n in (o.n_train, o.n_val, o.n_test):
            t0 = o.t0_range[0] + (o.t0_range[1] - o.t0_range[0]) * rng.rand(n)
            z0 = o.z0_range[0] + (o.z0_range[1] - o.z0_range[0]) * rng.rand(n)
            if o.first_at_origin and n:
                t0[0], z0[0] = 0.0, 0.0
            out.append((z0, t0))
        return out

    def data(self, seed: int = 0):
        o = self.options
        tp = o.test_points or o.points
        if o.t0_range is not None:
            (ztr, ttr), (zva, tva), (zte, tte) = self._authors_splits(seed)
            val = self._split(zva, o.points, tva) if o.n_val else None
            return self._split(ztr, o.points, ttr), val, self._split(zte, tp, tte)
        rng = np.random.default_rng(seed)
        z0 = rng.uniform(o.z0_range[0], o.z0_range[1], size=o.n_train + o.n_test)
        return self._split(z0[: o.n_train], o.points), None, self._split(z0[o.n_train:], tp)

    def default_model(self):
        if self.options.t0_range is not None:  # the authors' time-indexed fields (AUTHORS-CODE §2.2)
            return {"name": "mlp_ode", "dims": [1, 4, 4, 4, 1], "activation": "relu", "bias_last": False,
                    "init": "xavier_unit_frobenius", "steps": self.options.steps, "horizon": self.options.horizon,
                    "output": "trajectory", "time_fields": {"count": 2 * self.options.steps,
                                                            "span": 2 * self.options.horizon},
                    "layer": {"theta": 0.5, "phi": "one_leg", "initial_guess": "previous", "returns": "update",
                              "field": {"gated": {"limits": [-25.0, -20.0, -15.0], "spectral_norm": "exact"}}}}
        return {"name": "mlp_ode", "dims": [1, 4, 4, 1], "activation": "relu", "steps": self.options.steps,
                "horizon": self.options.horizon, "shared": False, "output": "trajectory",
                "layer": {"theta": 0.5, "phi": "one_leg", "field": {"eig_range": [-25.0, -15.0]}}}

    def default_train(self):
        return {"epochs": 50, "batch_size": 1, "optimizer": {"name": "adam", "lr": 1e-3}, "scheduler": None}

    def default_regularizers(self):
        return {"tv": {"weight": 0.1}}  # 0.1/T Σ‖γ_t − γ_{t−1}‖² (eq 23)


# --------------------------------------------------------------------------------------- ex3
LV = dict(alpha=2.0 / 3.0, beta=4.0 / 3.0, delta=1.0, gamma=1.0)


def lotka_rhs(t, z):
    a, b, d, g = LV["alpha"], LV["beta"], LV["delta"], LV["gamma"]
    return [a * z[0] - b * z[0] * z[1], d * z[0] * z[1] - g * z[1]]


def lotka_invariant(z1, z2):
    """The conserved quantity δz1 − γ ln z1 + βz2 − α ln z2 of the Lotka–Volterra system."""
    a, b, d, g = LV["alpha"], LV["beta"], LV["delta"], LV["gamma"]
    return d * z1 - g * np.log(z1) + b * z2 - a * np.log(z2)


def lotka_equilibrium() -> Tuple[float, float]:
    """The positive equilibrium (γ/δ, α/β), where the invariant takes its minimum over z > 0."""
    return LV["gamma"] / LV["delta"], LV["alpha"] / LV["beta"]


@functools.lru_cache(maxsize=32)
def lotka_solution(z0: Tuple[float, float], dt: float, n: int, rtol: float = 1e-10, atol: float = 1e-10) -> np.ndarray:
    """States z(j·dt), j = 0..n, shape (n+1, 2), by scipy's DOP853 with tight tolerances."""
    from scipy.integrate import solve_ivp

    t = np.arange(n + 1) * dt
    sol = solve_ivp(lotka_rhs, (0.0, float(t[-1])), list(z0), method="DOP853", t_eval=t, rtol=rtol, atol=atol)
    if not sol.success:  # pragma: no cover
        raise RuntimeError(f"reference solve of Lotka–Volterra failed: {sol.message}")
    return sol.y.T.copy()


class Ex3Options(TaskOptions):
    n_orbits: int = Field(5, ge=1, description="initial conditions (1, 1.0 + 0.2k), k = 0..n_orbits-1")
    horizon: float = Field(10.0, gt=0, description="training interval [0, horizon]")
    dt: float = Field(0.2, gt=0, description="spacing of the data points (51 points on [0, 10])")
    extrapolate: float = Field(200.0, gt=0, le=1000.0, description="test interval [0, extrapolate] (≤ 1000)")
    loss_mean: Literal["points", "entries_with_initial"] = Field(
        "points", description="mean over the sample points (sum over coordinates), or over all entries incl. t = 0 "
                              "(the authors')")


class Ex3Lotka(TrajectoryTask):
    """ex3: periodic Lotka–Volterra orbits (journal §3.3, eq 24).

    z1' = 2/3 z1 − 4/3 z1 z2, z2' = z1 z2 − z2; orbits from (1, 1.0 + 0.2k), k = 0..4, sampled every
    dt = 0.2 on [0, 10] (51 points incl. t = 0). Inputs z(0) (batch, 2); train targets z(0.2j),
    j = 1..50, shape (5, 50, 2); test: the same orbits on [0, extrapolate] (default 200: 1000 points),
    on which the model is rolled out beyond its training horizon. val: None. Reference by
    solve_ivp(DOP853, rtol=atol=1e-10). The data do not depend on the seed.
    """

    name = "ex3_lotka"
    Options = Ex3Options

    def target_horizon(self, targets):
        return targets.shape[1] * self.options.dt

    def _orbits(self, horizon: float) -> TensorDataset:
        o = self.options
        n = int(round(horizon / o.dt))
        if abs(n * o.dt - horizon) > 1e-9 * horizon:
            raise ValueError(f"horizon {horizon} is not a multiple of dt={o.dt}")
        z0 = [(1.0, 1.0 + 0.2 * k) for k in range(o.n_orbits)]
        z = np.stack([lotka_solution(ic, o.dt, n) for ic in z0])  # (orbits, n+1, 2)
        z = torch.tensor(z, dtype=torch.float32)
        return TensorDataset(z[:, 0], z[:, 1:])

    def data(self, seed: int = 0):
        return self._orbits(self.options.horizon), None, self._orbits(self.options.extrapolate)

    def default_model(self):
        o = self.options
        return {"name": "mlp_ode", "dims": [2, 20, 20, 20, 20, 2], "activation": "relu",
                "steps": int(round(o.horizon / o.dt)), "h": o.dt, "shared": True, "output": "trajectory",
                "layer": {"theta": 0.5, "phi": "one_leg"}}

    def default_train(self):
        return {"epochs": 3000, "batch_size": self.options.n_orbits, "optimizer": {"name": "adam", "lr": 1e-3},
                "scheduler": None}
