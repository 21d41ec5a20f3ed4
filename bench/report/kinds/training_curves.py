"""training_curves: loss components and metrics per epoch, one line per cell, seeds as bands
(journal Figure 7 top).

``reference: <name or .csv>`` (default none) draws a reference's logged curves beside ours — e.g. the bundled
``authors-ex1-ex3-curves``: Reshniak & Webster's tensorboard logs at commit e831e4c, seed 10 (AUTHORS-CODE.md §2.1
ex1, §2.3 ex3) — and adds the table "final training loss: ours vs the authors'". A reference is long format
(key columns, ``metric``, ``epoch``, ``value``); a cell takes the curve whose key columns all match it: ``case``
against the cell's case, any other column as a dotted path into the cell's resolved config (numbers with
math.isclose; an empty reference value matches anything). Epochs: our step k is epoch k (1-based); the
reference's epoch numbers are taken on the same scale."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ...suitefile import get_path
from ..output import default_hue, key_label, split_groups
from ..references import check_reference, reference_path, suite_reference
from ..registry import register_report
from ._common import make_cells, pretty_metric, split_by_default

_SKIP = ("lr", "train/steps", "train/time")
_ORDER = ("train/loss", "train/objective", "train/penalty/", "train/mse", "train/top1", "train/top2", "val/")


def _auto_metrics(cols):
    ms = [c for c in cols if c not in _SKIP and not c.startswith(("solver/", "time/")) and c not in
          ("spec_hash", "run_id", "epoch")]

    def rank(m):
        for i, p in enumerate(_ORDER):
            if m == p or (p.endswith("/") and m.startswith(p)):
                return (i, m)
        return (len(_ORDER), m)

    return sorted(ms, key=rank)[:8]


def _check(e):
    errs = []
    if e["band"] not in ("std", "minmax", "none"):
        errs.append(f"band: must be one of std, minmax, none (got {e['band']!r})")
    if e["metrics"] is not None and not isinstance(e["metrics"], list):
        errs.append("metrics: must be a list of metric names such as train/loss")
    if e["logy"] not in (None, True, False):
        errs.append("logy: must be true, false or omitted (auto)")
    rs = e.get("reference_seed")
    if rs is not None and (isinstance(rs, bool) or not isinstance(rs, int)):
        errs.append(f"reference_seed: must be an integer seed or omitted (got {rs!r})")
    return errs + check_reference(e["reference"])


_REF_COLS = ("metric", "epoch", "value")
_CHECKPOINTS = (100, 300, 1000)  # the authors' checkpoints compared in the final-loss table (100: the early-curve check)


def _matches(want, got) -> bool:
    """A reference key value against a cell's config value: empty/NaN matches anything; numbers isclose."""
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return True
    if got is None:
        return False
    num = (int, float, np.integer, np.floating)
    if isinstance(want, num) and isinstance(got, num) and not isinstance(got, bool):
        return math.isclose(float(want), float(got), rel_tol=1e-9, abs_tol=1e-12)
    return str(want) == str(got)


def _ref_curve(ctx, ref, cell):
    """(the reference rows of the first curve matching ``cell`` (metric, epoch, value), {key: cell value}),
    or (None, {})."""
    keys = [k for k in ref.columns if k not in _REF_COLS]
    first = cell.runs.iloc[0]
    cfg = ctx.data.config(first["spec_hash"])
    got = {k: first["case"] if k == "case" else get_path(cfg, k, None) for k in keys}
    if not keys:
        return ref, got
    for vals, rows in ref.groupby(keys, dropna=False, sort=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        if all(_matches(v, got[k]) for k, v in zip(keys, vals)):
            return rows.sort_values("epoch"), got
    return None, {}


def _ref_title(name, ctx) -> str:
    """The reference's name and its first comment line (its source)."""
    from pathlib import Path

    with open(reference_path(name, Path(ctx.data.suite.path).parent)) as f:
        line = f.readline().strip()
    return f"{name} ({line.lstrip('#').strip().rstrip('.,;')})" if line.startswith("#") else name


def _g(x, digits=4) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}g}"


