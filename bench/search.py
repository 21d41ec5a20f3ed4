"""``bench search``: Optuna studies over a suite's ``search:`` block, tracked in MLflow.

The only module of bench that talks to Optuna. A suite's ``search:`` block names the parameters to tune
(dotted paths into the run config), the objective(s) (any metric a run logs), the sampler, the pruner
and the budget::

    search:
      params:
        train.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
        regularizers.divergence.weight: {type: float, low: 0.0, high: 0.1}
        train.epochs: {type: int, low: 2, high: 8, step: 2}
        model.layer.solver.name: [anderson, fixed_point]        # a list = categorical choices
      objective: {metric: final/test/mse, direction: minimize}   # or objectives: [{...}, {...}] (Pareto)
      sampler: {name: tpe, seed: 0, n_startup_trials: 4}         # tpe | random | cmaes | qmc | gp | nsgaii | nsgaiii
      pruner: {name: median, n_warmup_steps: 2}                  # median | percentile | hyperband |
                                                                 #   successive_halving | threshold | patient | none
      n_trials: 20                                               # and/or timeout: 600 (seconds, per invocation)
      seed: 0                                                    # training seed of every trial (default: seeds[0])

One study per matrix cell (per case × matrix values), named ``<suite>[<cell label>]`` (``--study`` replaces
the prefix). A trial resolves the cell with its parameters exactly as ``bench run`` resolves a cell
(:func:`bench.suite.resolve_cell`), trains it with :func:`bench.runner.train_and_log` and reads the
objective(s) from the metrics it returns; the pruner is fed the per-epoch metric ``pruner.metric``.

Storage, resumption, cooperation
--------------------------------
* ``--storage``: default the journal file ``results/optuna.journal`` (Optuna's JournalStorage with a
  JournalFileBackend and its lock file: safe for several processes on one machine, and on NFS); any RDB URL
  (``sqlite:///…``, ``postgresql://…``, ``mysql://…``) for a shared database (with Optuna's heartbeat).
* The budget ``n_trials`` is the *total* of the study, not per invocation: rerunning continues the study
  until it holds ``n_trials`` counted trials. Counted: COMPLETE, PRUNED, RUNNING (alive) and FAIL raised by the
  trial itself (a diverging configuration is a result). Not counted: trials whose worker died or was
  interrupted — they are marked FAIL (``irn.outcome`` = stale/interrupted, their MLflow run FAILED/KILLED)
  and a fresh trial replaces them. ``timeout`` is wall-clock seconds per invocation.
* Claiming a trial (drop stale trials, count, ``study.ask()``, draw the parameters) happens under an
  exclusive ``flock`` beside a file storage, so processes on one machine never overshoot the budget and
  never share a trial. A RUNNING trial is stale when its worker's liveness lock (a ``flock`` held for the
  worker's lifetime, released by the kernel even on ``kill -9``) is free. For RDB URLs without a shared
  file system the claim is checked after the fact (a trial numbered past the budget is failed as
  ``surplus`` without running) and dead workers are found by Optuna's heartbeat.
* The sampler is re-created for every trial with seed ``sampler.seed + <trials in the study>``: a study run
  by one process is reproducible, and resumed or parallel workers never replay the same random draws.

MLflow: experiment ``<suite>-search``; one parent run per study (``irn.role=study``), one nested run per
trial (``irn.role=trial``: params, per-epoch metrics, tag ``irn.trial_state`` = COMPLETE/PRUNED/FAIL and
run status FINISHED/KILLED/FAILED); the best trial(s) (Pareto set when multi-objective) carry
``irn.best=true``, and the parent the best values and parameters.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import os
import re
import socket
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .suite import (RUN_SECTIONS, SCHEMA_VERSION, Suite, SuiteError, _pydantic_errors, canonical_json, deep_merge,
                    expand_matrix, get_path, load_suite, resolve_cell, set_path, spec_hash)

__all__ = ["SearchCfg", "check_search", "parse_search", "open_storage", "default_storage", "StudyPlan",
           "plan_studies", "run_worker", "export_best", "render_search_report", "render_suite_search_report",
           "register_cli", "study_summary"]

TAG_STUDY = "irn.study"
TAG_TRIAL = "irn.trial_number"
TAG_TRIAL_STATE = "irn.trial_state"
TAG_BEST = "irn.best"
OUTCOME = "irn.outcome"  # trial user attr: complete | pruned | fail | interrupted | stale | surplus

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
            "gp": "GPSampler", "nsgaii": "NSGAIISampler", "nsgaiii": "NSGAIIISampler"}
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
FIXED_SEED_SAMPLERS = ("qmc",)  # their sequence depends on the seed: never re-seeded per trial
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner",
           "patient": "PatientPruner", "none": "NopPruner"}
HEARTBEAT_INTERVAL, HEARTBEAT_GRACE = 30, 120


# =========================================================================== schema


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
        errors.extend(_pydantic_errors(e, where + "."))
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


def _check_options(cls, opts: Dict[str, Any], what: str, where: str, errors: List[str]) -> bool:
    import inspect

    valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    bad = sorted(set(opts) - set(valid))
    if bad:
        errors.append(f"{where}: unknown option(s) {', '.join(map(repr, bad))} for {what}; valid: {', '.join(valid)}")
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
        msgs = _pydantic_errors(e, "search.")
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
    import optuna

    sampler = None
    s = _named(cfg.sampler, "search.sampler", errors)
    if s is not None:
        name = s.pop("name")
        seed = s.pop("seed", 0)
        if name not in SAMPLERS:
            errors.append(f"search.sampler.name: unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
        elif seed is not None and not isinstance(seed, int):
            errors.append(f"search.sampler.seed: must be an integer or null (got {seed!r})")
        elif multi and name in SINGLE_OBJECTIVE_SAMPLERS:
            errors.append(f"search.sampler.name: {name} handles a single objective; for several use tpe, nsgaii, "
                          "nsgaiii, random or qmc")
        elif _check_options(getattr(optuna.samplers, SAMPLERS[name]), s, f"sampler {name!r}", "search.sampler", errors):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    getattr(optuna.samplers, SAMPLERS[name])(**s)
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
        if name not in PRUNERS:
            errors.append(f"search.pruner.name: unknown pruner {name!r}; valid: {', '.join(PRUNERS)}")
        elif name != "none" and multi:
            errors.append("search.pruner: pruning needs a single objective (Optuna cannot prune multi-objective "
                          "studies); use pruner: none")
        elif pdir not in (None, "minimize", "maximize"):
            errors.append(f"search.pruner.direction: must be minimize or maximize (got {pdir!r})")
        elif name == "patient":
            errors.append("search.pruner.name: patient wraps another pruner; not supported from a suite file")
        elif _check_options(getattr(optuna.pruners, PRUNERS[name]), pr, f"pruner {name!r}", "search.pruner", errors):
            try:
                getattr(optuna.pruners, PRUNERS[name])(**pr)
                pruner = PrunerSpec(name, pr, metric, pdir)
            except Exception as e:  # noqa: BLE001
                errors.append(f"search.pruner: {type(e).__name__}: {e}")
    if cfg.seed is not None and not isinstance(cfg.seed, int):
        errors.append("search.seed: must be an integer")
    if len(errors) > n0 or sampler is None or pruner is None:
        return None
    return SearchSpec(tuple(params), tuple(objectives), sampler, pruner, cfg.n_trials, cfg.timeout,
                      int(cfg.seed if cfg.seed is not None else seeds[0]))


# =========================================================================== metrics a run produces


@dataclass
class MetricCatalog:
    """The metric names one resolved config logs (see bench.runner.train_and_log)."""

    task_metrics: Optional[List[str]]  # None: unknown (not checked)
    has_val: bool
    split: str
    corruptions: Dict[str, List[float]]
    layers: List[str]

    def epoch_names(self) -> List[str]:
        tm = self.task_metrics or ["loss"]
        out = [f"train/{m}" for m in tm] + ["train/objective", "train/steps", "train/time", "lr", "time/epoch_s"]
        if self.has_val:
            out += [f"val/{m}" for m in tm]
        return out

    def check(self, metric: str, per_epoch: bool = False) -> Optional[str]:
        """None if ``metric`` is logged (per epoch when asked), else why not."""
        parts = metric.split("/")
        tm = self.task_metrics
        metric_list = ", ".join(tm) if tm else "?"

        def task_metric(m: str) -> Optional[str]:
            if tm is not None and m not in tm:
                return f"the task's metrics are {metric_list} (got {m!r})"
            return None

        head = parts[0]
        if head == "train" and len(parts) >= 2:
            if parts[1] == "penalty" and len(parts) == 3:
                return None
            if len(parts) == 2 and parts[1] in ("objective", "steps", "time"):
                return None
            return task_metric("/".join(parts[1:])) if len(parts) == 2 else f"unknown training metric {metric!r}"
        if head == "val" and len(parts) == 2:
            if not self.has_val:
                return "this task has no validation set (val/ metrics are not logged); use train/ or final/"
            return task_metric(parts[1])
        if metric in ("lr", "time/epoch_s"):
            return None
        if head == "solver" and len(parts) == 3:
            if parts[1] != "*" and parts[1] not in self.layers:
                return (f"no implicit layer {parts[1]!r} in the model; layers: {', '.join(self.layers) or '(none)'}"
                        " (or * for the sum over layers)")
            if not re.fullmatch(r"(fwd|bwd)_(iters|residual|nfe|unconverged)", parts[2]):
                return f"solver metrics are (fwd|bwd)_(iters|residual|nfe|unconverged), got {parts[2]!r}"
            return None
        if per_epoch:
            return (f"{metric!r} is not a per-epoch metric; the pruner needs one of train/…, val/…, solver/…, lr "
                    f"(e.g. {', '.join(self.epoch_names()[:3])})")
        if head == "final" and len(parts) == 3:
            if parts[1] != self.split:
                return f"the final evaluation is on the {self.split!r} split (evaluate.split): final/{self.split}/…"
            return task_metric(parts[2])
        if head == "corruption" and len(parts) == 4:
            name, sev = parts[1], parts[2]
            if name not in self.corruptions:
                return (f"corruption {name!r} is not evaluated (evaluate.corruptions: "
                        f"{', '.join(self.corruptions) or 'none'})")
            try:
                s = float(sev)
            except ValueError:
                return f"severity {sev!r} is not a number"
            if not any(math.isclose(s, x, rel_tol=1e-9, abs_tol=1e-12) for x in self.corruptions[name]):
                return (f"severity {sev} of {name!r} is not evaluated (severities: "
                        f"{', '.join(f'{x:g}' for x in self.corruptions[name])})")
            return task_metric(parts[3])
        return ("unknown metric; metrics are final/<split>/<m>, val/<m>, train/<m>, corruption/<name>/<severity>/<m>, "
                "solver/<layer>/<fwd|bwd>_<iters|residual|nfe|unconverged>, lr, time/epoch_s")


def _task_metric_names(task) -> Optional[List[str]]:
    from .tasks.base import ClassificationTask

    if isinstance(task, ClassificationTask):
        return ["loss"] + [f"top{k}" for k in task.topk]
    if getattr(task, "kind", "") == "regression":
        return ["loss", "mse"]
    return None


def _task_has_val(task) -> bool:
    if hasattr(task, "has_val"):
        return bool(task.has_val)
    opts = task.options.model_dump()
    if "val_size" in opts:
        return int(opts["val_size"] or 0) > 0
    return task.name not in ("ex1_sine", "ex2_stiff", "ex3_lotka")  # see the table in bench.tasks


def metric_catalog(config: Dict[str, Any]) -> MetricCatalog:
    from irn_core.layers import implicit_layers
    from irn_core.models import build_model

    from .corruptions import parse_spec
    from .registries import build_task

    task = build_task(config["task"])
    corr = {c.name: list(sev) for c, sev in parse_spec(config["evaluate"].get("corruptions") or {})}
    layers = list(implicit_layers(build_model(config["model"])))
    return MetricCatalog(_task_metric_names(task), _task_has_val(task), config["evaluate"].get("split", "test"),
                         corr, layers)


def metric_value(metrics: Dict[str, float], name: str) -> float:
    """Read ``name`` from a run's final metrics. ``solver/*/x`` sums over layers; a solver metric that was
    never logged (θ = 0 layers call no solver) is 0; corruption severities match numerically."""
    if name in metrics:
        return float(metrics[name])
    parts = name.split("/")
    if parts[0] == "solver" and len(parts) == 3:
        vals = [v for k, v in metrics.items() if k.startswith("solver/") and k.split("/")[-1] == parts[2]
                and (parts[1] == "*" or k.split("/")[1] == parts[1])]
        return float(sum(vals)) if vals else 0.0
    if parts[0] == "corruption" and len(parts) == 4:
        for k, v in metrics.items():
            kp = k.split("/")
            if len(kp) == 4 and kp[0] == "corruption" and kp[1] == parts[1] and kp[3] == parts[3]:
                with contextlib.suppress(ValueError):
                    if math.isclose(float(kp[2]), float(parts[2]), rel_tol=1e-9, abs_tol=1e-12):
                        return float(v)
    raise KeyError(f"the run did not log metric {name!r}")


# =========================================================================== cells and their checks


@dataclass(frozen=True)
class Cell:
    label: str  # "" for a suite without matrix/cases
    overrides: Dict[str, Any]  # the matrix values (incl. case) of the cell
    config: Dict[str, Any]  # the unresolved cell config (sections), before search params
    resolved: Dict[str, Any]  # resolved with the suite's own values, with seed


def suite_cells(suite: Suite) -> List[Cell]:
    """The (filtered) cells of a suite, one per distinct matrix cell, in suite order."""
    cfg, raw = suite.cfg, suite.raw
    base = {k: raw[k] for k in RUN_SECTIONS if k in raw}
    by_key = {}
    for sp in suite.specs:
        by_key.setdefault(canonical_json(sp.overrides), sp)
    out = []
    for cell in expand_matrix(cfg):
        sp = by_key.get(canonical_json(cell))
        if sp is None:
            continue
        cc = copy.deepcopy(base)
        if "case" in cell:
            cc = deep_merge(cc, cfg.cases[cell["case"]])
        for k, v in cell.items():
            if k != "case":
                set_path(cc, k, v)
        label = re.sub(r"\s*seed=\S+$", "", sp.label).strip()
        out.append(Cell(label, dict(cell), cc, sp.config))
        del by_key[canonical_json(cell)]
    return out


def trial_config(cell: Cell, values: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """The resolved run config of a trial: the cell with the parameter values set, resolved as bench run does."""
    cc = copy.deepcopy(cell.config)
    for k, v in values.items():
        set_path(cc, k, v)
    resolved, errs = resolve_cell(cc, True)
    if errs:
        raise ValueError("invalid trial config: " + "; ".join(errs))
    return dict(resolved, seed=seed, schema_version=SCHEMA_VERSION)


def check_search(cfg, raw: Dict[str, Any], specs) -> List[str]:
    """All problems of a suite's search block against its cells (called by :func:`bench.suite.load_suite`)."""
    suite = Suite(path="", cfg=cfg, raw=raw, specs=list(specs))
    _, errors = _check_suite_search(suite)
    return errors


