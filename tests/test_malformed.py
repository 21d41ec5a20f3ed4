"""A corpus of malformed suites (tests/data/malformed/*.yaml, the expected message in EXPECT.tsv) and malformed
command lines (args.tsv, applied to the valid ok/ok.yaml): each exits 2 with the problem named, one line per
problem, no traceback, within 10 s and 1 GiB, and records nothing (no store, no data folder, no report)."""
import resource
import shlex
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

DATA = Path(__file__).parent / "data" / "malformed"


def _rows(name):
    return [line.split("\t") for line in (DATA / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


SUITES = _rows("EXPECT.tsv")
ARGS = _rows("args.tsv")
TIME_LIMIT_S, MEMORY_LIMIT = 10, 2 ** 30


def _invoke(argv, tmp_path, monkeypatch):
    """Run ``bench argv`` in-process under the corpus' bounds; returns the result."""
    monkeypatch.setenv("IRN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("IRN_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("IRN_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)

    def too_slow(signum, frame):
        raise TimeoutError(f"bench {shlex.join(argv)} ran past {TIME_LIMIT_S} s")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(TIME_LIMIT_S)
    try:
        r = CliRunner().invoke(app, argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    assert grown < MEMORY_LIMIT, f"peak memory grew by {grown / 2**20:.0f} MiB"
    return r


def _check(r, expect, tmp_path):
    assert not isinstance(r.exception, TimeoutError), str(r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    assert expect in r.output, r.output
    assert "Traceback" not in r.output
    problems = [ln for ln in r.output.splitlines() if ln.startswith("  - ")]
    assert len(problems) == len(set(problems)), r.output  # one line per problem, not one per cell
    for made in ("results", "data", "reports"):  # nothing created: no store, no data root, no report
        assert not (tmp_path / made).exists(), made


@pytest.mark.parametrize("name,expect", SUITES, ids=[c[0] for c in SUITES])
def test_malformed_suite_exits_2_naming_the_problem(name, expect, tmp_path, monkeypatch):
    r = _invoke(["run", str(DATA / name), "--no-report"], tmp_path, monkeypatch)
    _check(r, expect, tmp_path)
    assert str(DATA / name) in r.output or "not UTF-8" in expect  # the file is named


@pytest.mark.parametrize("name,cmd,expect", ARGS, ids=[c[0] for c in ARGS])
def test_malformed_arguments_exit_2_naming_the_problem(name, cmd, expect, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file.txt").write_text("not a folder")
    subs = {"{ok}": str(DATA / "ok" / "ok.yaml"), "{tmp}": str(empty), "{file}": str(tmp_path / "file.txt")}
    for k, v in subs.items():
        cmd, expect = cmd.replace(k, v), expect.replace(k, v)
    r = _invoke(shlex.split(cmd), tmp_path, monkeypatch)
    _check(r, expect, tmp_path)
    assert "hunter2" not in r.output  # a password in a URI is never printed


def test_the_corpus_is_large_and_the_suites_are_distinct():
    assert len(SUITES) + len(ARGS) >= 80
    texts = [(DATA / n).read_bytes() for n, _ in SUITES]
    assert len(set(texts)) == len(texts)
    assert sorted(p.name for p in DATA.glob("*.yaml")) == sorted(n for n, _ in SUITES)
