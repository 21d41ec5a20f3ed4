"""The ``search:`` block of a suite: its schema and :func:`parse_search` (every problem at once, as
``search.field: message``), without any run config yet (see :mod:`bench.search.cells` for the checks against
the suite's cells)."""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from irn_core.registry import Registry, unknown_name

from ..suite import RUN_SECTIONS, canonical_json, pydantic_errors

__all__ = ["SAMPLERS", "PRUNERS", "samplers", "pruners", "SearchCfg", "Param", "Objective", "PrunerSpec", "SamplerSpec", "SearchSpec",
           "infer_direction", "parse_search"]

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
            "gp": "GPSampler", "nsgaii": "NSGAIISampler", "nsgaiii": "NSGAIIISampler"}  # name -> optuna.samplers.X


SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)


FIXED_SEED_SAMPLERS = ("qmc",)  # their sequence depends on the seed: never re-seeded per trial


PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner",
           "patient": "PatientPruner", "none": "NopPruner"}  # name -> optuna.pruners.X


@functools.lru_cache(maxsize=None)
def _optuna_registry(kind: str) -> Registry:
    import optuna  # on first use: a suite without a search block never pays for it

    module, table = (optuna.samplers, SAMPLERS) if kind == "sampler" else (optuna.pruners, PRUNERS)
    reg: Registry = Registry(kind)
    for name, cls in table.items():
        reg.register(name, getattr(module, cls))
    return reg


def samplers() -> Registry:
    """The Optuna samplers by suite name."""
    return _optuna_registry("sampler")


def pruners() -> Registry:
    """The Optuna pruners by suite name."""
    return _optuna_registry("pruner")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamCfg(_Strict):
    type: str = Field(..., description="float | int | categorical")
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[List[Any]] = None


class ObjectiveCfg(_Strict):
    metric: str
    direction: Optional[str] = None  # minimize | maximize (inferred from the metric name when omitted)


class SearchCfg(_Strict):
    params: Dict[str, Any]
    objective: Optional[ObjectiveCfg] = None
    objectives: Optional[List[ObjectiveCfg]] = None
    sampler: Any = "tpe"
    pruner: Any = "none"
    n_trials: Optional[int] = Field(None, ge=1)
    timeout: Optional[float] = Field(None, gt=0)
    seed: Optional[int] = None


