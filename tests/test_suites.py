"""Every shipped suite validates (schema, registries, reports), and the matrix/cases expand as documented."""
from pathlib import Path

import pytest

from bench.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted(p for p in (ROOT / "suites").rglob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[str(p.relative_to(ROOT)) for p in SUITES])
def test_shipped_suite_validates(path):
    s = load_suite(path)
    assert s.specs, path
    assert len({sp.hash for sp in s.specs}) == len(s.specs)  # every cell is a distinct run


def test_quickstart_cases_and_paper_grids():
    q = load_suite(ROOT / "suites" / "quickstart.yaml")
    assert [sp.label for sp in q.specs][:2] == ["case=ex1 theta=0.0 seed=0", "case=ex1 theta=0.5 seed=0"]
    digits = [sp for sp in q.specs if sp.overrides["case"] == "digits"]
    assert all(sp.config["evaluate"]["corruptions"]["gaussian"]["std"][-1] == 0.5 for sp in digits)
    assert all(sp.config["model"]["name"] == "mnist_compact" and sp.config["model"]["h"] == 0.5 for sp in digits)
    ex1 = load_suite(ROOT / "suites" / "paper" / "ex1_sine.yaml")
    assert len(ex1.specs) == 75  # theta x alpha_div (25 cells) x seeds 10, 11, 12
    assert ex1.specs[0].config["train"]["epochs"] == 3000  # the paper default comes from the task
    assert ex1.specs[0].config["model"]["dims"] == [2, 10, 10, 10, 10, 2]  # width 10, depth 3: 5 linear layers
    v1 = load_suite(ROOT / "suites" / "paper" / "v1_spirals.yaml")
    assert len(v1.specs) == 12  # theta 0 x sigma_pert {0, .01, .05, .1} x 3 seeds
    assert v1.specs[0].config["model"]["steps"] == 100 and v1.specs[0].config["model"]["horizon"] == 12.5
    assert {sp.config["regularizers"]["perturbation_streams"]["weight"] for sp in v1.specs} == {0.001}


def test_hash_is_canonical_and_ignores_labels(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("name: a\ntask: {name: ex1_sine}\nmodel: {name: mlp_ode, layer: {theta: 0.5}}\ntrain: {epochs: 2}\n")
    b = tmp_path / "b.yaml"  # same run, other suite name, keys in another order, theta set by the matrix
    b.write_text("name: b\ntrain: {epochs: 2}\nmatrix: {model.layer.theta: [0.5]}\ntask: {name: ex1_sine}\n")
    ha, hb = load_suite(a).specs[0].hash, load_suite(b).specs[0].hash
    assert ha == hb
    c = load_suite(a, sets=["train.epochs=3"]).specs[0].hash
    assert c != ha


def test_matrix_exclude_and_include(tmp_path):
    """exclude drops every cell matching all its keys; include adds cells outside the product."""
    p = tmp_path / "x.yaml"
    p.write_text("name: x\ntask: {name: ex1_sine}\ntrain: {epochs: 2}\n"
                 "matrix: {model.layer.theta: [0.0, 1.0], model.layer.phi: [one_leg, convex]}\n"
                 "exclude: [{model.layer.theta: 0.0, model.layer.phi: convex}]\n"
                 "include: [{model.layer.theta: 0.5, model.layer.phi: one_leg}]\n")
    cells = {(sp.config["model"]["layer"]["theta"], sp.config["model"]["layer"]["phi"]) for sp in load_suite(p).specs}
    assert cells == {(0.0, "one_leg"), (1.0, "one_leg"), (1.0, "convex"), (0.5, "one_leg")}


def test_only_filters_by_case_and_never_crashes_on_an_absent_path():
    from bench.suite import load_suite

    root = Path(__file__).resolve().parents[1]
    s = load_suite(root / "suites" / "quickstart.yaml", only=["case=ex1"])
    assert len(s.specs) == 3 and all(sp.overrides["case"] == "ex1" for sp in s.specs)
    s = load_suite(root / "suites" / "quickstart.yaml", only=["case=digits", "model.layer.theta=1.0"])
    assert [sp.overrides for sp in s.specs] == [{"case": "digits", "model.layer.theta": 1.0}]
    with pytest.raises(SuiteError, match=r"matches no run; model.layer.theta takes 0.0, 0.5, 1.0"):
        load_suite(root / "suites" / "quickstart.yaml", only=["model.layer.theta=0.3"])
    with pytest.raises(SuiteError, match="matches no run"):
        load_suite(root / "suites" / "quickstart.yaml", only=["model.no_such_key=1"])
