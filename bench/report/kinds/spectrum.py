"""spectrum: stability regions |R(z)| ≤ 1 of the θ-method with contours of the stability function
(journal Figure 3), and the eigenvalues z = hλ of ∂F(γ, y)/∂y along the learned trajectories of the
train (small red dots, on top) and test (open blue circles) data over the region of the run's θ (Figure 8 bottom, Figure 10
bottom); the axes zoom to the eigenvalues (``extent`` fixes them).

For the claims it derives, per finished run, the linearised stability of the learned steps along the train
trajectories: ``derived/max_amplification/train`` = max |R(z)| over those eigenvalues (> 1: some direction grows
in a step) and ``derived/unstable_fraction/train`` = the fraction with |R(z)| > 1 (arXiv v1 Figure 7: "explicit
ResNet is unstable, … all implicit networks are stable")."""
from __future__ import annotations

import math

import numpy as np

from ..output import theta_color
from ..registry import register_report
from ._model import ModelUnavailable, block_trajectory, inputs, is_state_model, load_model, state_model_groups

LEVELS = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]


def _check(e):
    lv = e["levels"]
    if not isinstance(lv, list) or not all(isinstance(v, (int, float)) and v > 0 for v in lv):
        return [f"levels: must be a list of positive numbers (got {lv!r})"]
    return []


def _region(ax, theta, re, im, levels, n=301):
    from irn_core.analysis import stability_region

    Z, R, inside = stability_region(theta, re=re, im=im, n=n)
    ax.contourf(Z.real, Z.imag, inside.astype(float), levels=[0.5, 1.5], colors=["0.82"]).set_rasterized(True)
    Rc = np.where(np.isfinite(R), R, 1e6)
    cs = ax.contour(Z.real, Z.imag, Rc, levels=sorted(levels), colors="0.35", linewidths=0.6)
    ax.clabel(cs, fontsize=6, fmt="%g")
    if theta > 0 and re[0] <= 1 / theta <= re[1]:
        ax.plot([1 / theta], [0], "x", color="black", ms=5)
    ax.axhline(0, color="0.5", lw=0.4)
    ax.axvline(0, color="0.5", lw=0.4)
    ax.set_xlim(*re)
    ax.set_ylim(*im)
    ax.set_aspect("equal")
    ax.set_xlabel("Re z")
    ax.set_ylabel("Im z")
    ax.grid(False)


@register_report("spectrum", {"hue": None, "split_by": None, "seed": None, "test": True, "levels": LEVELS,
                              "extent": None, "regions": True},
                 doc="stability regions of the θ values (Figure 3) and Jacobian eigenvalues z = hλ along the learned "
                     "train (red) / test (blue) trajectories over each cell's region (Figure 8 bottom)", check=_check)
def render(ctx, e):
    z_train = _derive_stability(ctx)
    thetas = sorted({float(t) for t in ctx.runs["theta"].dropna()})
    if e["regions"] and thetas:
        _regions_figure(ctx, thetas, e)
    for suffix, title_part, hue, items in state_model_groups(ctx, e, "spectrum"):
        panels = []
        for c, row, model, task, cfg in items:
            _, _, test = task.data(int(row["seed"]))
            zte = None
            if e["test"] and test is not None:
                zte = _spectrum(model, test)
            theta = float(cfg["model"]["layer"]["theta"])
            panels.append((c, row, theta, z_train[row["run_id"]], zte))
        if panels:
            _spectra_figure(ctx, panels, e, title_part, suffix)


def _spectrum(model, ds) -> np.ndarray:
    """Eigenvalues z = hλ of ∂F/∂y along the trajectories of the data set ``ds``, t = 0..T, flattened."""
    from irn_core.analysis import trajectory_spectra

    return np.concatenate([v.numpy().ravel() for v in
                           trajectory_spectra(model.block, block_trajectory(model, inputs(ds)[0]), scaled=True)])


def step_stability(z: np.ndarray, theta: float):
    """(max |R(z)|, fraction of z with |R(z)| > 1) over the finite eigenvalues z = hλ; R the θ-method's stability
    function (eq 13), a pole hit counts as infinite amplification."""
    from irn_core.analysis import stability_function

    z = z[np.isfinite(z)]
    if not z.size:
        return math.nan, math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(stability_function(z, theta))
    r = np.where(np.isnan(r), np.inf, r)
    return float(r.max()), float(np.mean(r > 1.0 + 1e-9))


def _derive_stability(ctx) -> dict:
    """derived/max_amplification/train and derived/unstable_fraction/train of every finished run (for claims);
    returns each state-space run's train eigenvalues by run id (the figures draw them)."""
    z_train = {}
    for _, row in ctx.finished.iterrows():
        try:
            model, task, cfg = load_model(ctx, row)
        except ModelUnavailable:
            continue  # the figures note it
        if not is_state_model(model):
            continue
        z = z_train[row["run_id"]] = _spectrum(model, task.data(int(row["seed"]))[0])
        amp, frac = step_stability(z, float(cfg["model"]["layer"]["theta"]))
        ctx.derive(row["spec_hash"], "derived/max_amplification/train", amp)
        ctx.derive(row["spec_hash"], "derived/unstable_fraction/train", frac)
    return z_train


