"""The registry of report kinds: ``name -> ReportKind(render, options with defaults, doc)``.

Every entry of a suite's ``reports:`` list is ``{kind: <name>, **options}``; the keys every kind
accepts are :data:`COMMON` (``where``, ``name``, ``title``). Unknown kinds or options are errors that
list the valid ones (:func:`check_reports`), checked when the suite is loaded. The built-in kinds register
themselves when :mod:`bench.report` is imported (it imports :mod:`bench.report.kinds`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from irn_core.registry import Registry, unknown_options

__all__ = ["ReportKind", "REPORTS", "register_report", "get_report", "report_kinds", "check_reports",
           "resolve_entry", "COMMON"]

COMMON: Dict[str, Any] = {
    "where": None,   # {dotted.path | case: value or [values]}: the runs this entry uses
    "name": None,    # file stem of the entry's outputs (default: <position>-<kind>)
    "title": None,   # section title in index.md / index.html
}


@dataclass(frozen=True)
class ReportKind:
    name: str
    render: Callable  # render(ctx: ReportContext, entry: dict) -> None (adds to ctx.section)
    options: Dict[str, Any] = field(default_factory=dict)  # option -> default
    doc: str = ""
    check: Optional[Callable[[Dict[str, Any]], List[str]]] = None  # extra validation of option values
    needs_runs: bool = True  # False: the kind reads something else than the suite's tracked runs (search)


REPORTS: Registry[ReportKind] = Registry("report kind")


def register_report(name: str, options: Mapping[str, Any], doc: str = "", check=None, needs_runs: bool = True):
    """Decorator: ``@register_report("training_curves", {"metrics": None, ...})``."""

    def deco(fn):
        kind = ReportKind(name, fn, dict(options), doc or (fn.__doc__ or "").strip().splitlines()[0], check, needs_runs)
        REPORTS.register(name, kind, options=[*COMMON, *options])
        return fn

    return deco


def report_kinds() -> List[str]:
    return REPORTS.names()


def get_report(name: str) -> ReportKind:
    return REPORTS.get(name)


def _as_dict(entry: Any) -> Dict[str, Any]:
    if hasattr(entry, "model_dump"):
        return entry.model_dump()
    if isinstance(entry, Mapping):
        return dict(entry)
    raise ValueError(f"a report entry must be a mapping with a 'kind', got {type(entry).__name__}")


def _catalogs(specs: Sequence[Any]) -> List[Any]:
    """One metric catalog per distinct task and evaluation of the suite's runs."""
    from ..metrics import metric_catalog
    from ..suite import canonical_json

    seen: Dict[str, Any] = {}
    for sp in specs:
        key = canonical_json([sp.config["task"], sp.config["evaluate"], sp.config["model"]])
        if key not in seen and len(seen) < 8:
            seen[key] = metric_catalog(sp.config)
    return list(seen.values())


def resolve_entry(entry: Any) -> Dict[str, Any]:
    """The entry with every option of its kind filled in with its default. Raises ValueError."""
    e = _as_dict(entry)
    if "kind" not in e:
        raise ValueError(f"missing 'kind'; valid kinds: {', '.join(report_kinds())}")
    kind = get_report(str(e["kind"]))
    valid = {**COMMON, **kind.options}
    bad = sorted(set(e) - set(valid) - {"kind"})
    if bad:
        raise ValueError(unknown_options(f"report kind {kind.name!r}", bad, sorted(valid)))
    out = {"kind": kind.name, **valid, **{k: v for k, v in e.items() if k != "kind"}}
    where = out.get("where")
    if where is not None and not isinstance(where, Mapping):
        raise ValueError(f"where: must be a mapping of dotted.path (or case) to a value or a list of values, "
                         f"got {where!r}")
    if kind.check:
        errs = kind.check(out)
        if errs:
            raise ValueError("; ".join(errs))
    return out


def check_reports(reports: Any, specs: Sequence[Any] = ()) -> List[str]:
    """Validate a suite's ``reports:`` list: 'reports[i]: message' per problem (empty = fine). With the suite's run
    ``specs``, the per-epoch ``metrics`` a ``training_curves`` entry draws are checked against what the runs log."""
    errors: List[str] = []
    names: Dict[str, int] = {}
    catalogs = None
    for i, entry in enumerate(reports or []):
        try:
            e = resolve_entry(entry)
        except ValueError as ex:
            field_ = ".kind" if "report kind" in str(ex) and "unknown report kind" in str(ex) else ""
            errors.append(f"reports[{i}]{field_}: {ex}")
            continue
        if e["kind"] == "training_curves" and specs and isinstance(e.get("metrics"), list):
            if catalogs is None:
                catalogs = _catalogs(specs)
            for m in e["metrics"]:
                why = [c.check(str(m), per_epoch=True) for c in catalogs]
                if all(why):  # logged by no run of the suite
                    errors.append(f"reports[{i}].metrics: {m!r} is not logged per epoch: {why[0]}")
        if e.get("name"):
            if e["name"] in names:
                errors.append(f"reports[{i}].name: {e['name']!r} is already used by reports[{names[e['name']]}]")
            names[e["name"]] = i
    return errors
