"""Where work runs: in-process, a local process pool, or dask.distributed — for ``bench run`` (one job per cell)
and ``bench search`` (one job per search worker) alike.

A job is a tuple ``(*args, ctx)`` run as ``call(*args, ctx)`` by a picklable entry point: by default
:func:`bench.runner.run_cell` with the resolved config and a :class:`bench.runner.CellContext`;
:func:`bench.search.run_worker` with a :class:`bench.search.WorkerPlan`. The last element, ``ctx``, carries
``device`` and ``threads`` and makes copies with ``with_device`` / ``with_threads``. Results stream back to the
driver as they finish. Interrupts (Ctrl-C, SIGTERM) stop every worker: queued jobs are cancelled, running ones
get SIGTERM (each marks its run KILLED), the rest SIGKILL after a grace period; workers die with the driver.
The tracking store is created by the driver before any worker starts.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, List, Optional, Sequence, Tuple

from irn_core.registry import Registry

from .runner import run_cell
from .tracking import interrupt_handler

EXECUTORS: Registry[Callable] = Registry("executor")  # name -> run(jobs_list, call, done, *, on_start, jobs, scheduler)

Job = Tuple[Any, ...]  # (*args, ctx): e.g. (config, CellContext) or (WorkerPlan,)


def threads_per_worker(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def gpu_devices(device: str) -> List[str]:
    """One device per visible GPU when the run device is plain 'cuda' (one worker per GPU)."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device]


_WORKER_DEVICE: Optional[str] = None


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (and SIGINT) take the KeyboardInterrupt path (run marked KILLED, reason 'interrupted'),
    deferred while a tracking-store write is in flight; main thread of this process only."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt_handler)
        signal.signal(signal.SIGINT, interrupt_handler)


def _die_with_parent() -> None:
    """Linux: ask the kernel to send this worker SIGTERM when its parent (the driver) dies, so that a
    killed ``bench run`` leaves no orphan still training (and logging) its cell."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        return


_PARENT_PID: Optional[int] = None


def _init_worker(device, threads: int) -> None:
    """``device``: None (the job's own), a device name, or a queue to take one from (one worker per GPU)."""
    global _WORKER_DEVICE, _PARENT_PID
    import torch

    _PARENT_PID = os.getppid()

    sigterm_as_interrupt()
    _die_with_parent()
    torch.set_num_threads(threads)
    _WORKER_DEVICE = device if device is None or isinstance(device, str) else device.get()


def _run_in_worker(call: Callable, marker: Optional[str], *job):
    if marker:  # which process runs this job: read by the driver if the process dies
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
    *args, ctx = job
    if _WORKER_DEVICE is not None:
        ctx = ctx.with_device(_WORKER_DEVICE)
    try:
        return call(*args, ctx)
    except KeyboardInterrupt:
        if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
            os._exit(130)  # the driver is gone (run already marked KILLED): nobody will send more work
        raise


def _stop_pool(pool: ProcessPoolExecutor, grace: float = 30.0) -> None:
    """Cancel queued cells and SIGTERM the running workers (each marks its run KILLED and releases its
    cell lock); SIGKILL whatever is still alive after ``grace`` seconds."""
    import time

    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


def execute(jobs_list: Sequence[Job], executor: str = "local", jobs: int = 1, scheduler: Optional[str] = None,
            on_result: Optional[Callable] = None, on_start: Optional[Callable] = None,
            call: Callable = run_cell) -> list:
    """Run every job ``(*args, ctx)`` as ``call(*args, ctx)`` on ``executor`` (one of :data:`EXECUTORS`) with up to
    ``jobs`` workers; ``on_start(ctx)`` before a job runs in this process, ``on_result(result)`` as each
    finishes; return the results."""
    run = EXECUTORS.get(executor)
    results: list = []

    def done(res):
        results.append(res)
        if on_result:
            on_result(res)

    if jobs_list:
        run(list(jobs_list), call, done, on_start=on_start, jobs=jobs, scheduler=scheduler)
    return results


@EXECUTORS.register("local")
def _local(jobs_list: List[Job], call: Callable, done: Callable, *, on_start=None, jobs: int = 1, scheduler=None) -> None:
    """In this process, one job after another."""
    for *args, ctx in jobs_list:
        if on_start:
            on_start(ctx)
        done(call(*args, ctx))


def fresh_process_per_job(device: str) -> bool:
    """On CUDA every job runs in a process of its own (even with one worker): measured on an H200 (2026-12-04), a
    cell run sixth in one process ended 32 % away from the same cell run alone, while two runs alone, each in a
    fresh process, were bit-identical (benchmarks/README.md). On the CPU a cell gives the same numbers alone and
    after others, so workers there are reused."""
    return str(device).startswith("cuda")


@EXECUTORS.register("process")
def _process(jobs_list: List[Job], call: Callable, done: Callable, *, on_start=None, jobs: int = 1,
             scheduler=None, fresh: Optional[bool] = None) -> None:
    """A pool of ``jobs`` spawned processes (one per GPU for device ``cuda``), torch threads = cores / workers;
    ``fresh`` (default on CUDA, :func:`fresh_process_per_job`): a new process for every job.

    A worker killed by a signal (the OOM killer's SIGKILL, a segfault) fails its own job only: ``call.on_worker_death``
    (e.g. :func:`bench.runner.cell_worker_died`) records it, or, for a call without that hook, the job is run again;
    the pool, which stops every worker when one dies, is rebuilt for the jobs that were not finished."""
    device = jobs_list[0][-1].device
    if fresh_process_per_job(device) if fresh is None else fresh:
        return _fresh(jobs_list, call, done, jobs=jobs)
    if jobs <= 1:
        return _local(jobs_list, call, done, on_start=on_start)
    devices = gpu_devices(device)
    spawn = mp.get_context("spawn")
    todo = list(enumerate(jobs_list))
    deaths: dict = {}  # job -> times its own worker died (jobs without a death hook are retried once)
    with tempfile.TemporaryDirectory(prefix="irn-jobs-") as marks:
        while todo:
            n = min(jobs, len(todo)) if len(devices) == 1 else min(len(devices), len(todo))
            queue = None
            if len(devices) > 1:
                queue = spawn.Manager().Queue()
                for i in range(n):
                    queue.put(devices[i % len(devices)])
            threads = threads_per_worker(n)  # the cores shared out (on CUDA too: host-side work, data)
            pool = ProcessPoolExecutor(max_workers=n, mp_context=spawn, initializer=_init_worker,
                                       initargs=(queue, threads))
            try:
                futs = {pool.submit(_run_in_worker, call, os.path.join(marks, str(key)), *job[:-1],
                                    job[-1].with_threads(job[-1].threads or threads)): (key, job) for key, job in todo}
                procs = dict(getattr(pool, "_processes", None) or {})  # pid -> Process, spawned by the submits
                unfinished = dict(futs.values())
                for f in as_completed(futs):
                    try:
                        res = f.result()
                    except BrokenProcessPool:
                        break
                    del unfinished[futs[f][0]]
                    done(res)
            except BaseException:  # interrupted: stop the workers now instead of waiting for their jobs
                _stop_pool(pool)
                raise
            pool.shutdown(wait=True)
            todo = _after_broken_pool(unfinished, procs, marks, call, done, deaths)


def _fresh(jobs_list: List[Job], call: Callable, done: Callable, *, jobs: int = 1) -> None:
    """Every job in a new spawned process: a one-worker pool per job, at most ``jobs`` at a time (for plain 'cuda',
    one per visible GPU, each job on a free GPU). A job whose worker dies is handled as in ``_process``."""
    from concurrent.futures import FIRST_COMPLETED, wait

    device = jobs_list[0][-1].device
    devices = gpu_devices(device)
    free: List[Optional[str]] = list(devices) if len(devices) > 1 else [None] * max(1, jobs)
    threads = threads_per_worker(len(free))  # the cores shared out (on CUDA too: host-side work, data)
    spawn = mp.get_context("spawn")
    todo = list(enumerate(jobs_list))
    deaths: dict = {}
    running: dict = {}  # future -> (key, job, pool, device, {pid: Process})
    with tempfile.TemporaryDirectory(prefix="irn-jobs-") as marks:
        try:
            while todo or running:
                while todo and free:
                    (key, job), dev = todo.pop(0), free.pop(0)
                    pool = ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=_init_worker,
                                               initargs=(dev, threads))
                    f = pool.submit(_run_in_worker, call, os.path.join(marks, str(key)), *job[:-1],
                                    job[-1].with_threads(job[-1].threads or threads))
                    running[f] = (key, job, pool, dev, dict(getattr(pool, "_processes", None) or {}))
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    key, job, pool, dev, procs = running.pop(f)
                    free.append(dev)
                    try:
                        res = f.result()
                    except BrokenProcessPool:
                        pool.shutdown(wait=True)
                        todo[:0] = _after_broken_pool({key: job}, procs, marks, call, done, deaths)
                        continue
                    except BaseException:  # the job raised (an interrupt inside it): stop it with the others
                        _stop_pool(pool)
                        raise
                    pool.shutdown(wait=True)
                    done(res)
        except BaseException:  # interrupted: stop every running worker now
            for _, _, pool, _, _ in running.values():
                _stop_pool(pool)
            raise


