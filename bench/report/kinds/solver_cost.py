"""solver_cost: forward/backward solver iterations per implicit layer and wall time per epoch, per cell
(θ, solver) — journal Figure 7 bottom as a table and a figure."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ...suitefile import get_path
from ..output import default_hue, key_label, mean_std, split_groups
from ..registry import register_report
from ._common import make_cells, mean_sd, split_by_default

_PAT = re.compile(r"^solver/(.+)/(fwd|bwd)_iters$")


def _check(e):
    ok = ("median", "mean", "last")
    return [] if e["epochs"] in ok else [f"epochs: must be one of {', '.join(ok)} (got {e['epochs']!r})"]


def _per_run(sub: pd.DataFrame, col: str, how: str) -> dict:
    out = {}
    for h, rows in sub.groupby("spec_hash"):
        vals = rows.sort_values("epoch")[col].dropna() if col in rows else pd.Series(dtype=float)
        if len(vals):
            out[h] = float(vals.iloc[-1] if how == "last" else (vals.mean() if how == "mean" else vals.median()))
    return out


@register_report("solver_cost", {"hue": None, "split_by": None, "epochs": "median", "layers": None, "decimals": 1},
                 doc="forward/backward iterations per implicit layer and seconds per epoch, per cell "
                     "(median over epochs — each epoch's value averages every solve of the epoch — then mean ± std "
                     "over seeds); θ = 0 layers make no solve", check=_check)
def render(ctx, e):
    ep = ctx.data.epochs
    split_by = split_by_default(ctx, e["split_by"])
    hue = default_hue(ctx.data, ctx.runs, e["hue"])
    dec = int(e["decimals"])
    for suffix, title_part, runs in split_groups(ctx.runs, split_by):
        fin = runs[runs["status"] == "finished"]
        sub = ep[ep["spec_hash"].isin(fin["spec_hash"])] if len(ep) else ep
        layers = sorted({_PAT.match(c).group(1) for c in sub.columns if _PAT.match(c) and sub[c].notna().any()})
        if e["layers"]:
            layers = [l for l in layers if l in e["layers"]]
        cells = make_cells(ctx, runs, hue, exclude=(split_by,) if split_by else ())
        per = {}
        cols = [(l, d) for l in layers for d in ("fwd", "bwd")]
        for l, d in cols:
            per[(l, d)] = _per_run(sub, f"solver/{l}/{d}_iters", e["epochs"])
        tper = _per_run(sub, "time/epoch_s", "median")  # robust to the odd slow epoch (a paused or shared machine)
        disp, num = [], []
        for c in cells:
            cfg = ctx.data.config(c.runs["spec_hash"].iloc[0])
            solver = get_path(cfg, "model.layer.solver.name", None)
            theta = get_path(cfg, "model.layer.theta", None)
            explicit = theta is not None and float(theta) == 0.0
            drow = {"cell": c.label, "solver": "— (explicit)" if explicit else (solver or "default")}
            nrow = {"cell": c.label, "theta": theta, "solver": solver, "status": "finished" if len(c.finished) else c.status_text}
            hashes = c.finished["spec_hash"].tolist()
            for l, d in cols:
                name = f"{'forward' if d == 'fwd' else 'backward'} iters {l}"
                vals = [per[(l, d)][h] for h in hashes if h in per[(l, d)]]
                if not hashes:
                    drow[name] = c.status_text
                elif not vals and explicit:
                    drow[name] = "0 (explicit)"
                    vals = [0.0] * len(hashes)
                else:
                    drow[name] = mean_std(vals, dec)
                m, sd, n = mean_sd(vals)
                nrow[f"{d}_iters/{l}/mean"], nrow[f"{d}_iters/{l}/std"] = m, sd
            tv = [tper[h] for h in hashes if h in tper]
            drow["s / epoch"] = mean_std(tv, 3) if hashes else c.status_text
            m, sd, n = mean_sd(tv)
            nrow["time_epoch_s/mean"], nrow["time_epoch_s/std"], nrow["n_seeds"] = m, sd, len(hashes)
            disp.append(drow)
            num.append(nrow)
        how = {"mean": "mean over epochs", "median": "median over epochs", "last": "last epoch"}[e["epochs"]]
        cap = (f"Solver cost{' — ' + title_part if title_part else ''}: nonlinear (forward) and linear (backward) "
               f"iterations per implicit layer per training step ({how} of each epoch's mean over all its solves; "
               f"summed over the layer's steps), and wall time per epoch (median over epochs); mean ± std over seeds "
               f"when there are ≥ 2.")
        ctx.table(pd.DataFrame(disp), pd.DataFrame(num), suffix, cap)
        _figure(ctx, cells, layers, per, tper, hue, title_part, suffix, how)


def _figure(ctx, cells, layers, per, tper, hue, title_part, suffix, how):
    import matplotlib.pyplot as plt

    shown = [c for c in cells if len(c.finished)]
    if not shown:
        return
    panels = [("fwd", "forward (nonlinear) iterations"), ("bwd", "backward (linear) iterations")] if layers else []
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.2), squeeze=False)
    axes = axes[0]
    w = 0.8 / max(len(shown), 1)
    x = np.arange(len(layers))
    for ax, (d, title) in zip(axes, panels):
        for i, c in enumerate(shown):
            means, sds = [], []
            for l in layers:
                vals = [per[(l, d)].get(h) for h in c.finished["spec_hash"]]
                vals = [v for v in vals if v is not None] or ([0.0] if _explicit(ctx, c) else [])
                m, sd, _ = mean_sd(vals)
                means.append(m)
                sds.append(0.0 if np.isnan(sd) else sd)
            ax.bar(x + (i - (len(shown) - 1) / 2) * w, means, w, yerr=sds, color=c.color, label=c.label,
                   edgecolor="black", linewidth=0.4, capsize=2)
        ax.set_xticks(x, layers, rotation=30 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center")
        ax.set_xlabel("implicit layer")
        ax.set_ylabel(f"iterations per step ({how})")
        ax.set_title(title)
    ax = axes[-1]
    for i, c in enumerate(shown):
        m, sd, _ = mean_sd([tper.get(h) for h in c.finished["spec_hash"] if h in tper])
        ax.bar(i, m, 0.7, yerr=0.0 if np.isnan(sd) else sd, color=c.color, edgecolor="black", linewidth=0.4,
               capsize=2, label=c.label)
    ax.set_xticks(range(len(shown)), [c.label for c in shown], rotation=30, ha="right")
    ax.set_ylabel("wall time per epoch [s]")
    ax.set_title("time per epoch")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 5), frameon=False,
               title=key_label(hue) if hue else None)
    fig.suptitle("Solver cost" + (f" — {title_part}" if title_part else ""))
    fig.tight_layout()
    ctx.figure(fig, suffix, f"Solver iterations per implicit layer and time per epoch"
                            f"{' — ' + title_part if title_part else ''}; θ = 0 makes no solve (0 iterations).")


def _explicit(ctx, c) -> bool:
    t = get_path(ctx.data.config(c.runs["spec_hash"].iloc[0]), "model.layer.theta", None)
    return t is not None and float(t) == 0.0
