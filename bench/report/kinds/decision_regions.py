"""decision_regions: what a classifier of 2-D points predicts over the plane, with the training points
(filled) and the held-out points (hollow; misclassified ones crossed) — arXiv v1 Figure 9 (two spirals,
with and without perturbation streams). One panel per cell; the model is reloaded from the run's
``model/state_dict.pt`` and evaluated on a grid on the CPU."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..registry import register_report
from ._model import inputs, model_groups


def _check(e):
    errs = []
    if not isinstance(e.get("grid"), int) or not 10 <= e["grid"] <= 1000:
        errs.append(f"grid: an integer in [10, 1000] (got {e.get('grid')!r})")
    if not isinstance(e.get("margin"), (int, float)) or e["margin"] < 0:
        errs.append(f"margin: a number >= 0 (got {e.get('margin')!r})")
    return errs


@register_report("decision_regions", {"hue": None, "split_by": None, "seed": None, "grid": 150, "margin": 0.15},
                 check=_check,
                 doc="classifier of 2-D inputs: predicted class (shade = confidence) over the plane with train "
                     "(filled) and held-out (hollow, x = misclassified) points; one panel per cell")
def render(ctx, e):
    for suffix, title_part, hue, items in model_groups(ctx, e, "decision regions"):
        panels = []
        for c, row, model, task, cfg in items:
            if getattr(task, "kind", "") != "classification":
                ctx.note(f"{c.label}: decision_regions needs a classification task, got {task.name!r}.")
                continue
            train, _, test = task.data(int(row["seed"]))
            xtr, ytr = inputs(train)
            if xtr.dim() != 2 or xtr.shape[1] != 2:
                ctx.note(f"{c.label}: inputs of shape {tuple(xtr.shape[1:])}; decision_regions draws 2-D inputs only.")
                continue
            xte, yte = inputs(test) if test is not None else (None, None)
            panels.append((c, row, model, task, xtr, ytr, xte, yte))
        if panels:
            _figure(ctx, panels, e, title_part, suffix)


def _predict(model, task, pts: torch.Tensor) -> torch.Tensor:
    """(points, classes) probabilities as the task reads its model's output (softmax of logits, or a sigmoid head)."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        return task.probabilities(model(pts.to(dtype))).float()


def _figure(ctx, panels, e, title_part, suffix):
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D

    allx = torch.cat([torch.cat([p[4]] + ([p[6]] if p[6] is not None else [])) for p in panels]).numpy()
    lo, hi = allx.min(0), allx.max(0)
    pad = float(e["margin"]) * np.maximum(hi - lo, 1e-3)
    lo, hi = lo - pad, hi + pad
    g = int(e["grid"])
    X, Y = np.meshgrid(np.linspace(lo[0], hi[0], g), np.linspace(lo[1], hi[1], g))
    grid = torch.tensor(np.stack([X.ravel(), Y.ravel()], 1), dtype=torch.float32)
    n = len(panels)
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.3 * nrow), squeeze=False)
    k_max = 2
    for ax, (c, row, model, task, xtr, ytr, xte, yte) in zip(axes.flat, panels):
        prob = _predict(model, task, grid)
        k = prob.shape[1]
        k_max = max(k_max, k)
        colors = plt.get_cmap("tab10" if k > 2 else "coolwarm")(np.linspace(0, 1, k) if k <= 2 else np.arange(k))
        if k == 2:  # shade = P(class 1) in bands (flat bands keep the PNG small): boundary = the 0.5 contour
            p1 = prob[:, 1].reshape(X.shape).numpy()
            cs = ax.contourf(X, Y, p1, levels=[0.0, 0.1, 0.5, 0.9, 1.0],
                             colors=["#8fa8e8", "#c9d5f5", "#f5c9c4", "#e8958c"], vmin=0, vmax=1)
            ax.contour(X, Y, p1, levels=[0.5], colors="black", linewidths=0.9).set_rasterized(True)
        else:
            cls = prob.argmax(1).reshape(X.shape).numpy()
            cs = ax.contourf(X, Y, cls, levels=np.arange(k + 1) - 0.5, cmap=ListedColormap(colors), alpha=0.45)
        cs.set_rasterized(True)  # the filled contours are the bulk of an SVG
        pt_colors = colors[ytr.numpy()]
        ax.scatter(xtr[:, 0], xtr[:, 1], c=pt_colors, s=9, edgecolors="black", linewidths=0.3, zorder=3, rasterized=True)
        title = f"{c.label}"
        if xte is not None:
            pred = _predict(model, task, xte.float()).argmax(1)
            wrong = (pred != yte).numpy()
            ax.scatter(xte[:, 0], xte[:, 1], facecolors="none", edgecolors=colors[yte.numpy()], s=14, linewidths=0.8,
                       zorder=3, rasterized=True)
            if wrong.any():
                ax.scatter(xte[wrong, 0], xte[wrong, 1], marker="x", color="black", s=18, linewidths=0.9, zorder=4)
            title += f"\nheld-out top-1 {100.0 * (1 - wrong.mean()):.1f} % (seed {int(row['seed'])})"
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_title(title, fontsize=9, color=c.color if c.color is not None else "black")
        ax.grid(False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [Line2D([], [], marker="o", ls="none", color="0.4", markeredgecolor="black", ms=4),
               Line2D([], [], marker="o", ls="none", markerfacecolor="none", markeredgecolor="0.3", ms=5),
               Line2D([], [], marker="x", ls="none", color="black", ms=5)]
    labels = ["train points", "held-out points", "held-out, misclassified"]
    if k_max == 2:
        handles.append(Line2D([], [], color="black", lw=1.0))
        labels.append("decision boundary P = ½")
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), frameon=False)
    fig.suptitle("Decision regions" + (f" — {title_part}" if title_part else ""))
    fig.tight_layout()
    ctx.figure(fig, suffix, "Decision regions: shade = predicted class probability (bands at 0.1, 0.5, 0.9), black "
                            "line = boundary; "
                            "filled markers = training points, hollow = held-out points, x = held-out misclassified")
