"""File locks (``flock``): per-cell locks so that concurrent ``bench run``/workers on one machine never run a cell
twice, and the exclusive sections of store creation and search trial claims.

An exclusive, non-blocking ``flock`` on ``<results>/locks/<experiment>/<spec hash>.lock``: the kernel
releases it when the holder dies (even ``kill -9``), so a held lock always means a live runner, and a
RUNNING run in the store whose lock is free was left by a dead process.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Iterator, Optional


class FileLock:
    """An exclusive ``flock`` on ``path`` holding the owner's pid, released by the kernel when the owner dies."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: Optional[int] = None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock; with ``wait`` block until the current holder finishes (or dies)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class CellLock(FileLock):
    """The lock of one cell of one experiment: ``<lock_dir>/<experiment>/<spec hash>.lock``."""

    def __init__(self, lock_dir: Path, experiment: str, spec_hash: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
        super().__init__(Path(lock_dir) / safe / f"{spec_hash}.lock")


@contextlib.contextmanager
def exclusive(path: Optional[str | Path]) -> Iterator[None]:
    """Hold an exclusive, blocking ``flock`` on ``path`` (created with its folder) for the ``with`` block;
    ``None``: no lock."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_is_free(path: str | Path) -> bool:
    """True when nobody holds the flock on ``path`` (its holder is dead, or it never existed)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)
