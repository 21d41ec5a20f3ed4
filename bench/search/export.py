"""``bench search --export``: a ready-to-run suite with the best parameters of each study."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from ..suite import Suite, load_suite, spec_hash
from ..suitefile import set_path
from .cells import trial_config
from .storage import storage_url_of
from .worker import StudyPlan, best_trials

__all__ = ["safe_name", "export_best"]

def safe_name(text: str) -> str:
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
            base = safe_name(p.cell.label) if p.cell.label else "best"
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
    got = {s.cell_label.removeprefix("case="): s.hash for s in exported.specs}
    for name, (p, t) in expect.items():
        want = t.user_attrs.get("irn.spec_hash") or spec_hash(trial_config(p.cell, t.params, p.spec.seed))
        if got.get(name) != want:
            notes.append(f"warning: case {name or '(suite)'} resolves to spec {got.get(name)} but trial {t.number} "
                         f"ran {want}; rerunning it may not reproduce the trial")
    os.replace(tmp, out)
    return out, notes