def _check_suite_search(suite: Suite) -> Tuple[Optional[SearchSpec], List[str]]:
    errors: List[str] = []
    block = suite.raw.get("search")
    if block is None:
        return None, ["search: the suite has no search block"]
    spec = parse_search(block, suite.cfg.seeds, errors)
    if spec is None:
        return None, errors
    cells = suite_cells(suite)
    matrix_keys = {k for c in cells for k in c.overrides} - {"case"}
    seen = set()

    def add(msg: str) -> None:
        if msg not in seen:
            seen.add(msg)
            errors.append(msg)

    for p in spec.params:
        if p.path in matrix_keys:
            add(f"search.params.{p.path}: also a matrix axis; a study runs per matrix cell, so tune it or sweep it, "
                "not both")
        if p.path.split(".")[0] == "task" and p.path.split(".")[1] == "name":
            add(f"search.params.{p.path}: the task cannot be searched over")
    for cell in cells:
        where = f"matrix cell [{cell.label}]: " if cell.label else ""
        for p in spec.params:
            missing = object()
            if get_path(cell.resolved, p.path, default=missing) is missing:
                parent = p.path.rsplit(".", 1)[0]
                node = get_path(cell.resolved, parent, default=None)
                keys = f"; {parent} has: {', '.join(sorted(node))}" if isinstance(node, dict) and node else ""
                add(f"{where}search.params.{p.path}: not a path of the resolved run config{keys} "
                    f"(set a default value for it in the suite to tune it)")
                continue
            for v in p.probe_values():
                try:
                    trial_config(cell, {p.path: v}, spec.seed)
                except ValueError as e:
                    add(f"{where}search.params.{p.path}: value {v!r} gives an {str(e)[8:]}")
        try:
            cat = metric_catalog(cell.resolved)
        except Exception as e:  # noqa: BLE001 - the suite's own checks report it
            add(f"{where}search: cannot list the run's metrics: {e}")
            continue
        for i, o in enumerate(spec.objectives):
            why = cat.check(o.metric)
            if why:
                key = "search.objective" if len(spec.objectives) == 1 and "objective" in block else f"search.objectives[{i}]"
                add(f"{where}{key}.metric: {o.metric!r}: {why}")
        if spec.pruner.name != "none":
            pm, _ = _pruner_metric(spec, cat)
            why = cat.check(pm, per_epoch=True)
            if why:
                add(f"{where}search.pruner.metric: {pm!r}: {why}")
            elif _pruner_direction(spec, pm) is None:
                add(f"{where}search.pruner.direction: cannot infer the direction of {pm!r}; give minimize or maximize")
    return (spec if not errors else None), errors


