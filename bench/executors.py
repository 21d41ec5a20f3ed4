"""Where cells run: in-process, a local process pool, or dask.distributed.

Every executor calls the same picklable entry point, :func:`bench.runner.run_cell`, with the resolved
config and a :class:`bench.runner.CellContext`; results stream back to the driver as they finish.
The tracking store is created by the driver before any worker starts.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, List, Optional, Sequence, Tuple

EXECUTORS = ("local", "process", "dask")

Job = Tuple[dict, "object"]  # (config, CellContext)


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

    from .tracking import interrupt_handler

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


def _init_worker(queue, threads: int) -> None:
    global _WORKER_DEVICE, _PARENT_PID
    import torch

    _PARENT_PID = os.getppid()

    sigterm_as_interrupt()
    _die_with_parent()
    torch.set_num_threads(threads)
    _WORKER_DEVICE = queue.get() if queue is not None else None


def _run_in_worker(config, ctx):
    from .runner import run_cell

    if _WORKER_DEVICE is not None:
        ctx = ctx.with_device(_WORKER_DEVICE)
    try:
        return run_cell(config, ctx)
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
            on_result: Optional[Callable] = None, on_start: Optional[Callable] = None) -> list:
    """Run every (config, ctx) job; call ``on_result(result)`` as each finishes; return the results."""
    from .runner import run_cell

    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    results = []

    def done(res):
        results.append(res)
        if on_result:
            on_result(res)

    if not jobs_list:
        return results
    if executor == "local" or (executor == "process" and jobs <= 1):
        for config, ctx in jobs_list:
            if on_start:
                on_start(ctx)
            done(run_cell(config, ctx))
        return results

    if executor == "process":
        device = jobs_list[0][1].device
        devices = gpu_devices(device)
        n = min(jobs, len(jobs_list)) if len(devices) == 1 else min(len(devices), len(jobs_list))
        spawn = mp.get_context("spawn")
        queue = None
        if len(devices) > 1:
            queue = spawn.Manager().Queue()
            for i in range(n):
                queue.put(devices[i % len(devices)])
        threads = threads_per_worker(n) if device == "cpu" else 1
        pool = ProcessPoolExecutor(max_workers=n, mp_context=spawn, initializer=_init_worker, initargs=(queue, threads))
        try:
            futs = [pool.submit(_run_in_worker, config, ctx.with_threads(ctx.threads or threads)) for config, ctx in jobs_list]
            for f in as_completed(futs):
                done(f.result())
        except BaseException:  # interrupted: stop the workers now instead of waiting for their cells
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)
        return results

    # dask.distributed
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
        futs = [client.submit(run_cell, config, ctx.with_threads(ctx.threads or threads), pure=False)
                for config, ctx in jobs_list]
        for f in dask_completed(futs):
            done(f.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results
