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

from pathlib import Path
from typing import List, Optional

from .registry import check_reports, get_report, register_report, report_kinds, resolve_entry
from .render import ReportError, render_suite

__all__ = ["render_suite", "register_cli", "check_reports", "register_report", "get_report", "report_kinds",
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


def register_cli(app) -> None:
    """Add ``bench report SUITE [--tracking-uri URI] [--out DIR] [--set ...] [--only ...]``."""
    import typer

    from ..cli import OnlyOpt, SetOpt, UriOpt, _load, err, out

    @app.command("report")
    def report(suite: Path = typer.Argument(..., help="Suite YAML file."), set_: List[str] = SetOpt,
               only: List[str] = OnlyOpt, tracking_uri: Optional[str] = UriOpt,
               out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: reports/<suite-name>).")):
        """Render the suite's reports: from its runs in the tracking store to reports/<suite-name>/."""
        s = _load(suite, set_, only, None)
        if not s.cfg.reports:
            err.print(f"{suite}: reports: the suite has no report entries; add e.g. `reports: [{{kind: training_curves}}]` "
                      f"(kinds: {', '.join(report_kinds())})", markup=False)
            raise typer.Exit(2)
        try:
            path = render_suite(s, tracking_uri=tracking_uri, out_dir=out_dir)
        except ReportError as e:
            err.print(f"error: {e}", markup=False)
            raise typer.Exit(2)
        out.print(f"report: {path / 'index.html'}", markup=False)