def _pruner_metric(spec: SearchSpec, cat: Optional[MetricCatalog] = None) -> Tuple[str, bool]:
    """(metric the pruner sees, whether it was given)."""
    if spec.pruner.metric:
        return spec.pruner.metric, True
    obj = spec.objectives[0].metric
    if obj.split("/")[0] in ("train", "val", "solver") or obj in ("lr", "time/epoch_s"):
        return obj, False
    return ("val/loss" if cat is not None and cat.has_val else "train/loss"), False


def _pruner_direction(spec: SearchSpec, metric: str) -> Optional[str]:
    if spec.pruner.direction:
        return spec.pruner.direction
    if metric == spec.objectives[0].metric:
        return spec.objectives[0].direction
    return infer_direction(metric)


# =========================================================================== storage


def default_storage() -> str:
    from .tracking import results_dir

    return str(results_dir() / "optuna.journal")


def _is_rdb(url: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+]*://", url)) and not url.startswith(("journal:", "file:"))


def _journal_path(url: str) -> str:
    for pre in ("journal:///", "journal://", "journal:", "file://"):
        if url.startswith(pre):
            return ("/" if pre == "journal:///" else "") + url[len(pre):]
    return url


def open_storage(url: str):
    """An Optuna storage: a journal file (path, ``journal:PATH``) or an RDB URL (with heartbeat)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if _is_rdb(url):
        kw: Dict[str, Any] = {}
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE, **kw)
    path = Path(_journal_path(url)).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def storage_lock_paths(url: str) -> Tuple[Optional[str], str]:
    """(claim lock, folder of worker liveness locks) for a storage: beside a file storage; a remote RDB has
    no claim lock (trials past the budget are then failed as surplus)."""
    from .tracking import results_dir

    if url.startswith("sqlite:///"):
        p = Path(url[len("sqlite:///"):]).resolve()
    elif not _is_rdb(url):
        p = Path(_journal_path(url)).expanduser().resolve()
    else:
        return None, str(results_dir() / "locks" / "search-workers")
    return str(p) + ".claim.lock", str(p.parent / ".irn-search-workers")


@contextlib.contextmanager
def _flock(path: Optional[str]):
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _lock_is_free(path: str) -> bool:
    """True when nobody holds the flock on ``path`` (its worker is dead)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


