"""accuracy_vs_noise: the journal's Table 3 layout — rows = severity, columns = θ (or any ``cols`` key),
top-1 and top-2 accuracy (%), mean ± std over seeds, the paper's value and the difference beside
ours when a ``reference`` is named; plus accuracy vs severity, one line per θ.

Options beyond the defaults: ``reference`` may be a list (one column per table; a reference with a ``case``
column is matched on the cell's case too; one without it only on the cells of ``reference_case`` when set);
``stats: ci95`` shows mean ± the half-width of the 95 % Student-t
interval over seeds (nothing after the mean for one seed) and states n; ``claims: monotone`` adds, per
severity and metric, the check of the claim "accuracy grows with ``cols``": the differences between
neighbouring values and between the last and the first, paired by seed, each with its 95 % interval, and a
verdict — holds (last − first interval above 0 and no neighbour interval below 0), fails (some neighbour
or the last − first interval below 0) or inconclusive."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ...suitefile import get_path
from ..output import json_key, key_label, mean_std, fmt_num
from ..references import check_reference, suite_reference
from ..registry import register_report
from ._common import make_cells, mean_sd, same_value, t_interval, verdict


def _refs(e):
    r = e["reference"]
    return [] if r is None else ([r] if isinstance(r, str) else list(r))


def _check(e):
    errs = [x for r in (_refs(e) or [None]) for x in check_reference(r)]
    if e["stats"] not in ("std", "ci95"):
        errs.append(f"stats: must be std or ci95, got {e['stats']!r}")
    if e["claims"] not in (None, "monotone"):
        errs.append(f"claims: must be null or monotone, got {e['claims']!r}")
    if not isinstance(e["metrics"], list) or not e["metrics"]:
        errs.append("metrics: must be a non-empty list, e.g. [top1, top2]")
    if e["rows"] != "severity":
        errs.append(f"rows: only 'severity' is supported (got {e['rows']!r})")
    return errs


def _ref_value(rt, m, sev, cols_key, c, reference_case) -> float:
    """A reference's value for metric ``m`` at severity ``sev`` and cell ``c`` (NaN when it has none). A reference
    with a ``case`` column is matched on the cell's case; one without it belongs, when ``reference_case`` is set,
    to that case's cells only."""
    sel = (rt["metric"] == m) & rt["severity"].map(lambda s: same_value(s, sev)) & rt[cols_key].map(lambda s: same_value(s, c.hue))
    cell_case = c.runs["case"].iloc[0] if "case" in c.runs.columns else None
    if "case" in rt.columns and cell_case is not None:
        sel &= rt["case"] == cell_case
    elif reference_case is not None and cell_case != reference_case:
        return float("nan")
    return float(rt[sel]["value"].iloc[0]) if sel.any() else float("nan")


def _label(key, v):
    return f"{key_label(key)}={v:g}" if isinstance(v, float) else f"{key_label(key)}={v}"


