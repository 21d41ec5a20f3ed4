"""One cell of a suite, end to end: train, evaluate, track. Runs in any process (executors call
:func:`run_cell`, which is picklable and never raises for a failing run).

Per cell: take the cell's lock; skip it if a FINISHED run with the same spec hash exists (unless
forced); delete runs of the cell left RUNNING by a dead process; create the MLflow run; log params,
the resolved config and the environment; train with per-epoch metrics (loss components, metrics,
solver iterations/residuals forward and backward per layer, wall time); evaluate the corruptions; log
the unaggregated corruption table and the final ``state_dict``; mark FINISHED — or FAILED with the
reason and the traceback when anything goes wrong (NaN loss, solver blow-up, any exception).
"""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

from . import tracking as T
from .locks import CellLock
from .metrics import corruption_name, final_name, periodic_name, solver_name, window_name
from .paths import no_space


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


@dataclass(frozen=True)
class CellContext:
    """Everything a worker needs besides the config (picklable)."""

    suite: str
    label: str
    spec_hash: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: Optional[str]
    lock_dir: str
    device: str = "cpu"
    force: bool = False
    threads: Optional[int] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    progress: Optional[Callable] = None  # local executor only: progress(epoch, epochs)
    wait: bool = False  # block on a cell another process is running, then use its result (or run it)
    threads_asked: bool = False  # --threads given: a finished run recorded with another CPU thread count is redone

    def with_device(self, device: str) -> "CellContext":
        return dataclasses.replace(self, device=device)

    def with_threads(self, threads: Optional[int]) -> "CellContext":
        return dataclasses.replace(self, threads=threads, progress=None)


@dataclass
class CellResult:
    label: str
    spec_hash: str
    status: str  # finished | failed | cached | busy
    run_id: Optional[str] = None
    reason: str = ""
    wall_time: float = 0.0
    summary: Dict[str, float] = field(default_factory=dict)


def reusable(tags: Dict[str, str], device: str, threads: int, threads_asked: bool) -> bool:
    """Whether a finished run (its tags) stands for a run on ``device`` with ``threads`` CPU threads. A run's identity
    is its spec hash plus, on the CPU, its torch thread count (kernels reduce in a thread-dependent order, so the
    numbers differ in the last bits and, over an epoch, in the percent): a finished run is reused unless the
    command asks for another thread count explicitly (``--threads``); runs recorded before the tag existed count
    as matching."""
    recorded = tags.get(T.TAG_THREADS)
    if not threads_asked or recorded is None or not device.startswith("cpu") or \
            not tags.get(T.TAG_DEVICE, "cpu").startswith("cpu"):
        return True
    return recorded == str(threads)


def run_cell(config: Dict[str, Any], ctx: CellContext) -> CellResult:
    t0 = time.perf_counter()
    lock = CellLock(Path(ctx.lock_dir), ctx.suite, ctx.spec_hash)
    if not lock.acquire(wait=ctx.wait):
        return CellResult(ctx.label, ctx.spec_hash, "busy", reason="being run by another process")
    try:
        tracker = T.Tracker(ctx.tracking_uri)
        runs = tracker.runs_for_hash(ctx.experiment_id, ctx.spec_hash)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        import torch

        threads = ctx.threads or torch.get_num_threads()
        redo = ctx.force or (finished and not reusable(finished[0].data.tags, ctx.device, threads, ctx.threads_asked))
        if finished and not redo:
            return CellResult(ctx.label, ctx.spec_hash, "cached", run_id=finished[0].info.run_id)
        for r in runs:  # stale RUNNING runs (their process is dead: we hold the lock) and, when redone, old results
            if r.info.status in ("RUNNING", "SCHEDULED") or (redo and r.info.status == "FINISHED"):
                tracker.delete(r.info.run_id)
        tags = {T.TAG_ROLE: "cell", T.TAG_HASH: ctx.spec_hash, T.TAG_SUITE: ctx.suite, T.TAG_LABEL: ctx.label,
                T.TAG_SCHEMA: str(config.get("schema_version", "")), T.TAG_DEVICE: ctx.device,
                T.TAG_THREADS: str(threads),
                T.TAG_CELL: json.dumps(ctx.overrides, sort_keys=True, default=str)}
        if "case" in ctx.overrides:
            tags[T.TAG_CASE] = str(ctx.overrides["case"])
        if ctx.parent_run_id:
            tags[T.PARENT_TAG] = ctx.parent_run_id
        run_id = tracker.start_run(ctx.experiment_id, ctx.label, tags)
        try:
            summary = train_and_log(config, tracker, run_id, device=ctx.device, threads=ctx.threads,
                                    progress=ctx.progress)
        except BaseException as e:  # noqa: BLE001 - a failing cell must never stop the suite
            if isinstance(e, KeyboardInterrupt):
                tracker.set_tags(run_id, {T.TAG_REASON: "interrupted"})
                tracker.finish(run_id, "KILLED")
                raise
            reason = f"{type(e).__name__}: {e}".strip()
            try:
                tracker.set_tags(run_id, {T.TAG_REASON: reason[:4000]})
                tracker.log_text(run_id, traceback.format_exc(), "failure/traceback.txt")
            finally:
                tracker.finish(run_id, "FAILED")
            if no_space(e):  # the next cells would fail the same way: stop the suite (the CLI says where)
                raise
            return CellResult(ctx.label, ctx.spec_hash, "failed", run_id=run_id, reason=reason.splitlines()[0][:300],
                              wall_time=time.perf_counter() - t0)
        tracker.finish(run_id, "FINISHED")
        return CellResult(ctx.label, ctx.spec_hash, "finished", run_id=run_id, wall_time=time.perf_counter() - t0,
                          summary=summary)
    finally:
        lock.release()