# =========================================================================== plans (picklable)


@dataclass(frozen=True)
class StudyPlan:
    study: str
    cell: Cell
    spec: SearchSpec
    n_trials: Optional[int]
    parent_run_id: str
    experiment_id: str
    suite: str


@dataclass(frozen=True)
class WorkerPlan:
    storage: str
    tracking_uri: str
    studies: Tuple[StudyPlan, ...]
    deadline: Optional[float]  # time.time() after which no new trial starts
    device: str = "cpu"
    threads: Optional[int] = None
    verbose: bool = True


def _counted(t) -> bool:
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return t.state == TrialState.FAIL and t.user_attrs.get(OUTCOME) == "fail"


def count_trials(study) -> int:
    return sum(_counted(t) for t in study.get_trials(deepcopy=False))


def _make_sampler(spec: SearchSpec, n_existing: int):
    import optuna

    seed = spec.sampler.seed
    if seed is not None and spec.sampler.name not in FIXED_SEED_SAMPLERS:
        seed = seed + n_existing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(optuna.samplers, SAMPLERS[spec.sampler.name])(seed=seed, **spec.sampler.options)


def _make_pruner(spec: SearchSpec):
    import optuna

    return getattr(optuna.pruners, PRUNERS[spec.pruner.name])(**spec.pruner.options)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")


def _load_study(storage, plan: StudyPlan):
    import optuna

    return optuna.load_study(study_name=plan.study, storage=storage, sampler=_make_sampler(plan.spec, 0),
                             pruner=_make_pruner(plan.spec))


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


