"""``bench validate``, ``bench list``, ``bench run`` and ``bench ui``: a suite's cells, checked, listed, run and
browsed. Heavy modules (torch, MLflow) are imported inside the commands: ``bench --help`` stays fast."""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .. import paths
from ..tracking import redact
from .common import (DeviceOpt, OnlyOpt, SeedsOpt, SetOpt, UriOpt, check_data_or_exit, check_executor, err,
                     load_or_exit, out, resolve_device_or_exit, status_table, store_file, write_guard)

__all__ = ["validate", "list_", "run", "ui"]


def validate(suite: Path = typer.Argument(..., help="Suite YAML file."), set_: List[str] = SetOpt,
             only: List[str] = OnlyOpt, seeds: Optional[str] = SeedsOpt):
    """Check a suite (schema, registries, matrix, data sets on disk) without running anything."""
    with paths.pinned(suite):
        s = load_or_exit(suite, set_, only, seeds)
        check_data_or_exit(suite, s)
    out.print(f"{suite}: OK — suite {s.name!r}, {len(s.specs)} run(s)")


def list_(suite: Path = typer.Argument(..., help="Suite YAML file."), set_: List[str] = SetOpt,
          only: List[str] = OnlyOpt, seeds: Optional[str] = SeedsOpt, tracking_uri: Optional[str] = UriOpt):
    """The expanded run matrix with each run's status in the store (finished/failed/running/pending)."""
    from ..tracking import Tracker, missing_store

    with paths.pinned(suite), write_guard():
        s = load_or_exit(suite, set_, only, seeds)
        gone = missing_store(tracking_uri)
        if gone:  # a read-only command never creates a store: say where it looked
            rows = [(i + 1, sp.label, sp.hash, "pending") for i, sp in enumerate(s.specs)]
            out.print(status_table(f"{s.name}: {len(rows)} run(s) — no store at {gone} (nothing has run there; "
                                   "--tracking-uri or IRN_RESULTS select another)", rows, ["#", "run", "hash", "status"]))
            return
        tracker = Tracker(tracking_uri)
        status = tracker.status_by_hash(tracker.experiment_id(s.name, create=False))
    rows = [(i + 1, sp.label, sp.hash, status.get(sp.hash, "PENDING").lower()) for i, sp in enumerate(s.specs)]
    out.print(status_table(f"{s.name}: {len(rows)} run(s) — store {redact(tracker.uri)}", rows, ["#", "run", "hash", "status"]))