def band_limits(bands, kind: str, logy: bool):
    """The seed bands of one axis: ``bands`` = [(mean − std, mean + std, min, max)] per cell. Returns ([(lo, hi)], minmax):
    ± std, unless ``kind`` is ``minmax`` or the axis is logarithmic and some mean − std ≤ 0 (a band that cannot be drawn
    there): then every cell of the axis gets its seeds' min–max."""
    minmax = kind == "minmax" or (logy and any(bool((b[0] <= 0).any()) for b in bands))
    return [(b[2], b[3]) if minmax else (b[0], b[1]) for b in bands], minmax


def _final_loss_table(ctx, e, sub, cells, curves, suffix, title_part, m="train/loss"):
    """Table "final training loss: ours vs the authors'": per matched cell our ``m`` at each finished seed's last
    logged epoch (mean, ± std from 2 seeds), the reference's value at its last epoch, ours / theirs, and both at
    the epochs of :data:`_CHECKPOINTS` logged by both. With ``reference_seed`` (the seed the reference ran), that
    seed's run beside them: its final value and ratio, and the checkpoints from it alone."""
    rseed = e.get("reference_seed")
    if m not in sub.columns:
        ctx.note(f"{title_part or 'training curves'}: {m} not logged; no final-loss comparison.")
        return
    disp, num = [], []
    for c, (rc, keyvals) in zip(cells, curves):
        if rc is None or c.finished.empty:
            continue
        rm = rc[rc["metric"] == m].dropna(subset=["value"])
        if rm.empty:
            continue
        rows = sub[sub["spec_hash"].isin(c.finished["spec_hash"])][["spec_hash", "epoch", m]].dropna()
        if rows.empty:
            continue
        last = rows.sort_values("epoch").groupby("spec_hash").tail(1)
        vals = last[m].astype(float)
        n = len(vals)
        mean = float(vals.mean())
        sd = float(vals.std()) if n > 1 else float("nan")
        ep_ours = sorted({int(x) for x in last["epoch"]})
        a_ep, a_val = int(rm["epoch"].iloc[-1]), float(rm["value"].iloc[-1])
        ratio = mean / a_val if a_val else float("nan")
        d = {"cell": c.label, "seeds": str(n),
             "ours: last epoch": "/".join(map(str, ep_ours)),
             f"ours: final {m}": _g(mean) + (f" ± {_g(sd, 2)}" if n > 1 else ""),
             "authors: last epoch": str(a_ep), "authors": _g(a_val), "ours / authors": _g(ratio, 3)}
        r = {"cell": c.label, **keyvals, "n_seeds": n, "ours_epoch": max(ep_ours), "ours_final_mean": mean,
             "ours_final_std": sd, "authors_epoch": a_ep, "authors_final": a_val, "ratio": ratio}
        at = rows
        if rseed is not None:  # the reference's own seed: a like-for-like run beside the mean over seeds
            hs = set(c.finished.loc[c.finished["seed"].astype(int) == int(rseed), "spec_hash"])
            mine = last[last["spec_hash"].isin(hs)][m]
            v = float(mine.iloc[0]) if len(mine) else float("nan")
            r[f"ours_seed_{rseed}"], r[f"ratio_seed_{rseed}"] = v, v / a_val if a_val else float("nan")
            d[f"ours, seed {rseed}"], d[f"ratio, seed {rseed}"] = _g(v), _g(r[f"ratio_seed_{rseed}"], 3)
            at = rows[rows["spec_hash"].isin(hs)]
        for k in _CHECKPOINTS:
            o = at[at["epoch"] == k][m]
            a = rm[rm["epoch"] == k]["value"]
            both = len(o) and len(a)
            r[f"ours_at_{k}"] = float(o.mean()) if both else float("nan")
            r[f"authors_at_{k}"] = float(a.iloc[0]) if both else float("nan")
            d[f"ours @{k}"], d[f"authors @{k}"] = _g(r[f"ours_at_{k}"]), _g(r[f"authors_at_{k}"])
        disp.append(d)
        num.append(r)
    if not disp:  # no curve matched at all: the figure's caption says so
        if any(rc is not None for rc, _ in curves):
            ctx.note(f"{title_part or 'training curves'}: no finished cell has a {m} curve in reference "
                     f"{e['reference']!r}.")
        return
    disp, num = pd.DataFrame(disp), pd.DataFrame(num)
    for k in _CHECKPOINTS:  # checkpoint columns only where some cell has that epoch in both
        if num[f"ours_at_{k}"].isna().all():
            disp = disp.drop(columns=[f"ours @{k}", f"authors @{k}"])
    ns = sorted({int(x) for x in num["n_seeds"]})
    cap = (f"Final training loss ({m}): ours vs the authors'{' — ' + title_part if title_part else ''}. "
           f"Ours: mean over {'/'.join(map(str, ns))} finished seed{'s' if ns != [1] else ''} of {m} at each "
           f"seed's last logged epoch" + (" ± std over seeds" if max(ns) > 1 else " (no ± from one seed)")
           + f"; authors: reference {_ref_title(e['reference'], ctx)}, at their last logged epoch; "
           f"ours / authors = ratio of the two"
           + (f"; 'seed {rseed}': our run with the reference's seed alone" if rseed is not None else "")
           + f"; @{'/@'.join(map(str, _CHECKPOINTS))}: both at that epoch when both logged it"
           + (f" (ours: seed {rseed})" if rseed is not None else " (ours: mean over seeds)") + ".")
    ctx.table(disp, num, (suffix + "-" if suffix else "") + "final-loss", cap)


