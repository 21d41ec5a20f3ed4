"""vector_field: the learned field F(γ, y) on the 2-D state plane with the trajectories of the training
data through the network, initial states (blue) and final states (red) — journal Figure 8 top (ex1),
Figure 10 top (ex3)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..registry import register_report
from ._model import block_trajectory, inputs, state_model_groups


@register_report("vector_field", {"hue": None, "split_by": None, "seed": None, "test": True, "grid": 21, "step": "last"},
                 doc="learned 2-D vector field with train (black) / test (grey) trajectories, initial (blue) and final "
                     "(red) states; one panel per cell (first finished seed, or seed:)")
def render(ctx, e):
    for suffix, title_part, hue, items in state_model_groups(ctx, e, "vector_field"):
        panels = []
        for c, row, model, task, cfg in items:
            train, _, test = task.data(int(row["seed"]))
            xtr, ytr = inputs(train)
            tr = block_trajectory(model, xtr)
            if tr[0].shape[1] != 2:
                ctx.note(f"{c.label}: the state has {tr[0].shape[1]} dimensions; vector_field draws 2-D states only.")
                continue
            te = None
            if e["test"] and test is not None and getattr(model, "output", "") != "trajectory":
                te = block_trajectory(model, inputs(test)[0])
            data_pts = ytr.numpy() if (ytr.dim() == 3 and ytr.shape[-1] == 2) else None
            panels.append((c, row, model, tr, te, data_pts))
        if not panels:
            continue
        _figure(ctx, panels, e, hue, title_part, suffix)


def _figure(ctx, panels, e, hue, title_part, suffix):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(panels)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol, 3.8 * nrow), squeeze=False)
    for ax, (c, row, model, tr, te, data_pts) in zip(axes.flat, panels):
        states = np.stack([t.numpy() for t in tr], 1)  # (B, T+1, 2)
        allpts = states.reshape(-1, 2)
        if te is not None:
            tes = np.stack([t.numpy() for t in te], 1)
            allpts = np.concatenate([allpts, tes.reshape(-1, 2)])
        if data_pts is not None:
            allpts = np.concatenate([allpts, data_pts.reshape(-1, 2)])
        lo, hi = allpts.min(0), allpts.max(0)
        pad = 0.12 * np.maximum(hi - lo, 1e-3)
        lo, hi = lo - pad, hi + pad
        g = int(e["grid"])
        X, Y = np.meshgrid(np.linspace(lo[0], hi[0], g), np.linspace(lo[1], hi[1], g))
        block = model.block
        field = block.field_at(block.steps if e["step"] == "last" else max(1, min(int(e["step"]), block.steps)))
        with torch.no_grad():
            pts = torch.tensor(np.stack([X.ravel(), Y.ravel()], 1), dtype=next(model.parameters()).dtype)
            F = field(pts).numpy()
        U, V = F[:, 0].reshape(X.shape), F[:, 1].reshape(X.shape)
        speed = np.hypot(U, V)
        sp = ax.streamplot(X, Y, U, V, color=speed, cmap="Greys", density=0.9, linewidth=0.7, arrowsize=0.8)
        sp.lines.set_rasterized(True)  # (its arrow patches stay vector: matplotlib cannot rasterise them)
        for b in range(states.shape[0]):
            ax.plot(states[b, :, 0], states[b, :, 1], color="black", lw=0.8, alpha=0.8)
        if te is not None:
            for b in np.unique(np.linspace(0, tes.shape[0] - 1, min(tes.shape[0], 40)).round().astype(int)):
                ax.plot(tes[b, :, 0], tes[b, :, 1], color="0.55", lw=0.5, ls="--", alpha=0.7)
        if data_pts is not None:
            ax.plot(data_pts[..., 0].ravel(), data_pts[..., 1].ravel(), ".", color="tab:orange", ms=2.5)
        traj_task = getattr(model, "output", "") == "trajectory"
        style = "o" if traj_task else "-"
        ax.plot(states[:, 0, 0], states[:, 0, 1], style, color="tab:blue", lw=2, ms=4)
        ax.plot(states[:, -1, 0], states[:, -1, 1], style, color="tab:red", lw=2, ms=4)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel("$y_1$")
        ax.set_ylabel("$y_2$")
        ax.set_title(f"{c.label} (seed {int(row['seed'])})", color=c.color if c.color is not None else "black")
        ax.grid(False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [Line2D([], [], color="black", lw=0.8), Line2D([], [], color="tab:blue", lw=2),
               Line2D([], [], color="tab:red", lw=2)]
    labels = ["train trajectories", "initial states $y_0$", "final states $y_T$"]
    if any(p[4] is not None for p in panels):
        handles.append(Line2D([], [], color="0.55", ls="--", lw=0.8))
        labels.append("test trajectories")
    if any(p[5] is not None for p in panels):
        handles.append(Line2D([], [], color="tab:orange", marker=".", ls="none"))
        labels.append("data")
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), frameon=False)
    fig.suptitle("Learned vector fields F(γ, y)" + (f" — {title_part}" if title_part else ""))
    fig.tight_layout()
    ctx.figure(fig, suffix, "Learned vector field (streamlines, darker = faster) with trajectories through the "
                            "network; blue: initial states, red: final states after T steps")
