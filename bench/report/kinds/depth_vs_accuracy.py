"""depth_vs_accuracy: Zhang & Schaeffer Tables 5.3/5.4 layout — rows = depth per variant (ResNet-D, -S),
columns = clean test accuracy and accuracy under each corruption level, per dataset (task)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ...suitefile import get_path
from ..output import hue_colors, key_label, mean_std
from ..references import check_reference, suite_reference
from ..registry import register_report
from ._common import mean_sd, sort_key

_DEPTH_KEYS = ("model.n", "model.depth", "model.steps", "model.blocks")


def _paper_depth(cfg):
    """Depth as the paper counts it (distinct filters) for resnet_ds: D 6n, S 3n + 2."""
    m = cfg.get("model", {})
    if m.get("name") != "resnet_ds" or "n" not in m:
        return None
    n = int(m["n"])
    return 6 * n if m.get("variant", "D") == "D" else 3 * n + 2


def _check(e):
    errs = [] if isinstance(e["metric"], str) else [f"metric: must be a metric name such as top1 (got {e['metric']!r})"]
    if e.get("clean") not in ("final", "window"):
        errs.append(f"clean: must be final or window (got {e.get('clean')!r})")
    return errs + check_reference(e.get("reference")) + [f"paper_claim: {x}" for x in check_reference(e.get("paper_claim"))]


def depth_claim_in_table(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's claim "accuracy grows with depth" read in its own table (task, model.variant, depth, condition,
    value): per (task, variant, condition) the values by depth and whether they rise at every step. The paper gives
    one number per cell (no seeds), so this is a reading of its table, not a statistical test."""
    rows = []
    for (task, variant, cond), g in table.groupby(["task", "model.variant", "condition"], sort=False):
        g = g.sort_values("depth")
        vals = [float(v) for v in g["value"]]
        drops = [f"{int(a)}→{int(b)}" for a, b, x, y in zip(g["depth"][:-1], g["depth"][1:], vals[:-1], vals[1:]) if y < x]
        rows.append({"task": task, "variant": variant, "condition": cond,
                     "depths": " / ".join(str(int(d)) for d in g["depth"]), "accuracy (%)": " → ".join(f"{v:.2f}" for v in vals),
                     "grows with depth": "yes" if not drops else "no (drops " + ", ".join(drops) + ")"})
    return pd.DataFrame(rows)


def _paper_claim(ctx, e) -> None:
    from ..references import load_reference

    ref = load_reference(e["paper_claim"])
    need = {"task", "model.variant", "depth", "condition", "value"}
    if not need <= set(ref.columns):
        ctx.note(f"paper_claim {e['paper_claim']!r} lacks column(s) {', '.join(sorted(need - set(ref.columns)))}.")
        return
    t = depth_claim_in_table(ref)
    n_no = int((t["grows with depth"] != "yes").sum())
    ctx.table(t, None, "paper-claim", f"The paper's depth claim read in its own {e['paper_claim']}: accuracy grows with "
              f"depth in {len(t) - n_no} of {len(t)} (task, variant, condition) rows and not in {n_no} (one number per "
              "cell in the paper: no seeds, no interval).")


def _ref_value(ref, task, variant, depth, metric) -> float:
    if ref is None or depth is None:
        return float("nan")
    r = ref[(ref["task"].astype(str) == str(task)) & (ref["model.variant"].astype(str) == str(variant))
            & (ref["depth"] == depth) & (ref["metric"] == metric)]
    return float(r["value"].iloc[0]) if len(r) else float("nan")


