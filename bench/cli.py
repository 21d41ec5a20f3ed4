"""``bench`` — the command line: run, validate, list, ui (search and report: see their modules).

Exit codes: 0 every run finished (or was cached), 1 some runs failed, 2 unusable input.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .suite import SuiteError, load_suite

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="irn-bench: run, track, search and report suites of implicit residual network experiments.")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

SetOpt = typer.Option([], "--set", help="Override a suite field before expansion: key.path=value (repeatable).")
OnlyOpt = typer.Option([], "--only", help="Keep only runs whose resolved key.path equals value (repeatable).")
SeedsOpt = typer.Option(None, "--seeds", help="Comma-separated seeds replacing the suite's, e.g. 0,1,2.")
UriOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: SQLite under results/; env IRN_TRACKING_URI).")


def _seeds(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        err.print(f"--seeds: expected comma-separated integers, got {text!r}")
        raise typer.Exit(2)


def _load(suite: Path, sets, only, seeds):
    try:
        return load_suite(suite, sets=sets, only=only, seeds=_seeds(seeds))
    except SuiteError as e:
        err.print(f"[bold red]error[/]: {e.path}: suite is not usable ({len(e.errors)} problem(s)); nothing was run:")
        for line in e.errors:
            err.print(f"  - {e.path}: {line}", markup=False)
        raise typer.Exit(2)


def _check_data(suite: Path, s) -> None:
    """Exit 2 before anything runs (or is created) when a data set a cell reads is missing: one line per data set
    with the command that fetches it."""
    from .datasets import missing_data
    from .registries import build_task

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


def _status_table(title: str, rows, columns) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


@app.command()
def validate(suite: Path = typer.Argument(..., help="Suite YAML file."), set_: List[str] = SetOpt,
             only: List[str] = OnlyOpt, seeds: Optional[str] = SeedsOpt):
    """Check a suite (schema, registries, matrix, data sets on disk) without running anything."""
    s = _load(suite, set_, only, seeds)
    _check_data(suite, s)
    out.print(f"{suite}: OK — suite {s.name!r}, {len(s.specs)} run(s)")


@app.command("list")
def list_(suite: Path = typer.Argument(..., help="Suite YAML file."), set_: List[str] = SetOpt,
          only: List[str] = OnlyOpt, seeds: Optional[str] = SeedsOpt, tracking_uri: Optional[str] = UriOpt):
    """The expanded run matrix with each run's status in the store (finished/failed/running/pending)."""
    from .tracking import Tracker, missing_store

    s = _load(suite, set_, only, seeds)
    gone = missing_store(tracking_uri)
    if gone:  # a read-only command never creates a store: say where it looked
        rows = [(i + 1, sp.label, sp.hash, "pending") for i, sp in enumerate(s.specs)]
        out.print(_status_table(f"{s.name}: {len(rows)} run(s) — no store at {gone} (nothing has run there; "
                                "--tracking-uri or IRN_RESULTS select another)", rows, ["#", "run", "hash", "status"]))
        return
    tracker = Tracker(tracking_uri)
    status = tracker.status_by_hash(tracker.experiment_id(s.name, create=False))
    rows = [(i + 1, sp.label, sp.hash, status.get(sp.hash, "PENDING").lower()) for i, sp in enumerate(s.specs)]
    out.print(_status_table(f"{s.name}: {len(rows)} run(s) — store {tracker.uri}", rows, ["#", "run", "hash", "status"]))


