"""Benchmark tasks: data, loss, metrics and paper defaults, by name (no tracking here).

    task = build_task({"name": "mnist", "subset": 1000})
    train, val, test = task.data(seed=0)
    model = irn_core.models.build_model(task.default_model())

``build_task(config)`` with ``config = {"name": ..., **options}``; unknown names or options raise
ValueError listing the valid ones. The Task contract is documented in :mod:`bench.tasks.base`.

| name        | kind           | input → target                                   | val            |
|-------------|----------------|--------------------------------------------------|----------------|
| ex1_sine    | regression     | x (B,1) → sin x (B,1)                            | None           |
| ex2_stiff   | regression     | z(0) (B,1) → z(t_j) (B,points,1)                 | None           |
| ex3_lotka   | regression     | z(0) (B,2) → z(0.2j) (B,50,2); test to t=200     | None           |
| v1_function | regression     | x (B,1) → f(x) (B,1)                             | midpoints      |
| v1_spirals  | classification | point (B,2) → {0,1}                              | held-out half  |
| mnist       | classification | image (B,1,28,28) in [0,1] → 10 classes          | val_size       |
| cifar10/100 | classification | image (B,3,32,32) in [0,1] → 10/100 classes      | val_size       |
| digits      | classification | image (B,1,28,28) in [0,1] → 10 classes          | val_size       |
"""
from __future__ import annotations

from typing import Any, Dict, List, Type

from irn_core.registry import Registry

from .base import ClassificationTask, ImageTask, Task, aggregate, classification_metrics
from .data import DataError, DataIntegrityError, DataNotFoundError, data_root
from .images import CIFAR100Task, CIFAR10Task, DigitsTask, MNISTTask
from .ode import Ex1Sine, Ex2Stiff, Ex3Lotka
from .v1 import V1Function, V1Spirals

__all__ = ["TASKS", "get_task", "build_task", "task_names", "Task", "ImageTask", "ClassificationTask",
           "aggregate", "classification_metrics", "DataError", "DataNotFoundError", "DataIntegrityError",
           "data_root", "register_task"]

TASKS: Registry[Type[Task]] = Registry("task")


def register_task(cls: Type[Task]) -> Type[Task]:
    """Class decorator: register a Task subclass under its ``name`` (its options: ``cls.option_names()``)."""
    if not cls.name:
        raise ValueError(f"task class {cls.__name__} needs a name")
    return TASKS.register(cls.name, cls, options=cls.option_names())


for _cls in (Ex1Sine, Ex2Stiff, Ex3Lotka, V1Function, V1Spirals, MNISTTask, CIFAR10Task, CIFAR100Task, DigitsTask):
    register_task(_cls)


def task_names() -> List[str]:
    return TASKS.names()


def get_task(name: str) -> Type[Task]:
    """The task class registered under ``name``."""
    return TASKS.get(name)


def build_task(config: Dict[str, Any]) -> Task:
    """``{"name": ..., **options}`` → Task (options validated; unknown ones listed with the valid ones)."""
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"task config must be a dict with a 'name'; valid names: {', '.join(task_names())}")
    opts = dict(config)
    return get_task(opts.pop("name"))(**opts)
