"""MLflow tracking: the only module of bench that talks to MLflow.

Store: a SQLite database under ``results/`` by default (``sqlite:///<abs>/results/mlflow.db``, set
explicitly, never MLflow's implicit default), artifacts beside it in ``results/artifacts``; any other
URI (a team's server, PostgreSQL, …) works the same through ``--tracking-uri`` or ``IRN_TRACKING_URI``.

Layout: experiment = suite name; one parent run per invocation (tag ``irn.role=parent``); one run per
cell (``irn.role=cell``) tagged with its spec hash ``irn.spec_hash`` — the cache key.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import re
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .locks import exclusive
from .paths import StoreError, sqlite_path, store_uri

TAG_HASH = "irn.spec_hash"
TAG_ROLE = "irn.role"
TAG_SUITE = "irn.suite"
TAG_LABEL = "irn.label"
TAG_SCHEMA = "irn.schema_version"
TAG_REASON = "irn.failure_reason"
TAG_PID = "irn.pid"
TAG_HOST = "irn.host"
TAG_DEVICE = "irn.device"
TAG_THREADS = "irn.threads"  # torch CPU threads the run trained with (part of a CPU run's identity)
TAG_CELL = "irn.cell"  # the matrix values of the cell, JSON
TAG_CASE = "irn.case"
TAG_COMMAND = "irn.command"
TAG_SUITE_FILE = "irn.suite_file"
PARENT_TAG = "mlflow.parentRunId"
# bench search: one parent run per study, one nested run per trial
TAG_STUDY = "irn.study"
TAG_TRIAL = "irn.trial_number"
TAG_TRIAL_STATE = "irn.trial_state"
TAG_BEST = "irn.best"
TAG_BEST_TRIALS = "irn.best_trials"
TAG_BEST_RUN = "irn.best_run_id"
TAG_SEARCH_PARAMS = "irn.search_params"
TAG_PRUNE_REASON = "irn.prune_reason"
TAG_STORAGE = "irn.storage"
TAG_DIRECTIONS = "irn.directions"
TAG_OBJECTIVES = "irn.objectives"

__all__ = ["resolve_uri", "Tracker", "TAG_HASH", "TAG_ROLE", "TAG_REASON", "TAG_LABEL", "redact"]

_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@:]*):(?P<secret>[^\s/@]*)@")
_SECRET_QUERY = re.compile(r"(?i)(?P<key>[?&;](?:password|passwd|pwd|token|secret|api_key|apikey|access_key)=)[^&;\s]*")


def redact(text: str) -> str:
    """``text`` with the secrets of any URI in it replaced by ``***``: ``scheme://user:***@host``, ``?password=***``.
    Applied to every tag and parameter this module writes, and to the URIs the commands print."""
    text = _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***", text)


def resolve_uri(uri: Optional[str] = None, create: bool = True) -> str:
    """The tracking URI (:func:`bench.paths.store_uri`); ``create``: make a SQLite store's folder."""
    uri = store_uri(uri)
    db = sqlite_path(uri)
    if create and db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def missing_store(uri: Optional[str] = None) -> Optional[str]:
    """For read-only commands: the path of a SQLite store that does not exist (None when it exists or is not SQLite),
    found without creating anything."""
    db = sqlite_path(resolve_uri(uri, create=False))
    return None if db is None or db.exists() else str(db)


def artifact_root(uri: str) -> Optional[str]:
    """Local artifact folder for SQLite stores (beside the database); None lets a server decide."""
    db = sqlite_path(uri)
    if db is None:
        return None
    root = db.parent / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


# Interrupts are deferred while a store call is in flight: a KeyboardInterrupt raised inside an SQLite
# transaction leaves its write lock held by a connection nobody will release, and the next write (marking the
# run KILLED, in this process or another) then waits on it forever.
_STORE_DEPTH = 0
_PENDING_SIGNAL: Optional[int] = None


def interrupt_handler(signum, frame) -> None:
    """SIGINT/SIGTERM handler: KeyboardInterrupt now, or as soon as the current store call returns."""
    global _PENDING_SIGNAL
    if _STORE_DEPTH > 0:
        _PENDING_SIGNAL = signum
        return
    raise KeyboardInterrupt(f"signal {signum}")


ENV_LOCK_TIMEOUT = "IRN_STORE_LOCK_TIMEOUT"


def _locked(e: BaseException) -> bool:
    text = str(e).lower()
    return "database is locked" in text or "database table is locked" in text


