"""Suite files: strict schema, safe YAML loading, matrix expansion, run specs and their identity.

A suite is a YAML mapping (see suites/*.yaml). Loading it:
1. YAML through a SafeLoader that also rejects duplicate keys (no python tags, ever);
2. ``--set`` overrides, then the ``matrix`` (cartesian product over dotted paths) with ``include``/``exclude``,
   times ``seeds``;
3. each cell is resolved against its task's defaults (``task.default_model()``, ``task.default_train()``)
   and validated: the strict pydantic schema (unknown keys are errors) and the registries (task, model,
   solvers, regularisers, corruptions) — every error of every cell is collected before anything runs;
4. each resolved cell is a frozen :class:`RunSpec` whose identity is the hash of its canonical JSON.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .canonical import canonical_layer, canonical_numbers, value_errors
from .messages import pydantic_errors as _pydantic_errors
from .suitefile import SuiteError, deep_merge, get_path, parse_assignment, read_yaml, set_path

SCHEMA_VERSION = 1
RUN_SECTIONS = ("task", "model", "regularizers", "train", "evaluate")

__all__ = ["SuiteError", "Suite", "RunSpec", "load_suite", "SCHEMA_VERSION", "parse_assignment", "get_path", "set_path"]


# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    # strict: no bool-as-number (``epochs: true`` is not 1) and no string-as-number (``theta: "0.5"``)
    model_config = ConfigDict(extra="forbid", strict=True)


class _Named(BaseModel):
    """A registry entry: ``name`` plus options checked by the registry itself."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str


class ModelCfg(_Named):
    """The resolved model: its layer options are checked by their owner, irn_core.models (see bench.canonical.canonical_layer)."""

    layer: Optional[Dict[str, Any]] = None