@dataclass(frozen=True)
class Param:
    path: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Tuple[Any, ...] = ()

    def probe_values(self) -> List[Any]:
        """The values a config is validated with before any trial runs: the bounds, or every choice."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(self.path, list(self.choices))


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


@dataclass(frozen=True)
class PrunerSpec:
    name: str
    options: Dict[str, Any]
    metric: Optional[str] = None
    direction: Optional[str] = None


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    options: Dict[str, Any]
    seed: Optional[int] = 0


@dataclass(frozen=True)
class SearchSpec:
    params: Tuple[Param, ...]
    objectives: Tuple[Objective, ...]
    sampler: SamplerSpec
    pruner: PrunerSpec
    n_trials: Optional[int]
    timeout: Optional[float]
    seed: int

    @property
    def directions(self) -> List[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def fingerprint(self) -> Dict[str, Any]:
        """What must not change between invocations of one study (objectives, seed)."""
        return {"objectives": [[o.metric, o.direction] for o in self.objectives], "seed": self.seed}


_MIN_WORDS = ("loss", "mse", "mae", "error", "objective", "iters", "residual", "nfe", "unconverged", "time",
              "epoch_s", "steps")


_MAX_WORDS = ("top1", "top2", "top5", "acc", "accuracy", "auc", "r2")


def infer_direction(metric: str) -> Optional[str]:
    last = metric.rsplit("/", 1)[-1].lower()
    if any(w == last or last.endswith("_" + w) or last.startswith(w) for w in _MAX_WORDS):
        return "maximize"
    if any(w == last or last.endswith("_" + w) or last.startswith(w) for w in _MIN_WORDS):
        return "minimize"
    return None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _parse_param(path: str, raw: Any, errors: List[str]) -> Optional[Param]:
    where = f"search.params.{path}"
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping {{type: float|int|categorical, ...}} or a list of choices "
                      f"(got {raw!r})")
        return None
    try:
        p = ParamCfg.model_validate(raw)
    except ValidationError as e:
        errors.extend(pydantic_errors(e, where + "."))
        return None
    n0 = len(errors)
    if p.type not in ("float", "int", "categorical"):
        errors.append(f"{where}.type: must be float, int or categorical (got {p.type!r})")
        return None
    if p.type == "categorical":
        for k in ("low", "high", "step"):
            if getattr(p, k) is not None:
                errors.append(f"{where}.{k}: not an option of a categorical parameter (give choices)")
        if p.log:
            errors.append(f"{where}.log: not an option of a categorical parameter")
        if not p.choices:
            errors.append(f"{where}.choices: a categorical parameter needs at least one choice")
        else:
            bad = [c for c in p.choices if not _scalar(c)]
            if bad:
                errors.append(f"{where}.choices: choices must be null, bool, int, float or str (got {bad[0]!r}); "
                              f"put structured values in the matrix instead")
            if len({canonical_json(c) for c in p.choices}) != len(p.choices):
                errors.append(f"{where}.choices: choices repeat: {p.choices}")
        return None if len(errors) > n0 else Param(path, "categorical", choices=tuple(p.choices))
    if p.choices is not None:
        errors.append(f"{where}.choices: only categorical parameters have choices (this one is {p.type})")
    for k in ("low", "high"):
        if getattr(p, k) is None:
            errors.append(f"{where}.{k}: field required for a {p.type} parameter")
    if len(errors) > n0:
        return None
    low, high = p.low, p.high
    if p.type == "int":
        for k, v in (("low", low), ("high", high), ("step", p.step)):
            if v is not None and float(v) != int(v):
                errors.append(f"{where}.{k}: must be an integer for an int parameter (got {v})")
        if p.step is not None and p.step < 1:
            errors.append(f"{where}.step: must be >= 1 (got {p.step:g})")
    elif p.step is not None and p.step <= 0:
        errors.append(f"{where}.step: must be > 0 (got {p.step:g})")
    if low > high:
        errors.append(f"{where}: low must be <= high (got low={low:g}, high={high:g})")
    if p.log:
        if low <= 0:
            errors.append(f"{where}.low: a log-scale parameter needs low > 0 (got {low:g})")
        if p.step is not None and not (p.type == "int" and p.step == 1):
            errors.append(f"{where}.step: cannot be combined with log: true")
    if len(errors) > n0:
        return None
    if p.type == "int":
        return Param(path, "int", int(low), int(high), p.log, int(p.step) if p.step is not None else None)
    return Param(path, "float", float(low), float(high), p.log, p.step)


def _named(value: Any, where: str, errors: List[str]) -> Optional[Dict[str, Any]]:
    if isinstance(value, str):
        return {"name": value}
    if value is None:
        return {"name": "none"}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    errors.append(f"{where}: expected a name or {{name: ..., options...}} (got {value!r})")
    return None


def _check_options(reg: Registry, name: str, opts: Dict[str, Any], where: str, errors: List[str]) -> bool:
    try:
        reg.check(name, opts)
    except ValueError as e:
        errors.append(f"{where}: {e}")
        return False
    return True


def parse_search(block: Dict[str, Any], seeds: Sequence[int], errors: List[str]) -> Optional[SearchSpec]:
    """Schema-level checks of a ``search:`` block (no configs yet); errors are 'search.field: message'."""
    if not isinstance(block, dict):
        errors.append(f"search: must be a mapping with params, objective(s), … (got {type(block).__name__})")
        return None
    try:
        cfg = SearchCfg.model_validate(block)
    except ValidationError as e:
        msgs = pydantic_errors(e, "search.")
        for i, m in enumerate(msgs):
            if ": unknown key" in m and "allowed:" not in m:
                msgs[i] = m + "; allowed: " + ", ".join(SearchCfg.model_fields)
        errors.extend(msgs)
        return None
    n0 = len(errors)
    if not cfg.params:
        errors.append("search.params: at least one parameter is needed")
    params = []
    for path, raw in cfg.params.items():
        if not isinstance(path, str) or "." not in path or path.split(".")[0] not in RUN_SECTIONS:
            errors.append(f"search.params.{path}: not a run-config path; paths start with "
                          + ", ".join(f"{s}." for s in RUN_SECTIONS))
            continue
        p = _parse_param(path, raw, errors)
        if p is not None:
            params.append(p)
    paths = [p for p in cfg.params if isinstance(p, str)]
    for a in paths:
        for b in paths:
            if a != b and b.startswith(a + "."):
                errors.append(f"search.params.{b}: lies inside another parameter, {a}")
    # objectives
    if (cfg.objective is None) == (cfg.objectives is None):
        errors.append("search.objective: give exactly one of objective: {metric, direction} "
                      "or objectives: [{metric, direction}, ...]")
        objs_cfg: List[Tuple[str, ObjectiveCfg]] = []
    elif cfg.objective is not None:
        objs_cfg = [("search.objective", cfg.objective)]
    else:
        objs_cfg = [(f"search.objectives[{i}]", o) for i, o in enumerate(cfg.objectives)]
        if not objs_cfg:
            errors.append("search.objectives: at least one objective is needed")
    objectives = []
    for where, o in objs_cfg:
        d = o.direction or infer_direction(o.metric)
        if d is None:
            errors.append(f"{where}.direction: cannot infer the direction of {o.metric!r}; give minimize or maximize")
        elif d not in ("minimize", "maximize"):
            errors.append(f"{where}.direction: must be minimize or maximize (got {d!r})")
        else:
            objectives.append(Objective(o.metric, d))
    if len({o.metric for o in objectives}) != len(objectives):
        errors.append("search.objectives: an objective metric repeats")
    multi = len(objs_cfg) > 1
    # sampler
    sampler = None
    s = _named(cfg.sampler, "search.sampler", errors)
    if s is not None:
        name = s.pop("name")
        seed = s.pop("seed", 0)
        if name not in samplers():
            errors.append(f"search.sampler.name: {unknown_name('sampler', name, samplers().names())}")
        elif seed is not None and not isinstance(seed, int):
            errors.append(f"search.sampler.seed: must be an integer or null (got {seed!r})")
        elif multi and name in SINGLE_OBJECTIVE_SAMPLERS:
            errors.append(f"search.sampler.name: {name} handles a single objective; for several use tpe, nsgaii, "
                          "nsgaiii, random or qmc")
        elif _check_options(samplers(), name, s, "search.sampler", errors):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    samplers().get(name)(**s)
                sampler = SamplerSpec(name, s, seed)
            except Exception as e:  # noqa: BLE001 - Optuna's own message names the problem
                errors.append(f"search.sampler: {type(e).__name__}: {e}")
    # pruner
    pruner = None
    pr = _named(cfg.pruner, "search.pruner", errors)
    if pr is not None:
        name = pr.pop("name")
        metric = pr.pop("metric", None)
        pdir = pr.pop("direction", None)
        if name not in pruners():
            errors.append(f"search.pruner.name: {unknown_name('pruner', name, pruners().names())}")
        elif name != "none" and multi:
            errors.append("search.pruner: pruning needs a single objective (Optuna cannot prune multi-objective "
                          "studies); use pruner: none")
        elif pdir not in (None, "minimize", "maximize"):
            errors.append(f"search.pruner.direction: must be minimize or maximize (got {pdir!r})")
        elif name == "patient":
            errors.append("search.pruner.name: patient wraps another pruner; not supported from a suite file")
        elif _check_options(pruners(), name, pr, "search.pruner", errors):
            try:
                pruners().get(name)(**pr)
                pruner = PrunerSpec(name, pr, metric, pdir)
            except Exception as e:  # noqa: BLE001
                errors.append(f"search.pruner: {type(e).__name__}: {e}")
    if cfg.seed is not None and not isinstance(cfg.seed, int):
        errors.append("search.seed: must be an integer")
    if len(errors) > n0 or sampler is None or pruner is None:
        return None
    return SearchSpec(tuple(params), tuple(objectives), sampler, pruner, cfg.n_trials, cfg.timeout,
                      int(cfg.seed if cfg.seed is not None else seeds[0]))

