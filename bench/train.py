"""The training / evaluation loop for one run, without any tracking (bench.tracking wraps it).

Train config (``task.default_train()`` gives the paper's)::

    epochs: 100
    batch_size: 128            # int, or "full" / null for the whole training set in one batch
    max_steps: null            # optional cap on optimiser steps (CIFAR: 70K)
    optimizer: {name: adam, lr: 1.0e-2, ...}          # adam | adamw | sgd | rmsprop (+ their kwargs)
    scheduler: null | {name: plateau, patience: 50, cooldown: 50, factor: 0.1, monitor: loss}
             | {name: step, step_size: 24000, gamma: 0.1, interval: step | epoch}
             | {name: multistep, milestones: [...], gamma: 0.1, interval: ...}
             | {name: cosine, T_max: ..., interval: ...}
    grad_clip: null            # max gradient norm

Determinism: :func:`set_seed` seeds python/numpy/torch; loaders shuffle with their own seeded
generator and ``num_workers=0`` by default; random augmentations draw from torch's global RNG.
"""
from __future__ import annotations

import inspect
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from irn_core.layers import constraint_projections
from irn_core.registry import Registry

from .metrics import split_name
from .tasks.base import Task, aggregate

__all__ = ["set_seed", "make_optimizer", "make_scheduler", "Scheduler", "make_loader", "train_epoch", "evaluate",
           "fit", "OPTIMIZERS", "SCHEDULERS", "PenaltyFn"]

LAST_BATCH_LOSS = "last_batch_loss"  # the data loss of the epoch's last minibatch (a plateau monitor; not logged)

PenaltyFn = Callable[[nn.Module, Tuple[torch.Tensor, torch.Tensor]], Tuple[torch.Tensor, Dict[str, float]]]

def _torch_registry(kind: str, classes: Dict[str, type], positional: Tuple[str, ...]) -> Registry:
    """Torch optimisers/schedulers by suite name; options: the constructor's named parameters but ``positional``."""
    reg: Registry = Registry(kind)
    for name, cls in classes.items():
        reg.register(name, cls, options=[p for p in inspect.signature(cls).parameters
                                         if p not in positional and p != "self"])
    return reg


OPTIMIZERS = _torch_registry("optimizer", {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                                           "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}, ("params",))


def ieee_float32() -> None:
    """float32 means IEEE float32 on CUDA too: no TF32 in cuDNN convolutions (on by default) or cuBLAS matmuls.
    TF32 keeps a 10-bit mantissa (~5e-4 relative per product), above which no fixed-point residual can fall: on an
    H200 the conv solve of ``benchmarks/bench_overhead.py`` ran all 300 iterations at a max residual of 3e-3 against
    the default ``rms`` 1e-5, where the same problem converges in 5 on a CPU."""
    # the legacy flags: torch 2.14's new per-backend ``fp32_precision`` API leaves ``cudnn.allow_tf32`` unreadable
    # (a RuntimeError about mixed APIs) even when every backend is set to "ieee"
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); with ``deterministic`` ask cuDNN for determinism and keep float32
    IEEE (:func:`ieee_float32`)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        ieee_float32()


def _construct(reg: Registry, name: str, first, cfg: Dict[str, Any]):
    """``reg``'s class ``name`` built on ``first`` with options ``cfg``; an option whose default is a tuple (Adam's
    betas) must be a list of as many numbers, and a constructor's own refusal names the options it was given."""
    cls = reg.get(name)
    sig = inspect.signature(cls).parameters
    for key, value in cfg.items():
        default = sig[key].default if key in sig else None
        if isinstance(default, tuple) and default and all(isinstance(d, (int, float)) for d in default):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default) and \
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            if not ok:
                raise ValueError(f"{key}: must be a list of {len(default)} numbers like {list(default)} (got {value!r})")
    try:
        return cls(first, **cfg)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise ValueError(f"{reg.kind} {name!r} refuses its options {cfg}: {e}") from None


