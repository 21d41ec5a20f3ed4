"""``bench report``: paper-style tables and figures regenerated from the MLflow tracking store.

    from bench.report import render_suite
    render_suite(load_suite("suites/quickstart.yaml"))          # -> reports/quickstart/

Every entry of a suite's ``reports:`` list names a registered kind (one module each in
:mod:`bench.report.kinds`) plus its options; ``where: {dotted.path | case: value}`` selects the runs.
Outputs: ``index.md``, ``index.html`` (opens from disk: figures linked relatively), tables as .md,
.tex (booktabs) and .csv, figures as .png and .svg — byte-identical for the same runs.

Kinds: accuracy_vs_noise, training_curves, solver_cost, vector_field, spectrum, trajectories,
depth_vs_accuracy (see ``bench report --help`` or :func:`describe`).
"""
from __future__ import annotations

from . import kinds  # noqa: F401  (registers the built-in kinds)
from .registry import check_reports, get_report, register_report, report_kinds, resolve_entry
from .render import ReportError, render_suite

__all__ = ["render_suite", "check_reports", "register_report", "get_report", "report_kinds",
           "resolve_entry", "ReportError", "describe"]


def describe() -> str:
    """Every kind with its options and defaults (for --help and docs)."""
    from .registry import COMMON

    lines = [f"common options: {', '.join(f'{k}={v!r}' for k, v in COMMON.items())}"]
    for name in report_kinds():
        k = get_report(name)
        opts = ", ".join(f"{o}={v!r}" for o, v in k.options.items())
        lines.append(f"{name}: {k.doc}\n    options: {opts or '(none)'}")
    return "\n".join(lines)
