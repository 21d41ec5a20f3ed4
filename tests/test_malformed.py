"""A corpus of malformed suites (tests/data/malformed, expected message in EXPECT.tsv): each gives exit 2 with
the problem named, no traceback, quickly, and starts nothing."""
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

DATA = Path(__file__).parent / "data" / "malformed"
CASES = [line.split("\t") for line in (DATA / "EXPECT.tsv").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name,expect", CASES, ids=[c[0] for c in CASES])
def test_malformed_suite_exits_2_naming_the_problem(name, expect, tmp_path, monkeypatch):
    monkeypatch.setenv("IRN_RESULTS", str(tmp_path / "results"))
    r = CliRunner().invoke(app, ["validate", str(DATA / name)])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    assert expect in r.output, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "results").exists()  # nothing created
