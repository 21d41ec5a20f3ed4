"""Tasks of the earlier version (reshniak-webster-arxiv-v1 §3): 1-D function approximation, two spirals.

Much of v1's setup was lost in the text extraction; the defaults below are *inferred* (SPEC §3) and
every one is an option.
"""
from __future__ import annotations

import math
from typing import Literal, Tuple

import torch
from pydantic import Field, field_validator
from torch.utils.data import TensorDataset

from .base import ClassificationTask, TaskOptions
from .ode import RegressionTask

__all__ = ["V1Function", "V1Spirals", "v1_function_target", "two_spirals"]


def v1_function_target(x: torch.Tensor) -> torch.Tensor:
    """sin(2πx)·exp(−x²/2) (the code released with arXiv v1: ex_1.py at the authors' first commit, 2019-05-24)."""
    return torch.sin(2 * math.pi * x) * torch.exp(-0.5 * x * x)


class V1FunctionOptions(TaskOptions):
    n_train: int = Field(100, ge=2, description="training points (arXiv v1 code: 100)")
    sampling: Literal["uniform", "even"] = Field(
        "uniform", description="training x: uniform draws on the interval, seeded by the run's seed (the v1 code: "
                               "np.random.rand, unseeded), or evenly spaced")
    interval: Tuple[float, float] = Field((-1.0, 1.0), description="x range (arXiv v1 code: [-1, 1])")
    n_val: int = Field(200, ge=2, description="validation points, evenly spaced on the interval (v1 code: 200)")
    n_test: int = Field(1000, ge=2, description="test points, evenly spaced (v1 code: the 1000-point prediction plot)")
    steps: int = Field(10, ge=1, description="layers of the default model (the paper: 1 and 10)")

    @field_validator("interval")
    @classmethod
    def _interval(cls, v):
        if not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError(f"must be [a, b] with a < b, both finite (got {list(v)})")
        return v


class V1Function(RegressionTask):
    """v1-ex1: approximate f(x) = sin(2πx)·exp(−x²/2) on [−1, 1] (arXiv v1 §3 Example 1).

    Inputs (batch, 1), targets (batch, 1). train: ``n_train`` points, uniform draws (seeded by the run's seed) or
    evenly spaced; val: ``n_val`` evenly spaced points (the paper's validation loss, Figure 4); test: ``n_test``
    evenly spaced points.
    """

    name = "v1_function"
    Options = V1FunctionOptions
    has_val = True

    def data(self, seed: int = 0):
        o = self.options
        a, b = o.interval
        if o.sampling == "uniform":
            g = torch.Generator().manual_seed(int(seed))
            x = (a + (b - a) * torch.rand(o.n_train, 1, generator=g, dtype=torch.float64)).float()
        else:
            x = torch.linspace(a, b, o.n_train).unsqueeze(1)
        xv = torch.linspace(a, b, o.n_val).unsqueeze(1)
        xt = torch.linspace(a, b, o.n_test).unsqueeze(1)
        mk = lambda z: TensorDataset(z, v1_function_target(z))  # noqa: E731
        return mk(x), mk(xv), mk(xt)

    def default_model(self):
        """arXiv v1 §3: one stationary (shared) field F(y) = ReLU(W y + b), W ~ N(0, 1) / ρ(W), b = 0, on a 5-unit
        state lifted and read out by learned affine maps (the v1 code's Dense(1→5) … Dense(5→1)), T = 1 (the v1
        code's 10 layers of h = 0.1), the convex θ-step of v1's Listing 1, fixed-point iterations from the explicit
        step forward and Neumann series backward (Figure 5)."""
        return {"name": "mlp_ode", "dims": [5, 5], "activation": "relu", "activation_last": True,
                "init": "normal_spectral_radius", "lift": "linear", "in_features": 1, "steps": self.options.steps,
                "horizon": 1.0, "shared": True, "output": "linear", "out_features": 1,
                "layer": {"theta": 0.5, "phi": "convex", "initial_guess": "explicit",
                          "solver": {"name": "fixed_point", "tol": 1e-6, "mode": "abs", "max_iter": 100},
                          "backward": {"name": "neumann", "tol": 1e-6, "max_iter": 100}}}

    def default_train(self):
        return {"epochs": 1000, "batch_size": 4, "optimizer": {"name": "adam", "lr": 1e-2},
                "scheduler": {"name": "step", "step_size": 100, "gamma": 0.5, "interval": "epoch"}}


def two_spirals(n_per_class: int, turns: float = 2.0, noise: float = 0.0, seed: int = 0):
    """Two interleaved spirals (Haber & Ruthotto): class k at angle 2π·turns·s + kπ, radius s,
    s ∈ (0, 1] evenly; ``noise``: Gaussian jitter std. Returns (points (2n, 2), labels (2n,)),
    ordered along each spiral and interleaved by class."""
    s = torch.linspace(0.0, 1.0, n_per_class + 1)[1:]
    pts, lab = [], []
    for k in range(2):
        ang = 2 * math.pi * turns * s + k * math.pi
        pts.append(torch.stack([s * torch.cos(ang), s * torch.sin(ang)], dim=1))
        lab.append(torch.full((n_per_class,), k, dtype=torch.long))
    x = torch.stack(pts, dim=1).reshape(-1, 2)  # interleave: point i of class 0, of class 1, ...
    y = torch.stack(lab, dim=1).reshape(-1)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(seed)))
    return x, y


class V1SpiralsOptions(TaskOptions):
    n_per_class: int = Field(200, ge=4, description="points per spiral before holding out every other one")
    turns: float = Field(2.0, gt=0)
    noise: float = Field(0.0, ge=0, description="Gaussian jitter of the points (seeded)")
    steps: int = Field(100, ge=1, description="layers of the default model (the paper: 100)")


class V1Spirals(ClassificationTask):
    """v1-ex2: two spirals, every other point held out (Haber & Ruthotto 2017).

    Inputs (batch, 2), labels {0, 1}. train: points at even positions along each spiral; val and test:
    the held-out odd positions (the paper's single validation set; test is the same set). Metrics:
    loss, top1.
    """

    name = "v1_spirals"
    Options = V1SpiralsOptions
    has_val = True
    topk = (1,)
    num_classes = 2

    def data(self, seed: int = 0):
        o = self.options
        x, y = two_spirals(o.n_per_class, o.turns, o.noise, seed)
        pos = torch.arange(x.shape[0]) // 2  # position along the spiral
        tr, ho = pos % 2 == 0, pos % 2 == 1
        held = TensorDataset(x[ho], y[ho])
        return TensorDataset(x[tr], y[tr]), held, held

    def default_model(self):
        return {"name": "mlp_ode", "dims": [4, 16, 4], "activation": "tanh", "steps": self.options.steps,
                "horizon": 10.0, "shared": False, "augment": 2, "output": "linear", "out_features": 2,
                "layer": {"theta": 0.5}}

    def default_train(self):
        return {"epochs": 500, "batch_size": self.options.n_per_class, "optimizer": {"name": "adam", "lr": 1e-2},
                "scheduler": None}

    def default_regularizers(self):
        return {}  # the paper compares perturbation streams at three σ levels against none
