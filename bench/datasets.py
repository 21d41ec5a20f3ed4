"""The image data sets the tasks read (MNIST, CIFAR-10, CIFAR-100): where they live, whether they are there
and intact, and how to get them there offline (``bench data list | import | download``).

Layout under the data root (:func:`bench.tasks.data.data_root`: the task's ``root``, else $IRN_DATA_ROOT, else
``results/data``) is torchvision's, so its loaders read the files as they are::

    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte       (uncompressed IDX)
    cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    cifar-100-python/{train,test,meta}

Integrity is the MD5 of each file as the loaders read it: for MNIST the standard checksums of the
uncompressed IDX files (the same as ``shared/data/mnist/MD5SUMS-uncompressed``), for CIFAR the checksums
torchvision verifies. An import verifies every file before anything is written, writes into a temporary
folder beside the destination and moves the files in only when all passed: a wrong or corrupt file is
refused with its name and the data root is left as it was.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .tasks.data import DataError, data_root

__all__ = ["DATASETS", "Dataset", "DatasetStatus", "status", "import_dataset", "download", "missing_data",
           "md5_of", "dataset_names"]


@dataclass(frozen=True)
class Dataset:
    """One data set: its folder under the data root and the MD5 of every file in it."""

    name: str
    folder: str
    files: Tuple[Tuple[str, str], ...]  # (file name, md5 of the file as stored)
    source: str  # where the official files come from

    def path(self, root: Path) -> Path:
        return Path(root) / self.folder


def _cifar(name: str, cls_name: str) -> Dataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    files = tuple((f, md5) for f, md5 in cls.train_list + cls.test_list) + ((cls.meta["filename"], cls.meta["md5"]),)
    return Dataset(name, cls.base_folder, files, f"{cls.url} (the python version)")


def _mnist() -> Dataset:
    return Dataset("mnist", "MNIST/raw", (
        ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
        ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
        ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
        ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
    ), "the four IDX files of the MNIST release (raw or .gz; e.g. torchvision's mirrors)")


def _catalog() -> Dict[str, Dataset]:
    return {"mnist": _mnist(), "cifar10": _cifar("cifar10", "CIFAR10"), "cifar100": _cifar("cifar100", "CIFAR100")}


DATASETS: Dict[str, Dataset] = _catalog()


def dataset_names() -> List[str]:
    return list(DATASETS)


def _get(name: str) -> Dataset:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ status

@dataclass
class DatasetStatus:
    name: str
    folder: Path
    present: List[str]
    missing: List[str]
    corrupt: List[str]  # present but failing the checksum (only when verified)
    verified: bool
    size: int  # bytes of the present files

    @property
    def state(self) -> str:
        if not self.present:
            return "missing"
        if self.missing:
            return "incomplete"
        if self.corrupt:
            return "corrupt"
        return "verified" if self.verified else "present"


def status(name: str, root: Optional[str] = None, verify: bool = True) -> DatasetStatus:
    """Which files of ``name`` are under the data root, and (``verify``) whether their MD5s match."""
    ds = _get(name)
    folder = ds.path(data_root(root))
    present, missing, corrupt, size = [], [], [], 0
    for f, md5 in ds.files:
        p = folder / f
        if p.is_file():
            present.append(f)
            size += p.stat().st_size
            if verify and md5_of(p) != md5:
                corrupt.append(f)
        else:
            missing.append(f)
    return DatasetStatus(name, folder, present, missing, corrupt, verify and not missing, size)


# ------------------------------------------------------------------------------------------ import

_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")


def _is_archive(p: Path) -> bool:
    return p.is_file() and any(p.name.endswith(s) for s in _ARCHIVES)


def _extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``, refusing members that would land outside it."""
    dest = dest.resolve()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for m in z.namelist():
                if not (dest / m).resolve().is_relative_to(dest):
                    raise DataError(f"{archive}: member {m!r} would be written outside the extraction folder; refused")
            z.extractall(dest)
        return
    try:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")  # no absolute paths, links out of dest, devices
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{archive}: not a readable archive ({e})") from None


def _find(src: Path, wanted: Sequence[str]) -> Dict[str, Path]:
    """For each wanted file name: ``name`` or ``name.gz`` anywhere under ``src`` (the shallowest wins)."""
    found: Dict[str, Path] = {}
    for dirpath, dirnames, filenames in sorted(os.walk(src), key=lambda w: w[0].count(os.sep)):
        dirnames.sort()
        for f in wanted:
            if f in found:
                continue
            for cand in (f, f + ".gz"):
                if cand in filenames:
                    found[f] = Path(dirpath) / cand
                    break
    return found