@register_report("depth_vs_accuracy",
                 {"rows": None, "cols": "model.variant", "metric": "top1", "corruptions": None, "scale": 100.0,
                  "decimals": 2, "reference": None, "clean": "final", "paper_claim": None},
                 doc="Table 5.3/5.4 layout: per variant (cols) and depth (rows), clean accuracy and accuracy under "
                     "each corruption severity (mean ± std over seeds), per task; plus accuracy vs depth. "
                     "reference: paper-table-5-3 (or a CSV with task, model.variant, depth, metric, value) puts the "
                     "paper's clean accuracy and the difference beside ours. clean: final (the last step's model) | "
                     "window (the mean of the periodic test evaluations over the last window, the paper's metric; "
                     "needs evaluate.periodic). paper_claim: paper-table-5-4 checks the paper's own claim "
                     "'accuracy grows with depth' in every (task, variant, condition) row of that table",
                 check=_check)
def render(ctx, e):
    data = ctx.data
    runs = ctx.runs
    rows_key = e["rows"] or next((k for k in _DEPTH_KEYS if k in data.matrix_keys), None)
    if rows_key is None:
        ctx.note(f"No depth key among the matrix keys ({', '.join(data.matrix_keys) or 'none'}); set rows: to one.")
        return
    cols_key = e["cols"]
    scale, dec, m = float(e["scale"]), int(e["decimals"]), e["metric"]

    def val(h, key):
        return get_path(data.config(h), key, None)

    runs = runs.assign(_row=[val(h, rows_key) for h in runs["spec_hash"]],
                       _col=[val(h, cols_key) for h in runs["spec_hash"]],
                       _task=[val(h, "task.name") for h in runs["spec_hash"]])
    corr = data.corruptions
    corr = corr[corr["spec_hash"].isin(runs["spec_hash"])] if len(corr) else corr
    levels = []
    if len(corr):
        for (c, s) in sorted({(c, s) for c, s in zip(corr["corruption"], corr["severity"])}):
            if (e["corruptions"] is None or c in e["corruptions"]) and s != 0:
                levels.append((c, s))
    tasks = list(dict.fromkeys(runs["_task"]))
    ref = suite_reference(ctx, e["reference"], {"task", "model.variant", "depth", "metric", "value"})
    disp, num = [], []
    for colv in sorted(dict.fromkeys(runs["_col"]), key=sort_key):
        for rowv in sorted(dict.fromkeys(runs.loc[runs["_col"] == colv, "_row"]), key=sort_key):
            cell = runs[(runs["_col"] == colv) & (runs["_row"] == rowv)]
            drow = {key_label(cols_key): str(colv), key_label(rows_key): str(rowv)}
            pd_ = _paper_depth(data.config(cell["spec_hash"].iloc[0]))
            if pd_ is not None:
                drow["depth"] = str(pd_)
            for t in tasks:
                tc = cell[cell["_task"] == t]
                fin = tc[tc["status"] == "finished"]
                prefix = f"{t} " if len(tasks) > 1 else ""
                status = "finished" if len(fin) else _status(tc)
                split = get_path(data.config(tc["spec_hash"].iloc[0]), "evaluate.split", "test") if len(tc) else "test"
                vals = [v * scale for v in fin.get(f"{e['clean']}/{split}/{m}", pd.Series(dtype=float)).dropna()]
                drow[f"{prefix}clean"] = mean_std(vals, dec) if len(fin) else status
                mean, sd, n = mean_sd(vals)
                extra = {}
                if ref is not None:
                    variant = get_path(data.config(cell["spec_hash"].iloc[0]), "model.variant", colv)
                    rv = _ref_value(ref, t, variant, pd_, m)
                    drow[f"{prefix}clean paper"] = "—" if math.isnan(rv) else f"{rv:.{dec}f}"
                    drow[f"{prefix}clean Δ"] = "—" if math.isnan(rv) or math.isnan(mean) else f"{mean - rv:+.{dec}f}"
                    extra = {"reference": rv, "diff": mean - rv}
                num.append({cols_key: colv, rows_key: rowv, "depth": pd_, "task": t, "condition": "clean",
                            "corruption": "", "severity": 0.0, "metric": m, "mean": mean, "std": sd, "n_seeds": n,
                            "status": status, **extra})
                for c, s in levels:
                    cc = corr[(corr["spec_hash"].isin(fin["spec_hash"])) & (corr["corruption"] == c)
                              & np.isclose(corr["severity"], s)]
                    vals = (cc[m].dropna() * scale).tolist() if m in cc else []
                    drow[f"{prefix}{c} {s:g}"] = mean_std(vals, dec) if len(fin) else status
                    mean, sd, n = mean_sd(vals)
                    num.append({cols_key: colv, rows_key: rowv, "depth": pd_, "task": t, "condition": f"{c} {s:g}",
                                "corruption": c, "severity": s, "metric": m, "mean": mean, "std": sd, "n_seeds": n,
                                "status": status})
            disp.append(drow)
    numdf = pd.DataFrame(num)
    cap = (f"{m} accuracy ({'%' if scale == 100 else f'× {scale:g}'}) by {key_label(cols_key)} and "
           f"{key_label(rows_key)}" + (" (depth: distinct filters as the paper counts them)" if any(
               d.get("depth") for d in disp) else "") + ": clean test set"
           + (" (mean of the periodic evaluations over the last window of steps, as the paper)" if e["clean"] == "window"
              else " (the last step's model)")
           + " and perturbed test sets (the last step's model); "
           + (f"mean ± std over {int(numdf['n_seeds'].min())}–{int(numdf['n_seeds'].max())} seeds"
              if len(numdf) and numdf["n_seeds"].max() > 1 else "1 seed per cell (no ±)")
           + (f"; 'paper' = {e['reference']} (clean), Δ = ours − paper" if ref is not None else "") + ".")
    ctx.table(pd.DataFrame(disp), numdf, "", cap)
    _figure(ctx, numdf, cols_key, rows_key, m, scale)
    if e["paper_claim"]:
        _paper_claim(ctx, e)