def make_optimizer(params, cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    """``{name: adam|adamw|sgd|rmsprop, lr: ..., **kwargs}`` → torch optimizer."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    OPTIMIZERS.check(name, cfg)
    return _construct(OPTIMIZERS, name, params, cfg)


@dataclass
class Scheduler:
    """A torch LR scheduler with when to step it: ``interval`` "epoch" (after each epoch; plateau
    with the epoch's ``monitor`` metric) or "step" (after each optimiser step)."""

    scheduler: Any
    interval: str = "epoch"
    monitor: Optional[str] = None

    def step_epoch(self, metrics: Dict[str, float]) -> None:
        if self.interval != "epoch":
            return
        if self.monitor is not None:
            if self.monitor not in metrics:
                raise KeyError(f"scheduler monitors {self.monitor!r}, not among {sorted(metrics)}")
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    def step_batch(self) -> None:
        if self.interval == "step":
            self.scheduler.step()


SCHEDULERS = _torch_registry("scheduler", {
    "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
    "step": torch.optim.lr_scheduler.StepLR,
    "multistep": torch.optim.lr_scheduler.MultiStepLR,
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
    "exponential": torch.optim.lr_scheduler.ExponentialLR,
}, ("optimizer",))


def make_scheduler(opt: torch.optim.Optimizer, cfg: Optional[Dict[str, Any]]) -> Optional[Scheduler]:
    """None, or ``{name: plateau|step|multistep|cosine|exponential, interval: epoch|step, monitor: ..., **kwargs}``.

    plateau (ex1: patience 50, cooldown 50) steps once per epoch on ``monitor``: default the training
    ``loss`` (the epoch mean), or ``last_batch_loss`` (the data loss of the epoch's last minibatch, what the
    authors' code monitors: AUTHORS-CODE §1.7); the others step per epoch or, with ``interval: step``, per optimiser step (CIFAR's
    "÷10 every 24K steps" is ``{name: step, step_size: 24000, gamma: 0.1, interval: step}``)."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    SCHEDULERS.get(name)
    interval = cfg.pop("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise ValueError(f"scheduler interval must be 'epoch' or 'step', got {interval!r}")
    monitor = cfg.pop("monitor", "loss") if name == "plateau" else cfg.pop("monitor", None)
    if name == "plateau" and interval != "epoch":
        raise ValueError("the plateau scheduler steps per epoch (interval: epoch)")
    if monitor is not None and name != "plateau":
        raise ValueError("only the plateau scheduler takes a monitor")
    SCHEDULERS.check(name, cfg)
    return Scheduler(_construct(SCHEDULERS, name, opt, cfg), interval, monitor)


def make_loader(dataset: Dataset, batch_size, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader with its own seeded generator (same order for the same seed)."""
    if batch_size in (None, "full"):
        batch_size = len(dataset)
    g = torch.Generator()
    g.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, generator=g, num_workers=num_workers,
                      drop_last=drop_last)


def _to(batch, device):
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_epoch(model: nn.Module, loader: DataLoader, task: Task, optimizer: torch.optim.Optimizer,
                device, penalty_fn: Optional[PenaltyFn] = None, scheduler: Optional[Scheduler] = None,
                grad_clip: Optional[float] = None, max_steps: Optional[int] = None,
                on_batch: Optional[Callable[[nn.Module], None]] = None) -> Dict[str, float]:
    """One pass over ``loader``; returns epoch means of the task metrics on the training batches
    (as computed during training, before each step), ``objective`` (loss + penalty), each penalty
    component (``penalty_fn(model, (x, y)) -> (total tensor, {name: float})``), ``steps`` and
    ``time`` (seconds). A "step"-interval scheduler is stepped after every optimiser step;
    ``max_steps`` stops the epoch early; ``on_batch(model)`` runs after every optimiser step (e.g. to read
    the solver statistics of that step's forward and backward)."""
    model.train()
    projections = constraint_projections(model)  # e.g. ResNet-D's A₂ ≥ 0, kept after every step
    t0 = time.perf_counter()
    sums: List[Dict[str, float]] = []
    steps = 0
    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        x, y = _to(batch, device)
        optimizer.zero_grad(set_to_none=True)
        out = task.forward(model, x, y)
        loss = task.loss(out, y)
        total = loss
        comp: Dict[str, float] = {}
        if penalty_fn is not None:
            pen, comp = penalty_fn(model, (x, y))
            total = total + pen
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite training objective {float(total)} at step {steps}")
        total.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        for project in projections:
            project()
        if scheduler is not None:
            scheduler.step_batch()
        if on_batch is not None:
            on_batch(model)
        steps += 1
        last_loss = loss.detach()
        m = task.metrics(out.detach(), y)
        n = m["n"]
        m["objective"] = float(total.detach()) * n
        for k, v in comp.items():
            m[f"penalty/{k}"] = float(v) * n
        sums.append(m)
    res = aggregate(sums)
    res["steps"] = float(steps)
    res["time"] = time.perf_counter() - t0
    if steps:
        res[LAST_BATCH_LOSS] = float(last_loss)
    return res


def evaluate(model: nn.Module, loader: DataLoader, task: Task, device) -> Dict[str, float]:
    """Task metrics averaged over ``loader`` (model in eval mode, no gradients)."""
    model.eval()
    sums = []
    with torch.no_grad():
        for batch in loader:
            x, y = _to(batch, device)
            sums.append(task.metrics(task.forward(model, x, y), y))
    return aggregate(sums)


def fit(model: nn.Module, task: Task, train_set: Dataset, train_cfg: Dict[str, Any], device="cpu", seed: int = 0,
        val_set: Optional[Dataset] = None, penalty_fn: Optional[PenaltyFn] = None,
        callback: Optional[Callable[[int, Dict[str, float]], Optional[bool]]] = None,
        eval_batch_size: Optional[int] = None,
        on_batch: Optional[Callable[[nn.Module], None]] = None) -> List[Dict[str, float]]:
    """Train for ``train_cfg['epochs']`` epochs (or ``max_steps``); returns per-epoch metric dicts
    (``train/…``, ``val/…`` and ``lr``). ``callback(epoch, metrics)`` is called after each epoch
    (the tracking hook); returning True stops training."""
    cfg = dict(train_cfg)
    known = {"epochs", "batch_size", "optimizer", "scheduler", "max_steps", "grad_clip", "num_workers"}
    bad = sorted(set(cfg) - known)
    if bad:
        raise ValueError(f"unknown train option(s) {', '.join(map(repr, bad))}; valid: {', '.join(sorted(known))}")
    model.to(device)
    opt = make_optimizer(model.parameters(), cfg["optimizer"])
    sched = make_scheduler(opt, cfg.get("scheduler"))
    loader = make_loader(train_set, cfg.get("batch_size"), shuffle=True, seed=seed,
                         num_workers=cfg.get("num_workers", 0))
    val_loader = None
    if val_set is not None:
        val_loader = make_loader(val_set, eval_batch_size or cfg.get("batch_size") or len(val_set), shuffle=False)
    max_steps = cfg.get("max_steps")
    history, done = [], 0
    for epoch in range(int(cfg["epochs"])):
        left = None if max_steps is None else max_steps - done
        if left is not None and left <= 0:
            break
        tr = train_epoch(model, loader, task, opt, device, penalty_fn, sched, cfg.get("grad_clip"), left, on_batch)
        done += int(tr["steps"])
        last_batch = {LAST_BATCH_LOSS: tr.pop(LAST_BATCH_LOSS)} if LAST_BATCH_LOSS in tr else {}
        metrics = {split_name("train", k): v for k, v in tr.items()}
        if val_loader is not None:
            metrics.update({split_name("val", k): v for k, v in evaluate(model, val_loader, task, device).items()})
        metrics["lr"] = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step_epoch({**tr, **metrics, **last_batch})
        history.append(metrics)
        if callback is not None and callback(epoch, metrics):
            break
    return history
