"""Helpers shared by the report kinds: cells (runs grouped over seeds), legends, statistics."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import pandas as pd

from ..output import cell_key_columns, hue_colors, hue_value, json_key, key_label

#: one dash pattern per value of the non-hue cell dimensions (8 distinct before they repeat)
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 1, 2))]


@dataclass
class Cell:
    label: str            # legend label (the varying matrix values, seed excluded)
    hue: Any              # value of the hue key
    color: Any
    linestyle: Any
    runs: pd.DataFrame    # its runs (all seeds, any status)

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "finished"]

    @property
    def status_text(self) -> str:
        """'missing' / 'failed: <reason>' / 'running' for a cell without a finished run."""
        st = self.runs["status"].tolist()
        if "failed" in st:
            reason = self.runs[self.runs["status"] == "failed"]["reason"].iloc[0]
            return f"failed: {reason[:80]}"
        if "running" in st:
            return "running"
        return "missing"


def _loads(s: str) -> Any:
    import json

    try:
        return json.loads(s)
    except (TypeError, ValueError):
        return s


def sort_key(v: Any):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, json_key(v))


def make_cells(ctx, runs: pd.DataFrame, hue: Optional[str], exclude: Sequence[str] = ()) -> List[Cell]:
    """Group ``runs`` by their varying matrix values (seeds together), coloured by ``hue``."""
    data = ctx.data
    keys = [k for k in cell_key_columns(data, runs, exclude=tuple(exclude) + ("seed",))]
    if hue and hue not in keys and hue != "case":
        keys = [hue] + keys if hue in runs.columns else keys
    groups: dict = {}
    for _, row in runs.iterrows():
        vals = tuple(json_key(row[k]) if k in row.index else json_key(hue_value(data, row, k)) for k in keys)
        groups.setdefault(vals, []).append(row.name)
    hue_vals = {}
    for vals, idx in groups.items():
        hue_vals[vals] = hue_value(data, runs.loc[idx[0]], hue)
    colors = hue_colors(hue, [hue_vals[v] for v in sorted(groups, key=lambda v: sort_key(hue_vals[v]))])
    others = [k for k in keys if k != hue]
    style_of: dict = {}
    cells = []
    def order(v):  # by θ (the hue), then the other values numerically (points 2 < 4 < 10), not as strings
        return (sort_key(hue_vals[v]),) + tuple(sort_key(_loads(x)) for x in v)

    for vals in sorted(groups, key=order):
        first = runs.loc[groups[vals][0]]
        parts = []
        for k in keys:
            v = first[k] if k in first.index else hue_value(data, first, k)
            parts.append(f"{key_label(k)}={v:g}" if isinstance(v, float) else f"{key_label(k)}={v}")
        other_vals = tuple(vals[keys.index(k)] for k in others)
        ls = style_of.setdefault(other_vals, LINESTYLES[len(style_of) % len(LINESTYLES)])
        cells.append(Cell(" ".join(parts) or "all runs", hue_vals[vals], colors.get(hue_vals[vals]), ls,
                          runs.loc[groups[vals]]))
    return cells


def same_value(a, b) -> bool:
    """Two table entries name the same value: numerically close (0.5 == "0.50"), else equal as text."""
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def mean_sd(values: Sequence[float]):
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else float("nan")
    return m, sd, len(vals)


def t_interval(values: Sequence[float], level: float = 0.95):
    """(mean, half-width of the Student-t confidence interval, n); half-width NaN when n < 2."""
    from scipy import stats

    m, sd, n = mean_sd(values)
    if n < 2:
        return m, float("nan"), n
    return m, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n), n


def verdict(diffs: Sequence[float], level: float = 0.95):
    """Is the mean of paired differences (e.g. θ = 1 minus θ = 0 at the same seed) positive?
    (verdict, mean, lo, hi, n): "holds" when the t-interval lies above 0, "fails" when below 0,
    "inconclusive" when it contains 0 or n < 2 (no interval from one seed). Infinite differences (a measure that is
    ∞ by definition, e.g. an orbit leaving z > 0) have no t-interval: the exact two-sided sign test decides instead
    (holds / fails at p < 1 − level, so only with ≥ 6 seeds all one way at 95 %); lo and hi are NaN then."""
    m, hw, n = t_interval(diffs, level)
    if n >= 2 and any(math.isinf(d) for d in diffs):
        from scipy import stats

        pos, neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        p = float(stats.binomtest(pos, pos + neg).pvalue) if pos + neg else 1.0
        v = "inconclusive" if p >= 1 - level or pos == neg else "holds" if pos > neg else "fails"
        return v, m, float("nan"), float("nan"), n
    if n < 2 or math.isnan(hw):
        return "inconclusive", m, float("nan"), float("nan"), n
    lo, hi = m - hw, m + hw
    return ("holds" if lo > 0 else "fails" if hi < 0 else "inconclusive"), m, lo, hi, n


def pretty_metric(m: str) -> str:
    names = {"train/loss": "training loss", "train/objective": "training objective (loss + penalties)",
             "train/mse": "training MSE", "train/top1": "training top-1", "train/top2": "training top-2",
             "val/loss": "validation loss", "val/top1": "validation top-1", "val/mse": "validation MSE",
             "time/epoch_s": "time per epoch [s]", "lr": "learning rate"}
    if m in names:
        return names[m]
    if m.startswith("train/penalty/"):
        name = m.split("/")[-1]
        return PENALTY_LABELS.get(name, f"penalty: {name}")
    return m


#: what each logged penalty is (journal eq 20 and the papers' other terms); the divergence term is signed
PENALTY_LABELS = {
    "divergence": "divergence term α_div Σ w_t ∇·F (signed: < 0 = contracting)",
    "jacobian": "Jacobian term α_jac Σ w_t ‖∂F/∂y‖²_F (≥ 0)",
    "tv": "total variation α_TV/T Σ ‖γ_t − γ_{t−1}‖² (≥ 0)",
    "frobenius": "weight penalty λ Σ ‖W‖²_F (≥ 0)",
    "convergence_rate": "convergence-rate penalty (≥ 0)",
    "nemon_lipschitz": "NEMON Lipschitz bound (≥ 0)",
}


def split_by_default(ctx, split_by):
    if split_by == "none":
        return None
    if split_by:
        return split_by
    return "case" if ctx.data.suite.cfg.cases and ctx.runs["case"].nunique() > 1 else None
