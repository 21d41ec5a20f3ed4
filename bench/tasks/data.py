"""Loading the real image data sets (torchvision's MNIST, CIFAR-10/100), offline-friendly.

Data root: the task's ``root`` option, else ``$IRN_DATA_ROOT``, else ``<results>/data``
(:mod:`bench.paths`). Layout, as torchvision expects it::

    <root>/MNIST/raw/train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte
                     (the .gz files of the official release are accepted too and decompressed in place)
    <root>/cifar-10-batches-py/data_batch_1 … data_batch_5  test_batch  batches.meta
    <root>/cifar-100-python/train  test  meta

``download`` is off by default. Missing files raise :class:`DataNotFoundError` saying where the
files were expected and how to get them. torchvision verifies CIFAR files by md5 against the
official release; files that are present but fail it raise :class:`DataIntegrityError`
(``check_md5: false`` loads them anyway, e.g. a re-packed or test copy in the same format).
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch.utils.data import Dataset

from .. import paths

__all__ = ["DataError", "DataNotFoundError", "DataIntegrityError", "data_root", "load_mnist", "load_cifar",
           "ImageTensorDataset", "MNIST_FILES"]

ENV_ROOT = paths.ENV_DATA
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DataError(RuntimeError):
    """A data set could not be loaded; the message says where and how to fix it."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data files are not where they were expected (and were not downloaded)."""


class DataIntegrityError(DataError):
    """The data files exist but do not pass the integrity check."""


def data_root(root: Optional[str] = None) -> Path:
    """``root`` if given, else $IRN_DATA_ROOT, else ``<results>/data`` (:func:`bench.paths.data_root`)."""
    return paths.data_root(root)


def _how(name: str, root: Path, folder: Path, files) -> str:
    return (f"{name} not found: expected {', '.join(files)} under {folder.resolve()}. "
            f"To get it: run once with the task option download: true on a machine with internet "
            f"(files go to {root.resolve()}), or copy the official files into {folder.resolve()}; "
            f"the data root is the task option root, else ${ENV_ROOT}, else <results>/data.")


def load_mnist(root: Optional[str] = None, train: bool = True, download: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) int64 via torchvision.datasets.MNIST."""
    from torchvision.datasets import MNIST

    root_p = data_root(root)
    raw = root_p / "MNIST" / "raw"
    files = MNIST_FILES[True] + MNIST_FILES[False]  # torchvision wants all four present
    for f in files:  # accept the release's .gz files copied in by hand
        gz = raw / (f + ".gz")
        if not (raw / f).exists() and gz.exists():
            try:
                with gzip.open(gz, "rb") as src, open(raw / f, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except OSError as e:
                raise DataIntegrityError(f"could not decompress {gz}: {e}") from None
    missing = [f for f in files if not (raw / f).exists()]
    if missing and not download:
        raise DataNotFoundError(_how("MNIST", root_p, raw, missing))
    try:
        ds = MNIST(str(root_p), train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError when downloads fail
        if missing:
            raise DataNotFoundError(_how("MNIST", root_p, raw, missing) + f" (download failed: {e})") from None
        raise DataIntegrityError(f"MNIST files under {raw.resolve()} could not be read: {e}") from None
    return ds.data.clone(), ds.targets.clone().long()


def _unchecked(cls):
    """The torchvision CIFAR class with md5 checks disabled (existence is still checked)."""
    return type(cls.__name__ + "NoMD5", (cls,), {
        "train_list": [[f, None] for f, _ in cls.train_list],
        "test_list": [[f, None] for f, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def load_cifar(which: int = 10, root: Optional[str] = None, train: bool = True, download: bool = False,
               check_md5: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 images (N, 3, 32, 32) uint8 and labels (N,) int64 via torchvision's classes."""
    from torchvision.datasets import CIFAR10, CIFAR100

    if which not in (10, 100):
        raise ValueError(f"which must be 10 or 100, got {which}")
    cls = CIFAR10 if which == 10 else CIFAR100
    name = f"CIFAR-{which}"
    root_p = data_root(root)
    folder = root_p / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in files if not (folder / f).exists()]
    if download and missing:
        try:
            cls(str(root_p), train=train, download=True)
        except Exception as e:
            raise DataNotFoundError(_how(name, root_p, folder, missing) + f" (download failed: {e})") from None
        missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise DataNotFoundError(_how(name, root_p, folder, missing))
    try:
        ds = (cls if check_md5 else _unchecked(cls))(str(root_p), train=train, download=False)
    except RuntimeError as e:
        raise DataIntegrityError(
            f"{name} files under {folder.resolve()} exist but fail torchvision's md5 check against the official "
            f"release ({e}). Replace them with the official files, or set the task option check_md5: false to "
            "load them as they are.") from None
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(ds.targets, dtype=torch.long)


class ImageTensorDataset(Dataset):
    """Images as a tensor (N, C, H, W) — uint8 (scaled by 1/255) or float in [0, 1] — and labels.

    Yields ``(image float32 in [0, 1], label int)``; ``transform`` (e.g. random crop + flip) is applied
    to the [0, 1] image, using torch's global RNG (seeded by bench.train.set_seed)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: Optional[Callable] = None):
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} labels")
        self.images, self.targets, self.transform = images, targets.long(), transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        x = self.images[i]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])

    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """All images as float [0, 1] (no transform) and labels."""
        x = self.images.float().div(255.0) if self.images.dtype == torch.uint8 else self.images.float()
        return x, self.targets
