"""Shared bookkeeping of the solver registries: stats record, registry, per-sample norms.

Every solver, nonlinear or linear, returns ``(solution, SolverStats)``. Tensors are batched along
dimension 0; each sample is an independent system, so residuals, convergence flags and the
lowest-residual iterate are tracked per sample.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..registry import Registry as BaseRegistry

__all__ = [
    "SolverStats",
    "SolverError",
    "Registry",
    "batch_norm",
    "BestIterate",
    "Progress",
    "STOP_REASONS",
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
    stop: what ended the solve — ``"converged"`` (every sample met tol), ``"max_iter"``, ``"stalled"`` (no
    progress for ``stall`` iterations), ``"diverged"`` (a non-finite residual; the rest converged or stalled);
    "" where a solver does not say.
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
    stop: str = ""

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


MODES = ("abs", "rel", "rms")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


class BestIterate:
    """Keeps, per sample, the iterate with the lowest residual seen so far — by reference: the linear solvers hand
    it fresh tensors they never write into afterwards, so it copies nothing (a mixed batch costs one ``where``)."""

    def __init__(self, y: torch.Tensor, res: torch.Tensor):
        self.y = y
        self.res = res.clone()

    def update(self, y: torch.Tensor, res: torch.Tensor) -> None:
        better = res < self.res
        if bool(better.any()):
            mask = better.view(-1, *([1] * (y.dim() - 1)))
            self.y = torch.where(mask, y, self.y)
            self.res = torch.where(better, res, self.res)


STOP_REASONS = ("converged", "max_iter", "stalled", "diverged")

#: a sample makes progress when its residual falls below (1 − STALL_GAIN) × its best so far
STALL_GAIN = 0.01


def to_host(res) -> np.ndarray:
    """A per-sample residual as a float64 NumPy array on the host (a device tensor is read: one synchronisation)."""
    if isinstance(res, np.ndarray):
        return res.astype(np.float64, copy=False)
    return res.detach().cpu().numpy().astype(np.float64, copy=False)


class Progress:
    """The per-iteration bookkeeping every nonlinear solver shares: the per-sample lowest residual and its iterate,
    the max-over-batch residual history, the stop test and its reason, and (``initial`` given) the finiteness of
    the map at the initial guess — for **one** host read of the per-sample
    residual (B numbers) per iteration and no other device work: the test, the best residuals and the history are
    kept on the host (float64 NumPy), where they cost microseconds instead of a dozen device kernels.

    The best iterate is kept *by reference*: the solvers make a new tensor for every iterate and never write into one
    they handed over, so when every sample improves (the usual case) nothing is copied; only a mixed batch costs one
    ``torch.where`` over the state. ``stall`` > 0 stops after that many consecutive iterations in which no
    unconverged sample lowered its best residual by ≥ :data:`STALL_GAIN` (1 %)."""

    def __init__(self, y0: torch.Tensor, res0, tol: float, max_iter: int, stall: int = 0,
                 initial: Optional[Tuple[str, torch.Tensor]] = None):
        r = to_host(res0)
        if initial is not None and not np.isfinite(r).all():  # g(y₀) is looked at only when its residual is not finite
            check_initial(initial[1], initial[0])
        self.dtype, self.device = y0.dtype, y0.device
        self.best_y, self.best, self.init = y0, r.copy(), r
        self.tol, self.max_iter, self.stall = tol, max_iter, stall
        self.it, self.quiet = 0, 0
        self.hist: List[float] = []
        self.stop = ""
        if bool((r <= tol).all()):
            self.stop = "converged"
        elif max_iter <= 0:
            self.stop = "max_iter"

    @property
    def done(self) -> bool:
        return bool(self.stop)

    def update(self, y: torch.Tensor, res) -> bool:
        """Record iterate ``y`` with per-sample residual ``res`` (a device tensor, read here, or a host array);
        True when the solve should stop."""
        r = to_host(res)
        prev = self.best
        better = r < prev  # NaN compares False: a sample that blew up never replaces its best
        if self.stall:
            moving = bool((better & (r < (1.0 - STALL_GAIN) * prev) & (prev > self.tol)).any())
        self.best = np.where(better, r, prev)
        self.hist.append(float(r.max()))
        self.it += 1
        if better.all():
            self.best_y = y
        elif better.any():
            mask = torch.from_numpy(better).to(y.device, non_blocking=True)
            self.best_y = torch.where(mask.view(-1, *([1] * (y.dim() - 1))), y, self.best_y)
        finite = np.isfinite(r)
        met = self.best <= self.tol
        if (met | ~finite).all():
            self.stop = "converged" if met.all() else "diverged"
        elif self.stall:
            self.quiet = 0 if moving else self.quiet + 1
            if self.quiet >= self.stall:
                self.stop = "stalled"
        if not self.stop and self.it >= self.max_iter:
            self.stop = "max_iter"
        return self.done

    def finish(self, name: str, nfe: int, t0: float, mode: str, shape=None,
               at: Optional[Tuple[torch.Tensor, np.ndarray]] = None) -> Tuple[torch.Tensor, SolverStats]:
        """The best iterate per sample (reshaped to ``shape`` when given) and the solve's :class:`SolverStats`; with
        ``at = (y, per-sample residual)``, that iterate instead (a solver that returns its last one)."""
        if at is None:
            y, best, stop = self.best_y, self.best, self.stop or "max_iter"
        else:
            y, best = at[0], np.asarray(at[1], dtype=np.float64)
            stop = "converged" if (best <= self.tol).all() else "max_iter" if self.it >= self.max_iter else "stalled"
        y = y if shape is None else y.reshape(shape)
        res = torch.from_numpy(best).to(device=self.device, dtype=self.dtype)
        stats = SolverStats(solver=name, iterations=self.it, residual=res, converged=res <= self.tol, nfe=nfe,
                            wall_time=time.perf_counter() - t0,
                            init_residual=torch.from_numpy(self.init).to(device=self.device, dtype=self.dtype),
                            history=self.hist, tol=self.tol, mode=mode, stop=stop)
        return y, stats


class Registry(BaseRegistry):
    """Name -> solver function (:class:`irn_core.registry.Registry`); options are the keyword-only parameters.
    ``resolve`` turns a name or ``{name: ..., **opts}`` into a checked :class:`SolverSpec`."""

    def __init__(self, kind: str):
        super().__init__(f"{kind} solver")

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            super(Registry, self).register(name, fn)
            fn.solver_name = name  # type: ignore[attr-defined]
            return fn

        return deco

    def resolve(self, spec) -> "SolverSpec":
        """Normalise a name or ``{name: ..., **opts}`` dict into a checked SolverSpec."""
        if isinstance(spec, SolverSpec):
            return spec
        if isinstance(spec, str):
            name, opts = spec, {}
        elif isinstance(spec, dict):
            opts = dict(spec)
            if "name" not in opts:
                raise ValueError(f"{self.kind} spec needs a 'name'; valid: {', '.join(self.names())}")
            name = opts.pop("name")
        else:
            raise TypeError(f"{self.kind} must be a name or a dict, got {type(spec).__name__}")
        self.check(name, opts)
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
        """Name and every option, defaults filled in from the solver's signature (a canonical record). Options in
        :data:`NEUTRAL_OPTIONS` are recorded only when set to something else than their neutral value, so adding
        such an option leaves every existing spec hash — and the runs cached under it — valid."""
        sig = inspect.signature(self.registry.get(self.name))
        defaults = {p.name: p.default for p in sig.parameters.values()
                    if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}
        full = {"name": self.name, **defaults, **self.opts}
        return {k: v for k, v in full.items() if not (k in NEUTRAL_OPTIONS and v == NEUTRAL_OPTIONS[k])}


#: options added after suites were pinned whose neutral value leaves every solve exactly as it was (see
#: :meth:`SolverSpec.full`); ``stall = 0``: no stagnation stop.
NEUTRAL_OPTIONS = {"stall": 0}


def check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise SolverError(f"non-finite values (NaN/Inf) in {what}")


# ----------------------------------------------------------------- the bookkeeping every nonlinear solver shares


def residual_norm(r: torch.Tensor, gy: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-sample residual of y = g(y), r = g(y) − y: ‖r‖ (``mode="abs"``), ‖r‖ / (‖g(y)‖ + ε) (``"rel"``) or the
    root-mean-square entry ‖r‖ / √n (``"rms"``, n = entries per sample). ``rms`` means the same on any state size:
    an absolute ``abs`` tolerance on a 16,384-entry state is 128× stricter per entry than on one entry and, in
    float32 (ε ≈ 1.2e-7 per entry of size 1), cannot be met below ≈ 1e-7·√n — 1e-6 abs floors at ~6e-6 there."""
    return scale_residual(batch_norm(r), batch_norm(gy) if mode == "rel" else None, r[0].numel(), mode, r.dtype)


def scale_residual(rn, gn, n: int, mode: str, dtype: torch.dtype):
    """:func:`residual_norm` from the norms ‖r‖ and (``rel``) ‖g(y)‖ — device tensors or host arrays alike."""
    if mode == "rel":
        return rn / (gn + torch.finfo(dtype).tiny ** 0.5)
    if mode == "rms":
        return rn / math.sqrt(max(1, n))
    return rn


def check_initial(gy: torch.Tensor, name: str) -> None:
    """g must be finite at the initial guess; otherwise no solver can help (the model is broken). The solvers run
    this test only when the initial residual they read anyway is not finite (``Progress(..., initial=(name, g(y₀)))``):
    a finite residual norm implies finite g(y₀), so the usual solve pays no extra pass over the state."""
    check_finite(gy, f"{name}: the map evaluated at the initial guess")


def check_stall(stall: int) -> int:
    if isinstance(stall, bool) or not isinstance(stall, int) or stall < 0:
        raise ValueError(f"stall must be an integer >= 0 (0: no stagnation stop), got {stall!r}")
    return stall


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
