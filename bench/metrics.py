"""The metric namespace: how a run names what it logs, and how search and report read it back.

A run logs (MLflow metric keys; ``<m>`` is one of :meth:`bench.tasks.base.Task.metric_names`)::

    per epoch   train/<m>  train/objective  train/steps  train/time  train/penalty/<name>  val/<m>  lr
                time/epoch_s  solver/<layer>/<fwd|bwd>_<iters|residual|nfe|unconverged>
    at the end  final/<split>/<m>   corruption/<name>/<severity>/<m>
    with evaluate.periodic: periodic/<split>/<m> (step = optimiser step), window/<split>/<m> (at the end)

``solver/*/<stat>`` (search objectives) reads the sum over layers.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["SOLVER_STATS", "split_name", "final_name", "periodic_name", "window_name", "corruption_name", "solver_name", "parse_corruption",
           "mlflow_name", "MetricCatalog", "metric_catalog", "metric_value"]

SOLVER_STATS = ("iters", "residual", "nfe", "unconverged")
_SOLVER_STAT = re.compile(r"(fwd|bwd)_(iters|residual|nfe|unconverged)")


def split_name(split: str, metric: str) -> str:
    """``train/loss``, ``val/top1``."""
    return f"{split}/{metric}"


def final_name(split: str, metric: str) -> str:
    """``final/test/mse``: the evaluation after training on ``evaluate.split``."""
    return f"final/{split}/{metric}"


def periodic_name(split: str, metric: str) -> str:
    """``periodic/test/top1``: an evaluation during training (its step is the optimiser step)."""
    return f"periodic/{split}/{metric}"


def window_name(split: str, metric: str) -> str:
    """``window/test/top1``: the mean of the periodic evaluations over the last window of steps (the paper's metric)."""
    return f"window/{split}/{metric}"


def corruption_name(corruption: str, severity: float, metric: str) -> str:
    """``corruption/gaussian/0.3/top1``."""
    return f"corruption/{corruption}/{severity:g}/{metric}"


def solver_name(layer: str, direction: str, stat: str) -> str:
    """``solver/<layer>/fwd_iters``; ``direction`` fwd | bwd, ``stat`` one of :data:`SOLVER_STATS`."""
    return f"solver/{layer}/{direction}_{stat}"


def parse_corruption(name: str) -> Optional[Tuple[str, float, str]]:
    """``corruption/<name>/<severity>/<m>`` -> (name, severity, m); None for any other metric."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "corruption":
        return None
    try:
        return parts[1], float(parts[2]), parts[3]
    except ValueError:
        return None


def mlflow_name(name: str) -> str:
    """An MLflow-safe metric name (``solver/*/fwd_iters`` -> ``solver/all/fwd_iters``)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name.replace("*", "all"))


@dataclass
class MetricCatalog:
    """The metric names one resolved run config logs (see :func:`bench.runner.train_and_log`)."""

    task_metrics: List[str]
    has_val: bool
    split: str
    corruptions: Dict[str, List[float]]
    layers: List[str]
    windowed: bool = False

    def epoch_names(self) -> List[str]:
        out = [split_name("train", m) for m in self.task_metrics] + \
            ["train/objective", "train/steps", "train/time", "lr", "time/epoch_s"]
        if self.has_val:
            out += [split_name("val", m) for m in self.task_metrics]
        return out

    def check(self, metric: str, per_epoch: bool = False) -> Optional[str]:
        """None if ``metric`` is logged (per epoch when asked), else why not."""
        parts = metric.split("/")
        tm = self.task_metrics

        def task_metric(m: str) -> Optional[str]:
            return None if m in tm else f"the task's metrics are {', '.join(tm)} (got {m!r})"

        head = parts[0]
        if head == "train" and len(parts) >= 2:
            if parts[1] == "penalty" and len(parts) == 3:
                return None
            if len(parts) == 2 and parts[1] in ("objective", "steps", "time"):
                return None
            return task_metric("/".join(parts[1:])) if len(parts) == 2 else f"unknown training metric {metric!r}"
        if head == "val" and len(parts) == 2:
            if not self.has_val:
                return "this task has no validation set (val/ metrics are not logged); use train/ or final/"
            return task_metric(parts[1])
        if metric in ("lr", "time/epoch_s"):
            return None
        if head == "solver" and len(parts) == 3:
            if parts[1] != "*" and parts[1] not in self.layers:
                return (f"no implicit layer {parts[1]!r} in the model; layers: {', '.join(self.layers) or '(none)'}"
                        " (or * for the sum over layers)")
            if not _SOLVER_STAT.fullmatch(parts[2]):
                return f"solver metrics are (fwd|bwd)_(iters|residual|nfe|unconverged), got {parts[2]!r}"
            return None
        if per_epoch:
            return (f"{metric!r} is not a per-epoch metric; the pruner needs one of train/…, val/…, solver/…, lr "
                    f"(e.g. {', '.join(self.epoch_names()[:3])})")
        if head == "window" and len(parts) == 3:
            if not self.windowed:
                return "no periodic evaluation: set evaluate.periodic {every_steps, window_steps} to log window/…"
            if parts[1] != self.split:
                return f"the periodic evaluation is on the {self.split!r} split: window/{self.split}/…"
            return task_metric(parts[2])
        if head == "final" and len(parts) == 3:
            if parts[1] != self.split:
                return f"the final evaluation is on the {self.split!r} split (evaluate.split): final/{self.split}/…"
            return task_metric(parts[2])
        if head == "corruption" and len(parts) == 4:
            name, sev = parts[1], parts[2]
            if name not in self.corruptions:
                return (f"corruption {name!r} is not evaluated (evaluate.corruptions: "
                        f"{', '.join(self.corruptions) or 'none'})")
            try:
                s = float(sev)
            except ValueError:
                return f"severity {sev!r} is not a number"
            if not any(math.isclose(s, x, rel_tol=1e-9, abs_tol=1e-12) for x in self.corruptions[name]):
                return (f"severity {sev} of {name!r} is not evaluated (severities: "
                        f"{', '.join(f'{x:g}' for x in self.corruptions[name])})")
            return task_metric(parts[3])
        return ("unknown metric; metrics are final/<split>/<m>, val/<m>, train/<m>, corruption/<name>/<severity>/<m>, "
                "solver/<layer>/<fwd|bwd>_<iters|residual|nfe|unconverged>, lr, time/epoch_s")


def metric_catalog(config: Dict[str, Any]) -> MetricCatalog:
    """What a resolved run config logs: its task's metrics and splits, corruptions and implicit layers."""
    from irn_core.layers import implicit_layers
    from irn_core.models import build_model

    from .corruptions import parse_spec
    from .tasks import build_task

    task = build_task(config["task"])
    corr = {c.name: list(sev) for c, sev in parse_spec(config["evaluate"].get("corruptions") or {})}
    layers = list(implicit_layers(build_model(config["model"])))
    return MetricCatalog(task.metric_names(), task.has_val, config["evaluate"].get("split", "test"), corr, layers,
                         bool(config["evaluate"].get("periodic")))


def metric_value(metrics: Dict[str, float], name: str) -> float:
    """Read ``name`` from a run's final metrics. ``solver/*/x`` sums over layers; a solver metric that was
    never logged (θ = 0 layers call no solver) is 0; corruption severities match numerically."""
    if name in metrics:
        return float(metrics[name])
    parts = name.split("/")
    if parts[0] == "solver" and len(parts) == 3:
        vals = [v for k, v in metrics.items() if k.startswith("solver/") and k.split("/")[-1] == parts[2]
                and (parts[1] == "*" or k.split("/")[1] == parts[1])]
        return float(sum(vals)) if vals else 0.0
    want = parse_corruption(name)
    if want is not None:
        for k, v in metrics.items():
            got = parse_corruption(k)
            if got and got[0] == want[0] and got[2] == want[2]:
                with contextlib.suppress(ValueError):
                    if math.isclose(got[1], want[1], rel_tol=1e-9, abs_tol=1e-12):
                        return float(v)
    raise KeyError(f"the run did not log metric {name!r}")