def run(suite: Path = typer.Argument(..., help="Suite YAML file."),
        set_: List[str] = SetOpt, only: List[str] = OnlyOpt, seeds: Optional[str] = SeedsOpt,
        device: str = DeviceOpt,
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Parallel workers (process/dask executors)."),
        executor: Optional[str] = typer.Option(None, help="local | process | dask (default: process when --jobs > 1, "
                                                "else local)"),
        scheduler: Optional[str] = typer.Option(None, help="dask scheduler address (default: a LocalCluster)."),
        threads: int = typer.Option(0, min=0, help="torch threads per run (0: all cores / jobs). CPU results are "
                                    "bit-identical only for the same thread count: each run records its count, and "
                                    "a finished run with another count is redone when --threads is given."),
        tracking_uri: Optional[str] = UriOpt,
        force: bool = typer.Option(False, "--force", help="Rerun cells that already finished."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Show what would run; run nothing."),
        report: bool = typer.Option(True, "--report/--no-report", help="Render the suite's reports at the end.")):
    """Run every cell of a suite (cached cells are skipped), tracked in MLflow."""
    chosen = executor is not None
    executor = check_executor(executor, jobs)
    with paths.pinned(suite), write_guard(store_file(tracking_uri), paths.results_dir()):
        _run(suite, set_, only, seeds, device, jobs, executor, scheduler, threads, tracking_uri, force, dry_run, report,
             chosen)


def _run(suite, set_, only, seeds, device, jobs, executor, scheduler, threads, tracking_uri, force, dry_run, report,
         chosen=True):
    from ..executors import execute, fresh_process_per_job, sigterm_as_interrupt
    from ..runner import CellContext
    from ..tracking import TAG_COMMAND, TAG_ROLE, TAG_SUITE, TAG_SUITE_FILE, Tracker

    s = load_or_exit(suite, set_, only, seeds)
    check_data_or_exit(suite, s)
    dev = resolve_device_or_exit(device, s)
    fresh = fresh_process_per_job(dev)
    if fresh and not chosen:
        executor = "process"  # each cell in a fresh process (bench.executors.fresh_process_per_job)
    tracker = Tracker(tracking_uri)
    exp_id = tracker.experiment_id(s.name)
    tracker.close_stale_parents(exp_id)
    from ..runner import reusable

    done = tracker.finished_tags(exp_id)
    redo = {h for h, tags in done.items() if not reusable(tags, dev, threads, threads > 0)}
    todo = [sp for sp in s.specs if force or sp.hash not in done or sp.hash in redo]
    cached = len(s.specs) - len(todo)
    if dry_run:
        def action(sp):
            if sp not in todo:
                return "cached"
            return f"rerun (recorded with {done[sp.hash].get('irn.threads')} threads)" if sp.hash in redo and not force \
                else "run"
        rows = [(sp.label, sp.hash, action(sp)) for sp in s.specs]
        out.print(status_table(f"{s.name}: dry run — {len(todo)} to run, {cached} cached", rows, ["run", "hash", "action"]))
        raise typer.Exit(0)

    parent = None  # a rerun with everything cached records nothing: no empty parent run
    if todo:
        parent = tracker.start_run(exp_id, f"{s.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                   {TAG_ROLE: "parent", TAG_SUITE: s.name, TAG_COMMAND: shlex.join(sys.argv),
                                    TAG_SUITE_FILE: str(Path(suite).resolve())})
    lock_dir = str(paths.results_dir() / "locks")
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
                                                 force=force, overrides=sp.overrides, threads=threads or None,
                                                 threads_asked=threads > 0)))
    counts = {"finished": 0, "failed": 0, "cached": cached, "busy": 0}
    results = []
    t0 = time.perf_counter()
    err.print(f"{s.name}: {len(s.specs)} run(s), {len(todo)} to run, {cached} cached — device {dev}, "
              f"executor {executor}" + (f" x{jobs}" if executor != "local" else "")
              + (", a fresh process per cell" if executor == "process" and fresh else "")
              + f" — store {redact(tracker.uri)}"
              f" — data {paths.data_root()}")
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
        if parent:
            tracker.close_dead_cells(exp_id, parent)  # a worker that had to be SIGKILLed could not mark its run
            tracker.finish(parent, "KILLED")
        err.print("interrupted: finished runs are kept; rerun the same command to resume")
        raise typer.Exit(130)
    finally:
        if progress:
            progress.stop()
    wall = time.perf_counter() - t0
    if parent:
        tracker.finish(parent, "FAILED" if counts["failed"] else "FINISHED")

    rows = [(r.label, r.status, f"{r.wall_time:.1f}", r.reason or "") for r in results]
    out.print(status_table(f"{s.name}: {counts['finished']} finished, {counts['failed']} failed, "
                           f"{counts['cached']} cached — {wall:.1f}s",
                           rows, ["run", "status", "seconds", "reason"]))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        err.print(f"{len(failed)} run(s) failed (reason and traceback are in their MLflow runs):")
        for r in failed:
            err.print(f"  - {r.label}: {r.reason}", markup=False)
    if report and s.cfg.reports:
        from ..report import render_suite

        try:
            path = Path(render_suite(s, tracking_uri=tracker.uri))
            out.print(f"report: {path / 'index.html' if path.is_dir() else path}")
        except Exception as e:  # noqa: BLE001 - the runs are tracked; the report can be rebuilt
            err.print(f"report failed ({type(e).__name__}: {e}); the runs are kept — retry with: bench report {suite}",
                      markup=False)
    out.print(f"MLflow UI: bench ui{' --tracking-uri ' + shlex.quote(redact(tracking_uri)) if tracking_uri else ''}  "
              f"(store {redact(tracker.uri)})")
    raise typer.Exit(1 if failed else 0)


def ui(tracking_uri: Optional[str] = UriOpt,
       host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes the store to the network)."),
       port: int = typer.Option(5000, min=1, max=65535, help="Port."),
       workers: int = typer.Option(1, min=1, help="Server worker processes.")):
    """Start the MLflow UI against the same store (one worker, on 127.0.0.1 unless --host says otherwise)."""
    from ..tracking import artifact_root, resolve_uri

    with write_guard():
        uri = resolve_uri(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    err.print(f"MLflow UI on http://{host}:{port} (store {redact(uri)}); Ctrl-C stops it")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # MLflow's and its server's deprecation notices: not ours to act on
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # else 7 background job consumers (~1.6 GB)
    os.execv(sys.executable, cmd)