def cell_worker_died(config: Dict[str, Any], ctx: CellContext, reason: str) -> CellResult:
    """The process running this cell died (killed by a signal, e.g. the OOM killer): its run, left RUNNING, is marked
    FAILED with ``reason`` — unless another runner has taken the cell meanwhile (its lock is held)."""
    lock = CellLock(Path(ctx.lock_dir), ctx.suite, ctx.spec_hash)
    run_id = None
    if lock.acquire():
        try:
            tracker = T.Tracker(ctx.tracking_uri)
            for r in tracker.runs_for_hash(ctx.experiment_id, ctx.spec_hash):
                if r.info.status in ("RUNNING", "SCHEDULED"):
                    run_id = r.info.run_id
                    tracker.set_tags(run_id, {T.TAG_REASON: reason})
                    tracker.finish(run_id, "FAILED")
        finally:
            lock.release()
    return CellResult(ctx.label, ctx.spec_hash, "failed", run_id=run_id, reason=reason)


run_cell.on_worker_death = cell_worker_died  # type: ignore[attr-defined]  (see bench.executors)


# --------------------------------------------------------------------------- training


def _solver_metrics(model) -> Dict[str, List[Any]]:
    """Per implicit layer: forward/backward iterations, F-evaluations, max residual and unconverged samples of the
    last call (summed over its solves). Residuals and counts stay tensors (no host read per batch); the epoch's
    mean is taken once, in :func:`_mean_metrics`."""
    import torch

    from irn_core import solver_stats

    out: Dict[str, List[Any]] = {}
    for name, st in solver_stats(model).items():
        for where, key in (("forward", "fwd"), ("backward", "bwd")):
            stats = [s for s in st[where] if s is not None]
            if not stats:
                continue
            out.setdefault(solver_name(name, key, "iters"), []).append(float(sum(s.iterations for s in stats)))
            out.setdefault(solver_name(name, key, "nfe"), []).append(float(sum(s.nfe for s in stats)))
            res = [s.residual.max() for s in stats if s.residual is not None and s.residual.numel()]
            if res:
                out.setdefault(solver_name(name, key, "residual"), []).append(torch.stack(res).max())
            out.setdefault(solver_name(name, key, "unconverged"), []).append(
                torch.stack([(~s.converged).sum() for s in stats]).sum())
    return out


def _mean_metrics(acc: Dict[str, List[Any]]) -> Dict[str, float]:
    """Epoch means of per-batch values — Python floats, or 0-d tensors (read here: one host read per metric)."""
    import torch

    out = {}
    for k, v in acc.items():
        if v:
            total = float(torch.stack(v).double().sum()) if isinstance(v[0], torch.Tensor) else sum(v)
            out[k] = total / len(v)
    return out


