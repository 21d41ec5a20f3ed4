"""``search`` — Optuna's own figures of the suite's search studies (one study per matrix cell):
optimisation history, parameter importances, parallel coordinates, intermediate values (pruning), and the
Pareto front for several objectives. Reads the Optuna storage, not MLflow (the trials are also nested
MLflow runs of the experiment ``<suite>-search``)."""
from __future__ import annotations

from ..registry import register_report


@register_report("search", {"storage": None, "study": None},
                 doc="Optuna figures of the suite's search studies: history, importances, parallel coordinates, "
                     "Pareto front (storage: default results/optuna.journal; study: the name prefix)",
                 needs_runs=False)
def render(ctx, e):
    from ...search import safe_name, search_figures, suite_studies  # Optuna: only when this kind renders

    suite = ctx.data.suite
    if suite.cfg.search is None:
        ctx.note("the suite has no search: block")
        return
    try:
        studies = suite_studies(suite, storage=e["storage"], study_prefix=e["study"])
    except Exception as err:  # noqa: BLE001 - a storage that is not there yet
        ctx.note(f"no search storage readable ({type(err).__name__}: {err}); run `bench search` first")
        return
    if not studies:
        ctx.note("no study of this suite in the storage yet; run `bench search` first")
        return
    for study in studies:
        n = 0
        for kind, fig in search_figures(study):
            fig.suptitle(study.study_name, fontsize=9)
            ctx.figure(fig, suffix=f"{safe_name(study.study_name)}-{kind}",
                       caption=f"{study.study_name}: {kind.replace('-', ' ')}")
            n += 1
        if not n:
            ctx.note(f"{study.study_name}: no complete trial yet")
