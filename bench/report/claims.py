"""The papers' claims, stated in the suite (``claims:``) and decided by the report with numbers.

Each claim names a metric of the runs — ``final/<split>/<m>``, ``window/<split>/<m>``, ``corruption/<name>/<severity>/<m>``,
a per-epoch ``train/<m>`` / ``val/<m>`` / ``periodic/…`` (the run's last value), or a ``derived/…`` measure that a report
kind computes from each trained model (:data:`DERIVED`; the suite must list that kind under ``reports:``) — and how
to decide it. Differences between cells are **paired by
seed** over the seeds both cells finished; a verdict needs a 95 % Student-t interval, so one seed is always
*inconclusive*:

- ``monotone`` (``over`` a dotted path, ``direction`` increasing | decreasing, optional ``where``): the cells along
  ``over`` are compared neighbour by neighbour and last against first. *holds*: the last − first interval lies on
  the claimed side of 0 and no neighbour interval lies on the other; *fails*: the last − first interval, or some
  neighbour interval, lies on the other side; else *inconclusive*.
- ``greater`` (``a`` and ``b``: where-mappings selecting one cell each; optional ``margin``): a − b − margin, paired
  by seed (Welch's unpaired interval when the cells share fewer than 2 seeds). *holds* above 0, *fails* below 0.
- ``within`` (``where``, ``factor`` > 1, and ``value`` or ``reference`` + ``select``): the 95 % interval of the
  cell's mean inside [ref / factor, ref × factor] *holds*, entirely outside *fails*.
- ``bound`` (``where``, ``value``, ``side`` at_most | at_least): the 95 % interval of the cell's mean entirely on
  the claimed side of ``value`` *holds*, entirely on the other side *fails*.

Every claim carries ``text`` (the claim in words) and ``source`` (where the paper makes it).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import pandas as pd

from .kinds._common import mean_sd, same_value, t_interval, verdict

__all__ = ["check_claims", "evaluate_claims", "CLAIM_KINDS", "DERIVED"]

_COMMON = {"kind", "name", "text", "source", "metric", "scale"}
CLAIM_KINDS = {
    "monotone": _COMMON | {"over", "direction", "where"},
    "greater": _COMMON | {"a", "b", "margin"},
    "within": _COMMON | {"where", "factor", "value", "reference", "select"},
    "bound": _COMMON | {"where", "value", "side"},
}
_REQUIRED = {"monotone": {"over", "metric"}, "greater": {"a", "b", "metric"}, "within": {"where", "factor", "metric"},
             "bound": {"where", "value", "side", "metric"}}

# derived/<…> metrics: per-run measures a report kind computes from the trained model (ReportContext.derive), with
# the kind that computes them. Claims on them are decided after every report entry has rendered.
DERIVED = {
    **{f"derived/rmse/{k}/{p}": "trajectories" for k in ("discrete", "continuous") for p in ("in", "out")},
    **{f"derived/max_error/{k}": "trajectories" for k in ("discrete", "continuous")},
    **{f"derived/invariant_drift/{k}": "trajectories" for k in ("discrete", "continuous")},
    **{f"derived/invariant_drift_median/{k}": "trajectories" for k in ("discrete", "continuous")},
    "derived/max_amplification/train": "spectrum",
    "derived/unstable_fraction/train": "spectrum",
}


def _metric_problem(metric: str) -> Optional[str]:
    parts = metric.split("/") if isinstance(metric, str) else []
    if parts and parts[0] == "derived":
        return None if metric in DERIVED else (f"metric {metric!r}: unknown derived metric; derived metrics: "
                                               f"{', '.join(sorted(DERIVED))}")
    if len(parts) >= 3 and parts[0] in ("final", "window", "periodic"):
        return None
    if len(parts) == 2 and parts[0] in ("train", "val"):
        return None  # a per-epoch metric: the run's last logged value
    if len(parts) == 4 and parts[0] == "corruption":
        try:
            float(parts[2])
            return None
        except ValueError:
            return f"metric {metric!r}: the severity (third part) must be a number"
    return (f"metric {metric!r}: must be final/<split>/<m>, window/<split>/<m>, periodic/<split>/<m>, "
            "corruption/<name>/<severity>/<m>, a per-epoch train/<m> or val/<m> (its last value) or derived/<…>")


def check_claims(claims: Any, specs: Sequence[Any] = (), reports: Optional[Sequence[Any]] = None) -> List[str]:
    """Problems of a suite's ``claims:`` list, as 'claims[i].field: message' (empty = fine). With ``reports`` (the
    suite's ``reports:`` list), a ``derived/`` metric must be computed by one of them."""
    if claims is None:
        return []
    if not isinstance(claims, list):
        return [f"claims: must be a list of claims (kinds: {', '.join(CLAIM_KINDS)})"]
    errors: List[str] = []
    names = set()
    axes = {k for sp in specs for k in sp.overrides}
    for i, c in enumerate(claims):
        where = f"claims[{i}]"
        if not isinstance(c, dict) or c.get("kind") not in CLAIM_KINDS:
            got = c.get("kind") if isinstance(c, dict) else c
            errors.append(f"{where}.kind: must be one of {', '.join(CLAIM_KINDS)} (got {got!r})")
            continue
        kind = c["kind"]
        bad = sorted(set(c) - CLAIM_KINDS[kind])
        if bad:
            errors.append(f"{where}: unknown key(s) {', '.join(bad)} for a {kind} claim; allowed: "
                          f"{', '.join(sorted(CLAIM_KINDS[kind]))}")
        for k in sorted(_REQUIRED[kind] - set(c)):
            errors.append(f"{where}.{k}: required for a {kind} claim")
        if "metric" in c:
            p = _metric_problem(c["metric"])
            if p:
                errors.append(f"{where}.metric: {p}")
            elif c["metric"] in DERIVED and reports is not None:
                need = DERIVED[c["metric"]]
                kinds = {r.get("kind") if isinstance(r, dict) else getattr(r, "kind", None) for r in reports}
                if need not in kinds:
                    errors.append(f"{where}.metric: {c['metric']!r} is computed by the {need} report; add "
                                  f"{{kind: {need}}} to reports:")
        if not isinstance(c.get("text", ""), str) or not isinstance(c.get("source", ""), str):
            errors.append(f"{where}: text and source must be strings")
        if c.get("name") is not None:
            if c["name"] in names:
                errors.append(f"{where}.name: {c['name']!r} is used twice")
            names.add(c["name"])
        scale = c.get("scale", 1.0)
        if not _finite(scale) or scale == 0:
            errors.append(f"{where}.scale: must be a finite non-zero number (got {scale!r})")
        for key in ("where", "a", "b", "select"):
            if key in c and not isinstance(c[key], dict):
                errors.append(f"{where}.{key}: must be a mapping of dotted.path (or case) to a value")
        if kind == "monotone":
            if c.get("direction", "increasing") not in ("increasing", "decreasing"):
                errors.append(f"{where}.direction: must be increasing or decreasing (got {c.get('direction')!r})")
            if specs and "over" in c and c["over"] not in axes:
                errors.append(f"{where}.over: {c['over']!r} is not a matrix key of the suite; matrix keys: "
                              f"{', '.join(sorted(axes)) or 'none'}")
        if kind == "greater" and "margin" in c and not _finite(c["margin"]):
            errors.append(f"{where}.margin: must be a finite number (got {c['margin']!r})")
        if kind == "within":
            if not _finite(c.get("factor")) or not c.get("factor", 0) > 1:
                errors.append(f"{where}.factor: must be a number > 1 (got {c.get('factor')!r})")
            if ("value" in c) == ("reference" in c):
                errors.append(f"{where}: give exactly one of value (a number) or reference (+ select)")
            elif "value" in c and not _finite(c["value"]):
                errors.append(f"{where}.value: must be a finite number (got {c['value']!r})")
            elif "reference" in c:
                from .references import check_reference

                errors.extend(f"{where}.{e}" for e in check_reference(c["reference"]))
        if kind == "bound":
            if c.get("side") not in ("at_most", "at_least"):
                errors.append(f"{where}.side: must be at_most or at_least (got {c.get('side')!r})")
            if "value" in c and not _finite(c["value"]):
                errors.append(f"{where}.value: must be a finite number (got {c['value']!r})")
    return errors


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- evaluation

