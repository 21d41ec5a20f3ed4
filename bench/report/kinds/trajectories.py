"""trajectories: discrete rollouts of the trained network (top) and continuous-time rollouts of its
learned field (bottom) against the data, with the training horizon marked where the rollout
extrapolates beyond it — journal Figure 9 (ex2) and Figure 11 (ex3); plus their errors as a table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..output import default_hue, mean_std, split_groups
from ..registry import register_report
from ._common import make_cells, mean_sd, split_by_default
from ._model import ModelUnavailable, inputs, is_state_model, load_model


def _exact_from(task, z0: np.ndarray, t0: np.ndarray, t: np.ndarray):
    """Reference solutions from per-sample start times: z(t0 + t), (batch, len(t), d); ex2 only."""
    if getattr(task, "name", "") != "ex2_stiff":
        return None
    from ...tasks.ode import stiff_solution

    return np.stack([stiff_solution(z0[i:i + 1, 0], t0[i] + t, t0=float(t0[i]))[0] for i in range(len(t0))])[..., None]


def _exact(task, x0: np.ndarray, t: np.ndarray):
    """Dense reference solution (batch, len(t), d) for tasks that have one, else None (t uniform from 0)."""
    name = getattr(task, "name", "")
    if name == "ex2_stiff":
        from ...tasks.ode import stiff_solution

        return stiff_solution(x0[:, 0], t)[..., None]
    if name == "ex3_lotka":
        from ...tasks.ode import lotka_solution

        dt = float(t[1] - t[0])
        return np.stack([lotka_solution((float(a), float(b)), dt, len(t) - 1) for a, b in x0])
    return None


def _check(e):
    errs = []
    if not isinstance(e["sample"], int) or e["sample"] < 0:
        errs.append(f"sample: must be a test-trajectory index >= 0 (got {e['sample']!r})")
    if e["horizon"] is not None and not (isinstance(e["horizon"], (int, float)) and e["horizon"] > 0):
        errs.append(f"horizon: must be a positive time (got {e['horizon']!r})")
    c = e["continuous"]
    if c is not None and not (isinstance(c, dict) and set(c) == {"theta", "h"}
                              and all(isinstance(c[k], (int, float)) and not isinstance(c[k], bool) for k in c)
                              and 0 <= c["theta"] <= 1 and c["h"] > 0):
        errs.append(f"continuous: omit it (scipy's `method`) or give {{theta: θ in [0, 1], h: > 0}} (got {c!r})")
    return errs


@register_report("trajectories",
                 {"hue": None, "split_by": None, "seed": None, "sample": 0, "horizon": None, "method": "LSODA",
                  "n_points": 400, "decimals": 4, "explicit_steps": 1000, "continuous": None},
                 doc="discrete network rollouts (top) and continuous-time rollouts of the learned field (bottom) vs "
                     "the data on the test horizon, the training horizon marked; RMSE table", check=_check)
def render(ctx, e):
    split_by = split_by_default(ctx, e["split_by"])
    hue = default_hue(ctx.data, ctx.runs, e["hue"])
    for suffix, title_part, runs in split_groups(ctx.runs, split_by):
        cells = make_cells(ctx, runs, hue, exclude=(split_by,) if split_by else ())
        panels, table, num = [], [], []
        for c in cells:
            errs = {"discrete": {"in": [], "out": []}, "continuous": {"in": [], "out": []}}
            drifts = {"discrete": [], "continuous": []}
            medians = {"discrete": [], "continuous": []}
            left = {"discrete": [], "continuous": []}
            maxerr = {"discrete": [], "continuous": []}
            shown = None
            for _, row in c.finished.sort_values("seed").iterrows():
                try:
                    res = _rollouts(ctx, row, e)
                except ModelUnavailable as ex:
                    ctx.note(str(ex))
                    continue
                if res is None:
                    break
                if (e["seed"] is None and shown is None) or (e["seed"] is not None and int(row["seed"]) == int(e["seed"])):
                    shown = res
                for kind in ("discrete", "continuous"):  # per-run values for claims on derived/… metrics
                    for part in ("in", "out"):
                        if res["rmse"][kind][part] is not None:
                            ctx.derive(row["spec_hash"], f"derived/rmse/{kind}/{part}", res["rmse"][kind][part])
                    if kind in res["drift"]:
                        ctx.derive(row["spec_hash"], f"derived/invariant_drift/{kind}", res["drift"][kind])
                        ctx.derive(row["spec_hash"], f"derived/invariant_drift_median/{kind}",
                                   res["drift"]["median"][kind])
                    if "max_error" in res["rmse"]:
                        ctx.derive(row["spec_hash"], f"derived/max_error/{kind}", res["rmse"]["max_error"][kind])
                for kind in ("discrete", "continuous"):
                    for part in ("in", "out"):
                        v = res["rmse"][kind][part]
                        if v is not None:
                            errs[kind][part].append(v)
                    if kind in res["drift"]:
                        drifts[kind].append(res["drift"][kind])
                        medians[kind].append(res["drift"]["median"][kind])
                        left[kind].append(res["drift"]["left"][kind])
                    if "max_error" in res["rmse"]:
                        maxerr[kind].append(res["rmse"]["max_error"][kind])
            if shown is not None:
                panels.append((c, shown))
            drow = {"cell": c.label}
            nrow = {"cell": c.label, "theta": c.hue if hue and hue.endswith("theta") else None,
                    "status": "finished" if len(c.finished) else c.status_text}
            for kind in ("discrete", "continuous"):
                for part, name in (("in", "≤ train horizon"), ("out", "extrapolation")):
                    vals = errs[kind][part]
                    drow[f"RMSE {kind} {name}"] = (mean_std(vals, int(e["decimals"])) if vals else
                                                   ("—" if len(c.finished) else c.status_text))
                    m, sd, n = mean_sd(vals)
                    nrow[f"rmse/{kind}/{part}/mean"], nrow[f"rmse/{kind}/{part}/std"], nrow["n_seeds"] = m, sd, n
            for kind, vals in maxerr.items():
                if vals:
                    drow[f"max |error| {kind} ≤ train horizon"] = mean_std(vals, int(e["decimals"]))
                    nrow[f"max_error/{kind}/mean"] = mean_sd(vals)[0]
            for kind, vals in drifts.items():
                if vals:
                    fin = [v for v in vals if math.isfinite(v)]
                    drow[f"invariant drift {kind}"] = (mean_std(fin, 3) if len(fin) == len(vals)
                                                       else f"leaves z > 0 ({len(vals) - len(fin)}/{len(vals)} seeds)")
                    nrow[f"invariant_drift/{kind}/mean"] = mean_sd(vals)[0] if len(fin) == len(vals) else float("inf")
                    med = [v for v in medians[kind] if math.isfinite(v)]
                    drow[f"median orbit drift {kind}"] = (mean_std(med, 3) if len(med) == len(medians[kind])
                                                          else f"∞ in {len(medians[kind]) - len(med)}/{len(medians[kind])} seeds")
                    nrow[f"invariant_drift_median/{kind}/mean"] = mean_sd(medians[kind])[0] if med else float("inf")
                    drow[f"orbits leaving z > 0 {kind}"] = ", ".join(f"{a}/{b}" for a, b in left[kind])
            table.append(drow)
            num.append(nrow)
        if not panels:
            if any(len(c.finished) for c in cells):
                ctx.note(f"{title_part or 'trajectories'}: the runs' models have no rollout (needs an mlp_ode model "
                         "with output: trajectory on a trajectory task).")
            continue
        disp = pd.DataFrame(table).fillna("—")
        if not any(p[1]["t_train"] < p[1]["horizon"] - 1e-9 for p in panels):
            disp = disp[[c for c in disp.columns if "extrapolation" not in c]]
        ctx.table(disp, pd.DataFrame(num), suffix,
                  f"Root-mean-square error of the rollouts against the exact solution on all test trajectories"
                  f"{' — ' + title_part if title_part else ''}, up to the training horizon and beyond it "
                  f"(extrapolation); mean ± std over seeds"
                  + ("; invariant drift (ex3): per orbit, the max over the rollout of |V(z(t)) − V(z(0))| / (V(z(0)) − V*), V the "
                     "Lotka–Volterra invariant, V* its minimum (the equilibrium) — 0 for a flow that stays on its orbit, 1 for "
                     "one that spirals into the equilibrium, ∞ for one that leaves z > 0; "
                     "'invariant drift' is its mean over the test orbits (∞ if any leaves), 'median orbit drift' its "
                     "median over them (mean ± std over seeds), and 'orbits leaving' counts them per seed" if
                     any("invariant_drift/continuous/mean" in r for r in num) else "") + ".")
        _figure(ctx, panels, e, title_part, suffix)


def _rollouts(ctx, row, e):
    from irn_core.analysis import rollout

    model, task, cfg = load_model(ctx, row)
    if not is_state_model(model) or not hasattr(model, "rollout") or getattr(model, "output", "") != "trajectory":
        return None
    train, _, test = task.data(int(row["seed"]))
    x0, yte = inputs(test)
    _, ytr = inputs(train)
    t_train = float(task.target_horizon(ytr)) if hasattr(task, "target_horizon") else float(model.horizon)
    horizon = float(e["horizon"] or (task.target_horizon(yte) if hasattr(task, "target_horizon") else model.horizon))
    h = float(model.h)
    steps = int(round(horizon / h))
    horizon = steps * h
    with torch.no_grad():
        disc = model.rollout(x0.float(), horizon=horizon).numpy()  # (B, S+1, d)
    t_steps = np.arange(steps + 1) * h
    timed = bool(getattr(model, "timed", False))
    if timed:  # fields in absolute time: the authors' "continuous" solution, θ = 0 with 1000 steps (h/50 here)
        z0, t0 = x0[:, :-1].float(), x0[:, -1]
        fine = int(e["explicit_steps"])
        cont_dense = model.block.explicit_rollout(model.lift(z0), t0, fine).numpy()
        t_dense = np.linspace(0.0, horizon, fine + 1)
        cont_steps = cont_dense[:, np.rint(t_steps / (horizon / fine)).astype(int)]
        x0n = x0[:, :-1].numpy().astype(np.float64)
        t0n = t0.numpy().astype(np.float64)
        exact_steps, exact_dense = _exact_from(task, x0n, t0n, t_steps), _exact_from(task, x0n, t0n, t_dense)
    else:
        y0 = model.lift(x0.float())
        if e["continuous"] is not None:  # the learned field's flow by small θ-steps (the authors' ex3: θ = .5, h = .01)
            cont_steps, t_dense, cont_dense = _theta_flow(model.block, y0, t_steps, horizon, e)
        else:
            _, cont_steps = rollout(model.block, y0, t_steps, method=e["method"])
            cont_steps = cont_steps.numpy().transpose(1, 0, 2)
            t_dense = np.linspace(0.0, horizon, int(e["n_points"]))
            _, cont_dense = rollout(model.block, y0, t_dense, method=e["method"])
            cont_dense = cont_dense.numpy().transpose(1, 0, 2)
        x0n = x0.numpy().astype(np.float64)
        exact_steps = _exact(task, x0n, t_steps)
        exact_dense = _exact(task, x0n, t_dense)
    d = disc.shape[-1]
    if exact_steps is None:  # the test targets at their sample times
        P = yte.shape[1]
        t_data = np.arange(1, P + 1) * (float(task.target_horizon(yte)) / P)
        idx = np.rint(t_data / h).astype(int)
        ref, dsel = yte.numpy(), disc[:, idx]
        csel = cont_steps[:, idx]
        tsel = t_data
    else:
        ref, dsel, csel, tsel = exact_steps, disc, cont_steps, t_steps
    rm = {}
    if exact_steps is not None:  # the largest error anywhere on the training interval, off the data points too
        inside_s, inside_d = t_steps <= t_train + 1e-9, t_dense <= t_train + 1e-9
        rm["max_error"] = {"discrete": float(np.max(np.abs(disc[:, inside_s] - exact_steps[:, inside_s]))),
                           "continuous": float(np.max(np.abs(cont_dense[:, inside_d] - exact_dense[:, inside_d])))}
    for kind, pred in (("discrete", dsel), ("continuous", csel)):
        rm[kind] = {}
        for part, mask in (("in", tsel <= t_train + 1e-9), ("out", tsel > t_train + 1e-9)):
            rm[kind][part] = float(np.sqrt(np.mean((pred[:, mask] - ref[:, mask]) ** 2))) if mask.any() else None
    drift = {}
    if getattr(task, "name", "") == "ex3_lotka":  # staying on the orbit: the Lotka–Volterra invariant along the rollout
        per = {k: _orbit_drifts(v) for k, v in (("discrete", disc), ("continuous", cont_dense))}
        drift = {k: float(np.mean(v)) for k, v in per.items()}  # = _invariant_drift, each orbit computed once
        drift["median"] = {k: float(np.median(v)) for k, v in per.items()}
        drift["left"] = {k: (int(np.isinf(v).sum()), len(v)) for k, v in per.items()}
    s = min(int(e["sample"]), x0.shape[0] - 1)
    return {"drift": drift, "seed": int(row["seed"]), "t_steps": t_steps, "disc": disc[s], "t_dense": t_dense, "cont": cont_dense[s],
            "exact": None if exact_dense is None else exact_dense[s], "data_t": np.arange(1, yte.shape[1] + 1) *
            (float(task.target_horizon(yte)) / yte.shape[1]) if hasattr(task, "target_horizon") else None,
            "data": yte.numpy()[s], "x0": x0n[s], "t_train": t_train, "horizon": horizon, "d": d, "rmse": rm,
            "sample": s}


def _theta_flow(block, y0, t_steps, horizon: float, e):
    """The ``continuous: {theta, h}`` rollout at the network's step times and on a uniform grid of about ``n_points``
    multiples of h ending at the horizon: (states at t_steps, grid times, states on the grid), (batch, time, d)."""
    from irn_core.analysis import theta_rollout

    hc = float(e["continuous"]["h"])
    fine = int(round(horizon / hc))
    stride = max(1, fine // (int(e["n_points"]) - 1))
    while fine % stride:  # a uniform grid that ends at the horizon
        stride -= 1
    k_dense = np.arange(0, fine + 1, stride)
    k_steps = np.rint(t_steps / hc).astype(np.int64)
    ks = np.union1d(k_dense, k_steps)
    _, states = theta_rollout(block, y0, ks * hc, theta=float(e["continuous"]["theta"]), h=hc)
    states = states.numpy().transpose(1, 0, 2)
    return states[:, np.searchsorted(ks, k_steps)], k_dense * hc, states[:, np.searchsorted(ks, k_dense)]


def _orbit_drifts(states: np.ndarray) -> np.ndarray:
    """Per trajectory: max over the rollout of |V(z(t)) − V(z(0))| / (V(z(0)) − V*), V the Lotka–Volterra invariant
    (conserved by the true flow), V* its minimum (at the equilibrium): 0 on the orbit, 1 for a flow that spirals into
    the equilibrium, unbounded for one that spirals out; ∞ when it leaves the positive quadrant (V undefined there).
    Dividing by the orbit's height V(z(0)) − V* and not by V(z(0)) makes the measure independent of V's arbitrary
    additive constant (by V(z(0)), collapsing onto the equilibrium from (1, 1) would score 0.09)."""
    from ...tasks.ode import lotka_equilibrium, lotka_invariant

    z = np.asarray(states, dtype=np.float64)
    out = np.full(z.shape[0], np.inf)
    ok = np.isfinite(z).all(axis=(1, 2)) & (z > 0).all(axis=(1, 2))
    if ok.any():
        V = lotka_invariant(z[ok][..., 0], z[ok][..., 1])
        v_min = lotka_invariant(*lotka_equilibrium())
        out[ok] = np.max(np.abs(V - V[:, :1]), axis=1) / (V[:, 0] - v_min)
    return out


def _invariant_drift(states: np.ndarray) -> float:
    """The orbit drift (:func:`_orbit_drifts`) averaged over the trajectories: ∞ when any one leaves z > 0."""
    return float(np.mean(_orbit_drifts(states)))


def _figure(ctx, panels, e, title_part, suffix):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(panels)
    ncol = min(n, 3)  # cells wrap into rows of 3, each a pair of rows: discrete above continuous
    blocks = -(-n // ncol)
    fig, axes = plt.subplots(2 * blocks, ncol, figsize=(4.0 * ncol, 5.6 * blocks), squeeze=False, sharey="row")
    for ax in list(axes.flat):
        ax.set_visible(False)
    styles = ["-", "--", ":"]
    for jj, (c, r) in enumerate(panels):
        b, j = divmod(jj, ncol)
        for i, (key, t, states, title) in enumerate((("disc", r["t_steps"], r["disc"], "network (discrete steps)"),
                                                    ("cont", r["t_dense"], r["cont"], "learned field, continuous time"))):
            ax = axes[2 * b + i][j]
            ax.set_visible(True)
            for k in range(r["d"]):
                if r["exact"] is not None:
                    ax.plot(r["t_dense"], r["exact"][:, k], color="black", lw=1.0, ls=styles[k % 3])
                else:
                    ax.plot(np.concatenate([[0.0], r["data_t"]]), np.concatenate([[r["x0"][k]], r["data"][:, k]]), "o",
                            color="black", ms=3)
                ax.plot(t, states[:, k], color=c.color, lw=1.4, ls=styles[k % 3],
                        marker="." if key == "disc" and len(t) <= 60 else None, ms=3)
            # the y-range of the data (with a margin), not of a rollout that blows up (which would flatten
            # every panel of the row): a model leaving the frame is marked instead
            ref = r["exact"] if r["exact"] is not None else r["data"]
            lo, hi = float(np.nanmin(ref)), float(np.nanmax(ref))
            pad = 0.6 * max(hi - lo, 1e-6)
            ax.set_ylim(lo - pad, hi + pad)
            finite = states[np.isfinite(states)]
            if finite.size < states.size or (finite.size and (finite.min() < lo - pad or finite.max() > hi + pad)):
                peak = float(np.nanmax(np.abs(finite))) if finite.size else float("inf")
                ax.text(0.98, 0.04, f"leaves the frame (|z| up to {peak:.2g})", transform=ax.transAxes, fontsize=7,
                        ha="right", va="bottom", color=c.color if c.color is not None else "black")
            if r["horizon"] > r["t_train"] + 1e-9:
                ax.axvline(r["t_train"], color="0.3", ls=":", lw=1.0)
                ax.text(r["t_train"], ax.get_ylim()[1], " extrapolation →", fontsize=7, va="top", ha="left", color="0.3")
            ax.set_xlabel("t")
            ax.set_ylabel("state $z$" if j == 0 else "")
            ax.set_title(f"{c.label}: {title}", color=c.color if c.color is not None else "black", fontsize=9)
    handles = [Line2D([], [], color="black", lw=1.0), Line2D([], [], color="0.4", lw=1.4)]
    labels = ["exact solution (data)", "model (colour: θ)"]
    if panels[0][1]["d"] > 1:
        handles += [Line2D([], [], color="0.4", ls=styles[k % 3]) for k in range(panels[0][1]["d"])]
        labels += [f"$z_{k + 1}$" for k in range(panels[0][1]["d"])]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), frameon=False)
    where = ("top", "bottom") if blocks == 1 else ("upper row of each pair", "lower row")
    fig.suptitle(f"Test trajectory {panels[0][1]['sample']}: network rollout ({where[0]}) and continuous-time rollout of "
                 f"the learned field ({where[1]})" + (f" — {title_part}" if title_part else ""))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()) if blocks > 1 else None)  # room for the title
    ctx.figure(fig, suffix, "Top (of each pair of rows): the trained network's discrete rollout; bottom: the learned "
                            "vector field integrated "
                            + (f"by θ = {e['continuous']['theta']:g} steps of h = {e['continuous']['h']:g} (the authors' "
                               "\"continuous\" solution)" if e["continuous"] is not None else
                               "in continuous time (solve_ivp; for fields indexed by absolute time, the authors' θ = 0 "
                               "with explicit_steps steps, t measured from each trajectory's t0)")
                            + "; black: exact solution; dotted line: end of the training "
                            "interval (journal Figures 9 and 11)")
