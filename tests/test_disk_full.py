"""Issue 18: a full disk (or a crash) mid-write gives one clear line and exit 1, never damages what was recorded, and a
torn Optuna journal is detected on open and repaired (``--repair-storage``) keeping every complete record.

Faults are injected where the bytes are written: Optuna's journal append writes part of its record and then fails
with ENOSPC (what a full disk does to a buffered write), SQLite reports "database or disk is full", a report file
write fails with ENOSPC."""
from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from bench.cli import app  # noqa: E402
from bench.search import TornJournalError, check_journal, open_storage, repair_journal  # noqa: E402
from bench.search.storage import _scan  # noqa: E402

SEARCH = {
    "name": "dfull",
    "task": {"name": "ex1_sine", "n_train": 8},
    "model": {"name": "mlp_ode", "layer": {"theta": 0.0}},
    "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 1e-3}},
    "seeds": [0],
    "search": {"params": {"train.optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
               "objective": {"metric": "final/test/mse", "direction": "minimize"},
               "sampler": {"name": "random", "seed": 0}, "n_trials": 3},
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("IRN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("IRN_TRACKING_URI", raising=False)
    return tmp_path


def _suite(tmp_path: Path, n_trials: int = 3) -> Path:
    data = json.loads(json.dumps(SEARCH))
    data["search"]["n_trials"] = n_trials
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _bench(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def _journal(env) -> Path:
    return env / "results" / "optuna.journal"


def _trials(env):
    study = optuna.load_study(study_name="dfull", storage=open_storage(str(_journal(env))))
    return {t.number: (t.state.name, t.values, t.params) for t in study.trials}


def test_scan_keeps_complete_records_and_salvages_one_glued_behind_a_torn_one(tmp_path):
    recs = [json.dumps({"op_code": i, "worker_id": "w"}).encode() for i in range(4)]
    torn = recs[1][:9]  # an append cut short ...
    p = tmp_path / "j"
    p.write_bytes(recs[0] + b"\n" + torn + recs[2] + b"\n" + recs[3] + b"\n" + recs[1][:5])  # ... and a torn tail
    found = _scan(p)
    assert found.kept == [recs[0] + b"\n", recs[2] + b"\n", recs[3] + b"\n"]
    assert found.torn == [(2, len(torn)), (4, 5)] and found.salvaged == 1 and found.records == 3
    _, backup = repair_journal(p)
    assert p.read_bytes() == recs[0] + b"\n" + recs[2] + b"\n" + recs[3] + b"\n"
    assert backup.read_bytes().startswith(recs[0]) and not check_journal(p).torn
    assert repair_journal(p)[1] is None  # nothing torn: nothing backed up or rewritten


def test_disk_full_during_search_then_repair_resumes_with_every_complete_trial(env, monkeypatch):
    suite = _suite(env, n_trials=3)
    code, out = _bench("search", suite, "--quiet")
    assert code == 0, out
    first = _trials(env)
    assert [s for s, _, _ in first.values()] == ["COMPLETE"] * 3

    real = JournalFileBackend.append_logs

    def full_disk(self, logs):  # what a full disk does to the next append: part of the record, then ENOSPC
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with open(self._file_path, "ab") as fh:
            fh.write(text.encode()[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JournalFileBackend, "append_logs", full_disk)
    code, out = _bench("search", _suite(env, n_trials=5), "--quiet")
    assert code == 1, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(_journal(env)) in out, out
    assert "Traceback" not in out
    monkeypatch.setattr(JournalFileBackend, "append_logs", real)

    with pytest.raises(TornJournalError):  # every later open says what it found instead of a JSONDecodeError
        open_storage(str(_journal(env)))
    code, out = _bench("search", _suite(env, n_trials=5), "--quiet")
    assert code == 2 and "torn record" in out and "--repair-storage" in out, out
    code, out = _bench("search", _suite(env, n_trials=5), "--quiet", "--repair-storage")
    assert code == 0, out
    assert "repaired" in out and "kept" in out
    after = _trials(env)
    for n, rec in first.items():  # every complete trial kept, unchanged
        assert after[n] == rec
    counted = [n for n, (s, _, _) in after.items() if s == "COMPLETE"]
    assert len(counted) == 5, after
    assert list(_journal(env).parent.glob("optuna.journal.torn-*")), "the original journal was not backed up"


def test_tracking_store_full_stops_the_suite_with_one_line_and_the_rerun_finishes(env, monkeypatch):
    suite = env / "r.yaml"
    suite.write_text("name: dfr\ntask: {name: ex1_sine, n_train: 8}\ntrain: {epochs: 3}\nseeds: [0]\n"
                     "matrix: {model.layer.theta: [0.0, 0.5, 1.0]}\n")
    from bench.tracking import Tracker

    real = Tracker.log_metric_batch  # the per-epoch metrics, written in batches (MetricBuffer)
    calls = {"n": 0}

    def full(self, run_id, metrics):
        calls["n"] += 1
        if calls["n"] == 3:  # the second cell's epochs (each cell writes its epochs, then its final metrics)
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, run_id, metrics)

    monkeypatch.setattr(Tracker, "log_metric_batch", full)
    code, out = _bench("run", suite, "--no-report")
    assert code == 1, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "database or disk is full" in errors[0] and "mlflow.db" in errors[0], out
    monkeypatch.setattr(Tracker, "log_metric_batch", real)
    tr = Tracker(f"sqlite:///{env / 'results' / 'mlflow.db'}")
    runs = tr.cell_runs(tr.experiment_id("dfr", create=False))
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # the third cell never started
    failed = [r for r in runs if r.info.status == "FAILED"][0]
    assert "disk is full" in failed.data.tags["irn.failure_reason"]
    code, out = _bench("run", suite, "--no-report")
    assert code == 0, out
    runs = tr.cell_runs(tr.experiment_id("dfr", create=False))
    assert sorted(r.info.status for r in runs).count("FINISHED") == 3


def test_report_write_failure_is_one_line(env, monkeypatch):
    suite = env / "r.yaml"
    suite.write_text("name: dfp\ntask: {name: ex1_sine, n_train: 8}\ntrain: {epochs: 2}\nseeds: [0]\n"
                     "reports:\n  - {kind: training_curves}\n")
    assert _bench("run", suite, "--no-report")[0] == 0
    import matplotlib.figure

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[0]) if a else None)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    code, out = _bench("report", suite, "--out", env / "rep")
    assert code == 1 and "cannot write" in out and "No space left on device" in out and "Traceback" not in out, out
