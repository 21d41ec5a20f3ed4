"""``bench search``: tune a suite's ``search:`` block with Optuna (see :mod:`bench.search`)."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from .. import paths
from ..tracking import redact
from .common import (DeviceOpt, OnlyOpt, SeedsOpt, SetOpt, UriOpt, check_executor, err, load_or_exit, out,
                     resolve_device_or_exit, status_table, store_file, write_guard)

__all__ = ["search"]


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def search(suite: Path = typer.Argument(..., help="Suite YAML file with a search: block."),
           storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: a journal file path "
                                                 "(default results/optuna.journal; safe for processes on one "
                                                 "machine) or an RDB URL (sqlite:///…, postgresql://…)."),
           study: Optional[str] = typer.Option(None, "--study", help="Study name (prefix, per matrix cell "
                                               "'<name>[<cell>]'); default: the suite name."),
           n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="Total trials per study "
                                                  "(overrides search.n_trials); a rerun continues up to it."),
           timeout: Optional[float] = typer.Option(None, "--timeout", min=0.001, help="Seconds for this "
                                                   "invocation: no trial starts after it."),
           jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Parallel worker processes on the storage."),
           executor: Optional[str] = typer.Option(None, help="local | process | dask (default: local for "
                                                  "--jobs 1, else process)."),
           scheduler: Optional[str] = typer.Option(None, help="dask scheduler address (default: a LocalCluster)."),
           device: str = DeviceOpt,
           set_: List[str] = SetOpt, only: List[str] = OnlyOpt, seeds: Optional[str] = SeedsOpt,
           tracking_uri: Optional[str] = UriOpt,
           export: Optional[Path] = typer.Option(None, "--export", help="Write a ready-to-run suite with the "
                                                 "best parameters (Pareto set: one case per trial)."),
           export_only: bool = typer.Option(False, "--export-only", help="Run no trial; only export/figures."),
           figures: Optional[Path] = typer.Option(None, "--figures", help="Write the studies' figures "
                                                  "(PNG+SVG) into this folder."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Show the studies and their progress; run nothing."),
           repair_storage: bool = typer.Option(False, "--repair-storage", help="A journal with torn records (a crash "
                                               "or full disk mid-write): back it up, drop the torn bytes, keep every "
                                               "complete record, then go on."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per trial.")):
    """Tune a suite's search: block with Optuna (one study per matrix cell), tracked in MLflow."""
    ex = check_executor(executor, jobs)
    if ex == "local" and jobs > 1:
        err.print("--executor local runs one worker; use --executor process (or dask) with --jobs > 1")
        raise typer.Exit(2)
    with paths.pinned(suite):
        from ..search.storage import default_storage, is_rdb, journal_path

        url = storage or default_storage()
        from ..paths import sqlite_path

        with write_guard(store_file(tracking_uri),
                         sqlite_path(url) if is_rdb(url) else Path(journal_path(url)), paths.results_dir()):
            code = _search(suite, url, study, n_trials, timeout, jobs, ex, scheduler, device, set_, only, seeds,
                           tracking_uri, export, export_only, figures, dry_run, quiet, repair_storage)
    raise typer.Exit(code)