def train_and_log(config: Dict[str, Any], tracker: "T.Tracker", run_id: str, device: str = "cpu",
                  threads: Optional[int] = None, progress: Optional[Callable] = None,
                  epoch_hook: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Dict[str, float]:
    """Train and evaluate one resolved config, logging everything into the existing MLflow run ``run_id``.

    ``epoch_hook(epoch, metrics)`` is called after each epoch's metrics are logged (1-based epoch); it may
    raise to stop training (e.g. ``optuna.TrialPruned``) — the exception propagates. Returns the last
    epoch's metrics plus the final evaluation and corruption metrics. Raises on any failure.
    """
    import torch

    from irn_core.models import build_model

    from .corruptions import evaluate_corruptions
    from .environment import environment
    from .registries import build_penalty, build_task
    from .suitefile import flatten
    from .train import evaluate, fit, make_loader, set_seed

    if threads:
        torch.set_num_threads(threads)
    seed = int(config["seed"])
    set_seed(seed)  # first: it sets the float32 precision the environment records
    env = environment(device)
    device = torch.device(device)
    tracker.log_params(run_id, flatten(config))
    tracker.log_text(run_id, yaml.safe_dump(config, sort_keys=True), "config.yaml")
    tracker.log_text(run_id, yaml.safe_dump(env, sort_keys=True), "environment.yaml")
    tracker.set_tags(run_id, {"irn.git_commit": env["git"]["commit"], "irn.torch": env["packages"]["torch"],
                              "irn.host_device": env.get("gpu") or env.get("cpu", "")})

    set_seed(seed)
    task = build_task(config["task"])
    train_set, val_set, test_set = task.data(seed)
    set_seed(seed)
    model = build_model(config["model"]).to(device)
    penalty = build_penalty(config.get("regularizers") or {}, model, seed=seed)
    tcfg = dict(config["train"])
    epochs = int(tcfg["epochs"])
    ecfg = config["evaluate"]
    solver_acc: Dict[str, List[float]] = {}
    last: Dict[str, float] = {}
    t_epoch = [time.perf_counter()]

    split = ecfg.get("split", "test")
    split_set = {"test": test_set, "train": train_set, "val": val_set}[split]
    if split_set is None:
        raise ValueError(f"evaluate.split is {split!r} but task {task.name!r} has no {split} set")
    if ecfg.get("max_samples") and ecfg["max_samples"] < len(split_set):
        split_set = torch.utils.data.Subset(split_set, range(int(ecfg["max_samples"])))
    loader = make_loader(split_set, ecfg.get("batch_size", 256), shuffle=False, seed=seed)
    periodic = ecfg.get("periodic") or None
    evaluations: List[tuple] = []  # (optimiser step, metrics) of the periodic evaluations
    steps = [0]

    def on_batch(m) -> None:
        for k, v in _solver_metrics(m).items():
            solver_acc.setdefault(k, []).extend(v)
        steps[0] += 1
        if periodic and steps[0] % int(periodic["every_steps"]) == 0:
            res = {k: v for k, v in evaluate(m, loader, task, device).items() if k != "n"}
            m.train()  # evaluate() left eval mode; the epoch goes on
            evaluations.append((steps[0], res))
            metric_buffer.log({periodic_name(split, k): v for k, v in res.items()}, step=steps[0])

    def on_epoch(epoch: int, metrics: Dict[str, float]) -> None:
        loss = metrics.get("train/loss", float("nan"))
        if not math.isfinite(loss):
            raise DivergenceError(f"training loss is {loss} at epoch {epoch + 1}")
        row = {k: v for k, v in metrics.items() if not k.endswith("/n")}
        row.update(_mean_metrics(solver_acc))
        solver_acc.clear()
        now = time.perf_counter()
        row["time/epoch_s"] = now - t_epoch[0]
        t_epoch[0] = now
        metric_buffer.log(row, step=epoch + 1)
        last.clear()
        last.update(row)
        if progress:
            progress(epoch + 1, epochs)
        if epoch_hook is not None:
            epoch_hook(epoch + 1, row)

    metric_buffer = T.MetricBuffer(tracker, run_id)  # per-epoch metrics written in batches (issue 14)
    try:
        fit(model, task, train_set, tcfg, device=device, seed=seed, val_set=val_set, penalty_fn=penalty,
            callback=on_epoch, eval_batch_size=ecfg.get("batch_size"), on_batch=on_batch)
    finally:  # also on divergence, pruning or Ctrl-C: the curve up to that point is kept
        metric_buffer.flush()

    final = evaluate(model, loader, task, device)
    final_metrics = {final_name(split, k): v for k, v in final.items() if k != "n"}
    if periodic:  # the paper's metric: the mean of the evaluations in the last window of steps
        recent = [r for s_, r in evaluations if s_ > steps[0] - int(periodic["window_steps"])]
        for k in (recent[0] if recent else {}):
            final_metrics[window_name(split, k)] = sum(r[k] for r in recent) / len(recent)
    if ecfg.get("corruptions"):
        table = evaluate_corruptions(model, task, split_set, ecfg["corruptions"], device=device, seed=seed,
                                     batch_size=ecfg.get("batch_size", 256))
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "corruptions.csv"
            table.to_csv(p, index=False)
            tracker.log_artifact(run_id, str(p))
        for row in table.itertuples(index=False):
            final_metrics[corruption_name(row.corruption, row.severity, row.metric)] = float(row.value)
    bad = [k for k, v in final_metrics.items() if not math.isfinite(v)]
    tracker.log_metrics(run_id, final_metrics, step=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "state_dict.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, p)
        tracker.log_artifact(run_id, str(p), "model")
    if bad:
        raise DivergenceError(f"non-finite evaluation metric(s): {', '.join(bad[:5])}")
    return {**last, **final_metrics}