class PartialModelCfg(BaseModel):
    """The suite's ``model:`` may leave out ``name`` (and anything else): it is merged over the task's
    default model; the resolved model is checked as a whole."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: Optional[str] = None
    layer: Optional[Dict[str, Any]] = None


class TrainCfg(_Strict):
    """Training settings (see :mod:`bench.train`); optimizer/scheduler options are checked against
    the torch classes they build."""

    epochs: int = Field(10, ge=1)
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["full"], None] = 128
    optimizer: Dict[str, Any] = {"name": "adam", "lr": 1e-3}
    scheduler: Optional[Dict[str, Any]] = None
    max_steps: Optional[int] = Field(None, ge=1, description="cap on optimiser steps (per epoch)")
    grad_clip: Optional[float] = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)


class PeriodicCfg(_Strict):
    """Test-set evaluation during training, every ``every_steps`` optimiser steps; the mean over the evaluations of
    the last ``window_steps`` steps is logged as ``window/<split>/<m>`` (Zhang & Schaeffer: 500 / 5000)."""

    every_steps: int = Field(..., ge=1)
    window_steps: int = Field(..., ge=1)


class EvaluateCfg(_Strict):
    corruptions: Dict[str, Dict[str, Any]] = {}
    periodic: Optional[PeriodicCfg] = None
    split: Literal["test", "train", "val"] = "test"
    batch_size: int = Field(256, ge=1)
    max_samples: Optional[int] = Field(None, ge=1)


class ReportCfg(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str


class SuiteCfg(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)  # a folder, an MLflow experiment
    description: str = ""
    schema_version: int = SCHEMA_VERSION
    task: Optional[_Named] = None
    cases: Dict[str, Dict[str, Any]] = {}
    model: Optional[PartialModelCfg] = None
    regularizers: Dict[str, Dict[str, Any]] = {}
    train: Dict[str, Any] = {}
    evaluate: EvaluateCfg = EvaluateCfg()
    seeds: List[int] = [0]
    device: str = "auto"
    matrix: Dict[str, List[Any]] = {}
    include: List[Dict[str, Any]] = []
    exclude: List[Dict[str, Any]] = []
    reports: List[ReportCfg] = []
    search: Optional[Dict[str, Any]] = None  # checked by bench.search (Optuna studies)
    claims: Optional[List[Any]] = None  # the papers' claims, decided by the report (bench.report.claims)
    provenance: Optional[List[Any]] = None  # where each setting comes from (bench.report.provenance)

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"this irn-bench reads schema_version {SCHEMA_VERSION}; the file says {v}")
        return v

    @field_validator("cases")
    @classmethod
    def _cases(cls, v: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
        for name, part in v.items():
            bad = sorted(set(part or {}) - set(RUN_SECTIONS))
            if bad:
                raise ValueError(f"case {name!r}: unknown section(s) {', '.join(bad)}; allowed: {', '.join(RUN_SECTIONS)}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: List[int]) -> List[int]:
        if not v:
            raise ValueError("at least one seed is needed")
        bad = [s for s in v if not 0 <= s < 2 ** 32]
        if bad:
            raise ValueError(f"seeds must be integers in [0, 2^32), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("matrix")
    @classmethod
    def _matrix(cls, v: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"matrix entry {k!r} has no values")
        return v


def pydantic_errors(e: ValidationError, prefix: str = "") -> List[str]:
    """:func:`bench.messages.pydantic_errors` with the keys allowed in each section of a suite."""
    return _pydantic_errors(e, prefix, _allowed_keys)


_SECTIONS = {(): SuiteCfg, ("evaluate",): EvaluateCfg, ("train",): TrainCfg, ("model",): ModelCfg}


def _allowed_keys(loc) -> List[str]:
    model = _SECTIONS.get(tuple(p for p in loc if isinstance(p, str)))
    return list(model.model_fields) if model else []


# --------------------------------------------------------------------------- run specs


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved cell of a suite: what runs, and its identity."""

    suite: str
    config: Dict[str, Any]  # task, model, regularizers, train, evaluate, seed, schema_version
    label: str  # readable run name, e.g. "theta=0.5 seed=1"
    overrides: Dict[str, Any] = field(default_factory=dict)  # the matrix values of this cell
    cell_label: str = ""  # the label without the seed, e.g. "theta=0.5" ("" for a suite without matrix/cases)

    @property
    def hash(self) -> str:
        return spec_hash(self.config)

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def spec_hash(config: Dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


@dataclass
class Suite:
    path: str
    cfg: SuiteCfg
    raw: Dict[str, Any]
    specs: List[RunSpec]

    @property
    def name(self) -> str:
        return self.cfg.name


def _short_keys(keys: List[str]) -> Dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _fmt_value(v: Any) -> str:
    return canonical_json(v) if isinstance(v, (list, dict)) else str(v)


def _matches(cell: Dict[str, Any], cond: Dict[str, Any]) -> bool:
    return all(k in cell and cell[k] == v for k, v in cond.items())


def expand_matrix(cfg: SuiteCfg) -> List[Dict[str, Any]]:
    """Cartesian product of ``cases`` × ``matrix``, minus ``exclude`` matches, plus ``include`` cells.

    A cell maps dotted paths to values; the case (if any) is under the key ``case``.
    """
    axes = ({"case": list(cfg.cases)} if cfg.cases else {}) | dict(cfg.matrix)
    keys = list(axes)
    cells = [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))] if keys else [{}]
    cells = [c for c in cells if not any(_matches(c, ex) for ex in cfg.exclude)]
    for inc in cfg.include:
        if inc not in cells:
            cells.append(dict(inc))
    return cells


SectionCheck = Callable[..., List[str]]