def _search(suite, url, study, n_trials, timeout, jobs, ex, scheduler, device, set_, only, seeds, tracking_uri,
            export, export_only, figures, dry_run, quiet, repair_storage) -> int:
    from rich.markup import escape

    from ..executors import execute, gpu_devices, sigterm_as_interrupt, threads_per_worker
    from ..search import (TornJournalError, WorkerPlan, check_suite_search, export_best, open_storage_url,
                          plan_studies, render_search_report, repair_journal, run_worker, study_summary)
    from ..suite import SuiteError
    from ..tracking import Tracker

    s = load_or_exit(suite, set_, only, seeds)
    spec, errors = check_suite_search(s)
    total = n_trials if n_trials is not None else (spec.n_trials if spec else None)
    if spec is not None and total is None and timeout is None and spec.timeout is None and not (export_only or dry_run):
        errors.append("search.n_trials: give n_trials and/or timeout (or --n-trials / --timeout)")
    if errors:
        err.print(f"[bold red]error[/]: {suite}: search is not usable ({len(errors)} problem(s)); no trial was run:")
        for line in errors:
            err.print(f"  - {suite}: {line}", markup=False)
        raise typer.Exit(2)
    dev = resolve_device_or_exit(device, s)
    try:
        st = open_storage_url(url)
    except TornJournalError as e:
        if not repair_storage:
            err.print(f"error: {e}", markup=False)
            raise typer.Exit(2)
        found, backup = repair_journal(e.check.path)
        err.print(f"repaired {found.path}: kept {found.records} complete record(s) ({found.salvaged} found behind a "
                  f"torn one), dropped {sum(b for _, b in found.torn)} torn byte(s) in {len(found.torn)} place(s); "
                  f"the original is {backup}", markup=False)
        st = open_storage_url(url)
    tracker = Tracker(tracking_uri)
    tracker.init_store()
    try:
        plans = plan_studies(s, spec, st, tracker, prefix=study, n_trials=total, create=not dry_run)
    except SuiteError as e:
        for line in e.errors:
            err.print(f"  - {suite}: {line}", markup=False)
        raise typer.Exit(2)
    limit = timeout if timeout is not None else spec.timeout
    err.print(f"{s.name}: {len(plans)} stud{'y' if len(plans) == 1 else 'ies'}, "
              f"{total if total is not None else 'unbounded'} trial(s) each"
              + (f", timeout {limit:g}s" if limit else "") + f" — storage {redact(url)} — store {redact(tracker.uri)}")
    if not (dry_run or export_only):
        deadline = time.time() + limit if limit else None
        devices = gpu_devices(dev) if ex != "local" else [dev]
        n = jobs if ex != "local" else 1
        threads = threads_per_worker(n) if dev == "cpu" and ex != "local" else None
        wplans = [WorkerPlan(url, tracker.uri, tuple(plans), deadline, devices[i % len(devices)], threads,
                             not quiet) for i in range(n)]
        try:
            sigterm_as_interrupt()  # `kill PID` stops the workers like Ctrl-C; their trials are marked interrupted
            execute([(w,) for w in wplans], executor=ex, jobs=n, scheduler=scheduler, call=run_worker)
        except KeyboardInterrupt:
            for p in plans:
                with contextlib.suppress(Exception):
                    tracker.finish(p.parent_run_id, "KILLED")
            err.print("interrupted: finished trials are kept; rerun the same command to continue the studies")
            raise typer.Exit(130)
    rows, empty = [], 0
    for p in plans:
        sm = study_summary(st, p)
        best = sm["best"]
        if not best:
            empty += 1
        best_txt = "; ".join(f"#{t.number}: " + ", ".join(f"{v:.6g}" for v in t.values) for t in best[:4]) + \
            ("; …" if len(best) > 4 else "")
        params_txt = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in best[0].params.items()) \
            if len(best) == 1 else (f"{len(best)} Pareto trials" if best else "")
        rows.append((escape(p.study), f"{sm['counted']}/{total if total is not None else '-'}",
                     ", ".join(f"{k.lower()} {v}" for k, v in sorted(sm["states"].items())), best_txt, params_txt))
        if p.parent_run_id and not (dry_run or export_only):
            done = total is not None and sm["counted"] >= total
            with contextlib.suppress(Exception):
                tracker.finish(p.parent_run_id, "FINISHED" if done or total is None else "RUNNING")
    out.print(status_table(f"{s.name}: search ({', '.join(o.metric + ' ' + o.direction[:3] for o in spec.objectives)})",
                            rows, ["study", "trials", "states", "best", "best params"]))
    code = 0
    if export is not None:
        try:
            path, notes = export_best(s, plans, st, export)
            for nline in notes:
                err.print(nline, markup=False)
            out.print(f"exported: {path}  (bench run {path})")
        except (ValueError, SuiteError) as e:
            err.print(f"--export: {e}", markup=False)
            code = 1
    if figures is not None:
        files = []
        for p in plans:
            with contextlib.suppress(KeyError):
                files += render_search_report(st, figures, study_name=p.study)
        out.print(f"figures: {len(files)} file(s) in {figures}")
    if total is not None and empty and not dry_run:
        err.print(f"{empty} stud{'y has' if empty == 1 else 'ies have'} no complete trial")
        code = 1
    return code