@app.command()
def run(suite: Path = typer.Argument(..., help="Suite YAML file."),
        set_: List[str] = SetOpt, only: List[str] = OnlyOpt, seeds: Optional[str] = SeedsOpt,
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Parallel workers (process/dask executors)."),
        executor: Optional[str] = typer.Option(None, help="local | process | dask (default: process when --jobs > 1, "
                                                "else local)"),
        scheduler: Optional[str] = typer.Option(None, help="dask scheduler address (default: a LocalCluster)."),
        threads: int = typer.Option(0, min=0, help="torch threads per run (0: all cores / jobs). CPU results are "
                                    "bit-identical only for the same thread count."),
        tracking_uri: Optional[str] = UriOpt,
        force: bool = typer.Option(False, "--force", help="Rerun cells that already finished."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Show what would run; run nothing."),
        report: bool = typer.Option(True, "--report/--no-report", help="Render the suite's reports at the end.")):
    """Run every cell of a suite (cached cells are skipped), tracked in MLflow."""
    from .environment import resolve_device
    from .executors import EXECUTORS, execute
    from .runner import CellContext
    from .tracking import TAG_ROLE, TAG_SUITE, Tracker, results_dir

    if executor is None:
        executor = "process" if jobs > 1 else "local"
    if executor not in EXECUTORS:
        err.print(f"--executor: unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
        raise typer.Exit(2)
    s = _load(suite, set_, only, seeds)
    _check_data(suite, s)
    try:
        dev = resolve_device(device if device != "auto" else s.cfg.device)
    except ValueError as e:
        err.print(f"--device: {e}")
        raise typer.Exit(2)
    tracker = Tracker(tracking_uri)
    exp_id = tracker.experiment_id(s.name)
    tracker.close_stale_parents(exp_id)
    status = tracker.status_by_hash(exp_id)
    todo = [sp for sp in s.specs if force or status.get(sp.hash) != "FINISHED"]
    cached = len(s.specs) - len(todo)
    if dry_run:
        rows = [(sp.label, sp.hash, "run" if sp in todo else "cached") for sp in s.specs]
        out.print(_status_table(f"{s.name}: dry run — {len(todo)} to run, {cached} cached", rows, ["run", "hash", "action"]))
        raise typer.Exit(0)

    parent = tracker.start_run(exp_id, f"{s.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                               {TAG_ROLE: "parent", TAG_SUITE: s.name, "irn.command": shlex.join(sys.argv),
                                "irn.suite_file": str(Path(suite).resolve())})
    lock_dir = str(results_dir() / "locks")
    show_bars = err.is_terminal  # quiet (one line per run) when not a TTY
    epoch_bars = show_bars and executor == "local"  # per-run epoch bar: only for cells run in this process
    progress = None
    if show_bars:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=err, transient=False)
    jobs_list = []
    for sp in todo:
        jobs_list.append((sp.config, CellContext(suite=s.name, label=sp.label, spec_hash=sp.hash, tracking_uri=tracker.uri,
                                                 experiment_id=exp_id, parent_run_id=parent, lock_dir=lock_dir, device=dev,
                                                 force=force, overrides=sp.overrides, threads=threads or None)))
    counts = {"finished": 0, "failed": 0, "cached": cached, "busy": 0}
    results = []
    t0 = time.perf_counter()
    err.print(f"{s.name}: {len(s.specs)} run(s), {len(todo)} to run, {cached} cached — device {dev}, "
              f"executor {executor}" + (f" x{jobs}" if executor != "local" else "") + f" — store {tracker.uri}")
    suite_task = epoch_task = None
    if progress:
        progress.start()
        suite_task = progress.add_task("suite", total=len(todo))
        epoch_task = progress.add_task("run", total=1, visible=False)

    def on_start(ctx):
        if epoch_bars:
            progress.update(epoch_task, description=f"  {ctx.label}", completed=0, total=1, visible=True)

    def on_epoch(epoch, epochs):
        progress.update(epoch_task, completed=epoch, total=epochs)

    if epoch_bars:
        jobs_list = [(c, dataclasses.replace(ctx, progress=on_epoch)) for c, ctx in jobs_list]

    def on_result(res):
        counts[res.status] = counts.get(res.status, 0) + 1
        results.append(res)
        if res.status == "busy":  # revisited once this pass is over
            return
        line = f"[{res.status}] {res.label}" + (f" ({res.wall_time:.1f}s)" if res.wall_time else "") + \
               (f": {res.reason}" if res.reason else "")
        if progress:
            progress.update(suite_task, advance=1,
                            description=f"suite ({counts['finished']} done, {counts['failed']} failed, {counts['cached']} cached)")
            progress.console.print(line, markup=False)
        else:
            err.print(line, markup=False)

    from .executors import sigterm_as_interrupt

    sigterm_as_interrupt()  # `kill PID` stops the suite like Ctrl-C: workers stopped, runs marked KILLED
    try:
        execute(jobs_list, executor=executor, jobs=jobs, scheduler=scheduler, on_result=on_result, on_start=on_start)
        busy = {r.spec_hash for r in results if r.status == "busy"}
        if busy:  # cells another `bench run` was running: wait for them, then take its result (or run them)
            err.print(f"waiting for {len(busy)} run(s) that another process is running")
            results[:] = [r for r in results if r.status != "busy"]
            counts["busy"] = 0
            execute([(c, dataclasses.replace(ctx, wait=True)) for c, ctx in jobs_list if ctx.spec_hash in busy],
                    executor=executor, jobs=jobs, scheduler=scheduler, on_result=on_result, on_start=on_start)
    except KeyboardInterrupt:
        tracker.finish(parent, "KILLED")
        err.print("interrupted: finished runs are kept; rerun the same command to resume")
        raise typer.Exit(130)
    finally:
        if progress:
            progress.stop()
    wall = time.perf_counter() - t0
    tracker.finish(parent, "FAILED" if counts["failed"] else "FINISHED")

    rows = [(r.label, r.status, f"{r.wall_time:.1f}", r.reason or "") for r in results]
    out.print(_status_table(f"{s.name}: {counts['finished']} finished, {counts['failed']} failed, "
                            f"{counts['cached']} cached — {wall:.1f}s",
                            rows, ["run", "status", "seconds", "reason"]))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        err.print(f"{len(failed)} run(s) failed (reason and traceback are in their MLflow runs):")
        for r in failed:
            err.print(f"  - {r.label}: {r.reason}", markup=False)
    if report and s.cfg.reports:
        from .report import render_suite

        try:
            path = Path(render_suite(s, tracking_uri=tracker.uri))
            out.print(f"report: {path / 'index.html' if path.is_dir() else path}")
        except Exception as e:  # noqa: BLE001 - the runs are tracked; the report can be rebuilt
            err.print(f"report failed ({type(e).__name__}: {e}); the runs are kept — retry with: bench report {suite}",
                      markup=False)
    out.print(f"MLflow UI: bench ui{' --tracking-uri ' + shlex.quote(tracking_uri) if tracking_uri else ''}  "
              f"(store {tracker.uri})")
    raise typer.Exit(1 if failed else 0)