#: the authors' reference curves: thin, open circles — a style no cell dimension takes (cells use the line styles)
_REF_STYLE = dict(ls="-", lw=0.6, marker="o", ms=3.0, mfc="none", mew=0.7)


@register_report("training_curves",
                 {"metrics": None, "hue": None, "split_by": None, "band": "std", "logy": None, "reference": None,
                  "reference_seed": None},
                 doc="metrics per epoch (default: every train/ and val/ metric), one line per cell coloured by θ, "
                     "seeds as a ±std band; one figure per case; reference: authors-ex1-ex3-curves (or a CSV) "
                     "draws the authors' logged curves (thin, open circles) and tabulates the final training loss against theirs",
                 check=_check)
def render(ctx, e):
    ep = ctx.data.epochs
    split_by = split_by_default(ctx, e["split_by"])
    hue = default_hue(ctx.data, ctx.runs, e["hue"])
    ref = suite_reference(ctx, e["reference"], {"metric", "epoch", "value"})
    for suffix, title_part, runs in split_groups(ctx.runs, split_by):
        fin = runs[runs["status"] == "finished"]
        sub = ep[ep["spec_hash"].isin(fin["spec_hash"])] if len(ep) else ep
        if sub.empty:
            ctx.note(f"{title_part or 'training curves'}: no per-epoch metrics logged by finished runs.")
            continue
        present = [c for c in sub.columns if sub[c].notna().any()]
        metrics = e["metrics"] or _auto_metrics(present)
        absent = [m for m in metrics if m not in present]
        if absent:
            ctx.note(f"{title_part}: metric(s) not logged: {', '.join(absent)}; logged: "
                     f"{', '.join(_auto_metrics(present))}")
        metrics = [m for m in metrics if m in present]
        if not metrics:
            continue
        cells = make_cells(ctx, runs, hue, exclude=(split_by,) if split_by else ())
        curves = [_ref_curve(ctx, ref, c) for c in cells] if ref is not None else [(None, {})] * len(cells)
        drawn = False
        import matplotlib.pyplot as plt

        n = len(metrics)
        ncol = min(n, 3)
        nrow = math.ceil(n / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
        log_band = False  # a ±std band on a log axis: drawn as the seeds' min–max instead (mean − std crosses 0)
        for ax, m in zip(axes.flat, metrics):
            bands = []
            for c in cells:
                rows = sub[sub["spec_hash"].isin(c.finished["spec_hash"])][["spec_hash", "epoch", m]].dropna()
                if rows.empty:
                    continue
                g = rows.groupby("epoch")[m]
                mean = g.mean()
                (ln,) = ax.plot(mean.index, mean.values, color=c.color, ls=c.linestyle, lw=1.4, label=c.label)
                ln.set_rasterized(len(mean) > 300)  # long histories: keep the SVG small (axes stay vector)
                if e["band"] != "none" and rows["spec_hash"].nunique() > 1:
                    sd = g.std().fillna(0.0)
                    bands.append((c, mean, mean - sd, mean + sd, g.min(), g.max()))
            refvals = []
            for c, (rc, _) in zip(cells, curves):  # the reference's curve: same colour, thin, open circles — a style
                # no cell dimension uses (cells take the line styles: a dashed reference read as a cell)
                r = rc[rc["metric"] == m].dropna(subset=["value"]) if rc is not None and not c.finished.empty else None
                if r is not None and len(r):
                    ax.plot(r["epoch"], r["value"], color=c.color, markevery=max(1, len(r) // 12),
                            rasterized=len(r) > 300, **_REF_STYLE)
                    refvals.append(r["value"])
                    drawn = True
            logy = e["logy"]
            if logy is None:
                vals = pd.concat([sub[m].dropna()] + refvals) if refvals else sub[m].dropna()
                logy = (("loss" in m or "mse" in m or "penalty" in m or "objective" in m)
                        and len(vals) and (vals > 0).all() and vals.max() / max(vals.min(), 1e-300) > 20)
            if logy:
                ax.set_yscale("log")
            limits, minmax = band_limits([b[2:] for b in bands], e["band"], bool(logy))
            log_band |= minmax and e["band"] == "std"
            for (c, mean, *_), (lo, hi) in zip(bands, limits):
                ax.fill_between(mean.index, lo.values, hi.values, color=c.color, alpha=0.2, lw=0,
                                rasterized=len(mean) > 300)
            ax.set_xlabel("epoch")
            ax.set_ylabel(m)
            ax.set_title(pretty_metric(m), fontsize=8)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if drawn:
            from matplotlib.lines import Line2D

            handles, labels = handles + [Line2D([], [], color="0.3", **_REF_STYLE)], labels + ["authors (thin, ○)"]
        if handles:
            fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 5),
                       frameon=False, title=key_label(hue) if hue else None)
        missing = [c.label + f" ({c.status_text})" for c in cells if c.finished.empty]
        nseed = runs["seed"].nunique()
        band_text = {"std": "mean ± std over seeds", "minmax": "mean, min–max over seeds"}.get(e["band"])
        if log_band:
            band_text = "mean; bands ± std, or min–max on a log axis where mean − std ≤ 0"
        fig.suptitle("Training curves" + (f" — {title_part}" if title_part else "")
                     + (f" ({band_text}, {nseed} seeds)" if band_text and nseed > 1 else ""))
        fig.tight_layout()
        cap = (f"Training curves{' for ' + title_part if title_part else ''}: one line per cell, coloured by "
               f"{key_label(hue) if hue else 'cell'}" + (f"; bands: {band_text}, {nseed} seeds" if band_text and nseed > 1 else ""))
        if missing:
            cap += "; not shown: " + ", ".join(missing)
        if ref is not None:
            cap += (f"; thin lines with open circles: reference {e['reference']} (the authors' logged curves), in the "
                    "matching cell's colour"
                    if drawn else f"; no cell matches a curve of reference {e['reference']}")
        ctx.figure(fig, suffix, cap)
        if ref is not None:
            _final_loss_table(ctx, e, sub, cells, curves, suffix, title_part)