def _lock_holders(db: Optional[Path]) -> str:
    """The other processes of this machine that have the database open (Linux /proc), as ' (pid 12: bench run …)'."""
    if db is None or not Path("/proc").is_dir():
        return ""
    found = []
    target = str(db.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                state = next((ln.split()[1] for ln in (proc / "status").read_text().splitlines()
                              if ln.startswith("State:")), "?")
                found.append(f"pid {proc.name}{' (stopped)' if state == 'T' else ''}: {redact(cmd)[:80]}")
    return f" ({'; '.join(found)})" if found else ""


def lock_timeout_error(uri: str, waited: float) -> StoreError:
    db = sqlite_path(uri)
    return StoreError(f"the tracking store {db or redact(uri)} stayed locked by another process for {waited:.0f} s"
                      f"{_lock_holders(db)}: a bench stopped with Ctrl-Z or a hung writer holds its write lock. Resume "
                      f"or end that process, then rerun the same command (what is recorded is kept); "
                      f"{ENV_LOCK_TIMEOUT} sets how long to wait (now {lock_timeout():g} s)")


def lock_timeout() -> float:
    return float(os.environ.get(ENV_LOCK_TIMEOUT, "120"))


def _retry(fn):
    """Retry a store call when SQLite reports a lock (several processes writing one database) for up to
    $IRN_STORE_LOCK_TIMEOUT seconds (default 120), then :class:`StoreError` naming the processes that hold the file;
    an interrupt arriving during the call is raised when it returns (see :func:`interrupt_handler`)."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        global _STORE_DEPTH, _PENDING_SIGNAL
        _STORE_DEPTH += 1
        try:
            delay, t0 = 0.05, time.monotonic()
            while True:
                try:
                    return fn(*a, **kw)
                except Exception as e:  # noqa: BLE001 - MLflow wraps sqlite errors in several types
                    if not _locked(e):
                        raise
                    waited = time.monotonic() - t0
                    if waited > lock_timeout():
                        uri = getattr(a[0], "uri", "") if a else ""
                        raise lock_timeout_error(uri, waited) from None
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 1.5, 2.0)
        finally:
            _STORE_DEPTH -= 1
            if _STORE_DEPTH == 0 and _PENDING_SIGNAL is not None:
                sig, _PENDING_SIGNAL = _PENDING_SIGNAL, None
                raise KeyboardInterrupt(f"signal {sig}")

    return wrapper


_DAMAGED = ("file is not a database", "database disk image is malformed", "already exists", "no such table")


class Tracker:
    """A thin, retrying wrapper over ``mlflow.MlflowClient`` with the project's run layout."""

    def __init__(self, uri: Optional[str] = None):
        import logging

        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):  # after the import: MLflow sets its own levels
            logging.getLogger(name).setLevel(logging.WARNING)
        # store errors (a locked or full database) are retried or reported by us: not MLflow's traceback dump
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

        self.uri = resolve_uri(uri)
        with _store_init_lock(self.uri):  # MLflow creates the tables on first contact: one process at a time
            _create_sqlite_atomically(self.uri)
            try:
                self._connect(MlflowClient)
            except Exception as e:  # noqa: BLE001 - a damaged database: say so instead of SQLAlchemy's traceback
                text = str(e).lower()
                if sqlite_path(self.uri) is None or not any(k in text for k in _DAMAGED):
                    raise
                raise StoreError(f"the tracking store {sqlite_path(self.uri)} cannot be read "
                                 f"({str(e).strip().splitlines()[0][:200]}): it is not an MLflow SQLite database or it "
                                 "is damaged. Move it away (its runs cannot be read), or point --tracking-uri / "
                                 "IRN_RESULTS at another store") from None

    @_retry
    def _connect(self, client_cls) -> None:
        """The client, and the store created or migrated if needed (MLflow reads the schema on construction)."""
        self.client = client_cls(tracking_uri=self.uri, registry_uri=self.uri)
        self.init_store()

    # ---------------------------------------------------------------- store / experiments
    def init_store(self) -> None:
        """Create (migrate) the store if needed."""
        self.client.search_experiments(max_results=1)

    @_retry
    def experiment_id(self, name: str, create: bool = True) -> Optional[str]:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        if not create:
            return None
        try:
            return self.client.create_experiment(name, artifact_location=artifact_root(self.uri))
        except Exception:  # noqa: BLE001 - created concurrently by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @_retry
    def search(self, exp_id: str, filter_string: str = "", max_results: int = 50000) -> List[Any]:
        out, token = [], None
        while True:
            page = self.client.search_runs([exp_id], filter_string=filter_string, max_results=min(max_results, 1000),
                                           page_token=token)
            out.extend(page)
            token = page.token
            if not token or len(out) >= max_results:
                return out

    def cell_runs(self, exp_id: str) -> List[Any]:
        return self.search(exp_id, f"tags.`{TAG_ROLE}` = 'cell'")

    def runs_for_hash(self, exp_id: str, spec_hash: str) -> List[Any]:
        return self.search(exp_id, f"tags.`{TAG_HASH}` = '{spec_hash}'")

    def finished_tags(self, exp_id: Optional[str]) -> Dict[str, Dict[str, str]]:
        """hash -> the tags of its finished cell run."""
        if exp_id is None:
            return {}
        return {r.data.tags[TAG_HASH]: dict(r.data.tags) for r in self.cell_runs(exp_id)
                if r.info.status == "FINISHED" and r.data.tags.get(TAG_HASH)}

    def status_by_hash(self, exp_id: Optional[str]) -> Dict[str, str]:
        """hash -> FINISHED (any finished run), else RUNNING, else FAILED/KILLED."""
        if exp_id is None:
            return {}
        rank = {"FINISHED": 3, "RUNNING": 2, "FAILED": 1, "KILLED": 0, "SCHEDULED": 0}
        out: Dict[str, str] = {}
        for r in self.cell_runs(exp_id):
            h = r.data.tags.get(TAG_HASH)
            st = r.info.status
            if h and rank.get(st, 0) >= rank.get(out.get(h, ""), -1):
                out[h] = st
        return out

    # ---------------------------------------------------------------- runs
    @_retry
    def start_run(self, exp_id: str, name: str, tags: Dict[str, str]) -> str:
        tags = {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname(), **{k: redact(v) for k, v in tags.items()}}
        run = self.client.create_run(exp_id, run_name=name, tags=tags)
        return run.info.run_id

    @_retry
    def log_params(self, run_id: str, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(_param_str(v))) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: Dict[str, float], step: int) -> None:
        self.log_metric_batch(run_id, metric_rows(metrics, step))

    @_retry
    def log_metric_batch(self, run_id: str, metrics: List[Any]) -> None:
        """Write prepared ``mlflow.entities.Metric`` values in one transaction (:class:`MetricBuffer`).

        On a SQLite store the rows go in with one ``executemany`` into MLflow's own ``metrics`` and ``latest_metrics``
        tables, with MLflow's semantics (NaN stored as 0 with ``is_nan``, ±inf as ±max float, an identical row
        ignored, the latest value by (step, timestamp, value), the run must be active): MLflow's ORM path costs
        ~0.15–0.4 ms per value, which is 10–30 % of an ex1 epoch. The schema is MLflow 3.x's (pinned < 3.18; a test
        reads what this writes back through MlflowClient). Other stores: ``MlflowClient.log_batch``."""
        db = sqlite_path(self.uri)
        if db is None:
            for i in range(0, len(metrics), 500):
                self.client.log_batch(run_id, metrics=metrics[i:i + 500])
            return
        from .sqlitestore import log_metrics

        log_metrics(db, run_id, metrics)

    @_retry
    def set_tags(self, run_id: str, tags: Dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, redact(v)[:5000]) for k, v in tags.items()])

    @_retry
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    @_retry
    def log_artifact(self, run_id: str, local_path: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, local_path, artifact_path)

    @_retry
    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @_retry
    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's status without ending it (a resumed search study's parent back to RUNNING)."""
        self.client.update_run(run_id, status=status)

    @_retry
    def delete(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    @_retry
    def download(self, run_id: str, path: str, dst: str) -> str:
        """A run's artifact ``path`` copied under ``dst``. A SQLite store's artifacts are found beside the database
        (``artifacts/<run id>/artifacts``) when the absolute folder recorded with the run is gone: a store unpacked
        from an archive somewhere else (the ``runs-store.tar.xz`` beside a report) still renders its figures."""
        db = sqlite_path(self.uri)
        if db is not None:
            from urllib.parse import unquote, urlparse

            rec = urlparse(self.client.get_run(run_id).info.artifact_uri or "")
            here = db.parent / "artifacts" / run_id / "artifacts"
            if rec.scheme == "file" and not Path(unquote(rec.path)).exists() and (here / path).exists():
                import shutil

                out = Path(dst) / path
                out.parent.mkdir(parents=True, exist_ok=True)
                if (here / path).is_dir():
                    shutil.copytree(here / path, out, dirs_exist_ok=True)
                else:
                    shutil.copyfile(here / path, out)
                return str(out)
        return self.client.download_artifacts(run_id, path, dst)

    @_retry
    def metric_history(self, run_id: str, key: str) -> List[Any]:
        """Every logged value of one metric of a run (MLflow ``Metric`` entities: step, value, timestamp)."""
        return self.client.get_metric_history(run_id, key)

    def remove_unfinished(self, exp_id: str, spec_hash: str) -> int:
        """Delete runs of this cell left RUNNING by a dead process (the caller holds the cell's lock)."""
        n = 0
        for r in self.runs_for_hash(exp_id, spec_hash):
            if r.info.status in ("RUNNING", "SCHEDULED"):
                self.delete(r.info.run_id)
                n += 1
        return n

    def close_dead_cells(self, exp_id: str, parent_id: str, reason: str = "interrupted") -> None:
        """Cell runs of ``parent_id`` left RUNNING by a worker that is gone (stopped with SIGKILL after the grace
        period, so it could not mark its own run) are marked KILLED with ``reason``."""
        host = socket.gethostname()
        for r in self.search(exp_id, f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'"):
            if r.data.tags.get(TAG_HOST) == host and not _pid_alive(int(r.data.tags.get(TAG_PID, "0") or 0)):
                self.set_tags(r.info.run_id, {TAG_REASON: reason})
                self.finish(r.info.run_id, "KILLED")

    def close_stale_parents(self, exp_id: str) -> None:
        """Parent runs of invocations whose process died on this host are marked KILLED."""
        host = socket.gethostname()
        for r in self.search(exp_id, f"tags.`{TAG_ROLE}` = 'parent' and attributes.status = 'RUNNING'"):
            if r.data.tags.get(TAG_HOST) == host and not _pid_alive(int(r.data.tags.get(TAG_PID, "0") or 0)):
                self.finish(r.info.run_id, "KILLED")


def metric_rows(metrics: Dict[str, float], step: int) -> List[Any]:
    """``mlflow.entities.Metric`` rows of one step, stamped now (None values dropped)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    return [Metric(k, float(v), ts, step) for k, v in sorted(metrics.items()) if v is not None]


class MetricBuffer:
    """Metrics of one run collected in memory and written in batches: one store write per ``flush_every`` seconds
    (or per 1000 values) instead of one per epoch — an ex1 epoch is ~30 ms and one SQLite write ~10 ms. ``flush``
    writes what is pending; call it at the end and on failure (``train_and_log`` does, in a ``finally``), so nothing
    is lost unless the process is killed outright (such a run is redone anyway: it never reaches FINISHED).
    Timestamps are those of the ``log`` call."""

    def __init__(self, tracker: "Tracker", run_id: str, flush_every: float = 10.0, max_pending: int = 1000):
        self.tracker, self.run_id = tracker, run_id
        self.flush_every, self.max_pending = flush_every, max_pending
        self.pending: List[Any] = []
        self.last = time.monotonic()

    def log(self, metrics: Dict[str, float], step: int) -> None:
        self.pending += metric_rows(metrics, step)
        if len(self.pending) >= self.max_pending or time.monotonic() - self.last >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        items, self.pending = self.pending, []
        self.last = time.monotonic()
        if items:
            self.tracker.log_metric_batch(self.run_id, items)


def _create_sqlite_atomically(uri: str) -> None:
    """A new SQLite store is built (tables and migrations, several seconds) in a temporary file beside it and moved into
    place in one rename: a process killed meanwhile (even ``kill -9``) leaves only a temporary file, removed by the
    next creator, never a half-made store. The caller holds the store's init lock."""
    from mlflow import MlflowClient

    db = sqlite_path(uri)
    if db is None or db.exists():
        return
    for old in db.parent.glob(f"{db.name}.creating-*"):  # left by a killed creator
        with contextlib.suppress(OSError):
            old.unlink()
    tmp = db.with_name(f"{db.name}.creating-{os.getpid()}")
    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
    _dispose_engine(f"sqlite:///{tmp}")
    os.replace(tmp, db)


def _dispose_engine(uri: str) -> None:
    """Close MLflow's cached connections to ``uri`` (the temporary file of a new store)."""
    with contextlib.suppress(Exception):
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        store = _tracking_store_registry.get_store(uri)
        store.engine.dispose()


@contextlib.contextmanager
def _store_init_lock(uri: str):
    """Several processes starting at once on one SQLite file take turns creating it (MLflow's table
    creation is not safe against a concurrent creator)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        lock = exclusive(db.with_suffix(".init.lock"))
        lock.__enter__()
    except OSError as e:
        if not (db.exists() and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)):
            raise
        yield  # a read-only folder holding an existing store: nothing will be created, read it unlocked
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _param_str(v: Any) -> str:
    s = json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= 6000 else s[:5990] + "…"
