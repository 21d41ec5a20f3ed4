"""A search runs one Optuna study per matrix cell of its suite: the cells, a trial's run config, and the checks
of a ``search:`` block against every cell (parameters that exist and validate at their bounds, objectives and the
pruner metric that the run logs)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..metrics import MetricCatalog, metric_catalog
from ..suite import RUN_SECTIONS, SCHEMA_VERSION, Suite, canonical_json, expand_matrix, resolve_cell
from ..suitefile import deep_merge, get_path, set_path
from .spec import SearchSpec, infer_direction, parse_search

__all__ = ["Cell", "suite_cells", "trial_config", "check_search", "check_suite_search", "pruner_metric",
           "pruner_direction"]

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
        out.append(Cell(sp.cell_label, dict(cell), cc, sp.config))
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
    """All problems of a suite's search block against its cells (a check of :func:`bench.validation.load_checked`)."""
    suite = Suite(path="", cfg=cfg, raw=raw, specs=list(specs))
    _, errors = check_suite_search(suite)
    return errors


def check_suite_search(suite: Suite) -> Tuple[Optional[SearchSpec], List[str]]:
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
            pm, _ = pruner_metric(spec, cat)
            why = cat.check(pm, per_epoch=True)
            if why:
                add(f"{where}search.pruner.metric: {pm!r}: {why}")
            elif pruner_direction(spec, pm) is None:
                add(f"{where}search.pruner.direction: cannot infer the direction of {pm!r}; give minimize or maximize")
    return (spec if not errors else None), errors


def pruner_metric(spec: SearchSpec, cat: Optional[MetricCatalog] = None) -> Tuple[str, bool]:
    """(metric the pruner sees, whether it was given)."""
    if spec.pruner.metric:
        return spec.pruner.metric, True
    obj = spec.objectives[0].metric
    if obj.split("/")[0] in ("train", "val", "solver") or obj in ("lr", "time/epoch_s"):
        return obj, False
    return ("val/loss" if cat is not None and cat.has_val else "train/loss"), False


def pruner_direction(spec: SearchSpec, metric: str) -> Optional[str]:
    if spec.pruner.direction:
        return spec.pruner.direction
    if metric == spec.objectives[0].metric:
        return spec.objectives[0].direction
    return infer_direction(metric)

