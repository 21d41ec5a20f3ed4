"""Optuna storages: a journal file (default ``<results>/optuna.journal``) or an RDB URL, and the lock files
beside a file storage (trial claims, worker liveness)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..paths import results_dir, sqlite_path

__all__ = ["default_storage", "is_rdb", "open_storage", "open_storage_url", "storage_url_of", "storage_lock_paths"]

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
            kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE, **kw)
    path = Path(journal_path(url)).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


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

