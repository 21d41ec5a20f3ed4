"""`bench run` through the real CLI on a real MLflow SQLite store (issue 5).

In-process (typer's CliRunner) where possible; subprocesses where a process must be killed or two
must run at once.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("IRN_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("IRN_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def runs(uri: str, suite: str, all_states: bool = False):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(suite)
    if exp is None:
        return []
    return [r for r in c.search_runs([exp.experiment_id], max_results=1000)
            if all_states or r.data.tags.get("irn.role") == "cell"]


FAST = """
name: fast
task: {{name: ex1_sine}}
model:
  name: mlp_ode
  layer:
    solver: {{name: anderson, tol: 1.0e-5, max_iter: 40}}
    backward: {{name: gmres, tol: 1.0e-5, max_iter: 20}}
train: {{epochs: {epochs}}}
seeds: {seeds}
matrix:
  model.layer.theta: {thetas}
"""


def fast_suite(tmp_path, epochs=2, seeds="[0]", thetas="[0.0, 0.5]", name="fast.yaml"):
    return _write(tmp_path, name, FAST.format(epochs=epochs, seeds=seeds, thetas=thetas))


def test_smoke_suite_runs_then_rerun_runs_nothing(env):
    smoke = ROOT / "suites" / "smoke.yaml"
    r = cli("run", smoke, "--no-report")
    assert r.exit_code == 0, r.output
    cells = runs(_store(env), "smoke")
    assert len(cells) == 2 and {c.info.status for c in cells} == {"FINISHED"}
    run = cells[0]
    assert run.data.params["model.name"] == "mlp_ode" and "train.epochs" in run.data.params
    assert {"train/loss", "time/epoch_s", "final/test/mse"} <= set(run.data.metrics)
    assert run.data.tags["irn.spec_hash"] and run.data.tags["mlflow.parentRunId"]
    from mlflow import MlflowClient

    c = MlflowClient(_store(env))
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "environment.yaml", "model"} <= arts
    env_yaml = Path(c.download_artifacts(run.info.run_id, "environment.yaml", str(env)))
    assert "torch" in env_yaml.read_text() and "commit" in env_yaml.read_text()
    # the state dict loads back with weights_only=True
    import torch

    sd = torch.load(c.download_artifacts(run.info.run_id, "model/state_dict.pt", str(env)), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())

    n_all = len(runs(_store(env), "smoke", all_states=True))  # the two cells and their parent
    r2 = cli("run", smoke, "--no-report")
    assert r2.exit_code == 0, r2.output
    assert "0 to run, 2 cached" in r2.output
    assert len(runs(_store(env), "smoke")) == 2
    assert len(runs(_store(env), "smoke", all_states=True)) == n_all == 3  # a cached rerun records nothing
    listing = cli("list", smoke)
    assert listing.exit_code == 0 and listing.output.count("finished") == 2


def test_same_seed_same_numbers(env):
    s = fast_suite(env, thetas="[0.5]")
    assert cli("run", s, "--no-report").exit_code == 0
    first = runs(_store(env), "fast")[0].data.metrics["final/test/mse"]
    assert cli("run", s, "--no-report", "--force").exit_code == 0
    cells = runs(_store(env), "fast")
    assert len(cells) == 1  # forced rerun replaces the finished run: still one per cell
    assert cells[0].data.metrics["final/test/mse"] == first


def test_diverging_cell_fails_with_reason_others_finish(env):
    s = _write(env, "nan.yaml", """
        name: nan-suite
        task: {name: ex1_sine}
        train: {epochs: 3}
        matrix:
          train.optimizer.lr: [0.001, 1.0e+12]
    """)
    r = cli("run", s, "--no-report")
    assert r.exit_code == 1, r.output
    cells = {c.data.params["train.optimizer.lr"]: c for c in runs(_store(env), "nan-suite")}
    ok, bad = cells["0.001"], cells["1000000000000.0"]
    assert ok.info.status == "FINISHED" and bad.info.status == "FAILED"
    reason = bad.data.tags["irn.failure_reason"]
    assert "NaN" in reason or "non-finite" in reason
    from mlflow import MlflowClient

    arts = {a.path for a in MlflowClient(_store(env)).list_artifacts(bad.info.run_id, "failure")}
    assert "failure/traceback.txt" in arts
    assert "1 run(s) failed" in r.output
    # a failed run is never cached: the rerun tries it again (and it fails again)
    r2 = cli("run", s, "--no-report")
    assert "1 to run, 1 cached" in r2.output and r2.exit_code == 1


MALFORMED = {
    "unknown_key": ("name: x\ntask: {name: ex1_sine}\ntrian: {epochs: 2}\n", ["trian", "unknown key"]),
    "wrong_type": ("name: x\ntask: {name: ex1_sine}\ntrain: {epochs: many}\n", ["train.epochs", "integer"]),
    "theta_out_of_range": ("name: x\ntask: {name: ex1_sine}\nmodel: {name: mlp_ode, layer: {theta: 1.5}}\n",
                           ["model.layer.theta", "1.5"]),
    "theta_in_matrix": ("name: x\ntask: {name: ex1_sine}\nmatrix: {model.layer.theta: [0.5, 1.5]}\n",
                        ["theta=1.5", "model.layer.theta"]),
    "negative_epochs": ("name: x\ntask: {name: ex1_sine}\ntrain: {epochs: -3}\n", ["train.epochs", "-3"]),
    "unknown_solver": ("name: x\ntask: {name: ex1_sine}\nmodel: {name: mlp_ode, layer: {solver: {name: broyden}}}\n",
                       ["model.layer.solver", "broyden", "anderson"]),
    "unknown_task": ("name: x\ntask: {name: imagenet}\n", ["task", "imagenet", "ex1_sine"]),
    "unknown_model": ("name: x\ntask: {name: ex1_sine}\nmodel: {name: vgg}\n", ["model", "vgg", "mlp_ode"]),
    "bad_matrix_path": ("name: x\ntask: {name: ex1_sine}\nmatrix: {modle.layer.theta: [0.5]}\n",
                        ["matrix", "modle.layer.theta"]),
    "duplicate_key": ("name: x\ntask: {name: ex1_sine}\nseeds: [0]\nseeds: [1]\n", ["duplicate key", "seeds"]),
    "python_tag": ("name: !!python/object/apply:os.system ['echo hi']\ntask: {name: ex1_sine}\n",
                   ["python/object", "not allowed"]),
    "empty_file": ("", ["empty"]),
    "yaml_syntax": ("name: x\ntask: {name: ex1_sine\n", ["YAML error", "line"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_suites_exit_2_naming_the_field_and_create_no_run(env, case):
    text, needles = MALFORMED[case]
    p = _write(env, f"{case}.yaml", text)
    r = cli("run", p)
    assert r.exit_code == 2, r.output
    for n in needles:
        assert n in r.output, (n, r.output)
    assert str(p) in r.output  # the file is named
    assert not (env / "results" / "mlflow.db").exists()  # nothing started, no store touched
    assert cli("validate", p).exit_code == 2


def test_all_errors_reported_at_once(env):
    p = _write(env, "many.yaml", "name: x\ntask: {name: ex1_sine}\ntrain: {epochs: 0, batch_size: -1}\nfoo: 1\n")
    r = cli("validate", p)
    assert r.exit_code == 2
    assert "train.epochs" in r.output and "train.batch_size" in r.output and "foo" in r.output


def test_set_only_seeds_and_dry_run(env):
    s = fast_suite(env, thetas="[0.0, 0.5, 1.0]")
    r = cli("run", s, "--dry-run", "--only", "model.layer.theta=0.5", "--seeds", "3,4", "--set", "train.epochs=1")
    assert r.exit_code == 0, r.output
    assert "theta=0.5 seed=3" in r.output and "theta=0.5 seed=4" in r.output and "theta=1.0" not in r.output
    assert runs(_store(env), "fast") == []
    bad = cli("run", s, "--executor", "spark")
    assert bad.exit_code == 2 and "spark" in bad.output


def _bench(args, tmp_path, **kw):
    env = {**os.environ, "IRN_RESULTS": str(tmp_path / "results"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args), "--no-report"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _exactly_once(uri, suite, n):
    cells = runs(uri, suite)
    hashes = [c.data.tags["irn.spec_hash"] for c in cells]
    finished = [c for c in cells if c.info.status == "FINISHED"]
    assert len(finished) == n, [(c.info.run_name, c.info.status) for c in cells]
    assert len(set(hashes)) == n and len(hashes) == n  # no duplicates, no leftovers
    return cells


def test_kill_9_mid_suite_then_rerun_each_run_exactly_once(env):
    s = fast_suite(env, epochs=150, thetas="[0.0, 0.5, 1.0]", seeds="[0, 1]")
    uri = _store(env)
    p = _bench(["run", s], env)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a run finished and the next one is in flight
        time.sleep(0.5)
        try:
            cells = runs(uri, "fast")
        except Exception:  # noqa: BLE001 - store still being created
            continue
        if any(c.info.status == "FINISHED" for c in cells) and any(c.info.status == "RUNNING" for c in cells):
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = runs(uri, "fast")
    assert any(c.info.status == "RUNNING" for c in before)  # the killed run is left behind
    p2 = _bench(["run", s], env)
    out, _ = p2.communicate(timeout=300)
    assert p2.returncode == 0, out
    _exactly_once(uri, "fast", 6)


def test_sigterm_stops_process_workers_and_marks_their_runs_killed(env):
    """`kill PID` of a `bench run --executor process` stops the suite like Ctrl-C: the workers stop
    too (they used to keep training and logging their cells as orphans), each in-flight run is marked
    KILLED with reason 'interrupted', and the driver exits 130."""
    s = fast_suite(env, epochs=3000, thetas="[0.5, 1.0]")
    uri = _store(env)
    p = _bench(["run", s, "--executor", "process", "--jobs", "2"], env)
    deadline = time.time() + 120
    while time.time() < deadline:  # both workers are training
        time.sleep(0.5)
        try:
            cells = runs(uri, "fast")
        except Exception:  # noqa: BLE001 - store still being created
            continue
        if sum(c.info.status == "RUNNING" for c in cells) == 2:
            break
    else:
        pytest.fail("the two cells never started")
    os.kill(p.pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=90)
    assert p.returncode == 130, out
    assert "interrupted" in out
    cells = runs(uri, "fast")
    assert [c.info.status for c in cells] == ["KILLED", "KILLED"], [(c.info.run_name, c.info.status) for c in cells]
    assert {c.data.tags.get("irn.failure_reason") for c in cells} == {"interrupted"}
    steps = {c.info.run_id: len(c.data.metrics) for c in cells}
    time.sleep(2)  # nothing is still training behind the driver's back
    assert {c.info.run_id: len(c.data.metrics) for c in runs(uri, "fast")} == steps


def test_two_concurrent_runs_on_one_store_lose_nothing(env):
    s = fast_suite(env, epochs=30, thetas="[0.0, 0.5, 1.0]", seeds="[0, 1]")
    ps = [_bench(["run", s], env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in ps]
    assert all(p.returncode == 0 for p in ps), outs
    _exactly_once(_store(env), "fast", 6)


def _final_metrics(uri, suite):
    return {c.data.tags["irn.label"]: c.data.metrics["final/test/mse"] for c in runs(uri, suite)}


CONV = """
name: conv
task: {name: digits, arch: mnist_compact, subset: 96, test_fraction: 0.1}
model: {h: 0.5, channels: [4, 4, 4], layer: {solver: {name: anderson, tol: 1.0e-4, max_iter: 30}}}
train: {epochs: 1, batch_size: 32}
evaluate: {corruptions: {gaussian: {std: [0.0, 0.3]}}}
seeds: [0]
matrix: {model.layer.theta: [0.0, 1.0]}
"""


def _all_metrics(uri, suite):
    return {c.data.tags["irn.label"]: {k: v for k, v in c.data.metrics.items()
                                       if not (k.startswith("time/") or k.endswith("/time"))}
            for c in runs(uri, suite)}


@pytest.mark.parametrize("executor", ["process", "dask"])
def test_parallel_executors_match_in_process(env, executor):
    """Same seeds, same numbers, whichever executor ran the cells (MLP and conv tasks). A run's torch
    thread count is pinned (--threads): CPU kernels reduce in a thread-dependent order."""
    s = fast_suite(env, epochs=3, thetas="[0.0, 0.5]", seeds="[0, 1]")
    conv = _write(env, "conv.yaml", CONV)
    local_uri = f"sqlite:///{env / 'local.db'}"
    par_uri = f"sqlite:///{env / f'{executor}.db'}"
    for suite in (s, conv):
        assert cli("run", suite, "--no-report", "--tracking-uri", local_uri, "--threads", "1").exit_code == 0
        r = cli("run", suite, "--no-report", "--tracking-uri", par_uri, "--executor", executor, "--jobs", "2")
        assert r.exit_code == 0, r.output
    a, b = _final_metrics(local_uri, "fast"), _final_metrics(par_uri, "fast")
    assert len(a) == 4 and a == b
    ca, cb = _all_metrics(local_uri, "conv"), _all_metrics(par_uri, "conv")
    assert len(ca) == 2 and "corruption/gaussian/0.3/top1" in ca["theta=1.0 seed=0"]
    assert ca == cb


def test_interrupt_during_a_store_write_is_raised_after_it():
    """A signal arriving inside a tracking-store call must not tear the SQLite transaction (its lock would
    be held forever, and marking the run KILLED would hang): the KeyboardInterrupt comes when it returns."""
    import bench.tracking as T

    done = []

    @T._retry
    def write():
        T.interrupt_handler(signal.SIGTERM, None)  # as if SIGTERM arrived mid-transaction
        done.append("committed")
        return "ok"

    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        write()
    assert done == ["committed"] and T._PENDING_SIGNAL is None and T._STORE_DEPTH == 0
    with pytest.raises(KeyboardInterrupt):  # outside a store call: at once
        T.interrupt_handler(signal.SIGINT, None)


def test_credentials_never_reach_the_store(env):
    """A URI with a password on the command line (here a dask scheduler the local executor never contacts) is stored
    in the irn.command tag with the secret replaced; so are params and tags written through the Tracker."""
    from bench.tracking import Tracker, redact

    assert redact("postgresql://alice:s3cr3t@db:5432/x?sslmode=require") == "postgresql://alice:***@db:5432/x?sslmode=require"
    assert redact("tcp://bob:pw@host:8786 and https://h/x?token=abc&y=1") == "tcp://bob:***@host:8786 and https://h/x?token=***&y=1"
    assert redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    s = fast_suite(env, epochs=1, thetas="[0.0]")
    uri = _store(env)
    p = _bench(["run", s, "--no-report", "--tracking-uri", uri, "--scheduler", "tcp://bob:hunter2@127.0.0.1:9"], env)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    tr = Tracker(uri)
    parents = tr.search(tr.experiment_id("fast", create=False), "tags.`irn.role` = 'parent'")
    cmd = parents[0].data.tags["irn.command"]
    assert "hunter2" not in cmd and "tcp://bob:***@127.0.0.1:9" in cmd
    run_id = runs(uri, "fast")[0].info.run_id
    tr.log_params(run_id, {"storage": "mysql://u:topsecret@h/db"})
    tr.set_tags(run_id, {"x": "redis://:pw2@h:6379"})
    got = tr.client.get_run(run_id).data
    assert got.params["storage"] == "mysql://u:***@h/db" and got.tags["x"] == "redis://:***@h:6379"


def _kill_during_store_creation(tmp_path, rounds: int, seed: int = 0) -> None:
    import random

    from bench.tracking import Tracker

    rng = random.Random(seed)
    code = "import sys; from bench.tracking import Tracker; Tracker(sys.argv[1]); print('created', flush=True)"
    for i in range(rounds):
        folder = tmp_path / f"r{i}"
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        p = subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(rng.uniform(1.0, 9.0))  # imports take ~2-4 s, the schema ~3-5 s: kills land all over creation
        p.kill()
        p.communicate()
        t = Tracker(uri)  # the next command works, whatever moment the kill hit
        exp = t.experiment_id("after-kill")
        run = t.start_run(exp, "r", {})
        t.finish(run)
        assert t.status_by_hash(exp) == {}
        assert not list(folder.glob("mlflow.db.creating-*")), "a killed creator's temporary file was not removed"


def test_kill_9_during_store_creation_never_breaks_the_store(tmp_path):
    """Store creation is atomic: built in a temporary file and renamed into place (issue 19; before, 2 of 8 stores
    killed this way failed every later command with 'table … already exists')."""
    _kill_during_store_creation(tmp_path, rounds=3)


@pytest.mark.slow
def test_kill_9_during_store_creation_20_times(tmp_path):
    _kill_during_store_creation(tmp_path, rounds=20, seed=1)


def test_a_worker_killed_by_sigkill_fails_its_own_cell_and_the_suite_goes_on(env):
    """What the OOM killer does to one process-pool worker: its cell is FAILED with 'worker died: signal 9', the pool is
    rebuilt and every other cell finishes; nothing stays RUNNING (before: BrokenProcessPool aborted the suite and the
    other worker's cell stayed RUNNING)."""
    s = fast_suite(env, epochs=400, thetas="[0.5, 1.0, 0.0]")
    uri = _store(env)
    p = _bench(["run", s, "--executor", "process", "--jobs", "2"], env)
    victim = None
    deadline = time.time() + 180
    while time.time() < deadline and victim is None:  # a cell whose worker is training (its lock file holds the pid)
        time.sleep(0.5)
        try:
            cells = runs(uri, "fast")
        except Exception:  # noqa: BLE001 - store still being created
            continue
        training = [c for c in cells if c.info.status == "RUNNING" and c.data.metrics]
        if training:
            victim = training[0]
    assert victim is not None, "no cell started training"
    pid = int(victim.data.tags["irn.pid"])
    os.kill(pid, signal.SIGKILL)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 1, out
    assert "worker died: signal 9 (SIGKILL" in out, out
    final = {}
    for c in runs(uri, "fast"):
        final.setdefault(c.data.tags["irn.label"], []).append(c.info.status)
    assert "RUNNING" not in {st for sts in final.values() for st in sts}, final
    assert final[victim.data.tags["irn.label"]] == ["FAILED"], final
    others = [lab for lab in final if lab != victim.data.tags["irn.label"]]
    assert len(others) == 2 and all("FINISHED" in final[lab] for lab in others), final
    dead = [c for c in runs(uri, "fast") if c.info.run_id == victim.info.run_id][0]
    assert dead.info.status == "FAILED" and dead.data.tags["irn.failure_reason"].startswith("worker died: signal 9")


def test_damaged_read_only_and_misread_stores_get_one_clear_line(env, monkeypatch):
    """Issue 19: a store that is not a database -> exit 2 naming it (was a raw SQLAlchemy traceback); a results folder
    whose path SQLite would misread ('?') -> exit 2 before anything is written (was: the store went elsewhere); an
    existing store in a read-only folder can still be listed (was: the init lock could not be created)."""
    s = fast_suite(env, epochs=1, thetas="[0.0]")
    bad = env / "bad"
    bad.mkdir()
    (bad / "mlflow.db").write_bytes(b"SQLite format 3\0" + b"\x07" * 4000)
    for cmd in ("list", "run"):
        r = cli(cmd, s, "--tracking-uri", f"sqlite:///{bad / 'mlflow.db'}")
        assert r.exit_code == 2 and f"the tracking store {bad / 'mlflow.db'} cannot be read" in r.output, r.output
        assert "Traceback" not in r.output
    monkeypatch.setenv("IRN_RESULTS", str(env / "odd?name"))
    r = cli("run", s, "--no-report")
    assert r.exit_code == 2 and "'?' or '#'" in r.output and not (env / "odd").exists(), r.output
    monkeypatch.setenv("IRN_RESULTS", str(env / "results"))
    assert cli("run", s, "--no-report").exit_code == 0
    import errno

    import bench.tracking as T

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(T, "exclusive", read_only)
    r = cli("list", s)
    assert r.exit_code == 0 and "finished" in r.output, r.output


def test_periodic_evaluation_and_the_window_mean(env):
    """evaluate.periodic logs the test metrics every k optimiser steps and, at the end, their mean over the last window
    (Zhang & Schaeffer's Table 5.3 metric: every 500 steps, mean of the last 5000); oracle: the logged history."""
    s = _write(env, "p.yaml", "name: per\ntask: {name: ex1_sine, n_train: 8}\ntrain: {epochs: 5, batch_size: 2}\n"
                              "evaluate: {periodic: {every_steps: 3, window_steps: 9}}\nseeds: [0]\n")
    uri = _store(env)
    r = cli("run", s, "--no-report", "--tracking-uri", uri)
    assert r.exit_code == 0, r.output
    from mlflow import MlflowClient

    (run,) = runs(uri, "per")
    hist = MlflowClient(uri).get_metric_history(run.info.run_id, "periodic/test/mse")
    assert [m.step for m in hist] == [3, 6, 9, 12, 15, 18]  # 5 epochs x 4 steps = 20 steps
    last = [m.value for m in hist if m.step > 20 - 9]
    assert len(last) == 3
    assert abs(run.data.metrics["window/test/mse"] - sum(last) / 3) <= 1e-12 * abs(sum(last))


def test_jobs_2_runs_two_cells_at_once(env):
    """--jobs 2 without --executor runs two worker processes: the two cells' MLflow start/end times overlap."""
    s = fast_suite(env, epochs=60, thetas="[0.0, 0.5]")
    r = cli("run", s, "--no-report", "--jobs", "2")
    assert r.exit_code == 0, r.output
    assert "executor process x2" in r.output
    cells = runs(_store(env), "fast")
    assert len(cells) == 2
    starts = [c.info.start_time for c in cells]
    ends = [c.info.end_time for c in cells]
    assert max(starts) < min(ends), (starts, ends)


def test_thread_count_is_part_of_a_cpu_runs_identity(env):
    """CPU kernels reduce in a thread-dependent order: a run records its torch thread count, and a finished run with
    another count is redone (and replaced) when --threads asks for one; without --threads it is reused."""
    s = fast_suite(env, epochs=3, thetas="[0.5]")
    uri = _store(env)
    assert cli("run", s, "--no-report", "--threads", "2").exit_code == 0
    (first,) = runs(uri, "fast")
    assert first.data.tags["irn.threads"] == "2"
    assert "0 to run, 1 cached" in cli("run", s, "--no-report").output
    assert "0 to run, 1 cached" in cli("run", s, "--no-report", "--threads", "2").output
    assert "rerun (recorded with 2 threads)" in cli("run", s, "--dry-run", "--threads", "1").output
    r = cli("run", s, "--no-report", "--threads", "1")
    assert r.exit_code == 0 and "1 to run, 0 cached" in r.output, r.output
    (second,) = runs(uri, "fast")  # replaced, not duplicated
    assert second.data.tags["irn.threads"] == "1" and second.info.run_id != first.info.run_id


def test_a_stopped_process_holding_the_store_lock_gives_a_bounded_clear_error(env, monkeypatch):
    """A process stopped (SIGSTOP, Ctrl-Z) inside a write transaction holds SQLite's lock: the next command waits
    $IRN_STORE_LOCK_TIMEOUT seconds, then exits 2 naming the process — it used to die with a raw 'database is
    locked' traceback after about a minute."""
    s = fast_suite(env, epochs=1, thetas="[0.5]")
    assert cli("run", s, "--no-report").exit_code == 0
    db = env / "results" / "mlflow.db"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sqlite3
        c = sqlite3.connect({str(db)!r}, isolation_level=None)
        c.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("IRN_STORE_LOCK_TIMEOUT", "2")
        r = cli("run", s, "--no-report", "--force")
        assert r.exit_code == 2, r.output
        assert "stayed locked" in r.output and f"pid {holder.pid} (stopped)" in r.output, r.output
        assert "Traceback" not in r.output
    finally:
        holder.kill()
        holder.wait()
    assert cli("list", s).exit_code == 0  # the lock went with the process; the store is intact


def test_buffered_metrics_reach_the_store_at_the_end_and_when_training_stops_early(env):
    """Per-epoch metrics are written in batches (MetricBuffer): nothing before a flush, everything after it — and a
    run stopped by its epoch hook (pruning, divergence) still has every epoch it finished."""
    from bench.runner import train_and_log
    from bench.suite import load_suite
    from bench.tracking import MetricBuffer, Tracker

    tr = Tracker(_store(env))
    exp = tr.experiment_id("buffer")
    rid = tr.start_run(exp, "unit", {})
    buf = MetricBuffer(tr, rid, flush_every=3600.0)
    for e in range(3):
        buf.log({"a": float(e), "b": 2.0 * e}, step=e + 1)
    assert tr.metric_history(rid, "a") == []
    buf.flush()
    assert sorted((m.step, m.value) for m in tr.metric_history(rid, "a")) == [(1, 0.0), (2, 1.0), (3, 2.0)]

    s = _write(env, "stop.yaml", """
        name: stop-suite
        task: {name: ex1_sine}
        train: {epochs: 10}
    """)
    config = load_suite(s).specs[0].config
    rid2 = tr.start_run(exp, "stopped", {})

    def hook(epoch, row):
        if epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_log(config, tr, rid2, epoch_hook=hook)
    assert sorted(m.step for m in tr.metric_history(rid2, "train/loss")) == [1, 2, 3, 4]


def test_sqlite_fast_metric_path_reads_back_exactly_like_mlflows_own_log_batch(env):
    """Oracle: MLflow's log_batch. The same metrics (NaN, ±inf, a duplicate row, steps out of order, a later step with a
    smaller timestamp, a tie broken by value) written by MLflow into one run and by the fast SQLite path into another
    must read back identically through MlflowClient: every history and the latest value per key."""
    import math as _m

    from mlflow.entities import Metric

    from bench.tracking import Tracker

    tr = Tracker(_store(env))
    exp = tr.experiment_id("fast")
    ref, fast = tr.start_run(exp, "ref", {}), tr.start_run(exp, "fast", {})
    ms = [Metric("a", 1.0, 1000, 1), Metric("a", 2.0, 900, 2), Metric("a", 0.5, 1100, 1), Metric("a", 2.0, 900, 2),
          Metric("b", float("nan"), 1000, 3), Metric("b", 4.0, 1000, 2), Metric("c", float("inf"), 5, 0),
          Metric("c", -float("inf"), 6, 0), Metric("d", 3.0, 7, 4), Metric("d", 5.0, 7, 4)]
    tr.client.log_batch(ref, metrics=ms[:5])
    tr.client.log_batch(ref, metrics=ms[5:])
    tr.log_metric_batch(fast, ms[:5])
    tr.log_metric_batch(fast, ms[5:])

    def key(m):
        return (m.step, m.timestamp, "nan" if _m.isnan(m.value) else m.value)

    for k in "abcd":
        assert sorted(map(key, tr.client.get_metric_history(fast, k))) == \
            sorted(map(key, tr.client.get_metric_history(ref, k))), k
    latest_ref = tr.client.get_run(ref).data.metrics
    latest_fast = tr.client.get_run(fast).data.metrics
    assert set(latest_ref) == set(latest_fast) == set("abcd")
    for k in "abcd":
        a, b = latest_ref[k], latest_fast[k]
        assert (_m.isnan(a) and _m.isnan(b)) or a == b, (k, a, b)
    tr.client.delete_run(fast)
    from bench.paths import StoreError

    with pytest.raises(StoreError, match="deleted"):
        tr.log_metric_batch(fast, ms[:1])


def test_fresh_process_per_job_on_cuda_and_reused_workers_on_cpu():
    """On CUDA a cell run after others in one process did not give the numbers it gives alone (an H200 measurement,
    benchmarks/README.md), so there every job gets a new process, even with one worker; on the CPU workers are reused."""
    from _procs import Ctx, pid

    from bench.executors import EXECUTORS, fresh_process_per_job

    assert fresh_process_per_job("cuda") and fresh_process_per_job("cuda:1") and not fresh_process_per_job("cpu")
    run = EXECUTORS.get("process")
    jobs = [(i, Ctx()) for i in range(3)]
    fresh, reused = [], []
    run(jobs, pid, fresh.append, jobs=1, fresh=True)
    run(jobs, pid, reused.append, jobs=2, fresh=False)
    assert sorted(t for t, _ in fresh) == [0, 1, 2] and sorted(t for t, _ in reused) == [0, 1, 2]
    assert len({p for _, p in fresh}) == 3 and os.getpid() not in {p for _, p in fresh}
    assert len({p for _, p in reused}) <= 2
    inproc = []
    run(jobs, pid, inproc.append, jobs=1)  # one worker on the CPU: in this process, as the local executor
    assert {p for _, p in inproc} == {os.getpid()}


def test_interrupting_fresh_workers_stops_cleanly_and_starts_no_queued_job(tmp_path):
    """Ctrl-C with a fresh process per job: the interrupted worker returns and the pool must not replace it (its
    manager thread crashed with a TypeError once shutdown had cleared the process table, and a replacement would
    have run the next queued job after the interrupt)."""
    env = dict(os.environ, IRN_TEST_NAP_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), str(Path(__file__).parent.parent)]))
    p = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_procs.py")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started-0").exists():
            if p.poll() is not None or time.monotonic() > deadline:
                p.kill()
                pytest.fail(f"the first job never started: {p.communicate()[1][-3000:]}")
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0 and "KeyboardInterrupt" in err
    assert "Exception in thread" not in err and "has no len()" not in err, err[-2000:]
    time.sleep(2)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["started-0"]  # no queued job ran after the interrupt