def _status(rows):
    st = rows["status"].tolist()
    if "failed" in st:
        return "failed: " + rows[rows["status"] == "failed"]["reason"].iloc[0][:80]
    return "running" if "running" in st else "missing"


def _figure(ctx, num, cols_key, rows_key, m, scale):
    import matplotlib.pyplot as plt

    conds = list(dict.fromkeys(num["condition"]))
    tasks = list(dict.fromkeys(num["task"]))
    fig, axes = plt.subplots(len(tasks), len(conds), figsize=(3.4 * len(conds), 3.0 * len(tasks)), squeeze=False)
    colv = sorted(dict.fromkeys(num[cols_key]), key=sort_key)
    colors = hue_colors(cols_key, colv)
    use_depth = num["depth"].notna().all()
    for i, t in enumerate(tasks):
        for j, cond in enumerate(conds):
            ax = axes[i][j]
            for v in colv:
                d = num[(num["task"] == t) & (num["condition"] == cond) & (num[cols_key] == v)].dropna(subset=["mean"])
                x = d["depth"] if use_depth else d[rows_key]
                ax.errorbar(x, d["mean"], yerr=d["std"].fillna(0.0), color=colors[v], marker="o", ms=4, capsize=2,
                            label=f"{key_label(cols_key)}={v}")
                if cond == "clean" and "reference" in d and d["reference"].notna().any():
                    r = d.dropna(subset=["reference"])
                    ax.plot(r["depth"] if use_depth else r[rows_key], r["reference"], color=colors[v], ls="--",
                            marker="x", ms=5, label=f"{key_label(cols_key)}={v} (paper)")
            ax.set_xlabel("depth (distinct filters)" if use_depth else key_label(rows_key))
            ax.set_ylabel(f"{m} accuracy [{'%' if scale == 100 else scale}]")
            ax.set_title(f"{t}: {cond}" if len(tasks) > 1 else cond)
            ax.legend(fontsize=7)
    fig.suptitle("Accuracy vs depth")
    fig.tight_layout()
    ctx.figure(fig, "", f"{m} accuracy vs depth per {key_label(cols_key)}: clean and perturbed test sets")
