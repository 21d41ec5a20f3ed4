"""Image classification tasks: mnist (journal ex4), cifar10 / cifar100 (ResNet-D/-S), digits (offline).

Every dataset yields ``(image float32 in [0, 1] of shape input_shape, label int)``; normalisation is
done by the model (its ``normalize`` option, filled in by ``default_model``), so corruptions act on
[0, 1] pixels before normalisation.

Splits (the papers have no validation sets): ``train`` = the first ``subset`` training images
(``subset_mode: first``, as the authors' code) or a seeded random ``subset`` (``subset_mode: random``);
``val`` = the next ``val_size`` images of the same order (None when ``val_size`` is 0, the default);
``test`` = the official test set (its first ``test_subset`` images if set). Journal Table 3 measures
robustness on the 1000 training images themselves; the runner picks which split to corrupt.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import ImageTask, TaskOptions
from .data import ImageTensorDataset, load_cifar, load_mnist

__all__ = ["MNISTTask", "CIFAR10Task", "CIFAR100Task", "DigitsTask", "split_indices", "inverse_frequency_weights"]


def inverse_frequency_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """w_c ∝ 1/count_c over ``targets``, normalised to sum 1 (classes absent from ``targets`` get 0)."""
    counts = torch.bincount(targets.long(), minlength=num_classes).double()
    w = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    return (w / w.sum()).float()


def split_indices(n_total: int, subset: Optional[int], val_size: int, mode: str, seed: int):
    """(train indices, val indices) over ``n_total`` training images (see module doc)."""
    if mode == "first":
        order = torch.arange(n_total)
    else:
        order = torch.randperm(n_total, generator=torch.Generator().manual_seed(int(seed)))
    n_train = n_total - val_size if subset is None else subset
    if n_train < 1 or n_train + val_size > n_total:
        raise ValueError(f"subset ({subset}) + val_size ({val_size}) exceed the {n_total} training images")
    return order[:n_train], order[n_train:n_train + val_size]


class _ImageOptions(TaskOptions):
    root: Optional[str] = Field(None, description="data root (default $IRN_DATA_ROOT, else results/data)")
    download: bool = False
    subset: Optional[int] = Field(None, ge=1, description="number of training images (default: all)")
    subset_mode: Literal["first", "random"] = "first"
    val_size: int = Field(0, ge=0, description="held-out training images after the subset (0: val is None)")
    test_subset: Optional[int] = Field(None, ge=1, description="first N test images (default: all)")


def _tensor_splits(x_tr, y_tr, x_te, y_te, o, seed, transform=None):
    tr, va = split_indices(x_tr.shape[0], o.subset, o.val_size, o.subset_mode, seed)
    train = ImageTensorDataset(x_tr[tr], y_tr[tr], transform)
    val = ImageTensorDataset(x_tr[va], y_tr[va]) if len(va) else None
    if o.test_subset is not None:
        x_te, y_te = x_te[: o.test_subset], y_te[: o.test_subset]
    return train, val, ImageTensorDataset(x_te, y_te)


# ------------------------------------------------------------------------------------------ mnist
class MNISTOptions(_ImageOptions):
    arch: Literal["resnet18_preact", "mnist_compact", "mnist_e831e4c", "nemon"] = Field(
        "resnet18_preact", description="default model: the journal's ResNet-18, the authors' Nov-2020 compact net, "
                                       "the authors' e831e4c net, or NEMON")
    class_weights: Literal["none", "inverse_frequency"] = Field(
        "none", description="cross-entropy class weights: none, or ∝ 1/count over the training set (the authors' "
                            "e831e4c, ex_MNIST.py:67-80)")


def _mnist_like_model(task: ImageTask, arch: str) -> dict:
    norm = task.normalize_config()
    side = task.input_shape[-1]
    implicit = {"theta": 0.5, "phi": "one_leg", "field": {"eig_range": [-3.0, 1.0]},
                "solver": {"name": "anderson", "tol": 1e-6, "max_iter": 100, "mode": "rel"},
                "backward": {"name": "gmres", "tol": 1e-6, "max_iter": 50}}
    if arch == "resnet18_preact":
        return {"name": "resnet18_preact", "width": 8, "in_channels": task.input_shape[0],
                "num_classes": task.num_classes, "image_size": side, "normalize": norm, "layer": implicit}
    if arch == "mnist_e831e4c":  # AUTHORS-CODE §1.5: z₀ = x, ‖r‖² ≤ 1e-6 per sample (= ‖r‖ ≤ 1e-3), L-BFGS
        return {"name": "mnist_e831e4c", "in_channels": task.input_shape[0], "num_classes": task.num_classes,
                "image_size": side, "layer": {
                    "theta": 0.5, "initial_guess": "previous", "returns": "update",
                    "solver": {"name": "lbfgs", "tol": 1e-3, "max_iter": 200, "mode": "abs", "history_size": 10,
                               "objective": "batch_mean", "stop": "zero_gradient", "min_gradients": 3,
                               "tolerance_grad": 1e-9, "tolerance_change": 1e-9},
                    "backward": {"name": "gmres", "tol": 1e-6, "max_iter": 50}}}
    if arch == "mnist_compact":
        return {"name": "mnist_compact", "channels": [8, 16, 32], "in_channels": task.input_shape[0],
                "num_classes": task.num_classes, "image_size": side, "normalize": norm, "layer": implicit}
    return {"name": "nemon", "kind": "dense", "hidden": 100, "in_channels": task.input_shape[0],
            "image_size": side, "num_classes": task.num_classes, "normalize": norm}


class MNISTTask(ImageTask):
    """MNIST (torchvision's files under <root>/MNIST/raw), 1×28×28. Journal ex4: ``subset: 1000``,
    pre-activation ResNet-18 width 8 with F^{−3,1} θ-layers, Adam 1e-2, 100 epochs, α_div = 0.01."""

    name = "mnist"
    Options = MNISTOptions
    input_shape = (1, 28, 28)
    mean, std = (0.1307,), (0.3081,)

    _class_weight: Optional[torch.Tensor] = None

    def data(self, seed: int = 0):
        o = self.options
        x_tr, y_tr = load_mnist(o.root, train=True, download=o.download)
        x_te, y_te = load_mnist(o.root, train=False, download=o.download)
        splits = _tensor_splits(x_tr, y_tr, x_te, y_te, o, seed)
        if o.class_weights == "inverse_frequency":
            self._class_weight = inverse_frequency_weights(splits[0].targets, self.num_classes)
        return splits

    def required_data(self):
        return [] if self.options.download else [("mnist", self.options.root)]

    def loss(self, output, target):
        if self.options.class_weights == "none":
            return F.cross_entropy(output, target)
        if self._class_weight is None:
            raise RuntimeError("class_weights: inverse_frequency needs the training set: call data() first")
        return F.cross_entropy(output, target, weight=self._class_weight.to(output.device, output.dtype))

    def default_model(self):
        return _mnist_like_model(self, self.options.arch)

    def default_train(self):
        return {"epochs": 100, "batch_size": 128, "optimizer": {"name": "adam", "lr": 1e-2}, "scheduler": None}

    def default_regularizers(self):
        return {"divergence": {"weight": 0.01}} if self.options.arch != "nemon" else {}


# ------------------------------------------------------------------------------------------ cifar
class CIFAROptions(_ImageOptions):
    augment: bool = Field(True, description="random crop (4 px padding) + horizontal flip on train")
    check_md5: bool = Field(True, description="verify the files against the official release (torchvision)")
    arch: Literal["resnet_d", "resnet_s", "resnet18_preact"] = "resnet_d"
    n: int = Field(3, ge=1, description="ResNet-D/-S layers per stage (depth: D 6n, S 3n+2)")


def cifar_augmentation():
    """Standard CIFAR augmentation on [0, 1] tensors: random crop 32 with 4 px zero padding, h-flip."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])


class _CIFARTask(ImageTask):
    Options = CIFAROptions
    input_shape = (3, 32, 32)
    which = 10

    def data(self, seed: int = 0):
        o = self.options
        x_tr, y_tr = load_cifar(self.which, o.root, train=True, download=o.download, check_md5=o.check_md5)
        x_te, y_te = load_cifar(self.which, o.root, train=False, download=o.download, check_md5=o.check_md5)
        return _tensor_splits(x_tr, y_tr, x_te, y_te, o, seed, cifar_augmentation() if o.augment else None)

    def required_data(self):
        return [] if self.options.download else [(f"cifar{self.which}", self.options.root)]

    def default_model(self):
        o = self.options
        norm = self.normalize_config()
        if o.arch == "resnet18_preact":
            m = _mnist_like_model(self, "resnet18_preact")
            m["width"] = 16
            return m
        return {"name": "resnet_ds", "variant": "D" if o.arch == "resnet_d" else "S", "n": o.n, "channels": 16,
                "in_channels": 3, "num_classes": self.num_classes, "form": "post_activation",
                "batch_norm": True, "normalize": norm, "layer": {"theta": 0.0}}

    def default_regularizers(self):
        # Zhang & Schaeffer Table 4.1: norm penalties on all filters and weights (D: plus the A₂ ≥ 0 indicator, kept
        # by projection); λ is lost — *inferred* λ = 5e-5 on Σ‖W‖²_F, i.e. weight decay 1e-4 under SGD
        return {"frobenius": {"weight": 5e-5}} if self.options.arch in ("resnet_d", "resnet_s") else {}

    def default_train(self):
        # Zhang & Schaeffer: SGD 0.1, batch 128, lr ÷ 10 every 24K steps, 70K steps
        # (ResNet-S on CIFAR-10: every 32K, 93.5K steps).
        s_c10 = self.options.arch == "resnet_s" and self.which == 10
        step, total = (32000, 93500) if s_c10 else (24000, 70000)
        return {"epochs": -(-total * 128 // 50000), "max_steps": total, "batch_size": 128,
                "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                "scheduler": {"name": "step", "step_size": step, "gamma": 0.1, "interval": "step"}}


class CIFAR10Task(_CIFARTask):
    """CIFAR-10 (torchvision's python pickles under <root>/cifar-10-batches-py), 3×32×32, 10 classes."""

    name = "cifar10"
    which = 10
    num_classes = 10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR100Task(_CIFARTask):
    """CIFAR-100 (fine labels; <root>/cifar-100-python), 3×32×32, 100 classes."""

    name = "cifar100"
    which = 100
    num_classes = 100
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


# ------------------------------------------------------------------------------------------ digits
class DigitsOptions(TaskOptions):
    test_fraction: float = Field(0.25, gt=0, lt=1, description="stratified test share, split by the seed")
    subset: Optional[int] = Field(None, ge=1, description="first N training images after the split")
    val_size: int = Field(0, ge=0, description="training images held out after the subset")
    size: int = Field(28, ge=8, description="side after bilinear upsampling from 8×8")
    arch: Literal["resnet18_preact", "mnist_compact", "nemon"] = "resnet18_preact"


class DigitsTask(ImageTask):
    """scikit-learn's 8×8 digits (1797 images, bundled, no download) scaled to [0, 1] (÷16) and
    upsampled bilinearly to 28×28: the offline stand-in for MNIST with the same models. Train/test:
    stratified split by the seed (``test_fraction``); val: ``val_size`` training images held out."""

    name = "digits"
    Options = DigitsOptions
    mean, std = (0.3053,), (0.3247,)

    @property
    def input_shape(self):  # type: ignore[override]
        return (1, self.options.size, self.options.size)

    def data(self, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        o = self.options
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = F.interpolate(x, size=(o.size, o.size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
        y = torch.tensor(d.target, dtype=torch.long)
        idx_tr, idx_te = train_test_split(torch.arange(len(y)).numpy(), test_size=o.test_fraction,
                                          random_state=int(seed), stratify=y.numpy())
        idx_tr, idx_te = torch.as_tensor(idx_tr), torch.as_tensor(idx_te)
        tr, va = split_indices(len(idx_tr), o.subset, o.val_size, "first", seed)
        val = ImageTensorDataset(x[idx_tr[va]], y[idx_tr[va]]) if len(va) else None
        return ImageTensorDataset(x[idx_tr[tr]], y[idx_tr[tr]]), val, ImageTensorDataset(x[idx_te], y[idx_te])

    def default_model(self):
        return _mnist_like_model(self, self.options.arch)

    def default_train(self):
        return {"epochs": 30, "batch_size": 128, "optimizer": {"name": "adam", "lr": 1e-2}, "scheduler": None}

    def default_regularizers(self):
        return {"divergence": {"weight": 0.01}} if self.options.arch != "nemon" else {}
