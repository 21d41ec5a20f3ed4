"""A suite's runs, read from the MLflow tracking store (any URI) into tidy pandas frames.

- ``runs``: one row per expected run of the suite (cell × seed, from the suite file), joined by spec
  hash to the store: ``status`` finished | failed | running | missing, ``reason``, ``run_id``, the
  matrix values (one column per dotted key, plus ``case``), ``theta``, ``seed``, ``cell`` (readable
  cell label without the seed), ``final/<split>/<metric>`` columns.
- ``epochs``: one row per run × epoch (``spec_hash``, ``run_id``, ``epoch``, one column per metric).
- ``corruptions``: one row per run × corruption × severity (``corruption``, ``severity``, one
  column per metric).
- ``notes``: what the report should tell the reader (missing/failed runs, runs of another schema
  version or of changed settings, which are not used).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import pandas as pd

from ..metrics import parse_corruption
from ..suite import SCHEMA_VERSION, Suite
from ..suitefile import get_path
from ..tracking import TAG_HASH, TAG_LABEL, TAG_REASON, TAG_SCHEMA, Tracker

__all__ = ["SuiteData", "load_suite_data", "select", "NO_RUNS"]

NO_RUNS = "no runs"
_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "failed", "RUNNING": "running", "SCHEDULED": "running"}
_RANK = {"finished": 3, "running": 2, "failed": 1}


@dataclass
class SuiteData:
    suite: Suite
    runs: pd.DataFrame
    epochs: pd.DataFrame
    corruptions: pd.DataFrame
    notes: List[str] = field(default_factory=list)
    matrix_keys: List[str] = field(default_factory=list)
    tracker: Optional[Tracker] = None
    experiment_found: bool = True

    def config(self, spec_hash: str) -> Dict[str, Any]:
        return self._configs[spec_hash]

    def artifact(self, run_id: str, path: str, dst: str) -> str:
        import os

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        return self.tracker.download(run_id, path, dst)


def load_suite_data(suite: Suite, tracking_uri: Optional[str] = None, tracker: Optional[Tracker] = None) -> SuiteData:
    tracker = tracker or Tracker(tracking_uri)
    exp_id = tracker.experiment_id(suite.name, create=False)
    store_runs = tracker.cell_runs(exp_id) if exp_id is not None else []
    specs = {sp.hash: sp for sp in suite.specs}
    matrix_keys = (["case"] if suite.cfg.cases else []) + list(suite.cfg.matrix)
    for inc in suite.cfg.include:
        for k in inc:
            if k not in matrix_keys:
                matrix_keys.append(k)
    notes: List[str] = []
    if exp_id is None:
        notes.append(f"The store has no experiment {suite.name!r}: no run of this suite has been tracked yet "
                     f"(run `bench run {suite.path}`).")

    # the best run per spec hash: the latest finished, else the latest running, else the latest failed
    best: Dict[str, Any] = {}
    other_schema, stale = [], []
    for r in sorted(store_runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        tags = r.data.tags
        h = tags.get(TAG_HASH)
        ver = tags.get(TAG_SCHEMA, "")
        if ver != str(SCHEMA_VERSION):
            other_schema.append((tags.get(TAG_LABEL, r.info.run_name), r.info.run_id, ver or "unknown"))
            continue
        if h not in specs:
            stale.append(r)
            continue
        st = _STATUS.get(r.info.status, "failed")
        cur = best.get(h)
        if cur is None or _RANK[st] >= _RANK[_STATUS.get(cur.info.status, "failed")]:
            best[h] = r
    for label, rid, ver in other_schema:
        notes.append(f"Run {label!r} ({rid[:8]}) was logged by schema version {ver}; this irn-bench reads schema "
                     f"version {SCHEMA_VERSION}, so it is not used. Rerun `bench run {suite.path}` to regenerate it.")
    if stale:
        notes.append(f"{len(stale)} run(s) of experiment {suite.name!r} do not match any cell of the suite as it "
                     "is now (its settings changed since they ran) and are not used.")

    rows, epoch_rows, corr_rows = [], [], []
    for sp in suite.specs:
        r = best.get(sp.hash)
        row: Dict[str, Any] = {"spec_hash": sp.hash, "label": sp.label, "cell": sp.cell_label, "seed": sp.seed,
                               "case": sp.overrides.get("case"), "theta": get_path(sp.config, "model.layer.theta", None)}
        for k in matrix_keys:
            row[k] = sp.overrides.get(k) if k in sp.overrides else get_path(sp.config, k, None)
        if r is None:
            row.update(status="missing", reason="", run_id=None)
        else:
            st = _STATUS.get(r.info.status, "failed")
            reason = r.data.tags.get(TAG_REASON, "") if st == "failed" else ""
            row.update(status=st, reason=(reason.strip().splitlines() or [""])[0] if reason else
                       ("no reason recorded" if st == "failed" else ""), run_id=r.info.run_id)
            metrics = r.data.metrics
            for k, v in metrics.items():
                if k.startswith("final/"):
                    row[k] = v
            cells: Dict[tuple, Dict[str, float]] = {}
            for k, v in metrics.items():
                parsed = parse_corruption(k)
                if parsed is not None:
                    name, sev, m = parsed
                    cells.setdefault((name, sev), {})[m] = v
            for (name, sev), vals in sorted(cells.items()):
                corr_rows.append({"spec_hash": sp.hash, "run_id": r.info.run_id, "corruption": name, "severity": sev,
                                  **vals})
            per_epoch: Dict[int, Dict[str, float]] = {}
            for k in sorted(metrics):
                if k.startswith(("final/", "corruption/")):
                    continue
                for m in tracker.metric_history(r.info.run_id, k):
                    per_epoch.setdefault(int(m.step), {})[k] = float(m.value)
            for step in sorted(per_epoch):
                epoch_rows.append({"spec_hash": sp.hash, "run_id": r.info.run_id, "epoch": step, **per_epoch[step]})
        rows.append(row)
    runs = pd.DataFrame(rows)
    epochs = pd.DataFrame(epoch_rows, columns=None if epoch_rows else ["spec_hash", "run_id", "epoch"])
    corruptions = pd.DataFrame(corr_rows, columns=None if corr_rows else ["spec_hash", "run_id", "corruption", "severity"])
    n_missing = int((runs["status"] == "missing").sum()) if len(runs) else 0
    n_failed = runs[runs["status"] == "failed"] if len(runs) else runs
    n_running = int((runs["status"] == "running").sum()) if len(runs) else 0
    if exp_id is not None and n_missing:
        notes.append(f"{n_missing} of {len(runs)} run(s) of the suite are missing from the store (not run yet); "
                     "their cells are marked 'missing'.")
    if n_running:
        notes.append(f"{n_running} run(s) are still running (or were interrupted); they are not used.")
    for _, fr in n_failed.iterrows():
        notes.append(f"Run {fr['label']!r} failed: {fr['reason']}")
    data = SuiteData(suite=suite, runs=runs, epochs=epochs, corruptions=corruptions, notes=notes,
                     matrix_keys=matrix_keys, tracker=tracker, experiment_found=exp_id is not None)
    data._configs = {sp.hash: sp.config for sp in suite.specs}
    return data


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    return a == b or str(a) == str(b)


def select(data: SuiteData, where: Optional[Dict[str, Any]]) -> pd.DataFrame:
    """The rows of ``data.runs`` matching ``where`` ({dotted.path | case: value or [values]})."""
    runs = data.runs
    if not where or runs.empty:
        return runs
    keep = []
    for _, row in runs.iterrows():
        cfg = data.config(row["spec_hash"])
        ok = True
        for k, want in where.items():
            got = row["case"] if k == "case" else get_path(cfg, k, None)
            wants = want if isinstance(want, list) else [want]
            if not any(_equal(got, w) for w in wants):
                ok = False
                break
        keep.append(ok)
    return runs[keep]
