"""The Task contract shared by every benchmark task (no tracking, no MLflow here).

A task is built from options (validated by its pydantic ``Options``; unknown options raise
ValueError listing the valid ones) and exposes:

- ``name``, ``kind`` ("regression" | "classification")
- ``data(seed) -> (train, val | None, test)``: torch Datasets yielding ``(input, target)``;
  generated data are a deterministic function of the options and the seed
- ``forward(model, inputs, targets) -> outputs``: how the task runs a model (default
  ``model(inputs)``; ODE tasks roll the model out to the horizon of the targets)
- ``loss(output, target) -> scalar`` (mean over the batch; what is minimised)
- ``metrics(output, target) -> dict[str, float]``: **sums over the samples of the batch** plus the
  sample count ``n``; :func:`aggregate` sums the dicts of several batches and divides by ``n``
  (classification: loss, top1, top2 as fractions in [0, 1]; regression: loss, mse)
- ``default_model() -> dict`` for :func:`irn_core.models.build_model`
- ``default_train() -> dict``: ``{epochs, batch_size, optimizer: {name, lr, ...}, scheduler: {...} | None}``
- ``default_regularizers() -> dict``: the paper's regulariser settings (names as in DESIGN.md:
  divergence, jacobian, tv), for the suite runner to map onto irn_core.regularizers
- ``config() -> dict``: ``{"name": ..., **resolved options}``
- ``required_data() -> [(data set, root)]``: files read from disk (checked before a suite runs)

Image tasks (:class:`ImageTask`) additionally expose ``input_shape``, ``num_classes``,
``pixel_range = (0.0, 1.0)``, ``mean``/``std`` and ``normalize(x)``: datasets yield [0, 1] images;
the default models normalise inside (``normalize: {mean, std}``), so corruptions are applied to
[0, 1] pixels before normalisation, as in the authors' code.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch.utils.data import Dataset

from irn_core.registry import unknown_options

__all__ = ["Task", "ImageTask", "TaskOptions", "aggregate", "classification_metrics", "DataSplits"]

DataSplits = Tuple[Dataset, Optional[Dataset], Dataset]


class TaskOptions(BaseModel):
    """Base of every task's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _validate(options_cls, name: str, options: Dict[str, Any]) -> BaseModel:
    valid = list(options_cls.model_fields)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(unknown_options(f"task {name!r}", bad, valid))
    try:
        return options_cls(**options)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"invalid option(s) for task {name!r}: {msgs}; valid: {', '.join(valid)}") from None


def aggregate(batches: Iterable[Dict[str, float]]) -> Dict[str, float]:
    """Combine per-batch metric sums (each with ``n``) into sample means (``n`` kept as the count)."""
    tot: Dict[str, float] = {}
    for b in batches:
        for k, v in b.items():
            tot[k] = tot.get(k, 0.0) + float(v)
    n = tot.get("n", 0.0)
    return {k: (v if k == "n" else (v / n if n else float("nan"))) for k, v in tot.items()}


def classification_metrics(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 2)) -> Dict[str, float]:
    """Sums over the batch: cross-entropy ``loss``, ``top{k}`` hits, and ``n``."""
    with torch.no_grad():
        out = {"n": float(target.shape[0]),
               "loss": float(F.cross_entropy(output, target, reduction="sum"))}
        k_max = min(max(topk), output.shape[1])
        pred = output.topk(k_max, dim=1).indices
        hit = pred == target[:, None]
        for k in topk:
            out[f"top{k}"] = float(hit[:, : min(k, k_max)].any(dim=1).sum())
    return out


class Task:
    """Base class; subclasses set ``name``, ``kind``, ``Options`` and implement ``data``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Options: ClassVar[type] = TaskOptions

    def __init__(self, **options: Any):
        self.options = _validate(self.Options, self.name, options)

    @classmethod
    def option_names(cls) -> list:
        return list(cls.Options.model_fields)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, **self.options.model_dump()}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"

    # -- contract ---------------------------------------------------------------------------
    def data(self, seed: int = 0) -> DataSplits:
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        return model(inputs)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
        raise NotImplementedError

    def default_model(self) -> Dict[str, Any]:
        raise NotImplementedError

    def default_train(self) -> Dict[str, Any]:
        raise NotImplementedError

    def default_regularizers(self) -> Dict[str, Any]:
        return {}

    def metric_names(self) -> List[str]:
        """The keys of :meth:`metrics` (besides ``n``): what a run logs per split (``train/…``, ``final/test/…``)."""
        raise NotImplementedError

    @property
    def has_val(self) -> bool:
        """Whether :meth:`data` returns a validation split (``val/…`` metrics are logged per epoch)."""
        return False

    def required_data(self) -> List[Tuple[str, Optional[str]]]:
        """(data set name, data root option) of the files this task reads from disk and will not download
        (see :mod:`bench.datasets`); generated or bundled data: none."""
        return []


class ClassificationTask(Task):
    kind = "classification"
    topk: ClassVar[Tuple[int, ...]] = (1, 2)

    def loss(self, output, target):
        return F.cross_entropy(output, target)

    def metrics(self, output, target):
        return classification_metrics(output, target, self.topk)

    def metric_names(self) -> List[str]:
        return ["loss"] + [f"top{k}" for k in self.topk]

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """(batch, classes) class probabilities of the model's output (softmax of the logits)."""
        return torch.softmax(output, dim=1)


class ImageTask(ClassificationTask):
    """Classification of images in [0, 1]; normalisation belongs to the model (see module doc)."""

    input_shape: ClassVar[Tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10
    mean: ClassVar[Tuple[float, ...]] = (0.5,)
    std: ClassVar[Tuple[float, ...]] = (0.5,)
    pixel_range: ClassVar[Tuple[float, float]] = (0.0, 1.0)

    @property
    def has_val(self) -> bool:
        return int(getattr(self.options, "val_size", 0) or 0) > 0

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    def normalize_config(self) -> Dict[str, list]:
        return {"mean": list(self.mean), "std": list(self.std)}
