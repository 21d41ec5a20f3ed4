"""Slow (``pytest -m slow``): the quickstart end to end, and the committed report reproduced from scratch."""
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_reproduces_the_committed_report(tmp_path, monkeypatch):
    monkeypatch.setenv("IRN_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("IRN_TRACKING_URI", raising=False)
    suite = ROOT / "suites" / "quickstart.yaml"
    r = CliRunner().invoke(app, ["run", str(suite), "--no-report"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(suite), "--out", str(out)])
    assert r.exit_code == 0, r.output
    committed = ROOT / "reports" / "quickstart"
    # accuracy under noise: same seeds, same machine kind -> the committed numbers
    for name in ("03-accuracy_vs_noise.csv", "03-accuracy_vs_noise.md"):
        assert (out / name).read_text() == (committed / name).read_text(), name
