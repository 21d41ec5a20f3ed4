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
(``check_md5: false`` loads them anyway, e.g. a re-packed or test copy in the same format, with an unpickler that
accepts numeric arrays only: an unverified file can never run code). MNIST's IDX files are raw bytes, never pickles.
"""
from __future__ import annotations

import gzip
import pickle
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


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, strings and numbers — nothing that can run code. CIFAR files that are not
    the verified official release are read with it (a pickle from an arbitrary folder may otherwise execute code)."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
                ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numeric arrays are accepted in an "
                                         "unverified CIFAR file")
        return super().find_class(module, name)


def _cifar_unverified(folder: Path, files, label_key: str) -> Tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    xs, ys = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            try:
                entry = _ArraysOnly(fh, encoding="latin1").load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
                raise DataIntegrityError(f"{folder / f}: not a CIFAR batch of numeric arrays ({e})") from None
        if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
            raise DataIntegrityError(f"{folder / f}: not a CIFAR batch (needs 'data' and '{label_key}')")
        xs.append(np.asarray(entry["data"], dtype=np.uint8))
        ys.extend(int(v) for v in entry[label_key])
    x = torch.from_numpy(np.vstack(xs).reshape(-1, 3, 32, 32).copy())
    return x, torch.tensor(ys, dtype=torch.long)


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
    if not check_md5:  # not the verified release: read with an unpickler that accepts numeric arrays only
        split = cls.train_list if train else cls.test_list
        return _cifar_unverified(folder, [f for f, _ in split], "labels" if which == 10 else "fine_labels")
    try:
        ds = cls(str(root_p), train=train, download=False)  # torchvision verifies every file's MD5 first
    except RuntimeError as e:
        raise DataIntegrityError(
            f"{name} files under {folder.resolve()} exist but fail torchvision's md5 check against the official "
            f"release ({e}). Replace them with the official files (bench data import), or set the task option "
            "check_md5: false to read them with a reader that accepts numeric arrays only.") from None
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
