"""Optuna storages: a journal file (default ``<results>/optuna.journal``) or an RDB URL, and the lock files
beside a file storage (trial claims, worker liveness).

A journal is one JSON record per line, appended under Optuna's lock. A crash or a full disk in the middle of an
append leaves a *torn* record (a line cut short, or glued to the next append); Optuna then fails on every later
read. :func:`open_storage` checks the journal first and raises :class:`TornJournalError` saying what it found;
:func:`repair_journal` (``bench search … --repair-storage``) backs the file up, drops the torn bytes and keeps
every complete record.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..locks import exclusive
from ..paths import results_dir, sqlite_path

__all__ = ["default_storage", "is_rdb", "open_storage", "open_storage_url", "storage_url_of", "storage_lock_paths",
           "TornJournalError", "JournalCheck", "check_journal", "repair_journal"]

HEARTBEAT_INTERVAL, HEARTBEAT_GRACE = 30, 120


def default_storage() -> str:
    return str(results_dir() / "optuna.journal")


def is_rdb(url: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+]*://", url)) and not url.startswith(("journal:", "file:"))


def journal_path(url: str) -> str:
    for pre in ("journal:///", "journal://", "journal:", "file://"):
        if url.startswith(pre):
            return ("/" if pre == "journal:///" else "") + url[len(pre):]
    return url


def open_storage(url: str):
    """An Optuna storage: a journal file (path, ``journal:PATH``) or an RDB URL (with heartbeat)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if is_rdb(url):
        kw: Dict[str, Any] = {}
        db = sqlite_path(url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            from ..tracking import lock_timeout

            # SQLite's busy wait: a process holding the write lock (stopped, hung) makes us fail after this, with the
            # command's message (bench.cli.common.write_guard) instead of hanging
            kw["engine_kwargs"] = {"connect_args": {"timeout": lock_timeout()}}
        # Optuna creates the tables on first contact; two processes doing it at once on a new SQLite file race
        with exclusive(None if db is None else f"{db}.init.lock"), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE, **kw)
    path = Path(journal_path(url)).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        found = check_journal(path)
        if found.torn:
            raise TornJournalError(found)
    return JournalStorage(JournalFileBackend(str(path)))


# --------------------------------------------------------------------------- torn journals


@dataclass
class JournalCheck:
    """What :func:`check_journal` found: complete records, and the torn pieces (line number, bytes)."""

    path: Path
    records: int = 0
    torn: List[Tuple[int, int]] = field(default_factory=list)  # (1-based line, bytes dropped by a repair)
    salvaged: int = 0  # complete records found glued behind a torn one (kept by a repair)
    kept: List[bytes] = field(default_factory=list, repr=False)  # the lines a repair writes

    def describe(self) -> str:
        where = ", ".join(f"line {n} ({b} bytes)" for n, b in self.torn[:5]) + (" …" if len(self.torn) > 5 else "")
        return (f"the Optuna journal {self.path} has {len(self.torn)} torn record(s) (a write cut short by a crash or "
                f"a full disk): {where}; {self.records} complete record(s)")


class TornJournalError(RuntimeError):
    """The journal holds torn records; ``--repair-storage`` drops them (after a backup) and keeps the rest."""

    def __init__(self, check: JournalCheck):
        self.check = check
        super().__init__(check.describe() + ". Rerun with --repair-storage to back it up and drop the torn bytes")


def _journal_lock(path: Path):
    from optuna.storages.journal import JournalFileSymlinkLock  # the lock Optuna's appends take

    return JournalFileSymlinkLock(str(path))


def _scan(path: Path) -> JournalCheck:
    found = JournalCheck(path)
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    tail = lines.pop()  # after the last newline: b"" when the file ends with a complete record
    numbered = [(i + 1, line + b"\n") for i, line in enumerate(lines)]
    if tail:
        numbered.append((len(lines) + 1, tail))
    for number, line in numbered:
        body = line.rstrip(b"\n")
        if line.endswith(b"\n") and _is_record(body):
            found.records += 1
            found.kept.append(line)
            continue
        start = _complete_suffix(body) if line.endswith(b"\n") else None  # a full append glued behind the torn one
        if start is None:
            found.torn.append((number, len(line)))
        else:
            found.torn.append((number, start))
            found.records += 1
            found.salvaged += 1
            found.kept.append(body[start:] + b"\n")
    return found


def _is_record(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def _complete_suffix(body: bytes) -> Optional[int]:
    for i in range(1, len(body)):
        if body[i:i + 1] == b"{" and _is_record(body[i:]):
            return i
    return None


def check_journal(path: str | Path) -> JournalCheck:
    """Read the whole journal under Optuna's append lock (an append in flight is not torn) and classify each line."""
    path = Path(path)
    lock = _journal_lock(path)
    lock.acquire()
    try:
        return _scan(path)
    finally:
        lock.release()


def repair_journal(path: str | Path) -> Tuple[JournalCheck, Optional[Path]]:
    """Drop the torn bytes of a journal, keeping every complete record in order: the original is first copied to
    ``<journal>.torn-<time>`` (returned; None when nothing was torn), and the repaired file replaces it atomically."""
    path = Path(path)
    lock = _journal_lock(path)
    lock.acquire()
    try:
        found = _scan(path)
        if not found.torn:
            return found, None
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
        tmp = path.with_name(path.name + ".repair")
        with open(tmp, "wb") as fh:
            fh.writelines(found.kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return found, backup
    finally:
        lock.release()


def storage_lock_paths(url: str) -> Tuple[Optional[str], str]:
    """(claim lock, folder of worker liveness locks) for a storage: beside a file storage; a remote RDB has
    no claim lock (trials past the budget are then failed as surplus)."""
    if sqlite_path(url) is not None:
        p = sqlite_path(url).resolve()
    elif not is_rdb(url):
        p = Path(journal_path(url)).expanduser().resolve()
    else:
        return None, str(results_dir() / "locks" / "search-workers")
    return str(p) + ".claim.lock", str(p.parent / ".irn-search-workers")


def storage_url_of(storage) -> str:
    return getattr(storage, "_irn_url", "") or ""


def open_storage_url(url: str):
    s = open_storage(url)
    s._irn_url = url  # noqa: SLF001 - remembered for locks and tags
    return s

