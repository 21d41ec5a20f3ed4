"""The ``provenance:`` block (bench.report.provenance): checked strictly, every problem at once, and rendered as the
table a paper suite's report opens with; the committed paper suites carry one with a known source for every row."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.report.provenance import SOURCES, check_provenance, provenance_table

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"setting": "optimiser", "value": "Adam 1e-3", "source": "authors-code", "where": "ex_1D.py:136"}


@pytest.mark.parametrize("entries,needle", [
    ({"setting": "x"}, "must be a list"),
    (["Adam"], "provenance[0]: must be a mapping"),
    ([{**GOOD, "source": "the paper"}], "provenance[0].source: must be one of journal, paper, authors-code"),
    ([{k: v for k, v in GOOD.items() if k != "value"}], "provenance[0].value: required"),
    ([{**GOOD, "colour": 1}], "unknown key(s) colour"),
    ([GOOD, GOOD], "provenance[1].setting: 'optimiser' is listed twice"),
    ([{**GOOD, "value": [1, 2]}], "provenance[0].value: must be text"),
])
def test_provenance_block_is_checked_strictly(entries, needle):
    errors = check_provenance(entries)
    assert any(needle in e for e in errors), errors


def test_every_problem_is_reported_at_once():
    errors = check_provenance([{"setting": "a", "source": "nowhere"}, {"value": 1}])
    assert len(errors) == 4, errors  # [0].value, [0].source, [1].setting, [1].source


def test_a_suite_with_bad_provenance_is_refused_before_anything_runs(tmp_path):
    from bench.suite import SuiteError
    from bench.validation import load_checked

    p = tmp_path / "s.yaml"
    p.write_text("name: s\ntask: {name: ex1_sine}\nprovenance:\n  - {setting: lr, value: 1e-3, source: folklore}\n")
    with pytest.raises(SuiteError) as e:
        load_checked(p)
    assert any("provenance[0].source" in x for x in e.value.errors)


def test_provenance_does_not_change_a_runs_identity(tmp_path):
    from bench.validation import load_checked

    p = tmp_path / "s.yaml"
    base = "name: s\ntask: {name: ex1_sine}\nseeds: [0]\n"
    p.write_text(base)
    h0 = load_checked(p).specs[0].hash
    p.write_text(base + "provenance:\n  - {setting: lr, value: 1e-3, source: ours}\n")
    assert load_checked(p).specs[0].hash == h0


@pytest.mark.parametrize("suite", ["ex1_sine", "ex2_stiff", "ex3_lotka", "ex4_mnist_authors", "resnet_ds_mnist", "nemon_mnist"])
def test_paper_suites_say_where_every_setting_comes_from(suite):
    raw = yaml.safe_load((ROOT / "suites" / "paper" / f"{suite}.yaml").read_text())
    assert check_provenance(raw["provenance"]) == [] and len(raw["provenance"]) >= 7
    table = provenance_table(raw["provenance"])
    assert list(table.columns) == ["setting", "value", "source", "where"]
    assert set(table["source"]) <= set(SOURCES.values()) and len(table) == len(raw["provenance"])