class _Worker:
    """One process's worker: claims trials of each study under the claim lock and runs them."""

    def __init__(self, plan: WorkerPlan):
        from .tracking import Tracker

        _quiet_optuna()
        self.plan = plan
        self.storage = open_storage(plan.storage)
        self.claim_path, wdir = storage_lock_paths(plan.storage)
        self.tracker = Tracker(plan.tracking_uri)
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lock_path = str(Path(wdir) / f"{self.worker_id}.lock")
        Path(wdir).mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._closed_runs: set = set()
        self.ran = 0

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------- stale trials
    def fail_stale(self, study) -> List[int]:
        """Mark trials whose worker is dead FAIL (not counted) and close their MLflow runs."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        from . import tracking as T

        storage = study._storage
        stale = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            wl, host = t.user_attrs.get("irn.worker_lock"), t.user_attrs.get("irn.host")
            if wl and host == self.host and wl != self.lock_path and _lock_is_free(wl):
                try:
                    storage.set_trial_user_attr(t._trial_id, OUTCOME, "stale")
                    storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                    stale.append(t.number)
                except Exception:  # noqa: BLE001 - finished meanwhile by someone else
                    pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fail_stale_trials(study)  # heartbeat (RDB storages); no-op for journal files
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get(OUTCOME) in (None, "stale") and t.number not in self._closed_runs:
                self._closed_runs.add(t.number)
                rid = t.user_attrs.get("irn.mlflow_run_id")
                if rid:
                    with contextlib.suppress(Exception):
                        self.tracker.set_tags(rid, {TAG_TRIAL_STATE: "FAIL", T.TAG_REASON:
                                                    "worker died or was killed; the trial is not counted"})
                        self.tracker.finish(rid, "FAILED")
        return stale

    # ------------------------------------------------------------- loop
    def run(self) -> int:
        try:
            for sp in self.plan.studies:
                if self.plan.deadline is not None and time.time() >= self.plan.deadline:
                    break
                self.run_study(sp)
        finally:
            self.close()
        return self.ran

    def run_study(self, sp: StudyPlan) -> None:
        import optuna

        study = _load_study(self.storage, sp)
        while True:
            if self.plan.deadline is not None and time.time() >= self.plan.deadline:
                return
            with _flock(self.claim_path):
                self.fail_stale(study)
                trials = study.get_trials(deepcopy=False)
                if sp.n_trials is not None and sum(_counted(t) for t in trials) >= sp.n_trials:
                    return
                study.sampler = _make_sampler(sp.spec, len(trials))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trial = study.ask()
                for k, v in (("irn.worker", self.worker_id), ("irn.worker_lock", self.lock_path),
                             ("irn.host", self.host), ("irn.pid", os.getpid())):
                    trial.set_user_attr(k, v)
                values = {p.path: p.suggest(trial) for p in sp.spec.params}
                if sp.n_trials is not None:  # claimed past the budget by a worker without the claim lock
                    before = [t for t in study.get_trials(deepcopy=False)
                              if t.number < trial.number and _counted(t)]
                    if len(before) >= sp.n_trials:
                        trial.set_user_attr(OUTCOME, "surplus")
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        return
            self.run_trial(study, sp, trial, values)

    def run_trial(self, study, sp: StudyPlan, trial, values: Dict[str, Any]) -> None:
        import optuna
        from optuna.trial import TrialState

        from . import tracking as T
        from .runner import train_and_log

        t0 = time.perf_counter()
        spec = sp.spec
        tag_base = {T.TAG_ROLE: "trial", T.PARENT_TAG: sp.parent_run_id, T.TAG_SUITE: sp.suite, TAG_STUDY: sp.study,
                    TAG_TRIAL: str(trial.number), T.TAG_LABEL: (sp.cell.label + " " if sp.cell.label else "")
                    + f"trial={trial.number}", T.TAG_CELL: json.dumps(sp.cell.overrides, sort_keys=True, default=str),
                    "irn.search_params": json.dumps(values, sort_keys=True, default=str)}
        try:
            config = trial_config(sp.cell, values, spec.seed)
            tag_base[T.TAG_HASH] = spec_hash(config)
        except ValueError as e:
            config = None
            reason = str(e)
        run_id = self.tracker.start_run(sp.experiment_id, f"trial {trial.number}" +
                                        (f" [{sp.cell.label}]" if sp.cell.label else ""), tag_base)
        trial.set_user_attr("irn.mlflow_run_id", run_id)
        hb = _Heartbeat(study._storage, trial._trial_id)
        state, vals, reason_txt = None, None, ""
        try:
            if config is None:
                raise ValueError(reason)
            trial.set_user_attr("irn.spec_hash", tag_base[T.TAG_HASH])
            pm = pdir = None
            if spec.pruner.name != "none":
                pm, _ = _pruner_metric(spec, metric_catalog(config))
                pdir = _pruner_direction(spec, pm)
            sign = 1.0 if pdir == spec.objectives[0].direction else -1.0

            def hook(epoch: int, metrics: Dict[str, float]) -> None:
                if pm is None:
                    return
                v = metric_value(metrics, pm)
                if not math.isfinite(v):
                    return
                trial.report(sign * v, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} ({pm} = {v:.6g})")

            metrics = train_and_log(config, self.tracker, run_id, device=self.plan.device, threads=self.plan.threads,
                                    epoch_hook=hook)
            vals = [metric_value(metrics, o.metric) for o in spec.objectives]
            bad = [o.metric for o, v in zip(spec.objectives, vals) if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"non-finite objective {', '.join(bad)}")
            state = TrialState.COMPLETE
        except optuna.TrialPruned as e:
            state, reason_txt = TrialState.PRUNED, str(e)
        except KeyboardInterrupt:
            hb.stop()
            with contextlib.suppress(Exception):
                trial.set_user_attr(OUTCOME, "interrupted")
                study.tell(trial, state=TrialState.FAIL)
                self.tracker.set_tags(run_id, {TAG_TRIAL_STATE: "FAIL", T.TAG_REASON: "interrupted (not counted)"})
                self.tracker.finish(run_id, "KILLED")
            raise
        except Exception as e:  # noqa: BLE001 - a failing trial is a result, never stops the study
            state, reason_txt = TrialState.FAIL, f"{type(e).__name__}: {e}".strip()
            with contextlib.suppress(Exception):
                self.tracker.log_text(run_id, traceback.format_exc(), "failure/traceback.txt")
        finally:
            hb.stop()
        outcome = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail"}[state]
        trial.set_user_attr(OUTCOME, outcome)
        if reason_txt:
            trial.set_user_attr("irn.reason", reason_txt[:1000])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.tell(trial, vals if state == TrialState.COMPLETE else None, state=state)
        tags = {TAG_TRIAL_STATE: state.name, TAG_BEST: "false"}
        if reason_txt:
            tags[T.TAG_REASON if state == TrialState.FAIL else "irn.prune_reason"] = reason_txt[:4000]
        self.tracker.set_tags(run_id, tags)
        if vals is not None:
            self.tracker.log_metrics(run_id, {_mname(f"objective/{o.metric}"): v for o, v in zip(spec.objectives, vals)},
                                     step=0)
        self.tracker.finish(run_id, {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(state, "FAILED"))
        self.ran += 1
        if state == TrialState.COMPLETE:
            with _flock(self.claim_path):
                update_best(study, sp, self.tracker)
        shown = ", ".join(f"{o.metric}={v:.6g}" for o, v in zip(spec.objectives, vals)) if vals else reason_txt
        _say(self.plan.verbose, f"[{sp.study}] trial {trial.number} {state.name.lower()} "
                                f"({time.perf_counter() - t0:.1f}s) {shown}  {json.dumps(values, default=str)}")


class _Heartbeat:
    """Records Optuna heartbeats of a running trial (RDB storages) from a daemon thread."""

    def __init__(self, storage, trial_id: int):
        from optuna.storages._heartbeat import is_heartbeat_enabled

        self._stop = threading.Event()
        self._thread = None
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial_id)
            interval = storage.get_heartbeat_interval()

            def beat():
                while not self._stop.wait(interval):
                    with contextlib.suppress(Exception):
                        storage.record_heartbeat(trial_id)

            self._thread = threading.Thread(target=beat, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def best_trials(study) -> list:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def update_best(study, sp: StudyPlan, tracker) -> None:
    """Move the ``irn.best`` tag to the current best trial(s); best values and parameters on the parent run."""
    best = best_trials(study)
    now = sorted(t.number for t in best)
    prev = study.user_attrs.get("irn.best_trials") or []
    if now == prev:
        return
    runs = {t.number: t.user_attrs.get("irn.mlflow_run_id") for t in study.get_trials(deepcopy=False)}
    for n in set(prev) - set(now):
        if runs.get(n):
            with contextlib.suppress(Exception):
                tracker.set_tags(runs[n], {TAG_BEST: "false"})
    for n in now:
        if runs.get(n):
            tracker.set_tags(runs[n], {TAG_BEST: "true"})
    study.set_user_attr("irn.best_trials", now)
    tags = {"irn.best_trials": ",".join(map(str, now))}
    if len(best) == 1:
        t = best[0]
        tags.update({f"best.{k}": v for k, v in t.params.items()})
        tags["irn.best_run_id"] = runs.get(t.number) or ""
        tracker.log_metrics(sp.parent_run_id, {_mname(f"best/{o.metric}"): v for o, v in zip(sp.spec.objectives, t.values)},
                            step=len(study.get_trials(deepcopy=False)))
    tracker.set_tags(sp.parent_run_id, tags)


def run_worker(plan: WorkerPlan) -> int:
    """Entry point of a worker (in-process, a spawned process or a dask task): trials it ran."""
    w = _Worker(plan)
    return w.run()


def _run_worker_in_process(plan: WorkerPlan) -> int:
    import torch

    if plan.threads:
        torch.set_num_threads(plan.threads)
    return run_worker(plan)


# =========================================================================== driver


def plan_studies(suite: Suite, spec: SearchSpec, storage, tracker, prefix: Optional[str] = None,
                 n_trials: Optional[int] = None, create: bool = True) -> List[StudyPlan]:
    """Create (or load) one study per cell and its MLflow parent run; check they match the search block."""
    import optuna

    from . import tracking as T

    _quiet_optuna()
    exp_id = tracker.experiment_id(f"{suite.name}-search") if create else \
        (tracker.experiment_id(f"{suite.name}-search", create=False) or "")
    plans = []
    claim, _ = storage_lock_paths(storage_url_of(storage))
    for cell in suite_cells(suite):
        name = (prefix or suite.name) + (f"[{cell.label}]" if cell.label else "")
        if not create:
            plans.append(StudyPlan(name, cell, spec, n_trials, "", exp_id, suite.name))
            continue
        with _flock(claim):
            study = optuna.create_study(study_name=name, storage=storage, directions=spec.directions,
                                        load_if_exists=True)
            fp = study.user_attrs.get("irn.search")
            if fp is None:
                study.set_user_attr("irn.search", spec.fingerprint())
                study.set_user_attr("irn.cell", cell.overrides)
                study.set_metric_names([o.metric for o in spec.objectives])
            elif fp != spec.fingerprint() or [d.name.lower() for d in study.directions] != spec.directions:
                raise SuiteError(suite.path, [f"search: study {name!r} in this storage was made for "
                                              f"{fp} — this search block says {spec.fingerprint()}; "
                                              "use another --study name or --storage"])
            parents = tracker.search(exp_id, f"tags.`{T.TAG_ROLE}` = 'study' and tags.`{TAG_STUDY}` = '{name}'")
            if parents:
                parent = sorted(parents, key=lambda r: r.info.start_time)[0].info.run_id
                tracker.set_status(parent, "RUNNING")
            else:
                parent = tracker.start_run(exp_id, name, {T.TAG_ROLE: "study", TAG_STUDY: name, T.TAG_SUITE: suite.name,
                                                          T.TAG_CELL: json.dumps(cell.overrides, sort_keys=True, default=str),
                                                          "irn.storage": storage_url_of(storage),
                                                          "irn.directions": ",".join(spec.directions),
                                                          "irn.objectives": ",".join(o.metric for o in spec.objectives),
                                                          "irn.suite_file": str(Path(suite.path).resolve())})
                tracker.log_params(parent, {f"search.{k}": v for k, v in _search_params_summary(spec).items()})
        plans.append(StudyPlan(name, cell, spec, n_trials, parent, exp_id, suite.name))
    return plans


def _search_params_summary(spec: SearchSpec) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for p in spec.params:
        out[p.path] = (list(p.choices) if p.type == "categorical" else
                       f"{p.type}[{p.low:g}, {p.high:g}]" + (" log" if p.log else "") + (f" step {p.step:g}" if p.step else ""))
    out["sampler"] = spec.sampler.name
    out["pruner"] = spec.pruner.name
    out["n_trials"] = spec.n_trials
    out["seed"] = spec.seed
    return out


def storage_url_of(storage) -> str:
    return getattr(storage, "_irn_url", "") or ""


def open_storage_url(url: str):
    s = open_storage(url)
    s._irn_url = url  # noqa: SLF001 - remembered for locks and tags
    return s


def study_summary(storage, plan: StudyPlan) -> Dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=plan.study, storage=storage)
    except KeyError:
        return {"study": plan.study, "exists": False, "counted": 0, "states": {}, "best": []}
    trials = study.get_trials(deepcopy=False)
    states: Dict[str, int] = {}
    for t in trials:
        k = t.state.name if t.state != TrialState.FAIL or t.user_attrs.get(OUTCOME) == "fail" else \
            f"FAIL ({t.user_attrs.get(OUTCOME) or 'stale'}, not counted)"
        states[k] = states.get(k, 0) + 1
    return {"study": plan.study, "exists": True, "counted": sum(_counted(t) for t in trials), "states": states,
            "best": best_trials(study), "study_obj": study}


# =========================================================================== export


def _safe_case(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "best"


def export_best(suite: Suite, plans: List[StudyPlan], storage, out: Path) -> Tuple[Path, List[str]]:
    """Write a ready-to-run suite with the best parameters (Pareto set: one case per trial); returns
    (path, notes). The export is loaded back and every spec's hash compared with its trial's."""
    import optuna

    notes: List[str] = []
    raw = copy.deepcopy(suite.raw)
    for k in ("search", "matrix", "include", "exclude", "cases"):
        raw.pop(k, None)
    raw["name"] = f"{suite.name}-best"
    seed = plans[0].spec.seed if plans else 0
    raw["seeds"] = [seed]
    kept = [r for r in (suite.raw.get("reports") or []) if not (isinstance(r, dict) and r.get("where"))]
    if kept:
        raw["reports"] = kept
    else:
        raw.pop("reports", None)
    picks: List[Tuple[StudyPlan, Any]] = []
    for p in plans:
        try:
            study = optuna.load_study(study_name=p.study, storage=storage)
        except KeyError:
            notes.append(f"{p.study}: no such study in the storage; skipped")
            continue
        best = best_trials(study)
        if not best:
            notes.append(f"{p.study}: no complete trial yet; skipped")
            continue
        for t in sorted(best, key=lambda t: t.number):
            picks.append((p, t))
    if not picks:
        raise ValueError("no study has a complete trial: nothing to export")
    single = len(picks) == 1 and not suite.cfg.cases and not suite.cfg.matrix and not suite.cfg.include
    expect: Dict[str, Tuple[StudyPlan, Any]] = {}
    header = [f"# Exported by `bench search --export` from suite {suite.name!r} ({suite.path}).",
              f"# Storage: {storage_url_of(storage)}; training seed {seed}."]
    if single:
        p, t = picks[0]
        for k, v in t.params.items():
            set_path(raw, k, v)
        header.append(f"# Best trial {t.number} of study {p.study!r}: " +
                      ", ".join(f"{o.metric}={v:.6g}" for o, v in zip(p.spec.objectives, t.values)))
        expect[""] = (p, t)
    else:
        cases: Dict[str, Dict[str, Any]] = {}
        for p, t in picks:
            case = copy.deepcopy(suite.cfg.cases.get(p.cell.overrides.get("case"), {})) if "case" in p.cell.overrides else {}
            for k, v in p.cell.overrides.items():
                if k != "case":
                    set_path(case, k, v)
            for k, v in t.params.items():
                set_path(case, k, v)
            base = _safe_case(p.cell.label) if p.cell.label else "best"
            name = base if not p.spec.multi else f"{base}-t{t.number}" if p.cell.label else f"pareto-t{t.number}"
            cases[name] = case
            expect[name] = (p, t)
            header.append(f"# case {name}: trial {t.number} of study {p.study!r}: " +
                          ", ".join(f"{o.metric}={v:.6g}" for o, v in zip(p.spec.objectives, t.values)))
        raw["cases"] = cases
    raw["description"] = (f"best parameters from the search of {suite.name}" +
                          (" (Pareto set)" if plans[0].spec.multi else ""))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    order = ["name", "description", "schema_version", "task", "cases", "model", "regularizers", "train", "evaluate",
             "seeds", "device", "reports"]
    ordered = {k: raw[k] for k in order if k in raw}
    ordered.update({k: v for k, v in raw.items() if k not in ordered})
    text = "\n".join(header) + "\n" + yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=120)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    exported = load_suite(tmp)  # SuiteError if the export would not validate
    got = {(re.sub(r"\s*seed=\S+$", "", s.label).strip().removeprefix("case=") or ""): s.hash for s in exported.specs}
    for name, (p, t) in expect.items():
        want = t.user_attrs.get("irn.spec_hash") or spec_hash(trial_config(p.cell, t.params, p.spec.seed))
        if got.get(name) != want:
            notes.append(f"warning: case {name or '(suite)'} resolves to spec {got.get(name)} but trial {t.number} "
                         f"ran {want}; rerunning it may not reproduce the trial")
    os.replace(tmp, out)
    return out, notes


# =========================================================================== figures


def _ensure_backend() -> None:
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")


def render_search_report(study_or_storage: Any, out_dir: Path, study_name: Optional[str] = None,
                         formats: Sequence[str] = ("png", "svg")) -> List[Path]:
    """Optuna's own figures (matplotlib backend) of one study — or of every study of a storage when
    ``study_or_storage`` is a storage (URL/path/object) and ``study_name`` is None — saved as static files.

    Single objective: optimization history, parameter importances, parallel coordinates, intermediate values
    (when the trials reported any). Several objectives: the Pareto front (2 or 3 objectives) and history,
    importances and parallel coordinates per objective. Figures that need more trials are skipped.
    """
    import optuna

    _quiet_optuna()
    _ensure_backend()
    import matplotlib.pyplot as plt

    if isinstance(study_or_storage, optuna.Study):
        studies = [study_or_storage]
    else:
        storage = open_storage(study_or_storage) if isinstance(study_or_storage, (str, Path)) else study_or_storage
        names = [study_name] if study_name else optuna.get_all_study_names(storage)
        studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []

    for study in studies:
        stem = _safe_case(study.study_name)
        for kind, fig in search_figures(study):
            fig.suptitle(study.study_name, fontsize=9)
            fig.tight_layout()
            for fmt in formats:
                p = out_dir / f"{stem}-{kind}.{fmt}"
                fig.savefig(p, dpi=120)
                paths.append(p)
            plt.close(fig)
    return paths


def search_figures(study: Any):
    """Yield ``(kind, matplotlib Figure)`` of Optuna's own plots of one study (see render_search_report)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    _quiet_optuna()
    _ensure_backend()
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    jobs: List[Tuple[str, Callable]] = []
    if len(names) == 1:
        jobs += [("history", lambda: ovm.plot_optimization_history(study, target_name=names[0])),
                 ("importances", lambda: ovm.plot_param_importances(study, target_name=names[0])),
                 ("parallel", lambda: ovm.plot_parallel_coordinate(study, target_name=names[0]))]
        if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            jobs.append(("intermediate", lambda: ovm.plot_intermediate_values(study)))
    else:
        if len(names) in (2, 3):
            jobs.append(("pareto", lambda: ovm.plot_pareto_front(study, target_names=names)))
        for i, n in enumerate(names):
            tgt = (lambda i: (lambda t: t.values[i]))(i)
            key = _safe_case(n)
            jobs += [(f"history-{key}", (lambda tgt, n: lambda: ovm.plot_optimization_history(
                        study, target=tgt, target_name=n))(tgt, n)),
                     (f"importances-{key}", (lambda tgt, n: lambda: ovm.plot_param_importances(
                         study, target=tgt, target_name=n))(tgt, n)),
                     (f"parallel-{key}", (lambda tgt, n: lambda: ovm.plot_parallel_coordinate(
                         study, target=tgt, target_name=n))(tgt, n))]
    for kind, make in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = make()
            except Exception:  # noqa: BLE001 - e.g. importances need 2+ trials with varying params
                plt.close("all")
                continue
        yield kind, np.atleast_1d(ax).flat[0].figure