def _values(data, runs: pd.DataFrame, metric: str, scale: float) -> Dict[int, float]:
    """{seed: value} of ``metric`` over the finished runs in ``runs``."""
    fin = runs[runs["status"] == "finished"]
    out: Dict[int, float] = {}
    parts = metric.split("/")
    if parts[0] == "corruption":
        name, sev, m = parts[1], float(parts[2]), parts[3]
        cor = data.corruptions
        for h, seed in zip(fin["spec_hash"], fin["seed"]):
            if cor.empty or m not in cor.columns:
                continue
            v = cor[(cor["spec_hash"] == h) & (cor["corruption"] == name) & (cor["severity"].sub(sev).abs() < 1e-9)]
            if len(v) and not pd.isna(v[m].iloc[0]):
                out[int(seed)] = float(v[m].iloc[0]) * scale
        return out
    if metric in fin.columns:
        for seed, v in zip(fin["seed"], fin[metric]):
            if not pd.isna(v):
                out[int(seed)] = float(v) * scale
        return out
    if not data.epochs.empty and metric in data.epochs.columns:  # a per-epoch metric: its last value
        ep = data.epochs
        for h, seed in zip(fin["spec_hash"], fin["seed"]):
            v = ep[ep["spec_hash"] == h].sort_values("epoch")[metric].dropna()
            if len(v):
                out[int(seed)] = float(v.iloc[-1]) * scale
    return out


