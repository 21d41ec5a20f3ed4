"""function_fit: what a regressor of one input learned — the target on the test points, the training points and
each cell's prediction, coloured by θ (arXiv v1 Figures 7–8, "outputs of the trained models"), one panel per
split group (e.g. per depth); with a table of the RMSE and the largest error on the test points per cell (every
finished seed: mean ± std for n ≥ 2; the RMSE is the logged final/test/mse's root, recomputed from the model). The models are reloaded from the runs' ``model/state_dict.pt``."""
from __future__ import annotations


import numpy as np
import pandas as pd
import torch

from ..output import default_hue, mean_std, split_groups, theta_color
from ..registry import register_report
from ._common import make_cells, mean_sd, split_by_default
from ._model import ModelUnavailable, inputs, load_model, pick_run


@register_report("function_fit", {"hue": None, "split_by": None, "seed": None},
                 doc="regression on one input: the target on the test points, the training points and each cell's "
                     "prediction (first finished seed, or seed:), one panel per split group; max |error| table")
def render(ctx, e):
    split_by = split_by_default(ctx, e["split_by"])
    hue = default_hue(ctx.data, ctx.runs, e["hue"])
    groups, rows = [], []
    for suffix, title_part, runs in split_groups(ctx.runs, split_by):
        curves, ref = [], None
        for c in make_cells(ctx, runs, hue, exclude=(split_by,) if split_by else ()):
            errs, rmses, shown = [], [], pick_run(c, e["seed"])
            for _, row in c.finished.sort_values("seed").iterrows():
                try:
                    model, task, cfg = load_model(ctx, row)
                except ModelUnavailable as ex:
                    ctx.note(str(ex))
                    continue
                if getattr(task, "kind", "") != "regression":
                    ctx.note(f"{c.label}: function_fit needs a regression task, got {task.name!r}.")
                    break
                train, _, test = task.data(int(row["seed"]))
                xt, yt = inputs(test)
                if xt.dim() != 2 or xt.shape[1] != 1 or yt.reshape(len(yt), -1).shape[1] != 1:
                    ctx.note(f"{c.label}: function_fit draws one input and one output only.")
                    break
                with torch.no_grad():
                    pred = model(xt.float()).reshape(-1).double().numpy()
                err = pred - yt.reshape(-1).double().numpy()
                errs.append(float(np.abs(err).max()))
                rmses.append(float(np.sqrt(np.mean(err ** 2))))
                if shown is not None and row["run_id"] == shown["run_id"]:
                    curves.append((c, int(row["seed"]), pred))
                    if ref is None:
                        ref = (xt.reshape(-1).numpy(), yt.reshape(-1).numpy(), *[v.reshape(-1).numpy() for v in inputs(train)],
                               int(row["seed"]))
            (m_r, sd_r, n), (m_e, sd_e, _) = mean_sd(rmses), mean_sd(errs)
            rows.append({"group": title_part or "", "cell": c.label, "n": n, "rmse": m_r, "rmse_std": sd_r,
                         "max_error": m_e, "max_error_std": sd_e,
                         "RMSE on the test points": mean_std(rmses), "max |prediction − f|": mean_std(errs)})
        if curves:
            groups.append((title_part, curves, ref))
    if groups:
        _figure(ctx, groups)
    if rows:
        table = pd.DataFrame(rows)
        shown = ["group", "cell", "n", "RMSE on the test points", "max |prediction − f|"]
        disp = table[shown].rename(columns={"n": "n seeds"})
        if not (disp["group"] != "").any():
            disp = disp.drop(columns="group")
        ctx.table(disp, table.drop(columns=shown[3:]),
                  caption="Root mean squared and largest absolute error of the prediction on the test points, mean ± std "
                          "over the finished seeds (the value alone for one seed)")


def _figure(ctx, groups):
    import matplotlib.pyplot as plt

    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 3.8), squeeze=False)
    for ax, (title_part, curves, ref) in zip(axes[0], groups):
        xt, yt, xtr, ytr, seed = ref
        order = np.argsort(xt)
        ax.plot(xt[order], yt[order], color="black", lw=2.2, alpha=0.35, label="target f(x)")
        ax.plot(xtr, ytr, "o", mfc="none", mec="black", ms=3.5, mew=0.6, label=f"training points (seed {seed})")
        for c, s, pred in curves:
            color = c.color if c.color is not None else theta_color(c.hue) if isinstance(c.hue, float) else None
            ax.plot(xt[order], pred[order], lw=1.1, color=color, label=f"{c.label} (seed {s})")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title(title_part or "")
    handles = {}
    for ax in axes[0]:  # one legend below the panels (a cell may be missing from some), curves left uncovered
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lb, hd)
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(handles), 4), frameon=False, fontsize=8)
    fig.suptitle("Target and learned functions on the test points")
    fig.tight_layout()
    ctx.figure(fig, "fit", "Target f(x) (thick grey), training points (circles) and each cell's prediction on the test "
                           "points (arXiv v1 Figures 7-8, outputs)")