def load_suite(path: str | Path, sets: List[str] = (), only: List[str] = (), seeds: Optional[List[int]] = None,
               validate_registries: bool = True, section_checks: Optional[Dict[str, SectionCheck]] = None) -> Suite:
    """Read, override, expand, resolve and validate a suite. Raises SuiteError listing every problem.

    ``section_checks`` validates the sections owned by other packages, each returning 'field: message' errors:
    ``"reports"`` is called with the ``reports:`` list, ``"search"`` with (cfg, raw, specs) once the cells are
    valid (see :func:`bench.validation.load_checked`)."""
    section_checks = section_checks or {}
    path = Path(path)
    raw = read_yaml(path)
    errors: List[str] = []
    for s in sets:
        try:
            k, v = parse_assignment(s)
        except ValueError as e:
            errors.append(f"--set: {e}")
            continue
        set_path(raw, k, v)
    if seeds is not None:
        raw["seeds"] = list(seeds)
    try:
        cfg = SuiteCfg.model_validate(raw)
    except ValidationError as e:
        # report these, then keep checking the rest (cells included) with the offending fields dropped,
        # so that one pass lists every problem
        errors += pydantic_errors(e)
        trimmed = {k: v for k, v in raw.items() if k not in {err["loc"][0] for err in e.errors() if err["loc"]}}
        try:
            cfg = SuiteCfg.model_validate({**trimmed, "name": raw.get("name") if isinstance(raw.get("name"), str) else "x"})
        except ValidationError:
            raise SuiteError(str(path), errors) from None
        raw = trimmed

    for st in sets:
        with contextlib.suppress(ValueError):
            k, _ = parse_assignment(st)
            if k in cfg.matrix:
                errors.append(f"--set {k}: the matrix sets this path in every cell ({k}: "
                              f"{', '.join(map(str, cfg.matrix[k]))}), so --set would change nothing; select cells "
                              f"with --only {k}=VALUE")
    filters = []
    for o in only:
        try:
            filters.append(parse_assignment(o))
        except ValueError as e:
            errors.append(f"--only: {e}")

    for where, keys in (("matrix", list(cfg.matrix)), ("include", [k for c in cfg.include for k in c]),
                        ("exclude", [k for c in cfg.exclude for k in c])):
        for k in dict.fromkeys(keys):
            if k == "case" and where != "matrix":
                continue
            if k.split(".")[0] not in RUN_SECTIONS or "." not in k:
                errors.append(f"{where}: {k!r} is not a run-config path; paths start with "
                              + ", ".join(f"{s}." for s in RUN_SECTIONS))
    axes = set(cfg.matrix) | ({"case"} if cfg.cases else set())
    for k in dict.fromkeys(k for c in cfg.exclude for k in c):
        if k not in axes:
            import difflib

            close = difflib.get_close_matches(k, sorted(axes), n=1)
            errors.append(f"exclude: {k!r} is not a matrix key, so the entry removes nothing"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; matrix keys: {', '.join(sorted(axes)) or 'none'}")
    if cfg.task is None and not (cfg.cases and all("task" in c for c in cfg.cases.values())):
        if not any(e.startswith("task") for e in errors):
            errors.append("task: field required (at top level, or in every case)")
        raise SuiteError(str(path), errors)
    base = {k: raw[k] for k in RUN_SECTIONS if k in raw}
    import math
    import os

    cap = int(os.environ.get("IRN_MAX_RUNS", "10000"))
    n_runs = ((len(cfg.cases) or 1) * math.prod(len(v) for v in cfg.matrix.values()) + len(cfg.include)) * len(cfg.seeds)
    if n_runs > cap:
        sizes = " x ".join([f"{len(cfg.cases)} cases"] * bool(cfg.cases) + [f"{len(v)} {k}" for k, v in cfg.matrix.items()]
                           + [f"{len(cfg.seeds)} seeds"])
        raise SuiteError(str(path), errors + [f"matrix: expands to {n_runs} runs ({sizes}), over the cap of {cap}; "
                                              "split the suite, or raise the cap with the environment variable "
                                              "IRN_MAX_RUNS"])
    cells = expand_matrix(cfg)
    if not cells:
        errors.append("exclude: removes every cell of the matrix; nothing would run")
    short = _short_keys(sorted({k for c in cells for k in c}))
    specs: List[RunSpec] = []
    cell_errors: Dict[str, List[str]] = {}  # one message per problem, with the cells it occurs in
    for cell in cells:
        label_cell = " ".join(f"{short[k]}={_fmt_value(v)}" for k, v in cell.items())
        cell_cfg = copy.deepcopy(base)
        if "case" in cell:
            if cell["case"] not in cfg.cases:
                errors.append(f"include: case {cell['case']!r} is not defined; "
                              + (f"cases: {', '.join(cfg.cases)}" if cfg.cases else "the suite defines no cases"))
                continue
            cell_cfg = deep_merge(cell_cfg, cfg.cases[cell["case"]])
        for k, v in cell.items():
            if k != "case":
                set_path(cell_cfg, k, v)
        resolved, errs = resolve_cell(cell_cfg, validate_registries)
        if errs:
            for e in errs:
                cell_errors.setdefault(e, []).append(label_cell)
            continue
        for seed in cfg.seeds:
            conf = dict(resolved, seed=seed, schema_version=SCHEMA_VERSION)
            label = (label_cell + " " if label_cell else "") + f"seed={seed}"
            specs.append(RunSpec(suite=cfg.name, config=conf, label=label, overrides=dict(cell), cell_label=label_cell))
    for e, where in cell_errors.items():
        labelled = [w for w in where if w]
        if not labelled:
            errors.append(e)
        elif len(labelled) == 1:
            errors.append(f"matrix cell [{labelled[0]}]: {e}")
        elif len(labelled) == len(cells):
            errors.append(f"{e} (in every matrix cell: {len(labelled)})")
        else:
            errors.append(f"{e} (in {len(labelled)} matrix cells: " + ", ".join(f"[{w}]" for w in labelled[:3])
                          + (", …" if len(labelled) > 3 else "") + ")")
    if validate_registries and cfg.reports and "reports" in section_checks:
        errors.extend(section_checks["reports"](cfg.reports, specs))
    if cfg.claims is not None and "claims" in section_checks:
        errors.extend(section_checks["claims"](cfg.claims, specs, cfg.reports))
    if cfg.provenance is not None and "provenance" in section_checks:
        errors.extend(section_checks["provenance"](cfg.provenance))
    if cfg.search is not None and not errors and "search" in section_checks:
        errors.extend(section_checks["search"](cfg, raw, specs))
    if errors:
        raise SuiteError(str(path), errors)
    if filters:
        kept = [s for s in specs if all(_only_match(s, k, v) for k, v in filters)]
        if not kept:
            have = []
            for k, _ in filters:
                if k == "case" and not cfg.cases:
                    have.append("the suite defines no cases")
                    continue
                if k != "case" and all(get_path(sp.config, k, _ABSENT) is _ABSENT for sp in specs):
                    have.append(f"{k} is not a field of any run (matrix paths: "
                                + (", ".join(sorted({p for sp in specs for p in sp.overrides})) or "none") + ")")
                    continue
                vals = sorted({json.dumps(sp.overrides.get("case") if k == "case" else get_path(sp.config, k, None),
                                          default=str) for sp in specs})
                have.append(f"{k} takes {', '.join(vals[:20])}" + (" …" if len(vals) > 20 else ""))
            raise SuiteError(str(path), [f"--only {' '.join(f'{k}={v}' for k, v in filters)}: matches no run; "
                                         + "; ".join(have)])
        specs = kept
    return Suite(path=str(path), cfg=cfg, raw=raw, specs=specs)


_ABSENT = object()


def _only_match(spec: RunSpec, key: str, value: Any) -> bool:
    """``--only key=value``: ``case`` matches the cell's case, any other key the resolved config."""
    got = spec.overrides.get("case", _ABSENT) if key == "case" else get_path(spec.config, key, default=_ABSENT)
    if got is _ABSENT:
        return False
    if isinstance(got, (int, float)) and isinstance(value, (int, float)) and not isinstance(got, bool):
        return float(got) == float(value)
    return got == value or str(got) == str(value)


def resolve_cell(cell_cfg: Dict[str, Any], validate_registries: bool = True) -> Tuple[Dict[str, Any], Optional[List[str]]]:
    """Merge a cell with its task's defaults and validate it. Returns (resolved config, errors or None)."""
    from . import registries

    errors: List[str] = []
    try:
        task_cfg = _Named.model_validate(cell_cfg.get("task", {}))
    except ValidationError as e:
        return {}, [m for m in pydantic_errors(e, "task.")]
    task_cfg = dict(cell_cfg["task"])
    defaults_model, defaults_train, defaults_reg = {}, {}, {}
    try:
        task = registries.build_task(task_cfg)
        task_cfg = task.config()  # options resolved with their defaults: part of the run's identity
        defaults_model = task.default_model() or {}
        defaults_train = {k: v for k, v in (task.default_train() or {}).items() if v is not None}
        defaults_reg = task.default_regularizers() or {}
        split = (cell_cfg.get("evaluate") or {}).get("split")
        if split == "val" and not task.has_val:
            errors.append(f"evaluate.split: task {task_cfg.get('name')!r} has no validation set; use test or train")
    except Exception as e:  # noqa: BLE001 - registry errors carry the allowed values
        errors.append(f"task: {e}")
    model_cfg = dict(cell_cfg.get("model") or {})
    if defaults_model and (not model_cfg.get("name") or model_cfg.get("name") == defaults_model.get("name")):
        model_cfg = deep_merge(defaults_model, model_cfg)
    user_train = cell_cfg.get("train") or {}
    # another optimiser or scheduler than the task's replaces it: the default's options belong to the default
    defaults_train = {k: v for k, v in defaults_train.items()
                      if not (k in ("optimizer", "scheduler") and isinstance(v, dict) and isinstance(user_train.get(k), dict)
                              and user_train[k].get("name", v.get("name")) != v.get("name"))}
    train_cfg = deep_merge(defaults_train, user_train)
    resolved = {
        "task": task_cfg,
        "model": model_cfg,
        "regularizers": deep_merge(defaults_reg, cell_cfg.get("regularizers") or {}),
        "train": train_cfg,
        "evaluate": copy.deepcopy(cell_cfg.get("evaluate") or {}),
    }
    canonical_layer(resolved["model"])
    canonical_numbers(resolved)
    errors.extend(value_errors(resolved))
    # strict sections; the registry checks of every section that passed run too (no error hides another)
    bad = {k for k in ("model", "train", "evaluate") if any(e.startswith(f"{k}.") for e in errors)}
    task_failed = any(e.startswith("task") for e in errors)
    for key, model in (("model", ModelCfg), ("train", TrainCfg), ("evaluate", EvaluateCfg)):
        if key == "model" and task_failed and "name" not in resolved["model"]:
            continue  # the task's default model is unknown while the task is wrong: no cascading "name required"
        try:
            validated = model.model_validate(resolved[key])
            if key in ("train", "evaluate"):
                resolved[key] = validated.model_dump()
                if key == "evaluate" and resolved[key].get("periodic") is None:
                    resolved[key].pop("periodic")  # absent, not null: runs from before the option keep their hash
        except ValidationError as e:
            errors.extend(pydantic_errors(e, f"{key}."))
            bad.add(key)
    if not validate_registries or any(e.startswith("task") for e in errors):
        return resolved, errors or None
    if "train" not in bad:
        errors.extend(registries.check_train(resolved["train"]))
    if "model" in resolved and isinstance(resolved["model"], dict) and resolved["model"].get("name"):
        errors.extend(registries.check_model(resolved["model"], build="model" not in bad))
    if not any(e.startswith("regularizers") for e in errors):
        errors.extend(registries.check_regularizers(resolved["regularizers"]))
    if "evaluate" not in bad:
        errors.extend(registries.check_corruptions(resolved["evaluate"].get("corruptions", {})))
    return resolved, errors or None