def _diff(a: Dict[int, float], b: Dict[int, float], margin: float = 0.0):
    """(verdict, mean, lo, hi, n, how) of a − b − margin: paired by seed over shared seeds (≥ 2), else Welch."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2 or not (len(a) >= 2 and len(b) >= 2):
        v = verdict([a[s] - b[s] - margin for s in shared])
        return (*v, f"paired over {len(shared)} seed(s)")
    from scipy import stats

    ma, sa, na = mean_sd(list(a.values()))
    mb, sb, nb = mean_sd(list(b.values()))
    se2 = sa ** 2 / na + sb ** 2 / nb
    m = ma - mb - margin
    if se2 == 0:
        return ("holds" if m > 0 else "fails" if m < 0 else "inconclusive"), m, m, m, min(na, nb), "Welch, no spread"
    df = se2 ** 2 / ((sa ** 2 / na) ** 2 / (na - 1) + (sb ** 2 / nb) ** 2 / (nb - 1))
    hw = float(stats.t.ppf(0.975, df)) * math.sqrt(se2)
    lo, hi = m - hw, m + hw
    return ("holds" if lo > 0 else "fails" if hi < 0 else "inconclusive"), m, lo, hi, min(na, nb), \
        f"Welch, unpaired ({na} and {nb} seeds)"


def _num(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _interval(v) -> str:
    _, m, lo, hi, n = v[:5]
    if n == 0:
        return "no shared finished seed"
    if n < 2:
        return f"{_num(m)} (1 seed: no interval)"
    if math.isnan(lo):
        return (f"{_num(m)} (n={n}; infinite differences have no t interval: decided by the two-sided sign test at 5 %, "
                "which needs >= 6 seeds all one way)")
    return f"{_num(m)} [{_num(lo)}, {_num(hi)}] (n={n})"


def _where_text(w: Optional[Dict[str, Any]]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in (w or {}).items()) or "all runs"


def _monotone(data, c) -> Dict[str, Any]:
    from .data import select

    runs = select(data, c.get("where"))
    over = c["over"]
    sign = 1.0 if c.get("direction", "increasing") == "increasing" else -1.0
    groups: Dict[Any, pd.DataFrame] = {}
    for _, row in runs.iterrows():
        val = row["case"] if over == "case" else _get(data, row, over)
        groups.setdefault(val, []).append(row.name)
    keys = sorted(groups, key=lambda v: (0, float(v)) if isinstance(v, (int, float)) else (1, str(v)))
    vals = [_values(data, runs.loc[groups[k]], c["metric"], sign * float(c.get("scale", 1.0))) for k in keys]
    if len(keys) < 2:
        return {"verdict": "inconclusive", "evidence": f"fewer than 2 values of {over} among the runs", "n": 0}
    steps = [_diff(b, a) for a, b in zip(vals[:-1], vals[1:])]
    overall = _diff(vals[-1], vals[0])
    n = overall[4]
    bad_step = any(s[0] == "fails" for s in steps)
    if overall[0] == "fails" or bad_step:
        v = "fails"
    elif overall[0] == "holds":
        v = "holds"
    else:
        v = "inconclusive"
    label = over.split(".")[-1]
    ev = [f"differences paired by seed{'' if sign > 0 else ', sign flipped (positive = decreasing)'}: "
          f"{label} {keys[-1]} − {keys[0]}: {_interval(overall)}"]
    ev += [f"{label} {b} − {a}: {_interval(s)}" for a, b, s in zip(keys[:-1], keys[1:], steps)]
    return {"verdict": v, "evidence": "; ".join(ev), "n": n}


def _get(data, row, path):
    from ..suitefile import get_path

    return get_path(data.config(row["spec_hash"]), path, None)


def _greater(data, c) -> Dict[str, Any]:
    from .data import select

    scale = float(c.get("scale", 1.0))
    a = _values(data, select(data, c["a"]), c["metric"], scale)
    b = _values(data, select(data, c["b"]), c["metric"], scale)
    d = _diff(a, b, float(c.get("margin", 0.0)))
    return {"verdict": d[0], "n": d[4],
            "evidence": f"{_where_text(c['a'])} − {_where_text(c['b'])}"
                        + (f" − {c['margin']:g}" if c.get("margin") else "") + f": {_interval(d)}, {d[5]}"}


def _within(data, c, base) -> Dict[str, Any]:
    from .data import select
    from .references import load_reference

    scale = float(c.get("scale", 1.0))
    if "value" in c:
        ref, what = float(c["value"]), "stated value"
    else:
        table = load_reference(c["reference"], base)
        sel = table
        for k, want in (c.get("select") or {}).items():
            if k not in sel.columns:
                return {"verdict": "inconclusive", "n": 0, "evidence": f"reference {c['reference']!r} has no column {k!r}"}
            sel = sel[sel[k].map(lambda got, want=want: same_value(got, want))]
        if len(sel) != 1:
            return {"verdict": "inconclusive", "n": 0,
                    "evidence": f"select picks {len(sel)} rows of reference {c['reference']!r}, not 1"}
        ref, what = float(sel["value"].iloc[0]), f"reference {c['reference']}"
    f = float(c["factor"])
    band = sorted([ref / f, ref * f])
    return _in_band(list(_values(data, select(data, c["where"]), c["metric"], scale).values()), band,
                    lambda m: f"ours {_num(m)} vs {what} {_num(ref)} (ratio {_num(m / ref if ref else math.nan)}, "
                              f"band ×/÷{f:g}: [{_num(band[0])}, {_num(band[1])}])")


def _bound(data, c) -> Dict[str, Any]:
    from .data import select

    ref, most = float(c["value"]), c["side"] == "at_most"
    band = (-math.inf, ref) if most else (ref, math.inf)
    return _in_band(list(_values(data, select(data, c["where"]), c["metric"], float(c.get("scale", 1.0))).values()),
                    band, lambda m: f"{_where_text(c['where'])}: {_num(m)} vs {'≤' if most else '≥'} {_num(ref)}")


def _in_band(vals: Sequence[float], band: Sequence[float], head: Callable[[float], str]) -> Dict[str, Any]:
    """The verdict of the mean's 95 % t-interval against the closed band [lo, hi] (either end may be infinite):
    holds inside it, fails disjoint from it, else inconclusive; 1 seed: inconclusive (no interval)."""
    m, hw, n = t_interval(vals)
    if n == 0:
        return {"verdict": "inconclusive", "n": 0, "evidence": "no finished run with this metric"}
    if n < 2:
        return {"verdict": "inconclusive", "n": n, "evidence": f"{head(m)}; 1 seed: no interval"}
    if math.isnan(hw):
        inf = sum(math.isinf(v) for v in vals)
        return {"verdict": "inconclusive", "n": n,
                "evidence": f"{head(m)}; infinite in {inf} of {n} seeds: no t interval (n={n})"}
    lo, hi = m - hw, m + hw
    v = "holds" if band[0] <= lo and hi <= band[1] else "fails" if hi < band[0] or lo > band[1] else "inconclusive"
    return {"verdict": v, "n": n, "evidence": f"{head(m)}; 95 % interval [{_num(lo)}, {_num(hi)}] (n={n})"}


def evaluate_claims(claims: Sequence[Dict[str, Any]], data, base=None) -> pd.DataFrame:
    """One row per claim: name, claim (text), kind, metric, verdict, evidence (the numbers that decide it), n seeds,
    source."""
    rows = []
    for i, c in enumerate(claims or []):
        try:
            res = {"monotone": _monotone, "greater": _greater, "bound": _bound}[c["kind"]](data, c) \
                if c["kind"] != "within" else _within(data, c, base)
        except Exception as e:  # noqa: BLE001 - a claim that cannot be evaluated says why; the others go on
            res = {"verdict": "inconclusive", "n": 0, "evidence": f"not evaluated: {type(e).__name__}: {e}"}
        rows.append({"name": c.get("name") or f"claim {i + 1}", "claim": c.get("text", ""), "kind": c["kind"],
                     "metric": c["metric"], "verdict": res["verdict"], "evidence": res["evidence"], "n": res["n"],
                     "source": c.get("source", "")})
    return pd.DataFrame(rows, columns=["name", "claim", "kind", "metric", "verdict", "evidence", "n", "source"])