@app.command()
def ui(tracking_uri: Optional[str] = UriOpt, port: int = typer.Option(5000, help="Port on 127.0.0.1.")):
    """Start the MLflow UI on 127.0.0.1 against the same store."""
    from .tracking import artifact_root, resolve_uri

    uri = resolve_uri(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    err.print(f"MLflow UI on http://127.0.0.1:{port} (store {uri}); Ctrl-C stops it")
    os.execv(sys.executable, cmd)


data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="The image data sets (MNIST, CIFAR-10, CIFAR-100): list, import offline, download.")
app.add_typer(data_app, name="data")
RootOpt = typer.Option(None, "--root", help="Data root (default $IRN_DATA_ROOT, else results/data).")


@data_app.command("list")
def data_list(root: Optional[str] = RootOpt,
              verify: bool = typer.Option(True, "--verify/--no-verify", help="Check every file's MD5 (default).")):
    """Each data set: where it is expected, present or missing, checksums verified, size."""
    from .datasets import dataset_names, status

    rows = []
    for name in dataset_names():
        st = status(name, root, verify=verify)
        if st.state == "missing":
            note = f"none of its {len(st.missing)} files: bench data import {name} <folder or archive>"
        else:
            note = ", ".join([f"missing {f}" for f in st.missing] + [f"corrupt {f}" for f in st.corrupt])
        rows.append((name, st.state, f"{st.size / 2**20:.1f} MiB", str(st.folder.resolve()), note))
    out.print(_status_table("data sets", rows, ["name", "status", "size", "folder", "problems"]))


@data_app.command("import")
def data_import(name: str = typer.Argument(..., help="mnist | cifar10 | cifar100"),
                path: Path = typer.Argument(..., help="A folder (searched recursively) or a .tar/.tar.gz/.tgz/.zip "
                                                      "archive holding the raw or gzipped files."),
                root: Optional[str] = RootOpt,
                force: bool = typer.Option(False, "--force", help="Replace files already there even if intact.")):
    """Copy a data set into the data root in torchvision's layout, every file verified against the official
    checksum first (a wrong or corrupt file: nothing is written, exit 2)."""
    from .datasets import import_dataset
    from .tasks.data import DataError

    try:
        st = import_dataset(name, path, root, force=force)
    except DataError as e:
        err.print(f"[bold red]error[/]: bench data import {name} {path}: {e}")
        raise typer.Exit(2)
    out.print(f"{name}: {st.state}, {len(st.present)} file(s), {st.size / 2**20:.1f} MiB in {st.folder.resolve()}")


@data_app.command("download")
def data_download(name: str = typer.Argument(..., help="mnist | cifar10 | cifar100"), root: Optional[str] = RootOpt):
    """Download a data set with torchvision (needs internet), then verify it."""
    from .datasets import download
    from .tasks.data import DataError

    try:
        st = download(name, root)
    except DataError as e:
        err.print(f"[bold red]error[/]: bench data download {name}: {e}")
        raise typer.Exit(1)
    out.print(f"{name}: {st.state} in {st.folder.resolve()}")


def _register_plugins() -> None:
    """Commands that live with their module: ``bench search`` (bench.search), ``bench report`` (bench.report).
    Each module exposes ``register_cli(app)``."""
    import importlib

    for name in ("bench.search", "bench.report"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        if hasattr(mod, "register_cli"):
            mod.register_cli(app)


_register_plugins()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from .environment import git_commit

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


if __name__ == "__main__":
    main()
