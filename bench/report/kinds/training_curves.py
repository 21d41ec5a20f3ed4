"""training_curves: loss components and metrics per epoch, one line per cell, seeds as bands
(journal Figure 7 top)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..output import default_hue, key_label, split_groups
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
    return errs


@register_report("training_curves",
                 {"metrics": None, "hue": None, "split_by": None, "band": "std", "logy": None},
                 doc="metrics per epoch (default: every train/ and val/ metric), one line per cell coloured by θ, "
                     "seeds as a ±std band; one figure per case", check=_check)
def render(ctx, e):
    ep = ctx.data.epochs
    split_by = split_by_default(ctx, e["split_by"])
    hue = default_hue(ctx.data, ctx.runs, e["hue"])
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
        import matplotlib.pyplot as plt

        n = len(metrics)
        ncol = min(n, 3)
        nrow = math.ceil(n / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
        for ax, m in zip(axes.flat, metrics):
            for c in cells:
                rows = sub[sub["spec_hash"].isin(c.finished["spec_hash"])][["spec_hash", "epoch", m]].dropna()
                if rows.empty:
                    continue
                g = rows.groupby("epoch")[m]
                mean = g.mean()
                (ln,) = ax.plot(mean.index, mean.values, color=c.color, ls=c.linestyle, lw=1.4, label=c.label)
                ln.set_rasterized(len(mean) > 300)  # long histories: keep the SVG small (axes stay vector)
                if e["band"] != "none" and rows["spec_hash"].nunique() > 1:
                    if e["band"] == "std":
                        sd = g.std().fillna(0.0)
                        lo, hi = mean - sd, mean + sd
                    else:
                        lo, hi = g.min(), g.max()
                    ax.fill_between(mean.index, lo.values, hi.values, color=c.color, alpha=0.2, lw=0,
                                    rasterized=len(mean) > 300)
            logy = e["logy"]
            if logy is None:
                vals = sub[m].dropna()
                logy = (("loss" in m or "mse" in m or "penalty" in m or "objective" in m)
                        and len(vals) and (vals > 0).all() and vals.max() / max(vals.min(), 1e-300) > 20)
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(pretty_metric(m))
            ax.set_title(m)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 5),
                       frameon=False, title=key_label(hue) if hue else None)
        missing = [c.label + f" ({c.status_text})" for c in cells if c.finished.empty]
        fig.suptitle("Training curves" + (f" — {title_part}" if title_part else "")
                     + (f" (mean ± std over seeds)" if e["band"] == "std" and runs["seed"].nunique() > 1 else ""))
        fig.tight_layout()
        cap = (f"Training curves{' for ' + title_part if title_part else ''}: one line per cell, coloured by "
               f"{key_label(hue) if hue else 'cell'}" + ("; bands: seeds" if runs['seed'].nunique() > 1 else ""))
        if missing:
            cap += "; not shown: " + ", ".join(missing)
        ctx.figure(fig, suffix, cap)
