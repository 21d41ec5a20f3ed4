"""accuracy_vs_noise: the journal's Table 3 layout — rows = severity, columns = θ (or any ``cols`` key),
top-1 and top-2 accuracy (%), mean ± std over seeds, the paper's value and the difference beside
ours when a ``reference`` is named; plus accuracy vs severity, one line per θ."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ...suite import get_path
from ..output import hue_colors, hue_value, json_key, key_label, mean_std, fmt_num
from ..references import check_reference, suite_reference
from ..registry import register_report
from ._common import make_cells, mean_sd


def _check(e):
    errs = check_reference(e["reference"])
    if not isinstance(e["metrics"], list) or not e["metrics"]:
        errs.append("metrics: must be a non-empty list, e.g. [top1, top2]")
    if e["rows"] != "severity":
        errs.append(f"rows: only 'severity' is supported (got {e['rows']!r})")
    return errs


def _close(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _label(key, v):
    return f"{key_label(key)}={v:g}" if isinstance(v, float) else f"{key_label(key)}={v}"


@register_report("accuracy_vs_noise",
                 {"corruption": None, "rows": "severity", "cols": "model.layer.theta", "metrics": ["top1", "top2"],
                  "reference": None, "scale": 100.0, "decimals": 1},
                 doc="Table 3 layout: accuracy per severity (rows) and θ (cols), mean ± std over seeds, with the "
                     "paper's values and the difference when reference is given; plus accuracy vs severity",
                 check=_check)
def render(ctx, e):
    data = ctx.data
    corr = data.corruptions
    runs = ctx.runs
    name = e["corruption"]
    have = corr[corr["spec_hash"].isin(runs["spec_hash"])] if len(corr) else corr
    if name is None:
        names = sorted(have["corruption"].unique()) if len(have) else []
        if not names:  # nothing logged yet: take it from the configs
            names = sorted({n for h in runs["spec_hash"] for n in (get_path(data.config(h), "evaluate.corruptions", {}) or {})})
        if not names:
            ctx.note("No corruption is configured or logged for these runs (evaluate.corruptions).")
            return
        name = names[0]
        if len(names) > 1:
            ctx.note(f"Corruptions logged: {', '.join(names)}; showing {name!r} (set corruption: to choose).")
    # runs evaluated under this corruption
    runs = runs[[name in (get_path(data.config(h), "evaluate.corruptions", {}) or {}) for h in runs["spec_hash"]]]
    if runs.empty:
        ctx.note(f"No run of this entry evaluates corruption {name!r}.")
        return
    sub = have[have["corruption"] == name] if len(have) else have
    cols_key = e["cols"]
    scale = float(e["scale"])
    dec = int(e["decimals"])
    ref = suite_reference(ctx, e["reference"], {"metric", "value", "severity", cols_key})
    if ref is not None and "corruption" in ref.columns:
        ref = ref[ref["corruption"] == name]
    # groups: the varying keys other than cols (one table each)
    cells = make_cells(ctx, runs, cols_key)
    other = {}
    for c in cells:
        first = c.runs.iloc[0]
        rest = [p for p in c.label.split(" ") if not p.startswith(key_label(cols_key) + "=")]
        other.setdefault(" ".join(rest), []).append(c)
    for gi, (glabel, gcells) in enumerate(other.items()):
        suffix = "" if len(other) == 1 else f"{gi + 1}"
        sevs = sorted(set(sub[sub["spec_hash"].isin(pd.concat([c.runs for c in gcells])["spec_hash"])]["severity"]))
        if not sevs:  # no finished run in this group: say so instead of writing an empty table
            ctx.note(f"{glabel or 'all cells'}: " + "; ".join(f"{c.label}: {c.status_text}" for c in gcells)
                     + f" — no {name} accuracy to tabulate.")
            continue
        disp_rows, num_rows = [], []
        for sev in sevs:
            drow = {e["rows"]: f"{sev:g}"}
            for m in e["metrics"]:
                for c in gcells:
                    col = _label(cols_key, c.hue)
                    hashes = c.finished["spec_hash"]
                    vals = sub[(sub["spec_hash"].isin(hashes)) & (np.isclose(sub["severity"], sev))]
                    vals = (vals[m].dropna() * scale).tolist() if m in vals else []
                    mean, sd, n = mean_sd(vals)
                    if hashes.empty:
                        txt = c.status_text
                    else:
                        txt = mean_std(vals, dec)
                    drow[f"{m} {col}"] = txt
                    rv = float("nan")
                    if ref is not None:
                        r = ref[(ref["metric"] == m) & ref["severity"].map(lambda s: _close(s, sev))
                                & ref[cols_key].map(lambda s: _close(s, c.hue))]
                        rv = float(r["value"].iloc[0]) if len(r) else float("nan")
                        drow[f"{m} {col} paper"] = fmt_num(rv, dec)
                        drow[f"{m} {col} Δ"] = (f"{mean - rv:+.{dec}f}" if not (math.isnan(rv) or math.isnan(mean)) else "—")
                    num_rows.append({"corruption": name, "severity": sev, cols_key: c.hue, "metric": m,
                                     "mean": mean, "std": sd, "n_seeds": n,
                                     "status": "finished" if len(hashes) else c.status_text,
                                     **({"reference": rv, "diff": mean - rv} if ref is not None else {})})
            disp_rows.append(drow)
        num = pd.DataFrame(num_rows)
        unit = "%" if scale == 100 else f"× {scale:g}"
        cap = (f"Accuracy ({unit}) under {name} noise{' — ' + glabel if glabel else ''}: rows = {e['rows']}, "
               f"columns = {key_label(cols_key)}; mean ± std over seeds"
               + (f"; 'paper' = {e['reference']}, Δ = ours − paper" if ref is not None else "") + ".")
        ctx.table(pd.DataFrame(disp_rows), num, suffix, cap)
        _figure(ctx, num, gcells, e, cols_key, name, glabel, suffix, ref is not None, unit)


def _figure(ctx, num, cells, e, cols_key, name, glabel, suffix, with_ref, unit):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    metrics = e["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for c in cells:
            d = num[(num["metric"] == m) & num[cols_key].map(lambda v: json_key(v) == json_key(c.hue))].sort_values("severity")
            if d["mean"].notna().any():
                ax.errorbar(d["severity"], d["mean"], yerr=d["std"].fillna(0.0), color=c.color, marker="o", ms=4,
                            lw=1.5, capsize=2, label=_label(cols_key, c.hue))
            if with_ref and d["reference"].notna().any():
                ax.plot(d["severity"], d["reference"], color=c.color, ls="--", marker="o", ms=4, mfc="white", lw=1.0)
        ax.set_xlabel(f"{name} noise severity ({e['rows']})")
        ax.set_ylabel(f"{m} accuracy [{unit}]")
        ax.set_title(f"{m} accuracy vs {name} noise")
        handles, labels = ax.get_legend_handles_labels()
        if with_ref:
            handles += [Line2D([], [], color="black", marker="o", lw=1.5), Line2D([], [], color="black", ls="--",
                                                                                 marker="o", mfc="white", lw=1.0)]
            labels += ["ours (mean ± std)", "paper"]
        ax.legend(handles, labels, fontsize=7, loc="lower left")
    fig.suptitle(f"Accuracy under {name} noise" + (f" — {glabel}" if glabel else ""))
    fig.tight_layout()
    ctx.figure(fig, suffix, f"Accuracy vs {name} noise severity, one line per {key_label(cols_key)}"
                            + ("; dashed: the paper's values" if with_ref else ""))