def _stage(src_file: Path, dst: Path) -> None:
    """Copy (decompressing a .gz) ``src_file`` to ``dst``."""
    try:
        if src_file.name.endswith(".gz"):
            with gzip.open(src_file, "rb") as s, open(dst, "wb") as d:
                shutil.copyfileobj(s, d, 1 << 20)
        else:
            shutil.copyfile(src_file, dst)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{src_file}: could not be read ({type(e).__name__}: {e}); nothing was imported") from None


def import_dataset(name: str, src: str | Path, root: Optional[str] = None, force: bool = False) -> DatasetStatus:
    """Copy the files of ``name`` from ``src`` (a folder, searched recursively, or a .tar/.tar.gz/.tgz/.zip
    archive; raw or gzipped files) into the data root, verified. Raises :class:`DataError` naming every wrong,
    corrupt or missing file; then nothing is written. Files already there and intact are kept unless
    ``force``."""
    ds = _get(name)
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    dest = ds.path(data_root(root))
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # removed again if the import fails
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _import_into(ds, name, src, dest, force)
    except BaseException:
        for p in made:  # deepest first; only folders this call created and left empty
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    return status(name, root)


def _import_into(ds, name: str, src: Path, dest: Path, force: bool) -> None:
    with tempfile.TemporaryDirectory(prefix=f".import-{name}-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        search = src
        if _is_archive(src):
            search = tmp / "unpacked"
            search.mkdir()
            _extract(src, search)
        elif not src.is_dir():
            raise DataError(f"{src}: expected a folder or a {'/'.join(_ARCHIVES)} archive holding the {name} files")
        wanted = [f for f, _ in ds.files]
        found = _find(search, wanted)
        missing = [f for f in wanted if f not in found]
        if missing:
            raise DataError(f"{src}: {name} file(s) not found (raw or .gz): {', '.join(missing)}; nothing was imported")
        staged = tmp / "staged"
        staged.mkdir()
        problems = []
        for f, md5 in ds.files:
            _stage(found[f], staged / f)
            got = md5_of(staged / f)
            if got != md5:
                problems.append(f"{found[f]}: MD5 of the {'decompressed ' if found[f].name.endswith('.gz') else ''}"
                                f"file is {got}, the official {f} has {md5}")
        if problems:
            raise DataError(f"{name}: {len(problems)} file(s) are not the official ones; nothing was imported:\n  "
                            + "\n  ".join(problems))
        dest.mkdir(parents=True, exist_ok=True)
        for f, md5 in ds.files:
            target = dest / f
            if target.is_file() and not force and md5_of(target) == md5:
                continue
            os.replace(staged / f, target)  # same filesystem: atomic per file; all were verified first


# ------------------------------------------------------------------------------------------ download

def download(name: str, root: Optional[str] = None) -> DatasetStatus:
    """torchvision's download into the data root (needs internet), then verified."""
    import torchvision.datasets as tvd

    _get(name)
    r = str(data_root(root))
    cls = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    try:
        for train in (True, False):
            cls(r, train=train, download=True)
    except Exception as e:  # noqa: BLE001 - URLError, OSError, RuntimeError from torchvision
        raise DataError(f"{name}: download failed ({type(e).__name__}: {e}). Offline: copy the files to this "
                        f"machine and run: bench data import {name} <folder or archive>") from None
    st = status(name, root)
    if st.state != "verified":
        raise DataError(f"{name}: downloaded, but {st.state}: {', '.join(st.missing + st.corrupt)}")
    return st


# ------------------------------------------------------------------------------------------ suites

def missing_data(needs: Iterable[Tuple[str, Optional[str]]]) -> List[str]:
    """One message per (data set, root) in ``needs`` whose files are not all present, with the command that
    fixes it. Presence only (fast); the loaders and ``bench data list`` verify checksums."""
    msgs = []
    for name, root in sorted(set(needs), key=lambda nr: (nr[0], nr[1] or "")):
        st = status(name, root, verify=False)
        if st.missing:
            root_opt = f" --root {root}" if root else ""
            msgs.append(f"data set {name} is {st.state} under {st.folder.resolve()} "
                        f"(missing: {', '.join(st.missing)}). Get it with: bench data import {name} <folder or archive>"
                        f"{root_opt}   (offline), or: bench data download {name}{root_opt}   (with internet)")
    return msgs