def _regions_figure(ctx, thetas, e):
    import matplotlib.pyplot as plt

    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Patch, Rectangle

    n = len(thetas)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.3), squeeze=False)
    re, im = (-4.0, 4.0), (-3.0, 3.0)
    for ax, th in zip(axes[0], thetas):
        # red: where the fixed-point iteration of the layer contracts, θ|z| < 1 (eq 18 for the test equation)
        if th > 0:
            ax.add_patch(Circle((0, 0), 1 / th, facecolor="tab:red", alpha=0.25, edgecolor="none", zorder=1.5))
        else:  # θ = 0: no solve, every z qualifies
            ax.add_patch(Rectangle((re[0], im[0]), re[1] - re[0], im[1] - im[0], facecolor="tab:red", alpha=0.25,
                                   edgecolor="none", zorder=1.5))
        _region(ax, th, re, im, e["levels"])
        # hatched: the spectrum of a spectrally normalised 1-Lipschitz F (h = 1) lies in |z| ≤ 1
        ax.add_patch(Circle((0, 0), 1.0, facecolor="none", edgecolor="black", hatch="////", lw=0.8, zorder=3))
        ax.set_title(f"θ = {th:g}", color=theta_color(th))
    handles = [Patch(facecolor="0.82"), Patch(facecolor="tab:red", alpha=0.25),
               Patch(facecolor="none", edgecolor="black", hatch="////"), Line2D([], [], color="black", marker="x", ls="none")]
    labels = ["stability region |R(z)| ≤ 1", "contractive fixed-point iteration θ|z| < 1",
              "spectrum of a 1-Lipschitz F (h = 1)", "pole z = 1/θ"]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, frameon=False, fontsize=8)
    fig.suptitle("Stability regions |R(z)| ≤ 1 (grey) and contours of |R(z)|, R(z) = (1 + (1−θ)z)/(1 − θz)")
    fig.tight_layout()
    ctx.figure(fig, "regions", "Stability regions of θ-method layers (grey, |R(z)| ≤ 1) with contours of |R(z)|; red: "
                               "where the layer's fixed-point iteration contracts (θ|z| < 1); hatched: the disc |z| ≤ 1 "
                               "holding the spectrum of a 1-Lipschitz field; × marks the pole z = 1/θ (journal Figure 3)")


def zoom(z: np.ndarray, floor: float = 0.25, cap: float = 1e3):
    """Axis limits (re, im) around the eigenvalues: the box holding every finite z, widened by 30 % and to at least
    ``floor`` on each side of 0 (the origin, where the stability regions of every θ meet, stays in view), centred on
    0 in the imaginary direction (spectra of real matrices are symmetric)."""
    z = z[np.isfinite(z)]
    if not z.size:
        return (-3.0, 3.0), (-3.0, 3.0)
    lo, hi = min(float(z.real.min()), 0.0), max(float(z.real.max()), 0.0)
    pad = max(0.3 * (hi - lo), floor)
    re = (max(lo - pad, -cap), min(hi + pad, cap))
    r_im = min(max(float(np.abs(z.imag).max()) * 1.3, 0.5 * (re[1] - re[0]) * 0.6, floor), cap)
    return re, (-r_im, r_im)


def _spectra_figure(ctx, panels, e, title_part, suffix):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(panels)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.8 * ncol, 3.6 * nrow), squeeze=False)
    allz = np.concatenate([np.concatenate([p[3]] + ([p[4]] if p[4] is not None else [])) for p in panels])
    if e["extent"]:
        re, im = tuple(e["extent"][0]), tuple(e["extent"][1])
    else:
        re, im = zoom(allz)
    for ax, (c, row, theta, ztr, zte) in zip(axes.flat, panels):
        _region(ax, theta, re, im, e["levels"])
        # test: open blue circles underneath; train: small filled red dots on top — neither hides the other
        if zte is not None:
            ax.plot(zte.real, zte.imag, "o", mfc="none", mec="tab:blue", ms=5, mew=0.5, alpha=0.35, rasterized=True)
        ax.plot(ztr.real, ztr.imag, "o", color="tab:red", ms=2.2, mew=0, alpha=0.9, zorder=4, rasterized=True)
        ax.set_title(f"{c.label} (seed {int(row['seed'])})", color=c.color if c.color is not None else "black")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [Line2D([], [], color="tab:red", marker="o", ms=4, mew=0, ls="none"),
               Line2D([], [], marker="o", mfc="none", mec="tab:blue", ls="none"), Line2D([], [], color="0.82", lw=6)]
    fig.legend(handles, ["train", "test", "stability region |R(z)| ≤ 1"], loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=3, frameon=False)
    fig.suptitle("Eigenvalues z = hλ of ∂F(γ, y)/∂y along the learned trajectories, t = 0..T"
                 + (f" — {title_part}" if title_part else ""))
    fig.tight_layout()
    ctx.figure(fig, suffix or "spectra", "Jacobian eigenvalues (scaled by h) along the trajectories of the train (red) "
                                         "(red dots) and test (open blue circles) data over each run's stability "
                                         "region (grey) and |R(z)| contours, zoomed to the eigenvalues (journal "
                                         "Figure 8 bottom)")