@register_report("accuracy_vs_noise",
                 {"corruption": None, "rows": "severity", "cols": "model.layer.theta", "metrics": ["top1", "top2"],
                  "reference": None, "scale": 100.0, "decimals": 1, "stats": "std", "claims": None, "reference_case": None},
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
    multi = not isinstance(e["reference"], (str, type(None)))
    refs = {}
    for rname in _refs(e):
        r = suite_reference(ctx, rname, {"metric", "value", "severity", cols_key})
        if r is not None and "corruption" in r.columns:
            r = r[r["corruption"] == name]
        if r is not None:
            refs[rname] = r
    ref = None if multi else refs.get(e["reference"])
    ci = e["stats"] == "ci95"
    # groups: the varying keys other than cols (one table each)
    cells = make_cells(ctx, runs, cols_key)
    other = {}
    for c in cells:
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
                    hw = t_interval(vals)[1] if ci else float("nan")
                    if hashes.empty:
                        txt = c.status_text
                    elif ci:
                        txt = fmt_num(mean, dec) + (f" ± {fmt_num(hw, dec)}" if n > 1 else "")
                    else:
                        txt = mean_std(vals, dec)
                    drow[f"{m} {col}"] = txt
                    extra = {}
                    for rname, rt in (refs.items() if multi else ()):
                        extra[rname] = _ref_value(rt, m, sev, cols_key, c, e["reference_case"])
                        drow[f"{m} {col} {rname}"] = fmt_num(extra[rname], dec)
                    rv = float("nan")
                    if ref is not None:
                        rv = _ref_value(ref, m, sev, cols_key, c, e["reference_case"])
                        drow[f"{m} {col} paper"] = fmt_num(rv, dec)
                        drow[f"{m} {col} Δ"] = (f"{mean - rv:+.{dec}f}" if not (math.isnan(rv) or math.isnan(mean)) else "—")
                    num_rows.append({"corruption": name, "severity": sev, cols_key: c.hue, "metric": m,
                                     "mean": mean, "std": sd, "n_seeds": n,
                                     **({"ci95_low": mean - hw, "ci95_high": mean + hw} if ci else {}),
                                     "status": "finished" if len(hashes) else c.status_text,
                                     **({"reference": rv, "diff": mean - rv} if ref is not None else {}),
                                     **{f"ref {k}": v for k, v in extra.items()}})
            disp_rows.append(drow)
        num = pd.DataFrame(num_rows)
        unit = "%" if scale == 100 else f"× {scale:g}"
        if ci:
            ns = sorted({int(v) for v in num["n_seeds"] if v})
            nt = "/".join(map(str, ns)) or "0"
            stat = (f"mean over {nt} seed{'s' if ns != [1] else ''}"
                    + (" ± half-width of the 95 % Student-t interval" if any(n > 1 for n in ns) else " (no ± from one seed)"))
        else:
            stat = "mean ± std over seeds"
        cap = (f"Accuracy ({unit}) under {name} noise{' — ' + glabel if glabel else ''}: rows = {e['rows']}, "
               f"columns = {key_label(cols_key)}; {stat}"
               + (f"; 'paper' = {e['reference']}, Δ = ours − paper" if ref is not None else "")
               + (f"; beside ours: {', '.join(refs)}" if multi and refs else "") + ".")
        if multi:  # one table per metric: for each severity a row of ours, then a row per reference
            for m in e["metrics"]:
                rows_m = []
                for sev in sevs:
                    sel = num[(num["metric"] == m) & np.isclose(num["severity"], sev)]
                    ours = {"severity": f"{sev:g}", "source": "this project"}
                    for c in gcells:
                        ours[_label(cols_key, c.hue)] = next(d[f"{m} {_label(cols_key, c.hue)}"] for d in disp_rows
                                                             if d[e["rows"]] == f"{sev:g}")
                    rows_m.append(ours)
                    for rname in refs:
                        r = {"severity": "", "source": rname}
                        for c, (_, nr) in zip(gcells, sel.iterrows()):
                            r[_label(cols_key, c.hue)] = fmt_num(nr[f"ref {rname}"], dec)
                        rows_m.append(r)
                ctx.table(pd.DataFrame(rows_m), num[num["metric"] == m], (suffix + "-" if suffix else "") + m,
                          cap.replace("Accuracy (", f"{m} accuracy (", 1))
        else:
            ctx.table(pd.DataFrame(disp_rows), num, suffix, cap)
        if e["claims"] == "monotone" and len(gcells) > 1:
            _monotone(ctx, sub, gcells, e, cols_key, sevs, scale, dec, name, glabel, suffix)
        _figure(ctx, num, gcells, e, cols_key, name, glabel, suffix, ref is not None, unit)


def _paired(sub, a, b, m, sev, scale):
    """{seed: value(b) − value(a)} over the seeds both cells finished."""
    def by_seed(c):
        fin = c.finished
        out = {}
        for h, seed in zip(fin["spec_hash"], fin["seed"]):
            v = sub[(sub["spec_hash"] == h) & np.isclose(sub["severity"], sev)]
            if m in v and len(v) and not pd.isna(v[m].iloc[0]):
                out[int(seed)] = float(v[m].iloc[0]) * scale
        return out
    va, vb = by_seed(a), by_seed(b)
    return [vb[s] - va[s] for s in sorted(set(va) & set(vb))]


def _monotone(ctx, sub, cells, e, cols_key, sevs, scale, dec, name, glabel, suffix):
    """Claim: accuracy is non-decreasing in ``cols`` (paired by seed); see the module docstring."""
    rows, num = [], []
    first, last = cells[0], cells[-1]
    for m in e["metrics"]:
        for sev in sevs:
            if sev == 0:
                continue
            steps = [verdict(_paired(sub, a, b, m, sev, scale)) for a, b in zip(cells[:-1], cells[1:])]
            overall = verdict(_paired(sub, first, last, m, sev, scale))
            n = overall[4]
            if n == 0:
                v = "no data"
            elif any(s[0] == "fails" for s in steps) or overall[0] == "fails":
                v = "fails"
            elif overall[0] == "holds" and all(not s[0] == "fails" for s in steps):
                v = "holds"
            else:
                v = "inconclusive"

            def fmt(t):
                if t[4] == 0:
                    return "—"
                ci_txt = f" [{fmt_num(t[2], dec)}, {fmt_num(t[3], dec)}]" if t[4] > 1 else ""
                return f"{t[1]:+.{dec}f}{ci_txt}"

            row = {"metric": m, e["rows"]: f"{sev:g}", "seeds": str(n),
                   f"{_label(cols_key, last.hue)} − {_label(cols_key, first.hue)}": fmt(overall)}
            for (a, b), t in zip(zip(cells[:-1], cells[1:]), steps):
                row[f"{b.hue:g} − {a.hue:g}" if isinstance(b.hue, float) else f"{b.hue} − {a.hue}"] = fmt(t)
            row["verdict"] = v
            rows.append(row)
            num.append({"metric": m, "severity": sev, "n_seeds": n, "diff_last_first": overall[1],
                        "ci95_low": overall[2], "ci95_high": overall[3], "verdict": v,
                        **{f"diff_step_{i + 1}": t[1] for i, t in enumerate(steps)}})
    if not rows:
        return
    n_holds = sum(r["verdict"] == "holds" for r in rows)
    n_fails = sum(r["verdict"] == "fails" for r in rows)
    cap = (f"Claim: accuracy under {name} noise is non-decreasing in {key_label(cols_key)}"
           f"{' — ' + glabel if glabel else ''}. Differences in points ({e['rows']} > 0), paired by seed, with 95 % "
           f"Student-t intervals [low, high] when ≥ 2 seeds. Verdict: holds = last − first interval above 0 and no "
           f"neighbouring step's interval below 0; fails = some interval below 0; otherwise inconclusive "
           f"(one seed is always inconclusive). {n_holds} holds, {n_fails} fail, "
           f"{len(rows) - n_holds - n_fails} inconclusive of {len(rows)}.")
    ctx.table(pd.DataFrame(rows), pd.DataFrame(num), (suffix + "-" if suffix else "") + "claim-monotone", cap)


#: what the severity of each corruption is, in the units of the (unnormalised) input — pixel intensities in [0, 1]
#: for the image tasks (bench.corruptions)
NOISE_AXES = {
    "gaussian": "std σ of x + σ·N(0, 1) [input units]",
    "uniform": "ε of x + ε·U[−1, 1] [input units]",
    "salt_pepper": "fraction of pixels set to 0 or 1",
    "structured": "ε of x + ε·x̂ (one fixed test image) [input units]",
    "fgsm": "ε of x + ε·sign ∇ₓ loss (ℓ∞) [input units]",
    "pgd": "ℓ∞ radius ε [input units]",
}


def noise_axis(name: str, key: str) -> str:
    return f"{name} noise: {NOISE_AXES[name]}" if name in NOISE_AXES else f"{name} noise severity ({key})"


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
        ax.set_xlabel(noise_axis(name, e["rows"]))
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
