"""``bench report``: render a suite's reports from its runs in the tracking store."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import paths
from .common import OnlyOpt, SetOpt, UriOpt, err, load_or_exit, out, write_guard

__all__ = ["report"]


def report(suite: Path = typer.Argument(..., help="Suite YAML file."), set_: List[str] = SetOpt,
           only: List[str] = OnlyOpt, tracking_uri: Optional[str] = UriOpt,
           out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: reports/<suite-name> in "
                                                  "the suite's project).")):
    """Render the suite's reports: from its runs in the tracking store to reports/<suite-name>/."""
    from ..report import ReportError, render_suite, report_kinds

    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        err.print(f"--out {out_dir}: is a file; give a folder (it is created if missing)", markup=False)
        raise typer.Exit(2)
    with paths.pinned(suite), write_guard(None, out_dir or paths.reports_dir("report", suite=suite).parent):
        s = load_or_exit(suite, set_, only, None)
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
