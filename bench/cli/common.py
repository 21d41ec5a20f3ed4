"""What every command shares: the consoles, the suite options, loading a suite (exit 2 with every problem),
the data check and the status tables."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import typer
from rich.console import Console
from rich.table import Table

from .. import paths
from ..suite import Suite, SuiteError

__all__ = ["err", "out", "SetOpt", "OnlyOpt", "SeedsOpt", "UriOpt", "DeviceOpt", "load_or_exit", "check_data_or_exit",
           "status_table", "check_executor", "resolve_device_or_exit", "write_guard", "store_file"]

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

SetOpt = typer.Option([], "--set", help="Override a suite field before expansion: key.path=value (repeatable).")
OnlyOpt = typer.Option([], "--only", help="Keep only runs whose resolved key.path equals value (repeatable).")
SeedsOpt = typer.Option(None, "--seeds", help="Comma-separated seeds replacing the suite's, e.g. 0,1,2.")
UriOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: SQLite in the results folder of "
                                                   "the suite's project; env IRN_TRACKING_URI, IRN_RESULTS).")
DeviceOpt = typer.Option("auto", help="auto | cpu | cuda | cuda:N")


def _seeds(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        err.print(f"--seeds: expected comma-separated integers, got {text!r}")
        raise typer.Exit(2)


def load_or_exit(suite: Path, sets: Sequence[str], only: Sequence[str], seeds: Optional[str]) -> Suite:
    """The checked suite (:func:`bench.validation.load_checked`), or exit 2 listing every problem."""
    from ..validation import load_checked  # torch, pandas: imported by the commands that need them

    try:
        return load_checked(suite, sets=sets, only=only, seeds=_seeds(seeds))
    except SuiteError as e:
        err.print(f"[bold red]error[/]: {e.path}: suite is not usable ({len(e.errors)} problem(s)); nothing was run:")
        for line in e.errors:
            err.print(f"  - {e.path}: {line}", markup=False)
        raise typer.Exit(2)


def check_data_or_exit(suite: Path, s: Suite) -> None:
    """Exit 2 before anything runs (or is created) when a data set a cell reads is missing: one line per data set
    with the command that fetches it."""
    from ..datasets import missing_data
    from ..tasks import build_task

    needs = []
    for sp in s.specs:
        try:
            needs.extend(build_task(sp.config["task"]).required_data())
        except ValueError:  # reported by the suite check
            continue
    problems = missing_data(needs)
    if problems:
        err.print(f"[bold red]error[/]: {suite}: {len(problems)} data set(s) the suite reads are not there; nothing was run:")
        for line in problems:
            err.print(f"  - {line}", markup=False)
        raise typer.Exit(2)


def check_executor(executor: Optional[str], jobs: int) -> str:
    """The executor to use (default: process when --jobs > 1, else local), or exit 2."""
    from ..executors import EXECUTORS

    ex = executor or ("process" if jobs > 1 else "local")
    try:
        EXECUTORS.get(ex)
    except ValueError as e:
        err.print(f"--executor: {e}")
        raise typer.Exit(2)
    return ex


def resolve_device_or_exit(device: str, s: Suite) -> str:
    from ..environment import resolve_device

    try:
        return resolve_device(device if device != "auto" else s.cfg.device)
    except ValueError as e:
        err.print(f"--device: {e}")
        raise typer.Exit(2)


def status_table(title: str, rows, columns) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def store_file(tracking_uri: Optional[str]) -> Optional[Path]:
    """The SQLite file of the store a command writes (for write_guard's messages); None if not SQLite or unusable."""
    try:
        return paths.sqlite_path(paths.store_uri(tracking_uri))
    except paths.StoreError:
        return None  # said by the command itself, inside the guard


def _free(path: Path) -> str:
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free in {folder}"
    return "free space unknown"


@contextlib.contextmanager
def write_guard(store: Optional[Path] = None, *files: Optional[Path]) -> Iterator[None]:
    """Turn a write that failed for lack of space (store, journal, artifacts, report) into one clear line and exit 1,
    and an unusable store (:class:`bench.paths.StoreError`) into one line and exit 2.
    Named: the file the error carries, else ``store`` for a database error (SQLite), else the first of ``files``."""
    try:
        yield
    except paths.StoreError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(2) from None
    except Exception as e:  # noqa: BLE001 - only out-of-space errors are handled; the rest re-raised
        cause = paths.no_space(e)
        dbs = [f for f in (*files, store) if f is not None and Path(f).suffix == ".db"]
        if cause is None and dbs and "database is locked" in str(e).lower():
            from ..tracking import lock_timeout, lock_timeout_error  # an SQLite store (e.g. Optuna's) stayed locked

            for db in dict.fromkeys(dbs):
                err.print(f"error: {lock_timeout_error(f'sqlite:///{db}', lock_timeout())}", markup=False)
            raise typer.Exit(2) from None
        if cause is None:
            raise
        if getattr(cause, "filename", None):
            path = Path(cause.filename)
        elif not isinstance(cause, OSError) and store is not None:
            path = store
        else:
            path = next((f for f in (*files, store) if f is not None), Path.cwd() / "results")
        text = getattr(cause, "strerror", None) or str(cause)
        what = next((ln for ln in text.splitlines() if "full" in ln or "space" in ln), text.splitlines()[0]).strip()
        err.print(f"error: cannot write {path}: {what} ({_free(path)}). Free some space (or point IRN_RESULTS / "
                  "--storage / --out elsewhere), then rerun the same command: everything already recorded is kept",
                  markup=False)
        raise typer.Exit(1) from None
