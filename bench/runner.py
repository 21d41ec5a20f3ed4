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


def run_cell(config: Dict[str, Any], ctx: CellContext) -> CellResult:
    t0 = time.perf_counter()
    lock = CellLock(Path(ctx.lock_dir), ctx.suite, ctx.spec_hash)
    if not lock.acquire():
        return CellResult(ctx.label, ctx.spec_hash, "busy", reason="being run by another process")
    try:
        tracker = T.Tracker(ctx.tracking_uri)
        runs = tracker.runs_for_hash(ctx.experiment_id, ctx.spec_hash)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished and not ctx.force:
            return CellResult(ctx.label, ctx.spec_hash, "cached", run_id=finished[0].info.run_id)
        for r in runs:  # stale RUNNING runs (their process is dead: we hold the lock) and, when forced, old results
            if r.info.status in ("RUNNING", "SCHEDULED") or (ctx.force and r.info.status == "FINISHED"):
                tracker.delete(r.info.run_id)
        tags = {T.TAG_ROLE: "cell", T.TAG_HASH: ctx.spec_hash, T.TAG_SUITE: ctx.suite, T.TAG_LABEL: ctx.label,
                T.TAG_SCHEMA: str(config.get("schema_version", "")), T.TAG_DEVICE: ctx.device}
        if ctx.parent_run_id:
            tags[T.PARENT_TAG] = ctx.parent_run_id
        run_id = tracker.start_run(ctx.experiment_id, ctx.label, tags)
        try:
            summary = _train_and_log(config, ctx, tracker, run_id)
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
            return CellResult(ctx.label, ctx.spec_hash, "failed", run_id=run_id, reason=reason.splitlines()[0][:300],
                              wall_time=time.perf_counter() - t0)
        tracker.finish(run_id, "FINISHED")
        return CellResult(ctx.label, ctx.spec_hash, "finished", run_id=run_id, wall_time=time.perf_counter() - t0,
                          summary=summary)
    finally:
        lock.release()


# --------------------------------------------------------------------------- training


def _solver_metrics(model) -> Dict[str, List[float]]:
    """Per implicit layer: forward/backward iterations and max residual of the last call (summed over steps)."""
    from irn_core import solver_stats

    out: Dict[str, List[float]] = {}
    for name, st in solver_stats(model).items():
        for where, key in (("forward", "fwd"), ("backward", "bwd")):
            stats = [s for s in st[where] if s is not None]
            if not stats:
                continue
            out.setdefault(f"solver/{name}/{key}_iters", []).append(float(sum(s.iterations for s in stats)))
            out.setdefault(f"solver/{name}/{key}_residual", []).append(max(s.max_residual for s in stats))
            out.setdefault(f"solver/{name}/{key}_nfe", []).append(float(sum(s.nfe for s in stats)))
            out.setdefault(f"solver/{name}/{key}_unconverged", []).append(
                float(sum(int((~s.converged).sum()) for s in stats)))
    return out


def _mean_metrics(acc: Dict[str, List[float]]) -> Dict[str, float]:
    return {k: (sum(v) / len(v)) for k, v in acc.items() if v}


def _train_and_log(config: Dict[str, Any], ctx: CellContext, tracker: "T.Tracker", run_id: str) -> Dict[str, float]:
    import torch

    from irn_core.models import build_model

    from .corruptions import evaluate_corruptions
    from .environment import environment
    from .registries import build_penalty, build_task
    from .suite import flatten
    from .train import evaluate, make_loader, make_optimizer, make_scheduler, set_seed, train_epoch

    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    device = torch.device(ctx.device)
    tracker.log_params(run_id, flatten({k: v for k, v in config.items()}))
    tracker.log_text(run_id, yaml.safe_dump(config, sort_keys=True), "config.yaml")
    env = environment(ctx.device)
    tracker.log_text(run_id, yaml.safe_dump(env, sort_keys=True), "environment.yaml")
    tracker.set_tags(run_id, {"irn.git_commit": env["git"]["commit"], "irn.torch": env["packages"]["torch"]})

    seed = int(config["seed"])
    set_seed(seed)
    task = build_task(config["task"])
    train_set, val_set, test_set = task.data(seed)
    set_seed(seed)
    model = build_model(config["model"]).to(device)
    tcfg = config["train"]
    optimizer = make_optimizer(model.parameters(), tcfg["optimizer"])
    scheduler = make_scheduler(optimizer, tcfg["scheduler"])
    penalty = build_penalty(config.get("regularizers") or {}, model)
    train_loader = make_loader(train_set, tcfg["batch_size"], shuffle=True, seed=seed)
    eval_set = val_set if val_set is not None else test_set
    eval_loader = make_loader(eval_set, config["evaluate"].get("batch_size", 256), shuffle=False, seed=seed)
    epochs = int(tcfg["epochs"])
    summary: Dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        t_ep = time.perf_counter()
        solver_acc: Dict[str, List[float]] = {}

        def on_batch(model=model, acc=solver_acc):
            for k, v in _solver_metrics(model).items():
                acc.setdefault(k, []).extend(v)

        train_m = train_epoch(model, train_loader, task, optimizer, device, penalty_fn=penalty, on_batch=on_batch,
                              max_batches=tcfg.get("max_batches"), grad_clip=tcfg.get("grad_clip"))
        loss = train_m.get("loss", float("nan"))
        if not math.isfinite(loss):
            raise DivergenceError(f"training loss is {loss} at epoch {epoch}")
        metrics = {f"train/{k}": v for k, v in train_m.items() if k != "n"}
        metrics.update(_mean_metrics(solver_acc))
        metrics["time/epoch_s"] = time.perf_counter() - t_ep
        if epoch % int(tcfg.get("eval_every", 1)) == 0 or epoch == epochs:
            ev = evaluate(model, eval_loader, task, device)
            split = "val" if val_set is not None else "test"
            metrics.update({f"{split}/{k}": v for k, v in ev.items() if k != "n"})
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        tracker.log_metrics(run_id, metrics, step=epoch)
        summary = metrics
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(loss)
            else:
                scheduler.step()
        if ctx.progress:
            ctx.progress(epoch, epochs)

    ecfg = config["evaluate"]
    split = ecfg.get("split", "test")
    split_set = {"test": test_set, "train": train_set, "val": val_set}[split] or test_set
    final = evaluate(model, make_loader(split_set, ecfg.get("batch_size", 256), shuffle=False, seed=seed), task, device)
    final_metrics = {f"final/{split}/{k}": v for k, v in final.items() if k != "n"}
    if ecfg.get("corruptions"):
        table = evaluate_corruptions(model, task, split_set, ecfg["corruptions"], device=device, seed=seed,
                                     batch_size=ecfg.get("batch_size", 256), max_samples=ecfg.get("max_samples"))
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "corruptions.csv"
            table.to_csv(p, index=False)
            tracker.log_artifact(run_id, str(p))
        for row in table.itertuples(index=False):
            final_metrics[f"corruption/{row.corruption}/{row.severity:g}/{row.metric}"] = float(row.value)
    tracker.log_metrics(run_id, final_metrics, step=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "state_dict.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, p)
        tracker.log_artifact(run_id, str(p), "model")
    summary.update(final_metrics)
    return summary
