"""Input corruptions with a severity grid, and the robustness evaluation (journal Table 3, ZS Table 5.4).

All corruptions act on the dataset's inputs as they come (images: [0, 1] pixels, *before* the
model's normalisation, as in the authors' code) and clamp to ``clamp`` (default ``auto``: the task's
``pixel_range`` for image tasks, no clamping otherwise).

| name        | severity key | definition                                                          |
|-------------|--------------|---------------------------------------------------------------------|
| gaussian    | std          | x + std·N(0, 1)   (``repeats: k``: k independent draws per image, metrics over all) |
| uniform     | eps          | x + U(−eps, eps)                                                    |
| salt_pepper | amount       | each element, with probability amount, set to the low/high end (½/½)|
| structured  | eps          | x + eps·x̂, x̂ = the input of dataset[image_index] (one fixed image)  |
| fgsm        | eps          | x + eps·sign(∇ₓ loss)   (ε in [0, 1] pixel units)                   |
| pgd         | eps          | ``steps`` signed-gradient steps of ``step_size`` (default 2.5·eps/steps), projected on the ℓ∞ ball, optional random start |

Severity 0 is the identity for every corruption. Attacks keep the model in eval mode and take the
gradient through the model — for implicit layers through their implicit-function-theorem backward.

Spec (a suite's ``evaluate.corruptions``)::

    {gaussian: {std: [0.0, 0.1, 0.2], clamp: [0, 1]}, fgsm: {eps: [0, 0.05]}, pgd: {eps: [0.05], steps: 10}}

:func:`evaluate_corruptions` returns the unaggregated long table (corruption, severity, metric, value)
with the task's metrics (classification: top1, top2 as fractions, loss). Deterministic given ``seed``:
random corruptions draw from a CPU generator seeded by (seed, name, severity), so results do not
depend on the device or on the other corruptions in the spec.
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from irn_core.registry import Registry, unknown_options

from .tasks.base import Task, aggregate

__all__ = ["CORRUPTIONS", "Corruption", "Context", "parse_spec", "evaluate_corruptions", "corruption_names", "input_gradient"]

Clamp = Union[str, None, Sequence[float]]


class Corruption:
    """Base: ``apply(x, severity, ctx)``; subclasses set ``name``, ``severity_key``, ``defaults``."""

    name = ""
    severity_key = "severity"
    defaults: Dict[str, Any] = {"clamp": "auto"}
    needs_model = False

    def __init__(self, **opts: Any):
        bad = sorted(set(opts) - set(self.defaults))
        if bad:
            raise ValueError(unknown_options(f"corruption {self.name!r}", bad, [self.severity_key] + list(self.defaults)))
        self.opts = {**self.defaults, **opts}

    def bounds(self, task: Task) -> Optional[Tuple[float, float]]:
        c = self.opts.get("clamp", "auto")
        if c == "auto":
            return tuple(getattr(task, "pixel_range", None) or ()) or None
        if c is None:
            return None
        if len(c) != 2 or not float(c[0]) < float(c[1]):
            raise ValueError(f"clamp must be 'auto', null or [low, high], got {c!r}")
        return float(c[0]), float(c[1])

    @staticmethod
    def _clamp(x: torch.Tensor, b) -> torch.Tensor:
        return x if b is None else x.clamp(b[0], b[1])

    def apply(self, x: torch.Tensor, severity: float, ctx: "Context") -> torch.Tensor:
        raise NotImplementedError


class Context:
    """What a corruption may need: model, task, targets, generator, device, clamp bounds, fixed image."""

    def __init__(self, model, task, y, gen, device, bounds, fixed=None):
        self.model, self.task, self.y, self.gen, self.device, self.bounds, self.fixed = \
            model, task, y, gen, device, bounds, fixed

    def randn(self, shape):
        return torch.randn(shape, generator=self.gen).to(self.device)

    def rand(self, shape):
        return torch.rand(shape, generator=self.gen).to(self.device)


class Gaussian(Corruption):
    name, severity_key = "gaussian", "std"
    defaults = {"clamp": "auto", "repeats": 1}

    def apply(self, x, severity, ctx):
        if severity == 0:
            return x
        return self._clamp(x + severity * ctx.randn(x.shape).to(x.dtype), ctx.bounds)


class Uniform(Corruption):
    name, severity_key = "uniform", "eps"
    defaults = {"clamp": "auto", "repeats": 1}

    def apply(self, x, severity, ctx):
        if severity == 0:
            return x
        return self._clamp(x + severity * (2 * ctx.rand(x.shape).to(x.dtype) - 1), ctx.bounds)


class SaltPepper(Corruption):
    name, severity_key = "salt_pepper", "amount"
    defaults = {"clamp": "auto", "salt_vs_pepper": 0.5, "repeats": 1}

    def apply(self, x, severity, ctx):
        if severity == 0:
            return x
        if not 0 <= severity <= 1:
            raise ValueError(f"salt_pepper amount must be in [0, 1], got {severity}")
        lo, hi = ctx.bounds or (float(x.min()), float(x.max()))
        u = ctx.rand(x.shape)
        v = ctx.rand(x.shape)
        hit = u < severity
        salt = v < float(self.opts["salt_vs_pepper"])
        out = torch.where(hit & salt, torch.full_like(x, hi), x)
        return torch.where(hit & ~salt, torch.full_like(x, lo), out)


class Structured(Corruption):
    name, severity_key = "structured", "eps"
    defaults = {"clamp": "auto", "image_index": 0}

    def apply(self, x, severity, ctx):
        if severity == 0:
            return x
        return self._clamp(x + severity * ctx.fixed.to(x.device, x.dtype), ctx.bounds)


@contextlib.contextmanager
def _frozen_params(model: nn.Module):
    """Parameters stop requiring grad (attacks need ∇ₓ only); restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def input_gradient(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ task.loss(model(x), y) with the model as it is (eval mode), parameters not differentiated."""
    with torch.enable_grad(), _frozen_params(model):
        xg = x.detach().clone().requires_grad_(True)
        loss = task.loss(task.forward(model, xg, y), y)
        (g,) = torch.autograd.grad(loss, xg)
    return g


class FGSM(Corruption):
    name, severity_key = "fgsm", "eps"
    needs_model = True

    def apply(self, x, severity, ctx):
        if severity == 0:
            return x
        g = input_gradient(ctx.model, ctx.task, x, ctx.y)
        return self._clamp(x + severity * g.sign(), ctx.bounds).detach()


class PGD(Corruption):
    name, severity_key = "pgd", "eps"
    defaults = {"clamp": "auto", "steps": 10, "step_size": None, "random_start": True}
    needs_model = True

    def apply(self, x, severity, ctx):
        if severity == 0:
            return x
        eps = float(severity)
        steps = int(self.opts["steps"])
        alpha = self.opts["step_size"] or 2.5 * eps / steps
        xa = x.detach()
        if self.opts["random_start"]:
            xa = self._clamp(xa + eps * (2 * ctx.rand(x.shape).to(x.dtype) - 1), ctx.bounds)
        for _ in range(steps):
            g = input_gradient(ctx.model, ctx.task, xa, ctx.y)
            xa = xa + alpha * g.sign()
            xa = torch.max(torch.min(xa, x + eps), x - eps)
            xa = self._clamp(xa, ctx.bounds).detach()
        return xa


CORRUPTIONS: Registry[Type[Corruption]] = Registry("corruption")
for _cls in (Gaussian, Uniform, SaltPepper, Structured, FGSM, PGD):
    CORRUPTIONS.register(_cls.name, _cls, options=[_cls.severity_key, *_cls.defaults])


def corruption_names() -> List[str]:
    return CORRUPTIONS.names()


def parse_spec(spec: Dict[str, Dict[str, Any]]) -> List[Tuple[Corruption, List[float]]]:
    """``{name: {severity_key: [..] | value, **options}}`` → [(corruption, severities)]; errors list
    the valid names / options."""
    if not isinstance(spec, dict):
        raise ValueError(f"corruption spec must be a dict {{name: {{...}}}}; valid names: {', '.join(corruption_names())}")
    out = []
    for name, opts in spec.items():
        cls = CORRUPTIONS.get(name)
        opts = dict(opts or {})
        if cls.severity_key in opts and "severity" in opts:
            raise ValueError(f"give either {cls.severity_key!r} or 'severity' for {name!r}, not both")
        sev = opts.pop(cls.severity_key, opts.pop("severity", None))
        if sev is None:
            raise ValueError(f"corruption {name!r} needs its severities as {cls.severity_key!r}: [...]")
        sev = [float(s) for s in (sev if isinstance(sev, (list, tuple)) else [sev])]
        if any(s < 0 for s in sev):
            raise ValueError(f"severities of {name!r} must be >= 0, got {sev}")
        reps = opts.get("repeats", 1)
        if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
            raise ValueError(f"repeats of {name!r} (independent draws per image) must be an integer >= 1, got {reps!r}")
        out.append((cls(**opts), sev))
    return out


def _seed_for(seed: int, name: str, severity: float) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(f"{name}:{severity!r}".encode())) % (2 ** 63 - 1)


def evaluate_corruptions(model: nn.Module, task: Task, dataset: Dataset, spec: Dict[str, Dict[str, Any]],
                         device="cpu", seed: int = 0, batch_size: int = 256):
    """Evaluate ``model`` on ``dataset`` under every (corruption, severity) of ``spec``.

    Returns a pandas DataFrame with columns corruption, severity, metric, value (one row per metric of
    :meth:`Task.metrics`, sample means; ``n`` excluded). The model is put in eval mode.
    """
    import pandas as pd

    plan = parse_spec(spec)
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    rows = []
    for corr, severities in plan:
        bounds = corr.bounds(task)
        fixed = None
        if isinstance(corr, Structured):
            idx = int(corr.opts["image_index"])
            if not 0 <= idx < len(dataset):
                raise ValueError(f"structured image_index {idx} outside the dataset (size {len(dataset)})")
            fixed = torch.as_tensor(dataset[idx][0])
        repeats = int(corr.opts.get("repeats", 1))
        for sev in severities:
            gen = torch.Generator().manual_seed(_seed_for(seed, corr.name, sev))
            sums = []
            for _ in range(repeats if sev != 0 else 1):  # severity 0 is the identity: one pass
                for xb, yb in loader:
                    x, y = xb.to(device), yb.to(device)
                    ctx = Context(model, task, y, gen, device, bounds, fixed)
                    xc = corr.apply(x, sev, ctx)
                    with torch.no_grad():
                        sums.append(task.metrics(task.forward(model, xc, y), y))
            agg = aggregate(sums)
            rows.extend({"corruption": corr.name, "severity": sev, "metric": k, "value": v}
                        for k, v in agg.items() if k != "n")
    return pd.DataFrame(rows, columns=["corruption", "severity", "metric", "value"])
