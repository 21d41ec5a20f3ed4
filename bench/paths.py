"""Where bench keeps things, resolved in one place: the results folder (tracking store, cell locks, Optuna
journal), the data root and the reports folder.

Each is taken from, in order: the command-line flag (``--tracking-uri``, ``--root``, ``--out``), the environment
(``IRN_TRACKING_URI``, ``IRN_RESULTS``, ``IRN_DATA_ROOT``), **the project the suite belongs to**, else the
working directory. The project of a suite file is the nearest folder above it that holds ``pyproject.toml``,
``.git`` or ``results/`` (a suite under ``<project>/suites/`` belongs to ``<project>``), so that
``bench list ~/proj/suites/x.yaml`` run from anywhere reads ``~/proj/results`` and never starts an empty store.

The CLI runs each command inside :func:`pinned`, which writes the resolved folders into the environment, so that worker
processes (spawned pools, dask) resolve exactly the same paths.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator, Optional

__all__ = ["ENV_RESULTS", "ENV_DATA", "ENV_TRACKING", "SQLITE", "project_root", "results_dir", "data_root",
           "reports_dir", "store_uri", "check_uri", "sqlite_path", "pinned", "no_space", "StoreError"]

ENV_RESULTS = "IRN_RESULTS"
ENV_DATA = "IRN_DATA_ROOT"
ENV_TRACKING = "IRN_TRACKING_URI"
SQLITE = "sqlite:///"
_MARKERS = ("pyproject.toml", ".git", "results")


def project_root(suite: Optional[str | Path] = None) -> Path:
    """The project a suite file belongs to (see the module docstring); the working directory without one."""
    if suite is not None:
        here = Path(suite).expanduser().resolve().parent
        for folder in (here, *here.parents):
            if any((folder / m).exists() for m in _MARKERS):
                return folder
            if folder.name == "suites":
                return folder.parent
    return Path.cwd()


def results_dir(suite: Optional[str | Path] = None) -> Path:
    """$IRN_RESULTS, else ``<project>/results``."""
    env = os.environ.get(ENV_RESULTS)
    return Path(env).expanduser().resolve() if env else project_root(suite) / "results"


def data_root(root: Optional[str | Path] = None, suite: Optional[str | Path] = None) -> Path:
    """``root`` (a task's ``root`` option or ``--root``), else $IRN_DATA_ROOT, else ``<results>/data``."""
    chosen = root or os.environ.get(ENV_DATA)
    return Path(chosen).expanduser() if chosen else results_dir(suite) / "data"


def reports_dir(suite_name: str, out: Optional[str | Path] = None, suite: Optional[str | Path] = None) -> Path:
    """``--out``, else ``<results>/reports/<suite name>``: generated reports stay beside the store (git-ignored), so
    running a suite never modifies a committed file; the committed examples under ``reports/`` are rendered with an
    explicit ``--out``."""
    return Path(out) if out is not None else results_dir(suite) / "reports" / suite_name


class StoreError(RuntimeError):
    """A tracking store that cannot be used as it is (a damaged file, a path SQLite would misread); the message
    says which and what to do."""


_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
_CHECKED: dict = {}


def check_uri(uri: str, source: str = "--tracking-uri", timeout: float = 3.0) -> str:
    """``uri`` when MLflow can use it, else :class:`StoreError` saying why: the scheme is one MLflow knows, a SQLite
    URI has the ``sqlite:///PATH`` form (``sqlite://x.db`` is silently an in-memory store), and a server
    (http, https, a database host) accepts a TCP connection within ``timeout`` seconds — instead of MLflow retrying
    for minutes. Checked once per process."""
    if uri in _CHECKED:
        if _CHECKED[uri]:
            raise StoreError(_CHECKED[uri])
        return uri
    problem = _uri_problem(uri, source, timeout)
    _CHECKED[uri] = problem
    if problem:
        raise StoreError(problem)
    return uri


def _uri_problem(uri: str, source: str, timeout: float) -> Optional[str]:
    import socket
    from urllib.parse import urlsplit

    import re

    shown = re.sub(r"://[^/@\s]*@", "://***@", uri)  # never print credentials
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if not scheme:
        return None  # a plain path: MLflow's file store
    if scheme not in _SCHEMES:
        return f"{source} {shown!r}: unknown scheme {scheme!r}; use sqlite:///PATH, file:///PATH, http(s)://HOST:PORT " \
               f"or a database URI ({', '.join(_SCHEMES)})"
    if scheme == "sqlite":
        if not uri.startswith(SQLITE) or len(uri) == len(SQLITE):
            return f"{source} {shown!r}: a SQLite store is sqlite:///relative/path.db or sqlite:////absolute/path.db"
        if any(c in uri[len(SQLITE):] for c in "?#"):
            return f"{source} {shown!r}: '?' and '#' in a SQLite path are read as URL parameters; rename the folder"
        return None
    if scheme in ("file", "databricks", "databricks-uc", "uc"):
        return None
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        return f"{source} {shown!r}: not a valid URI ({e})"
    if not host:
        return f"{source} {shown!r}: no host"
    port = port or {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}[scheme]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{source} {shown!r}: cannot reach {host}:{port} within {timeout:g}s ({e.strerror or e}); start the " \
               "server or use another store"


def store_uri(uri: Optional[str] = None, suite: Optional[str | Path] = None) -> str:
    """The MLflow tracking URI: ``uri``, else $IRN_TRACKING_URI, else SQLite at ``<results>/mlflow.db``; an explicit
    URI is checked first (:func:`check_uri`)."""
    if uri:
        return check_uri(uri)
    if os.environ.get(ENV_TRACKING):
        return check_uri(os.environ[ENV_TRACKING], f"${ENV_TRACKING}")
    db = results_dir(suite) / "mlflow.db"
    if any(c in str(db) for c in "?#"):
        raise StoreError(f"the results folder {db.parent} has a '?' or '#' in its path: SQLite would read the rest as "
                         "URL parameters and write the store elsewhere; use a folder without them (IRN_RESULTS)")
    return f"{SQLITE}{db}"


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///PATH`` URI; None for any other URI."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


@contextlib.contextmanager
def pinned(suite: Optional[str | Path] = None) -> Iterator[None]:
    """Resolve the results folder and the data root once, for this command and the workers it starts (through
    the environment, restored on exit)."""
    saved = {k: os.environ.get(k) for k in (ENV_RESULTS, ENV_DATA)}
    os.environ[ENV_RESULTS] = str(results_dir(suite))
    os.environ[ENV_DATA] = str(data_root(None, suite).resolve())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def no_space(exc: Optional[BaseException]) -> Optional[BaseException]:
    """The write failure behind ``exc`` (its chain included) when it is a full disk, a quota or a file-size limit
    (SQLite says "database or disk is full"); None for anything else."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return exc
        if "database or disk is full" in str(exc).lower():
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
