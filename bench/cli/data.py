"""``bench data``: the image data sets (MNIST, CIFAR-10, CIFAR-100) — list, import offline, download."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err, out, status_table

__all__ = ["data_app"]

RootOpt = typer.Option(None, "--root", help="Data root (default $IRN_DATA_ROOT, else results/data).")


def data_list(root: Optional[str] = RootOpt,
              verify: bool = typer.Option(True, "--verify/--no-verify", help="Check every file's MD5 (default).")):
    """Each data set: where it is expected, present or missing, checksums verified, size."""
    from ..datasets import dataset_names, status

    rows = []
    for name in dataset_names():
        st = status(name, root, verify=verify)
        if st.state == "missing":
            note = f"none of its {len(st.missing)} files: bench data import {name} <folder or archive>"
        else:
            note = ", ".join([f"missing {f}" for f in st.missing] + [f"corrupt {f}" for f in st.corrupt])
        rows.append((name, st.state, f"{st.size / 2**20:.1f} MiB", str(st.folder.resolve()), note))
    out.print(status_table("data sets", rows, ["name", "status", "size", "folder", "problems"]))


def data_import(name: str = typer.Argument(..., help="mnist | cifar10 | cifar100"),
                path: Path = typer.Argument(..., help="A folder (searched recursively) or a .tar/.tar.gz/.tgz/.zip "
                                                      "archive holding the raw or gzipped files."),
                root: Optional[str] = RootOpt,
                force: bool = typer.Option(False, "--force", help="Replace files already there even if intact.")):
    """Copy a data set into the data root in torchvision's layout, every file verified against the official
    checksum first (a wrong or corrupt file: nothing is written, exit 2)."""
    from ..datasets import import_dataset
    from ..tasks.data import DataError

    try:
        st = import_dataset(name, path, root, force=force)
    except DataError as e:
        err.print(f"[bold red]error[/]: bench data import {name} {path}: {e}")
        raise typer.Exit(2)
    out.print(f"{name}: {st.state}, {len(st.present)} file(s), {st.size / 2**20:.1f} MiB in {st.folder.resolve()}")


def data_download(name: str = typer.Argument(..., help="mnist | cifar10 | cifar100"), root: Optional[str] = RootOpt):
    """Download a data set with torchvision (needs internet), then verify it."""
    from ..datasets import download
    from ..tasks.data import DataError

    try:
        st = download(name, root)
    except DataError as e:
        err.print(f"[bold red]error[/]: bench data download {name}: {e}")
        raise typer.Exit(1)
    out.print(f"{name}: {st.state} in {st.folder.resolve()}")


data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="The image data sets (MNIST, CIFAR-10, CIFAR-100): list, import offline, download.")
data_app.command("list")(data_list)
data_app.command("import")(data_import)
data_app.command("download")(data_download)
