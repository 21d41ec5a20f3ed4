"""Optuna's own figures of a study (optimisation history, importances, parallel coordinates, intermediate
values, Pareto front), as static PNG/SVG files or figures for a report."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from ..suite import Suite
from .cells import suite_cells
from .export import safe_name
from .storage import default_storage, open_storage
from .worker import quiet_optuna

__all__ = ["render_search_report", "search_figures", "suite_studies"]

def _ensure_backend() -> None:
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")


def render_search_report(study_or_storage: Any, out_dir: Path, study_name: Optional[str] = None,
                         formats: Sequence[str] = ("png", "svg")) -> List[Path]:
    """Optuna's own figures (matplotlib backend) of one study — or of every study of a storage when
    ``study_or_storage`` is a storage (URL/path/object) and ``study_name`` is None — saved as static files.

    Single objective: optimization history, parameter importances, parallel coordinates, intermediate values
    (when the trials reported any). Several objectives: the Pareto front (2 or 3 objectives) and history,
    importances and parallel coordinates per objective. Figures that need more trials are skipped.
    """
    import optuna

    quiet_optuna()
    _ensure_backend()
    import matplotlib.pyplot as plt

    if isinstance(study_or_storage, optuna.Study):
        studies = [study_or_storage]
    else:
        storage = open_storage(study_or_storage) if isinstance(study_or_storage, (str, Path)) else study_or_storage
        names = [study_name] if study_name else optuna.get_all_study_names(storage)
        studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []

    for study in studies:
        stem = safe_name(study.study_name)
        for kind, fig in search_figures(study):
            fig.suptitle(study.study_name, fontsize=9)
            fig.tight_layout()
            for fmt in formats:
                p = out_dir / f"{stem}-{kind}.{fmt}"
                fig.savefig(p, dpi=120)
                paths.append(p)
            plt.close(fig)
    return paths


def search_figures(study: Any):
    """Yield ``(kind, matplotlib Figure)`` of Optuna's own plots of one study (see render_search_report)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    quiet_optuna()
    _ensure_backend()
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    jobs: List[Tuple[str, Callable]] = []
    if len(names) == 1:
        jobs += [("history", lambda: ovm.plot_optimization_history(study, target_name=names[0])),
                 ("importances", lambda: ovm.plot_param_importances(study, target_name=names[0])),
                 ("parallel", lambda: ovm.plot_parallel_coordinate(study, target_name=names[0]))]
        if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            jobs.append(("intermediate", lambda: ovm.plot_intermediate_values(study)))
    else:
        if len(names) in (2, 3):
            jobs.append(("pareto", lambda: ovm.plot_pareto_front(study, target_names=names)))
        for i, n in enumerate(names):
            tgt = (lambda i: (lambda t: t.values[i]))(i)
            key = safe_name(n)
            jobs += [(f"history-{key}", (lambda tgt, n: lambda: ovm.plot_optimization_history(
                        study, target=tgt, target_name=n))(tgt, n)),
                     (f"importances-{key}", (lambda tgt, n: lambda: ovm.plot_param_importances(
                         study, target=tgt, target_name=n))(tgt, n)),
                     (f"parallel-{key}", (lambda tgt, n: lambda: ovm.plot_parallel_coordinate(
                         study, target=tgt, target_name=n))(tgt, n))]
    for kind, make in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = make()
            except Exception:  # noqa: BLE001 - e.g. importances need 2+ trials with varying params
                plt.close("all")
                continue
        yield kind, np.atleast_1d(ax).flat[0].figure


def suite_studies(suite: Suite, storage: Optional[str] = None, study_prefix: Optional[str] = None) -> List[Any]:
    """The existing Optuna studies of a suite's search, one per matrix cell, in suite order."""
    import optuna

    st = open_storage(storage or default_storage())
    existing = set(optuna.get_all_study_names(st))
    out = []
    for cell in suite_cells(suite):
        name = (study_prefix or suite.name) + (f"[{cell.label}]" if cell.label else "")
        if name in existing:
            out.append(optuna.load_study(study_name=name, storage=st))
    return out

