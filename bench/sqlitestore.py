"""The fast path of metric logging into an MLflow SQLite store: one ``executemany`` into MLflow's own ``metrics`` and
``latest_metrics`` tables, with MLflow's semantics (see :meth:`bench.tracking.Tracker.log_metric_batch`). Plain
``sqlite3``: no MLflow import (only :mod:`bench.tracking` imports MLflow)."""
from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path
from typing import Any, List

from .paths import StoreError

def log_metrics(db: Path, run_id: str, metrics: List[Any]) -> None:
    """Write MLflow ``Metric`` values (anything with key, value, timestamp, step) into the run ``run_id`` of the
    MLflow SQLite store ``db`` in one transaction; see :meth:`bench.tracking.Tracker.log_metric_batch`."""
    rows, latest = [], {}
    for m in metrics:
        v = float(m.value)
        nan = math.isnan(v)
        val = 0.0 if nan else (math.copysign(sys.float_info.max, v) if math.isinf(v) else v)  # MLflow's NaN/±inf
        rows.append((m.key, val, int(m.timestamp), run_id, int(m.step), int(nan)))
        cur = latest.get(m.key)
        if cur is None or (m.step, m.timestamp, val) > (cur[3], cur[2], cur[1]):
            latest[m.key] = (m.key, val, int(m.timestamp), int(m.step), int(nan), run_id)
    con = sqlite3.connect(str(db), timeout=1.0, isolation_level=None)  # busy: the caller's _retry waits and retries
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            stage = con.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            if stage is None or stage[0] != "active":
                raise StoreError(f"cannot log metrics to run {run_id}: it is "
                                 f"{'missing' if stage is None else stage[0]} in {db}")
            con.executemany('INSERT OR IGNORE INTO metrics ("key", value, timestamp, run_uuid, step, is_nan) '
                            "VALUES (?, ?, ?, ?, ?, ?)", rows)
            con.executemany(
                'INSERT INTO latest_metrics ("key", value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?) '
                'ON CONFLICT("key", run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, '
                "step = excluded.step, is_nan = excluded.is_nan WHERE (excluded.step, excluded.timestamp, "
                "excluded.value) > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)",
                list(latest.values()))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
