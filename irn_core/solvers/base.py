"""Shared bookkeeping of the solver registries: stats record, registry, per-sample norms.

Every solver, nonlinear or linear, returns ``(solution, SolverStats)``. Tensors are batched along
dimension 0; each sample is an independent system, so residuals, convergence flags and the
lowest-residual iterate are tracked per sample.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

__all__ = [
    "SolverStats",
    "SolverError",
    "Registry",
    "batch_norm",
    "BestIterate",
]


class SolverError(RuntimeError):
    """A solver produced NaN/Inf or could not run; the message names the layer when known."""


@dataclass
class SolverStats:
    """What one solve did.

    iterations: solver iterations performed (0 when the initial guess already met tol).
    residual: per-sample residual norm of the returned iterate, shape (batch,).
    converged: per-sample flag ``residual <= tol`` (in the solver's mode), shape (batch,).
    nfe: evaluations of the map (F-evaluations; a JVP/VJP through F counts as one).
    wall_time: seconds spent in the solve.
    init_residual: per-sample residual norm of the initial guess.
    history: max-over-batch residual after each iteration (for convergence-rate analysis).
    """

    solver: str
    iterations: int = 0
    residual: Optional[torch.Tensor] = None
    converged: Optional[torch.Tensor] = None
    nfe: int = 0
    wall_time: float = 0.0
    init_residual: Optional[torch.Tensor] = None
    history: List[float] = field(default_factory=list)
    tol: float = 0.0
    mode: str = "abs"

    @property
    def all_converged(self) -> bool:
        return bool(self.converged is None or bool(self.converged.all()))

    @property
    def max_residual(self) -> float:
        return float(self.residual.max()) if self.residual is not None and self.residual.numel() else 0.0

    def summary(self) -> Dict[str, float]:
        """Scalars for logging."""
        return {
            "iterations": float(self.iterations),
            "residual_max": self.max_residual,
            "converged_frac": float(self.converged.float().mean()) if self.converged is not None else 1.0,
            "nfe": float(self.nfe),
            "wall_time": float(self.wall_time),
        }


def batch_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norm over all non-batch dimensions: shape (batch,)."""
    return t.reshape(t.shape[0], -1).norm(dim=1)


def check_mode(mode: str) -> str:
    if mode not in ("abs", "rel"):
        raise ValueError(f"mode must be 'abs' or 'rel', got {mode!r}")
    return mode


class BestIterate:
    """Keeps, per sample, the iterate with the lowest residual seen so far."""

    def __init__(self, y: torch.Tensor, res: torch.Tensor):
        self.y = y.clone()
        self.res = res.clone()

    def update(self, y: torch.Tensor, res: torch.Tensor) -> None:
        better = res < self.res
        if bool(better.any()):
            mask = better.view(-1, *([1] * (y.dim() - 1)))
            self.y = torch.where(mask, y, self.y)
            self.res = torch.where(better, res, self.res)


class Registry:
    """Name -> solver function. Unknown names and unknown options raise, listing the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._fns: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            if name in self._fns:
                raise ValueError(f"{self.kind} solver {name!r} is already registered")
            self._fns[name] = fn
            fn.solver_name = name  # type: ignore[attr-defined]
            return fn

        return deco

    def names(self) -> List[str]:
        return sorted(self._fns)

    def __contains__(self, name: str) -> bool:
        return name in self._fns

    def get(self, name: str) -> Callable:
        if name not in self._fns:
            raise ValueError(
                f"unknown {self.kind} solver {name!r}; valid: {', '.join(self.names())}"
            )
        return self._fns[name]

    def options(self, name: str) -> List[str]:
        """Keyword options the solver accepts (beyond the positional problem arguments)."""
        sig = inspect.signature(self.get(name))
        return [p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY]

    def check_options(self, name: str, opts: Dict) -> None:
        valid = self.options(name)
        bad = sorted(set(opts) - set(valid))
        if bad:
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, bad))} for {self.kind} solver {name!r}; "
                f"valid: {', '.join(valid)}"
            )

    def resolve(self, spec) -> "SolverSpec":
        """Normalise a name or ``{name: ..., **opts}`` dict into a checked SolverSpec."""
        if isinstance(spec, SolverSpec):
            return spec
        if isinstance(spec, str):
            name, opts = spec, {}
        elif isinstance(spec, dict):
            opts = dict(spec)
            if "name" not in opts:
                raise ValueError(f"{self.kind} solver spec needs a 'name'; valid: {', '.join(self.names())}")
            name = opts.pop("name")
        else:
            raise TypeError(f"{self.kind} solver must be a name or a dict, got {type(spec).__name__}")
        self.get(name)
        self.check_options(name, opts)
        return SolverSpec(self, name, opts)


@dataclass(frozen=True)
class SolverSpec:
    registry: Registry
    name: str
    opts: Dict

    def __call__(self, *args, **overrides):
        opts = {**self.opts, **overrides}
        return self.registry.get(self.name)(*args, **opts)

    def to_dict(self) -> Dict:
        return {"name": self.name, **self.opts}

    def full(self) -> Dict:
        """Name and every option, defaults filled in from the solver's signature (a canonical record)."""
        sig = inspect.signature(self.registry.get(self.name))
        defaults = {p.name: p.default for p in sig.parameters.values()
                    if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}
        return {"name": self.name, **defaults, **self.opts}


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.t0
        return False


def check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise SolverError(f"non-finite values (NaN/Inf) in {what}")


_FORWARD_AD_READY = False


def prepare_forward_ad() -> None:
    """Import torch's forward-mode decompositions once with their deprecation noise silenced.

    The first ``torch.func.jvp`` imports ``torch._decomp.decompositions_for_jvp``, which (torch 2.14)
    scripts its decompositions with the deprecated ``torch.jit.script``: ~18 FutureWarnings that name
    no user code. Only that import is silenced; every other warning is left alone.
    """
    global _FORWARD_AD_READY
    if _FORWARD_AD_READY:
        return
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.script.*deprecated")
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # a torch without that module has nothing to silence
            pass
    _FORWARD_AD_READY = True