def suite_studies(suite: Suite, storage: Optional[str] = None, study_prefix: Optional[str] = None) -> List[Any]:
    """The existing Optuna studies of a suite's search, one per matrix cell, in suite order."""
    import optuna

    st = open_storage(storage or default_storage())
    existing = set(optuna.get_all_study_names(st))
    out = []
    for cell in suite_cells(suite):
        name = (study_prefix or suite.name) + (f"[{cell.label}]" if cell.label else "")
        if name in existing:
            out.append(optuna.load_study(study_name=name, storage=st))
    return out


def render_suite_search_report(suite: Suite, out_dir: Path, storage: Optional[str] = None,
                               study_prefix: Optional[str] = None, formats: Sequence[str] = ("png", "svg")) -> List[Path]:
    """The figures of every study of a suite's search (one per matrix cell), saved under ``out_dir``."""
    paths: List[Path] = []
    for study in suite_studies(suite, storage, study_prefix):
        paths += render_search_report(study, out_dir, formats=formats)
    return paths


# =========================================================================== CLI


def register_cli(app) -> None:
    import typer

    from .cli import OnlyOpt, SeedsOpt, SetOpt, UriOpt, _load, _status_table, err, out

    @app.command()
    def search(suite: Path = typer.Argument(..., help="Suite YAML file with a search: block."),
               storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: a journal file path "
                                                     "(default results/optuna.journal; safe for processes on one "
                                                     "machine) or an RDB URL (sqlite:///…, postgresql://…)."),
               study: Optional[str] = typer.Option(None, "--study", help="Study name (prefix, per matrix cell "
                                                   "'<name>[<cell>]'); default: the suite name."),
               n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="Total trials per study "
                                                      "(overrides search.n_trials); a rerun continues up to it."),
               timeout: Optional[float] = typer.Option(None, "--timeout", min=0.001, help="Seconds for this "
                                                       "invocation: no trial starts after it."),
               jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Parallel worker processes on the storage."),
               executor: Optional[str] = typer.Option(None, help="local | process | dask (default: local for "
                                                      "--jobs 1, else process)."),
               scheduler: Optional[str] = typer.Option(None, help="dask scheduler address (default: a LocalCluster)."),
               device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
               set_: List[str] = SetOpt, only: List[str] = OnlyOpt, seeds: Optional[str] = SeedsOpt,
               tracking_uri: Optional[str] = UriOpt,
               export: Optional[Path] = typer.Option(None, "--export", help="Write a ready-to-run suite with the "
                                                     "best parameters (Pareto set: one case per trial)."),
               export_only: bool = typer.Option(False, "--export-only", help="Run no trial; only export/figures."),
               figures: Optional[Path] = typer.Option(None, "--figures", help="Write the studies' figures "
                                                      "(PNG+SVG) into this folder."),
               dry_run: bool = typer.Option(False, "--dry-run", help="Show the studies and their progress; run nothing."),
               quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per trial.")):
        """Tune a suite's search: block with Optuna (one study per matrix cell), tracked in MLflow."""
        from rich.markup import escape

        from .environment import resolve_device
        from .executors import EXECUTORS, gpu_devices, threads_per_worker
        from .tracking import Tracker

        s = _load(suite, set_, only, seeds)
        ex = executor or ("local" if jobs == 1 else "process")
        if ex not in EXECUTORS:
            err.print(f"--executor: unknown executor {ex!r}; valid: {', '.join(EXECUTORS)}")
            raise typer.Exit(2)
        if ex == "local" and jobs > 1:
            err.print("--executor local runs one worker; use --executor process (or dask) with --jobs > 1")
            raise typer.Exit(2)
        spec, errors = _check_suite_search(s)
        total = n_trials if n_trials is not None else (spec.n_trials if spec else None)
        if spec is not None and total is None and timeout is None and spec.timeout is None and not (export_only or dry_run):
            errors.append("search.n_trials: give n_trials and/or timeout (or --n-trials / --timeout)")
        if errors:
            err.print(f"[bold red]error[/]: {suite}: search is not usable ({len(errors)} problem(s)); no trial was run:")
            for line in errors:
                err.print(f"  - {suite}: {line}", markup=False)
            raise typer.Exit(2)
        try:
            dev = resolve_device(device if device != "auto" else s.cfg.device)
        except ValueError as e:
            err.print(f"--device: {e}")
            raise typer.Exit(2)
        url = storage or default_storage()
        st = open_storage_url(url)
        tracker = Tracker(tracking_uri)
        tracker.init_store()
        try:
            plans = plan_studies(s, spec, st, tracker, prefix=study, n_trials=total, create=not dry_run)
        except SuiteError as e:
            for line in e.errors:
                err.print(f"  - {suite}: {line}", markup=False)
            raise typer.Exit(2)
        limit = timeout if timeout is not None else spec.timeout
        err.print(f"{s.name}: {len(plans)} stud{'y' if len(plans) == 1 else 'ies'}, "
                  f"{total if total is not None else 'unbounded'} trial(s) each"
                  + (f", timeout {limit:g}s" if limit else "") + f" — storage {url} — store {tracker.uri}")
        if not (dry_run or export_only):
            deadline = time.time() + limit if limit else None
            devices = gpu_devices(dev) if ex != "local" else [dev]
            n = jobs if ex != "local" else 1
            threads = threads_per_worker(n) if dev == "cpu" and ex != "local" else None
            wplans = [WorkerPlan(url, tracker.uri, tuple(plans), deadline, devices[i % len(devices)], threads,
                                 not quiet) for i in range(n)]
            try:
                _execute_workers(wplans, ex, scheduler)
            except KeyboardInterrupt:
                for p in plans:
                    with contextlib.suppress(Exception):
                        tracker.finish(p.parent_run_id, "KILLED")
                err.print("interrupted: finished trials are kept; rerun the same command to continue the studies")
                raise typer.Exit(130)
        rows, empty = [], 0
        for p in plans:
            sm = study_summary(st, p)
            best = sm["best"]
            if not best:
                empty += 1
            best_txt = "; ".join(f"#{t.number}: " + ", ".join(f"{v:.6g}" for v in t.values) for t in best[:4]) + \
                ("; …" if len(best) > 4 else "")
            params_txt = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in best[0].params.items()) \
                if len(best) == 1 else (f"{len(best)} Pareto trials" if best else "")
            rows.append((escape(p.study), f"{sm['counted']}/{total if total is not None else '-'}",
                         ", ".join(f"{k.lower()} {v}" for k, v in sorted(sm["states"].items())), best_txt, params_txt))
            if p.parent_run_id and not (dry_run or export_only):
                done = total is not None and sm["counted"] >= total
                with contextlib.suppress(Exception):
                    tracker.finish(p.parent_run_id, "FINISHED" if done or total is None else "RUNNING")
        out.print(_status_table(f"{s.name}: search ({', '.join(o.metric + ' ' + o.direction[:3] for o in spec.objectives)})",
                                rows, ["study", "trials", "states", "best", "best params"]))
        code = 0
        if export is not None:
            try:
                path, notes = export_best(s, plans, st, export)
                for nline in notes:
                    err.print(nline, markup=False)
                out.print(f"exported: {path}  (bench run {path})")
            except (ValueError, SuiteError) as e:
                err.print(f"--export: {e}", markup=False)
                code = 1
        if figures is not None:
            paths = []
            for p in plans:
                with contextlib.suppress(KeyError):
                    paths += render_search_report(st, figures, study_name=p.study)
            out.print(f"figures: {len(paths)} file(s) in {figures}")
        if total is not None and empty and not dry_run:
            err.print(f"{empty} stud{'y has' if empty == 1 else 'ies have'} no complete trial")
            code = 1
        raise typer.Exit(code)


def _mname(name: str) -> str:
    """An MLflow-safe metric name (``solver/*/fwd_iters`` -> ``solver/all/fwd_iters``)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name.replace("*", "all"))


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _execute_workers(wplans: List[WorkerPlan], executor: str, scheduler: Optional[str]) -> None:
    if executor == "local":
        run_worker(wplans[0])
        return
    if executor == "process":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=len(wplans), mp_context=mp.get_context("spawn")) as pool:
            for f in [pool.submit(_run_worker_in_process, w) for w in wplans]:
                f.result()
        return
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=len(wplans), threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
        client = Client(cluster)
    try:
        futs = [client.submit(_run_worker_in_process, w, pure=False) for w in wplans]
        client.gather(futs)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
