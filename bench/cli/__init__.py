"""``bench`` — the command line, composed from one module per command group:

=============================  =====================================
``validate``, ``list``, ``run``, ``ui``   :mod:`bench.cli.run`
``search``                     :mod:`bench.cli.search`
``report``                     :mod:`bench.cli.report`
``data list|import|download``  :mod:`bench.cli.data`
=============================  =====================================

Options shared by several commands live in :mod:`bench.cli.common`. Nothing else in bench imports this package.
Exit codes: 0 every run finished (or was cached), 1 some runs failed, 2 unusable input, 130 interrupted.
"""
from __future__ import annotations

import typer

from . import data, report, run, search
from .common import out

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="irn-bench: run, track, search and report suites of implicit residual network experiments.")
app.command()(run.validate)
app.command("list")(run.list_)
app.command()(run.run)
app.command()(search.search)
app.command("report")(report.report)
app.command()(run.ui)
app.add_typer(data.data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from ..environment import git_commit

        try:
            v = version("irn-bench")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
            v = "unknown"
        g = git_commit()
        out.print(f"irn-bench {v} (git {g['commit']}{' + uncommitted changes' if g.get('dirty') else ''})")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and git commit, then exit.")):
    """irn-bench: run, track, search and report suites of implicit residual network experiments."""


def main() -> None:  # console script
    app()
