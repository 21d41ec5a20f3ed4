"""bench.paths: the store, the data root and the reports folder resolve flag > environment > the suite's project >
the working directory, and a read-only command run from elsewhere finds the project's store instead of creating one."""
from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from bench import paths
from bench.cli import app

SUITE = "name: tiny\ntask: {name: ex1_sine, n_train: 4}\ntrain: {epochs: 1}\nseeds: [0]\n"


def _project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    (proj / "suites").mkdir(parents=True)
    (proj / "suites" / "tiny.yaml").write_text(SUITE)
    return proj


def test_resolution_order(tmp_path, monkeypatch):
    proj = _project(tmp_path)
    suite = proj / "suites" / "tiny.yaml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for k in (paths.ENV_RESULTS, paths.ENV_DATA, paths.ENV_TRACKING):
        monkeypatch.delenv(k, raising=False)
    assert paths.project_root(suite) == proj  # a suite under <project>/suites/
    assert paths.project_root(None) == elsewhere
    assert paths.results_dir(suite) == proj / "results"
    assert paths.data_root(None, suite) == proj / "results" / "data"
    assert paths.reports_dir("tiny", suite=suite) == proj / "results" / "reports" / "tiny"  # never a committed file
    assert paths.store_uri(None, suite) == f"sqlite:///{proj / 'results' / 'mlflow.db'}"
    (tmp_path / "other").mkdir()
    monkeypatch.setenv(paths.ENV_RESULTS, str(tmp_path / "other"))  # environment beats the project
    assert paths.results_dir(suite) == tmp_path / "other"
    assert paths.data_root(None, suite) == tmp_path / "other" / "data"
    monkeypatch.setenv(paths.ENV_DATA, str(tmp_path / "d"))
    assert paths.data_root(None, suite) == tmp_path / "d"
    assert paths.data_root("/x", suite) == Path("/x")  # the flag / task option beats both
    assert paths.store_uri("sqlite:////y.db", suite) == "sqlite:////y.db"
    assert paths.reports_dir("tiny", out="o", suite=suite) == Path("o")


def test_pinned_sets_and_restores_the_environment(tmp_path, monkeypatch):
    proj = _project(tmp_path)
    monkeypatch.delenv(paths.ENV_RESULTS, raising=False)
    monkeypatch.setenv(paths.ENV_DATA, "/keep")
    with paths.pinned(proj / "suites" / "tiny.yaml"):
        assert os.environ[paths.ENV_RESULTS] == str(proj / "results")  # what spawned workers inherit
        assert os.environ[paths.ENV_DATA] == "/keep"
    assert paths.ENV_RESULTS not in os.environ and os.environ[paths.ENV_DATA] == "/keep"


def test_commands_from_another_folder_use_the_projects_store(tmp_path, monkeypatch):
    proj = _project(tmp_path)
    (proj / "pyproject.toml").write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for k in (paths.ENV_RESULTS, paths.ENV_DATA, paths.ENV_TRACKING):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = CliRunner()
    monkeypatch.chdir(proj)
    res = runner.invoke(app, ["run", "suites/tiny.yaml", "--no-report"])
    assert res.exit_code == 0, res.output
    assert (proj / "results" / "mlflow.db").exists()
    monkeypatch.chdir(elsewhere)
    res = runner.invoke(app, ["list", str(proj / "suites" / "tiny.yaml")])
    assert res.exit_code == 0 and "finished" in res.output, res.output  # the project's store, not a new one
    assert not (elsewhere / "results").exists()


def test_a_store_moved_elsewhere_still_finds_its_artifacts(tmp_path):
    """A SQLite store records absolute artifact folders; unpacked somewhere else (a report's runs-store.tar.xz), the
    artifacts beside the database are read instead, byte for byte, and a store whose recorded folder exists reads that."""
    import shutil

    from bench.tracking import Tracker

    old = tmp_path / "old"
    tr = Tracker(f"sqlite:///{old / 'mlflow.db'}")
    exp = tr.client.create_experiment("e", artifact_location=(old / "artifacts").as_uri())
    run = tr.client.create_run(exp)
    src = tmp_path / "state_dict.pt"
    src.write_bytes(b"weights \x00\x01")
    tr.client.log_artifact(run.info.run_id, str(src), "model")
    tr.client.set_terminated(run.info.run_id)
    assert Path(tr.download(run.info.run_id, "model/state_dict.pt", str(tmp_path / "a"))).read_bytes() == src.read_bytes()
    del tr
    new = tmp_path / "elsewhere" / "store"
    shutil.move(str(old), str(new))
    moved = Tracker(f"sqlite:///{new / 'mlflow.db'}")
    got = moved.download(run.info.run_id, "model/state_dict.pt", str(tmp_path / "b"))
    assert Path(got).read_bytes() == src.read_bytes()