def _after_broken_pool(unfinished: dict, procs: dict, marks: str, call: Callable, done: Callable,
                       deaths: dict) -> List[tuple]:
    """The jobs to run again after the pool broke; a job whose own worker died by a signal is reported instead."""
    import signal

    again = []
    hook = getattr(call, "on_worker_death", None)
    for key, job in sorted(unfinished.items()):
        try:
            with open(os.path.join(marks, str(key))) as fh:
                pid = int(fh.read() or 0)
        except (OSError, ValueError):
            pid = 0  # never started
        proc = procs.get(pid)
        if proc is not None:
            proc.join(10)
        code = proc.exitcode if proc is not None else None
        if code is None or code >= 0 or -code == signal.SIGTERM:  # stopped by the pool's own cleanup, or not started
            again.append((key, job))
            continue
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        reason = f"worker died: signal {-code} ({name}{' — out of memory?' if -code == signal.SIGKILL else ''})"
        deaths[key] = deaths.get(key, 0) + 1
        if hook is not None:
            done(hook(*job[:-1], job[-1], reason))
        elif deaths[key] > 1:
            raise RuntimeError(f"{reason}, twice for the same job; giving up")
        else:
            again.append((key, job))
    return again


@EXECUTORS.register("dask")
def _dask(jobs_list: List[Job], call: Callable, done: Callable, *, on_start=None, jobs: int = 1,
          scheduler: Optional[str] = None) -> None:
    """dask.distributed: the cluster at ``scheduler``, else a LocalCluster of ``jobs`` processes."""
    from distributed import Client, LocalCluster, as_completed as dask_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
        threads = None
    else:
        n = min(jobs, len(jobs_list))
        threads = threads_per_worker(n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
        client = Client(cluster)
    try:
        futs = [client.submit(call, *args, ctx.with_threads(ctx.threads or threads), pure=False)
                for *args, ctx in jobs_list]
        for f in dask_completed(futs):
            done(f.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
