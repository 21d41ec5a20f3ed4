"""iterations_grid: journal Figure 7 — the forward solver's work per θ-step of the trained network, over a grid
of ``rows`` (default α_div) × ``cols`` (default θ), at the last epoch, with a reference's values beside.

Ours: solver evaluations per θ-step = F-evaluations per θ-step (``solver/<layer>/fwd_nfe``, summed over a layer's
steps in one forward, divided by ``model.steps``, one for a single-step layer) less the evaluations every implicit
step makes outside the iteration: the initial residual, the explicit guess x + hF(x) (``initial_guess: explicit``)
and the output update x + hΦ(x, ŷ) (``returns: update``). For L-BFGS that leaves one per closure (F and its VJP),
the authors' statistic exactly (AUTHORS-CODE §1.5: closure evaluations, 0 for a solve skipped at its initial guess).
Averaged over the last epoch's training steps and the layers, then over seeds; the CSV has the F-evaluations too."""
from __future__ import annotations

import math
import re

import pandas as pd

from ...suitefile import get_path
from ..output import fmt_num, key_label
from ..references import check_reference, suite_reference
from ..registry import register_report
from ._common import t_interval

_PAT = re.compile(r"^solver/(.+)/fwd_nfe$")


def _overhead(cfg) -> int:
    """F-evaluations an implicit step makes outside the solver's iteration (0 for an explicit step)."""
    if float(get_path(cfg, "model.layer.theta", 0.0) or 0.0) == 0.0:
        return 0
    from irn_core.layers import DEFAULT_INITIAL_GUESS, DEFAULT_RETURNS

    return (1 + (get_path(cfg, "model.layer.initial_guess", DEFAULT_INITIAL_GUESS) == "explicit")
            + (get_path(cfg, "model.layer.returns", DEFAULT_RETURNS) == "update"))


def _check(e):
    return check_reference(e["reference"])


def _close(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


@register_report("iterations_grid",
                 {"rows": "regularizers.divergence.weight", "cols": "model.layer.theta", "reference": None,
                  "reference_metric": "forward_iters_per_step", "decimals": 1},
                 doc="Figure 7: forward F-evaluations per θ-step of the trained network (last epoch) over rows × cols, "
                     "mean over seeds, a reference's values beside", check=_check)
def render(ctx, e):
    data, ep = ctx.data, ctx.data.epochs
    fin = ctx.finished
    if fin.empty or ep.empty:
        ctx.note("No finished run: nothing to tabulate.")
        return
    per_run = {}
    for h, rows in ep[ep["spec_hash"].isin(fin["spec_hash"])].groupby("spec_hash"):
        last = rows.sort_values("epoch").iloc[-1]
        cols = [c for c in rows.columns if _PAT.match(c)]
        vals = [float(last[c]) for c in cols if not pd.isna(last[c])]
        steps = float(get_path(data.config(h), "model.steps", 1) or 1)
        per_run[h] = sum(vals) / len(vals) / steps if vals else 0.0  # no solver logged: θ = 0, no solve
    ref = suite_reference(ctx, e["reference"], {"metric", "value", e["cols"]})
    if ref is not None:
        ref = ref[ref["metric"] == e["reference_metric"]]
        if "epoch" in ref.columns:
            ref = ref.sort_values("epoch").groupby([c for c in ref.columns if c not in ("epoch", "value")],
                                                   dropna=False, as_index=False).last()
    rk, ck, dec = e["rows"], e["cols"], int(e["decimals"])
    cfg = {h: data.config(h) for h in fin["spec_hash"]}
    rvals = sorted({get_path(c, rk, None) for c in cfg.values()}, key=lambda v: (v is None, v))
    cvals = sorted({get_path(c, ck, None) for c in cfg.values()}, key=lambda v: (v is None, v))
    disp, num = [], []
    for rv in rvals:
        drow = {key_label(rk): fmt_num(rv, 2) if isinstance(rv, float) else str(rv)}
        for cv in cvals:
            hs = [h for h, c in cfg.items() if _close(get_path(c, rk, None), rv) and _close(get_path(c, ck, None), cv)]
            m, hw, n = t_interval([per_run[h] - _overhead(cfg[h]) for h in hs if h in per_run])
            mf = t_interval([per_run[h] for h in hs if h in per_run])[0]
            col = f"{key_label(ck)}={cv:g}" if isinstance(cv, float) else f"{key_label(ck)}={cv}"
            drow[col] = "—" if n == 0 else fmt_num(m, dec) + (f" ± {fmt_num(hw, dec)}" if n > 1 else "")
            a = float("nan")
            if ref is not None:
                sel = ref[ref[ck].map(lambda v: _close(v, cv))]
                if rk in ref.columns:
                    sel = sel[sel[rk].map(lambda v: _close(v, rv))]
                a = float(sel["value"].iloc[0]) if len(sel) == 1 else float("nan")
                drow[col + " authors"] = fmt_num(a, dec)
            num.append({rk: rv, ck: cv, "solver_evals_per_step": m, "ci95_halfwidth": hw, "fevals_per_step": mf,
                        "n_seeds": n, "reference": a})
        disp.append(drow)
    ns = sorted({r["n_seeds"] for r in num if r["n_seeds"]})
    cap = (f"Forward solver evaluations per θ-step of the trained network (last epoch: F-evaluations less the initial "
           f"residual, an explicit guess and the output update), rows = {key_label(rk)}, columns = "
           f"{key_label(ck)}; mean over {'/'.join(map(str, ns))} seed(s)" + (" ± 95 % t half-width" if max(ns, default=1) > 1
                                                                             else "")
           + (f"; 'authors' = {e['reference']} ({e['reference_metric']}, closure evaluations per step at their last "
              "logged epoch, the same count)" if ref is not None else "") + ".")
    ctx.table(pd.DataFrame(disp), pd.DataFrame(num), "", cap)
    _figure(ctx, pd.DataFrame(num), rk, ck, ref is not None)


def _figure(ctx, num, rk, ck, with_ref):
    import matplotlib.pyplot as plt

    from ..output import hue_colors

    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    rows = list(dict.fromkeys(num[rk]))
    colors = hue_colors(rk, rows)
    for rv in rows:
        d = num[num[rk] == rv]
        lab = f"{key_label(rk)}={rv:g}" if isinstance(rv, float) else f"{key_label(rk)}={rv}"
        ax.plot(d[ck], d["solver_evals_per_step"], marker="o", color=colors.get(rv), label=lab)
        if with_ref and d["reference"].notna().any():
            ax.plot(d[ck], d["reference"], marker="o", mfc="white", ls="--", lw=1.0, color=colors.get(rv))
    ax.set_xlabel(key_label(ck))
    ax.set_ylabel("forward solver evaluations per θ-step")
    ax.set_title("Forward solver work of the trained network (last epoch)")
    h, l = ax.get_legend_handles_labels()
    if with_ref:
        from matplotlib.lines import Line2D

        h += [Line2D([], [], color="black", marker="o"), Line2D([], [], color="black", ls="--", marker="o", mfc="white")]
        l += ["this project", "authors"]
    ax.legend(h, l, fontsize=7)
    fig.tight_layout()
    ctx.figure(fig, "", "Forward work per θ-step vs " + key_label(ck) + (" (dashed: the authors')" if with_ref else ""))
