"""Tasks of the earlier version (reshniak-webster-arxiv-v1 §3): 1-D function approximation, two spirals.

Much of v1's setup was lost in the text extraction; the defaults below are *inferred* (SPEC §3) and
every one is an option.
"""
from __future__ import annotations

import math
from typing import Literal, Tuple

import torch
import torch.nn.functional as F
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
        state lifted and read out by learned affine maps (the v1 code's Dense(1→5) … Dense(5→1), both Keras's
        Glorot-uniform with zero bias), T = 1 (the v1
        code's 10 layers of h = 0.1), the convex θ-step of v1's Listing 1, fixed-point iterations from the explicit
        step forward and Neumann series backward (Figure 5)."""
        return {"name": "mlp_ode", "dims": [5, 5], "activation": "relu", "activation_last": True,
                "init": "normal_spectral_radius", "lift": "linear", "in_features": 1, "steps": self.options.steps,
                "horizon": 1.0, "shared": True, "output": "linear", "out_features": 1, "head_init": "xavier_uniform",
                "layer": {"theta": 0.5, "phi": "convex", "initial_guess": "explicit",
                          "solver": {"name": "fixed_point", "tol": 1e-6, "mode": "abs", "max_iter": 100},
                          "backward": {"name": "neumann", "tol": 1e-6, "max_iter": 100}}}

    def default_train(self):
        return {"epochs": 1000, "batch_size": 4, "optimizer": {"name": "adam", "lr": 1e-2},
                "scheduler": {"name": "step", "step_size": 100, "gamma": 0.5, "interval": "epoch"}}


def two_spirals(n_per_class: int = 513, turns: float = 2.0, offset: float = 0.2, noise: float = 0.0, seed: int = 0):
    """The two spirals of arXiv v1's code (ex_2.py at the authors' first commit, 2019-05-24): angle a ∈ [0, 2π·turns]
    and radius r ∈ [0, 1], both evenly spaced over ``n_per_class`` points; class 0 at r(cos a, sin a), class 1 at
    (r + ``offset``)(cos a, sin a) (the same angles, not rotated). ``noise``: Gaussian jitter std (seeded; the code
    has none). Returns (points (2n, 2), labels (2n,)): class 0's points along its spiral, then class 1's, as the
    code stacks them."""
    a = torch.linspace(0.0, 2 * math.pi * turns, n_per_class, dtype=torch.float64)
    r = torch.linspace(0.0, 1.0, n_per_class, dtype=torch.float64)
    u = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    x = torch.cat([r[:, None] * u, (r[:, None] + offset) * u]).float()
    y = torch.cat([torch.zeros(n_per_class, dtype=torch.long), torch.ones(n_per_class, dtype=torch.long)])
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(seed)))
    return x, y


class V1SpiralsOptions(TaskOptions):
    n_per_class: int = Field(513, ge=4, description="points per spiral (the v1 code: 513)")
    turns: float = Field(2.0, gt=0, description="turns of each spiral (the v1 code: angle up to 4π)")
    offset: float = Field(0.2, ge=0, description="radial offset of the second spiral (the v1 code: 0.2)")
    noise: float = Field(0.0, ge=0, description="Gaussian jitter of the points (seeded; the v1 code: none)")
    steps: int = Field(100, ge=1, description="layers of the default model (arXiv v1 text: 100; its code: 25)")
    head: Literal["sigmoid", "softmax"] = Field(
        "sigmoid", description="sigmoid: one logit and binary cross-entropy (the v1 code's Dense(1, sigmoid)); "
                               "softmax: two logits and cross-entropy")


class V1Spirals(ClassificationTask):
    """v1-ex2: two spirals, every other point held out (arXiv v1 §4 Example 2; Haber & Ruthotto 2017).

    Inputs (batch, 2), labels {0, 1}. The two spirals are stacked as the v1 code stacks them (:func:`two_spirals`);
    the even positions of that stack are held out (the code's ``x[0::2]``: its validation set; our val and test) and
    the odd ones train. With ``head: sigmoid`` the model has one output, a logit: loss = binary cross-entropy of
    σ(logit), class 1 when the logit is positive. Metrics: loss, top1.
    """

    name = "v1_spirals"
    Options = V1SpiralsOptions
    has_val = True
    topk = (1,)
    num_classes = 2

    def data(self, seed: int = 0):
        o = self.options
        x, y = two_spirals(o.n_per_class, o.turns, o.offset, o.noise, seed)
        held = TensorDataset(x[0::2], y[0::2])
        return TensorDataset(x[1::2], y[1::2]), held, held

    @property
    def _sigmoid(self) -> bool:
        return self.options.head == "sigmoid"

    def _logit(self, output: torch.Tensor) -> torch.Tensor:
        if output.dim() != 2 or output.shape[1] != 1:
            raise ValueError(f"v1_spirals with head: sigmoid reads one output per point (a logit), got outputs of shape "
                             f"{tuple(output.shape)}; a two-logit model needs task.head: softmax")
        return output[:, 0]

    def loss(self, output, target):
        if not self._sigmoid:
            return super().loss(output, target)
        return F.binary_cross_entropy_with_logits(self._logit(output), target.to(output.dtype))

    def metrics(self, output, target):
        if not self._sigmoid:
            return super().metrics(output, target)
        with torch.no_grad():
            z = self._logit(output)
            return {"n": float(target.shape[0]),
                    "loss": float(F.binary_cross_entropy_with_logits(z, target.to(output.dtype), reduction="sum")),
                    "top1": float(((z > 0).long() == target).sum())}

    def probabilities(self, output):
        if not self._sigmoid:
            return super().probabilities(output)
        p = torch.sigmoid(self._logit(output))[:, None]
        return torch.cat([1 - p, p], dim=1)

    def default_model(self):
        """The v1 code's network: a learned Dense(2→6) lift, ``steps`` θ-steps through one antisymmetric field
        per step, F(y) = tanh((W − Wᵀ) y + b) (Glorot-uniform W, zero b), and a Dense(6→1) logit (sigmoid head) or
        Dense(6→2), Glorot-uniform with zero bias as Keras's Dense. T = 12.5, the code's 25 steps of h = 0.5 (with the text's 100 steps, h = 0.125: *inferred*, the
        text's "100 layers to guarantee stability" read as a finer grid). Forward: fixed-point iterations from the
        explicit step (the code: a linearised predictor, 20 negligible gradient steps, then 10 fixed-point
        iterations); backward: a direct solve with the full Jacobian, as the code's (I − θJ)ᵀ solve. The θ-step is
        the code's y = x + h((1 − θ) F(x) + θ F(y)) (``phi: convex``)."""
        return {"name": "mlp_ode", "dims": [6, 6], "activation": "tanh", "activation_last": True,
                "antisymmetric": True, "lift": "linear", "in_features": 2, "steps": self.options.steps,
                "horizon": 12.5, "shared": False, "output": "linear", "out_features": 1 if self._sigmoid else 2,
                "head_init": "xavier_uniform",
                "layer": {"theta": 0.5, "phi": "convex", "initial_guess": "explicit",
                          "solver": {"name": "fixed_point", "tol": 1e-6, "mode": "abs", "max_iter": 100},
                          "backward": {"name": "direct"}}}

    def default_train(self):
        """The v1 code: Adam 1e-3, batch 10, 300 epochs, no schedule."""
        return {"epochs": 300, "batch_size": 10, "optimizer": {"name": "adam", "lr": 1e-3}, "scheduler": None}

    def default_regularizers(self):
        return {}  # the paper compares perturbation streams at three σ levels against none
