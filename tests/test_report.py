"""bench report: tables equal the logged metrics, references equal the paper, figures are valid files with
the expected labels, missing/failed cells are marked, rendering is deterministic.

One small real suite is run once per module (ex1/ex2/ex3/digits × θ ∈ {0, 1} × 2 seeds, 1–3 epochs; a
ResNet-D/-S depth suite) with ``bench run`` into a temporary SQLite store (about half a minute on a CPU).
"""
from __future__ import annotations

import dataclasses
import filecmp
import math
import os
import re
import shutil
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

typer_testing = pytest.importorskip("typer.testing")

SUITE = """
name: rtest
description: "report test suite"
cases:
  ex1:
    task: {name: ex1_sine, n_test: 20}
    train: {epochs: 3}
  ex2:
    task: {name: ex2_stiff, n_train: 4, n_test: 3}
    train: {epochs: 1}
  ex3:
    task: {name: ex3_lotka, n_orbits: 2, extrapolate: 20.0}
    train: {epochs: 2}
  digits:
    task: {name: digits, arch: mnist_compact, subset: 64, size: 16}
    model:
      h: 0.5
      layer:
        solver: {name: anderson, tol: 1.0e-3, max_iter: 20}
        backward: {name: gmres, tol: 1.0e-3, max_iter: 10}
    train: {epochs: 1, batch_size: 32}
    evaluate:
      max_samples: 64
      corruptions:
        gaussian: {std: [0.0, 0.3]}
  spirals:
    task: {name: v1_spirals, n_per_class: 40, steps: 4}
    train: {epochs: 3}
  v1fn:
    task: {name: v1_function, n_train: 16, n_val: 8, n_test: 40, steps: 2}
    train: {epochs: 2}
seeds: [0, 1]
matrix:
  model.layer.theta: THETAS
reports:
  - {kind: training_curves}
  - {kind: solver_cost}
  - {kind: accuracy_vs_noise, reference: paper-table-3}
  - {kind: vector_field, where: {case: [ex1, ex3]}}
  - {kind: spectrum, where: {case: ex1}}
  - {kind: trajectories, where: {case: [ex2, ex3]}}
  - {kind: decision_regions, where: {case: spirals}}
  - {kind: accuracy_vs_noise, where: {case: digits}, reference: [paper-table-3, authors-mnist-e831e4c],
     reference_case: digits, stats: ci95, claims: monotone}
  - {kind: function_fit, where: {case: v1fn}}
provenance:
  - {setting: optimiser, value: "Adam 1e-3", source: authors-code, where: "ex_1D.py:136-137"}
  - {setting: seeds, value: "0, 1", source: ours}
claims:
  - {name: robust, kind: monotone, metric: corruption/gaussian/0.3/top1, over: model.layer.theta,
     where: {case: digits}, text: "top-1 under noise grows with theta", source: "journal Table 3"}
  - {kind: greater, metric: final/test/mse, a: {case: ex1, model.layer.theta: 0.0}, b: {case: ex1, model.layer.theta: 1.0},
     text: "explicit worse than implicit"}
  - {name: derived, kind: greater, metric: derived/rmse/continuous/in, a: {case: ex3, model.layer.theta: 1.0},
     b: {case: ex3, model.layer.theta: 0.0}, text: "a report-derived measure, decided after the trajectories entry"}
  - {name: amplification, kind: bound, metric: derived/max_amplification/train, value: 0.0, side: at_least,
     where: {case: ex1, model.layer.theta: 0.0}, text: "the spectrum entry derives each run's max |R(z)|"}
"""

DEPTH = """
name: rdepth
task: {name: digits, subset: 32, size: 16}
model: {name: resnet_ds, channels: 4, in_channels: 1, num_classes: 10}
train: {epochs: 1, batch_size: 32}
evaluate:
  max_samples: 32
  corruptions:
    gaussian: {std: [0.0, 0.1]}
seeds: [0]
matrix:
  model.variant: [D, S]
  model.n: [1, 2]
reports:
  - {kind: depth_vs_accuracy, rows: model.n, cols: model.variant, reference: depth-ref.csv}
"""

# task, variant, paper depth (D: 6n, S: 3n + 2); S at n = 2 (depth 8) deliberately absent
DEPTH_REF = """# test reference
task,model.variant,depth,metric,value
digits,D,6,top1,55.5
digits,D,12,top1,66.25
digits,S,5,top1,44.0
"""


def _cli(*args):
    from bench.cli import app

    res = typer_testing.CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return res


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    suite = tmp / "rtest.yaml"
    suite.write_text(SUITE.replace("THETAS", "[0.0, 1.0]"))
    depth = tmp / "rdepth.yaml"
    depth.write_text(DEPTH)
    (tmp / "depth-ref.csv").write_text(DEPTH_REF)  # a reference given as a path beside the suite
    old = os.environ.get("IRN_RESULTS")
    os.environ["IRN_RESULTS"] = str(tmp)  # locks etc. stay in the temp dir
    try:
        for s in (suite, depth):
            res = _cli("run", s, "--tracking-uri", uri, "--no-report")
            assert res.exit_code == 0, res.output
        out = tmp / "out"
        res = _cli("report", suite, "--tracking-uri", uri, "--out", out)
        assert res.exit_code == 0, res.output
        res = _cli("report", depth, "--tracking-uri", uri, "--out", tmp / "out_depth")
        assert res.exit_code == 0, res.output
        yield {"tmp": tmp, "uri": uri, "suite": suite, "depth": depth, "out": out, "out_depth": tmp / "out_depth"}
    finally:
        if old is None:
            os.environ.pop("IRN_RESULTS", None)
        else:
            os.environ["IRN_RESULTS"] = old


def _runs(uri, name):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(name)
    return [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("irn.role") == "cell"], c


def _theta(run):
    return float(run.data.params["model.layer.theta"])


def test_every_kind_rendered(store):
    out = store["out"]
    names = sorted(p.name for p in out.iterdir())
    for stem in ("01-training_curves-ex1", "02-solver_cost-digits", "03-accuracy_vs_noise", "04-vector_field-ex1",
                 "04-vector_field-ex3", "05-spectrum-regions", "05-spectrum-spectra", "06-trajectories-ex2",
                 "06-trajectories-ex3", "07-decision_regions"):
        assert f"{stem}.png" in names and f"{stem}.svg" in names, (stem, names)
    for stem in ("02-solver_cost-ex1", "03-accuracy_vs_noise", "06-trajectories-ex3"):
        for ext in ("md", "tex", "csv"):
            assert f"{stem}.{ext}" in names
    assert (store["out_depth"] / "01-depth_vs_accuracy.md").exists()
    idx = (out / "index.md").read_text()
    assert "could not be rendered" not in idx
    html = (out / "index.html").read_text()
    for p in out.glob("*.png"):
        assert f'src="{p.name}"' in html  # relative links: opens from disk
    assert "\\toprule" in (out / "03-accuracy_vs_noise.tex").read_text()


def test_accuracy_table_equals_logged_metrics_and_reference(store):
    runs, _ = _runs(store["uri"], "rtest")
    got = pd.read_csv(store["out"] / "03-accuracy_vs_noise.csv")
    digits = [r for r in runs if r.data.tags.get("irn.case") == "digits"]
    assert len(digits) == 4
    for theta in (0.0, 1.0):
        for sev in (0.0, 0.3):
            for m in ("top1", "top2"):
                vals = [100 * r.data.metrics[f"corruption/gaussian/{sev:g}/{m}"] for r in digits if _theta(r) == theta]
                row = got[(got["model.layer.theta"] == theta) & (got["severity"] == sev) & (got["metric"] == m)]
                assert len(row) == 1
                assert row["mean"].iloc[0] == pytest.approx(statistics.mean(vals), abs=1e-9)
                assert row["std"].iloc[0] == pytest.approx(statistics.stdev(vals), abs=1e-9)
                assert row["n_seeds"].iloc[0] == 2
    # the paper's Table 3 (SPEC §3), and the difference
    ref = {(0.0, 0.0, "top1"): 100.0, (0.3, 0.0, "top1"): 74.7, (0.3, 1.0, "top1"): 93.6,
           (0.3, 0.0, "top2"): 89.0, (0.3, 1.0, "top2"): 98.8}
    for (sev, theta, m), v in ref.items():
        row = got[(got["model.layer.theta"] == theta) & (got["severity"] == sev) & (got["metric"] == m)].iloc[0]
        assert row["reference"] == v
        assert row["diff"] == pytest.approx(row["mean"] - v)
    md = (store["out"] / "03-accuracy_vs_noise.md").read_text()
    assert "top1 θ=0 paper" in md and "74.7" in md and " ± " in md


def test_bundled_reference_is_spec_table_3():
    from bench.report.references import load_reference

    spec = (Path(__file__).resolve().parents[1] / ".." / "shared" / "SPEC.md")
    ref = load_reference("paper-table-3")
    assert len(ref) == 60
    if not spec.exists():
        pytest.skip("SPEC.md not beside the repository")
    rows = [l for l in spec.read_text().splitlines() if re.match(r"\| 0\.\d \|", l)]
    assert len(rows) == 6
    for line in rows:
        c = [x.strip() for x in line.strip("|").split("|")]
        sev = float(c[0])
        for metric, vals in (("top1", c[1:6]), ("top2", c[7:12])):
            for theta, v in zip((0.0, 0.25, 0.5, 0.75, 1.0), vals):
                r = ref[(ref["severity"] == sev) & (ref["model.layer.theta"] == theta) & (ref["metric"] == metric)]
                assert r["value"].iloc[0] == float(v)


def test_bundled_reference_is_spec_table_5_3():
    from bench.report.references import load_reference

    ref = load_reference("paper-table-5-3")
    assert len(ref) == 14 and set(ref["model.variant"]) == {"D", "S"}
    spec = (Path(__file__).resolve().parents[1] / ".." / "shared" / "SPEC.md")
    if not spec.exists():
        pytest.skip("SPEC.md not beside the repository")
    text = spec.read_text().split("Table 5.3 (test accuracy")[1].split("Table 5.4")[0]  # the table, not a mention
    rows = [[x.strip() for x in l.strip().strip("|").split("|")] for l in text.splitlines() if re.match(r"\| \d+ \|", l)]
    assert len(rows) == 4
    n = 0
    for c in rows:
        for variant, depth, vals in (("D", c[0], c[1:3]), ("S", c[4], c[5:7])):
            for task, v in zip(("cifar10", "cifar100"), vals):
                r = ref[(ref["task"] == task) & (ref["model.variant"] == variant) & (ref["depth"] == int(depth))]
                if v == "—":
                    assert r.empty
                    continue
                assert round(float(r["value"].iloc[0]), 2) == float(v)
                n += 1
    assert n == 14


def test_solver_and_depth_tables_equal_logged_metrics(store):
    runs, client = _runs(store["uri"], "rtest")
    got = pd.read_csv(store["out"] / "02-solver_cost-ex1.csv")
    ex1 = [r for r in runs if r.data.tags.get("irn.case") == "ex1" and _theta(r) == 1.0]
    per_run = []
    for r in ex1:
        hist = client.get_metric_history(r.info.run_id, "solver/block/fwd_iters")
        per_run.append(statistics.median(m.value for m in hist))  # the default: median over epochs
    row = got[got["theta"] == 1.0].iloc[0]
    assert row["fwd_iters/block/mean"] == pytest.approx(statistics.mean(per_run))
    assert row["fwd_iters/block/std"] == pytest.approx(statistics.stdev(per_run))
    assert got[got["theta"] == 0.0].iloc[0]["fwd_iters/block/mean"] == 0.0  # explicit: no solve

    druns, _ = _runs(store["uri"], "rdepth")
    d = pd.read_csv(store["out_depth"] / "01-depth_vs_accuracy.csv")
    for r in druns:
        v, n = r.data.params["model.variant"], int(r.data.params["model.n"])
        row = d[(d["model.variant"] == v) & (d["model.n"] == n) & (d["condition"] == "clean")].iloc[0]
        assert row["mean"] == pytest.approx(100 * r.data.metrics["final/test/top1"])
        assert row["depth"] == (6 * n if v == "D" else 3 * n + 2)
        ref = {("D", 1): 55.5, ("D", 2): 66.25, ("S", 1): 44.0}.get((v, n))
        if ref is None:
            assert math.isnan(row["reference"])
        else:
            assert row["reference"] == ref and row["diff"] == pytest.approx(row["mean"] - ref)
        row = d[(d["model.variant"] == v) & (d["model.n"] == n) & (d["condition"] == "gaussian 0.1")].iloc[0]
        assert row["mean"] == pytest.approx(100 * r.data.metrics["corruption/gaussian/0.1/top1"])
    md = (store["out_depth"] / "01-depth_vs_accuracy.md").read_text()
    assert "clean paper" in md and "66.25" in md and "clean Δ" in md


def _svg_texts(path: Path) -> str:
    text = path.read_text()
    ET.fromstring(text.encode())  # well-formed XML
    return " ".join(re.findall(r"<!-- (.*?) -->", text))  # matplotlib keeps each text as a comment


@pytest.mark.parametrize("stem,expected", [
    ("01-training_curves-ex1", ["epoch", "training loss", "θ=0", "θ=1"]),
    ("02-solver_cost-ex1", ["implicit layer", "wall time per epoch [s]", "θ=1"]),
    ("03-accuracy_vs_noise", ["top1 accuracy [%]", "gaussian noise: std σ of x + σ·N(0, 1) [input units]", "paper", "θ=0"]),
    ("04-vector_field-ex1", ["$y_1$", "$y_2$", "initial states", "θ=1 (seed 0)"]),
    ("05-spectrum-regions", ["Re z", "Im z", "θ = 0", "θ = 1"]),
    ("05-spectrum-spectra", ["Re z", "Im z", "train", "test"]),
    ("06-trajectories-ex3", ["extrapolation", "network (discrete steps)", "learned field, continuous time"]),
    ("07-decision_regions", ["$x_1$", "$x_2$", "held-out points", "decision boundary", "θ=0", "θ=1"]),
])
def test_figures_valid_with_labels(store, stem, expected):
    import matplotlib.image as mpimg

    png = store["out"] / f"{stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert png.stat().st_size < 400_000
    texts = _svg_texts(store["out"] / f"{stem}.svg")
    for t in expected:
        assert t in texts, (t, texts[:500])


def test_decision_regions_reload_the_logged_model(store):
    """Each panel recomputes the held-out accuracy from the reloaded state_dict: it must equal the
    final/test/top1 the run logged at the end of training."""
    texts = _svg_texts(store["out"] / "07-decision_regions.svg")
    runs, _ = _runs(store["uri"], "rtest")
    spirals = [r for r in runs if r.data.tags.get("irn.case") == "spirals" and r.data.params["seed"] == "0"]
    assert len(spirals) == 2
    for r in spirals:
        top1 = 100.0 * r.data.metrics["final/test/top1"]
        assert f"held-out top-1 {top1:.1f} % (seed 0)" in texts, (top1, texts[:800])


def test_function_fit_reloads_the_logged_model(store):
    """The function_fit table's RMSE is recomputed from each reloaded state_dict on the test points: its mean over
    the seeds must equal the root of the final/test/mse each run logged."""
    runs, _ = _runs(store["uri"], "rtest")
    got = pd.read_csv(store["out"] / "09-function_fit.csv")
    assert len(got) == 2 and list(got["n"]) == [2, 2]
    for theta, row in zip((0.0, 1.0), got.itertuples()):
        logged = [math.sqrt(r.data.metrics["final/test/mse"]) for r in runs
                  if r.data.tags.get("irn.case") == "v1fn" and _theta(r) == theta]
        assert len(logged) == 2
        assert row.rmse == pytest.approx(statistics.mean(logged), rel=1e-5)
        assert row.max_error >= row.rmse
    assert "09-function_fit-fit.png" in {p.name for p in store["out"].iterdir()}


def test_derived_stability_reaches_the_claims(store, tmp_path):
    """The spectrum entry's derived max |R(hλ)| per run, recomputed here with a float64 central-difference Jacobian
    of the reloaded field along the training trajectories (θ = 0: R(z) = 1 + z), reaches the claim's mean."""
    import numpy as np
    import torch

    from bench.suite import load_suite
    from bench.tasks import build_task
    from irn_core.models import build_model

    claims = pd.read_csv(store["out"] / "claims.csv")
    row = claims[claims["name"] == "amplification"].iloc[0]
    assert row["n"] == 2, row.to_dict()
    shown = float(re.search(r"theta=0\.0: ([0-9.eE+-]+) vs", row["evidence"]).group(1))
    specs = {sp.hash: sp for sp in load_suite(store["suite"], validate_registries=False).specs}
    runs, client = _runs(store["uri"], "rtest")
    amps = []
    for r in runs:
        if r.data.tags.get("irn.case") != "ex1" or _theta(r) != 0.0:
            continue
        cfg = specs[r.data.tags["irn.spec_hash"]].config
        model = build_model(cfg["model"])
        p = client.download_artifacts(r.info.run_id, "model/state_dict.pt", str(tmp_path))
        model.load_state_dict(torch.load(p, weights_only=True))
        model = model.double().eval()
        x = build_task(cfg["task"]).data(int(r.data.params["seed"]))[0].tensors[0].double()
        with torch.no_grad():
            _, traj = model.block(model.lift(x), return_trajectory=True)
        F, h, eps, zs = model.block.field_at(1), model.block.h, 1e-6, []
        for y in traj:
            for yb in y:
                d = yb.numel()
                J = np.stack([((F(yb + eps * e) - F(yb - eps * e)) / (2 * eps)).detach().numpy()
                              for e in torch.eye(d, dtype=torch.float64)], axis=1)
                zs.append(h * np.linalg.eigvals(J))
        amps.append(float(np.abs(1 + np.concatenate(zs)).max()))
    assert len(amps) == 2
    assert shown == pytest.approx(statistics.mean(amps), rel=2e-3)  # the evidence prints 4 significant digits


def test_rerender_is_byte_identical(store):
    out2 = store["tmp"] / "out2"
    res = _cli("report", store["suite"], "--tracking-uri", store["uri"], "--out", out2)
    assert res.exit_code == 0, res.output
    a = sorted(p.name for p in store["out"].iterdir())
    assert a == sorted(p.name for p in out2.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(store["out"], out2, a, shallow=False)
    assert not mismatch and not errors


def test_missing_failed_and_old_schema_are_marked(store):
    from bench.tracking import Tracker

    tmp = store["tmp"]
    db2 = tmp / "copy.db"
    shutil.copy(tmp / "mlflow.db", db2)
    uri2 = f"sqlite:///{db2}"
    runs, client = _runs(uri2, "rtest")
    victim = next(r for r in runs if r.data.tags.get("irn.case") == "digits" and _theta(r) == 1.0)
    for r in runs:  # every seed of the digits θ=1 cell failed
        if r.data.tags.get("irn.case") == "digits" and _theta(r) == 1.0:
            client.set_tag(r.info.run_id, "irn.failure_reason", "DivergenceError: loss is nan at epoch 1")
            client.set_terminated(r.info.run_id, "FAILED")
    t = Tracker(uri2)
    old = t.start_run(victim.info.experiment_id, "old run", {"irn.role": "cell", "irn.schema_version": "0",
                                                              "irn.spec_hash": "0" * 16, "irn.label": "old run"})
    t.finish(old)
    wider = tmp / "rtest_wider.yaml"  # θ = 0.5 has never run: missing cells
    wider.write_text(SUITE.replace("THETAS", "[0.0, 0.5, 1.0]"))
    out = tmp / "out_partial"
    res = _cli("report", wider, "--tracking-uri", uri2, "--out", out)
    assert res.exit_code == 0, res.output
    md = (out / "03-accuracy_vs_noise.md").read_text()
    assert "missing" in md and "failed: DivergenceError: loss is nan" in md
    num = pd.read_csv(out / "03-accuracy_vs_noise.csv")
    assert set(num[num["model.layer.theta"] == 0.5]["status"]) == {"missing"}
    idx = (out / "index.md").read_text()
    assert "schema version 0" in idx and "reads schema version 1" in idx
    assert "missing from the store" in idx and "failed: DivergenceError" in idx
    assert "missing" in (out / "02-solver_cost-ex1.md").read_text()
    assert "could not be rendered" not in idx


def test_invalid_entries_are_errors(tmp_path):
    from bench.report import check_reports

    errs = check_reports([{"kind": "nope"}, {"kind": "training_curves", "colour": 1}, {"kind": "training_curves"},
                          {"kind": "accuracy_vs_noise", "reference": "no-such-table"}])
    assert len(errs) == 3
    assert errs[0].startswith("reports[0].kind: unknown report kind 'nope'; valid: accuracy_vs_noise")
    assert "reports[1]: unknown option(s) 'colour'" in errs[1] and "valid:" in errs[1] and "metrics" in errs[1]
    assert "reports[3]: reference: unknown reference 'no-such-table'" in errs[2]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntask: {name: ex1_sine}\nreports:\n  - {kind: training_curve}\n")
    res = _cli("report", bad, "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}")
    assert res.exit_code == 2
    assert "reports[0].kind" in res.output and str(bad) in res.output


def test_defaults_alone_work_and_empty_store_is_noted(tmp_path, monkeypatch):
    monkeypatch.setenv("IRN_RESULTS", str(tmp_path))
    s = tmp_path / "s.yaml"
    s.write_text("name: tiny\ntask: {name: ex1_sine, n_train: 4}\ntrain: {epochs: 2}\nseeds: [0]\n"
                 "matrix: {model.layer.theta: [0.0, 0.5]}\nreports:\n  - {kind: training_curves}\n")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    res = _cli("report", s, "--tracking-uri", uri, "--out", tmp_path / "empty")  # no store there: none is created
    assert res.exit_code == 2 and f"no tracking store at {tmp_path / 'm.db'}" in res.output, res.output
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "empty").exists()
    res = _cli("list", s, "--tracking-uri", uri)
    assert res.exit_code == 0 and "no store at" in res.output and "pending" in res.output
    assert not (tmp_path / "m.db").exists()
    res = _cli("run", s, "--tracking-uri", uri, "--no-report")
    assert res.exit_code == 0, res.output
    from bench.report import render_suite
    from bench.suite import load_suite

    monkeypatch.chdir(tmp_path)
    out = render_suite(load_suite(s), tracking_uri=uri)
    from bench import paths

    assert out == paths.results_dir(s) / "reports" / "tiny"  # beside the store, git-ignored
    assert (out / "01-training_curves.png").exists()
    # a store without the suite's runs must not overwrite that report: exit 2, every file unchanged
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from bench.tracking import Tracker

    Tracker(f"sqlite:///{tmp_path / 'other.db'}")  # a store that exists but holds no run of the suite
    res = _cli("report", s, "--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}", "--out", out)
    assert res.exit_code == 2 and "no finished run of suite 'tiny'" in res.output and "left as it is" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _logged(runs, sev, m, theta):
    return {int(r.data.params["seed"]): 100 * r.data.metrics[f"corruption/gaussian/{sev:g}/{m}"]
            for r in runs if r.data.tags.get("irn.case") == "digits" and _theta(r) == theta}


def test_ci95_table_references_and_monotone_claim_from_logged_metrics(store):
    from scipy import stats

    runs, _ = _runs(store["uri"], "rtest")
    got = pd.concat([pd.read_csv(store["out"] / f"08-accuracy_vs_noise-{m}.csv") for m in ("top1", "top2")])
    for theta in (0.0, 1.0):
        vals = list(_logged(runs, 0.3, "top1", theta).values())
        row = got[(got["model.layer.theta"] == theta) & (got["severity"] == 0.3) & (got["metric"] == "top1")].iloc[0]
        hw = stats.t.ppf(0.975, 1) * statistics.stdev(vals) / math.sqrt(2)
        assert row["ci95_high"] - row["mean"] == pytest.approx(hw, abs=1e-9)
        assert row["ref paper-table-3"] == {0.0: 74.7, 1.0: 93.6}[theta]
        assert math.isnan(row["ref authors-mnist-e831e4c"])  # its cases are theta/plain/lipschitz, not digits
    md = (store["out"] / "08-accuracy_vs_noise-top1.md").read_text()
    assert " ± " in md and "| paper-table-3 |" in md and "| this project |" in md
    idx = (store["out"] / "index.md").read_text()
    assert "mean over 2 seeds ± half-width of the 95 % Student-t interval" in idx
    claim = pd.read_csv(store["out"] / "08-accuracy_vs_noise-claim-monotone.csv")
    for m in ("top1", "top2"):
        a, b = _logged(runs, 0.3, m, 0.0), _logged(runs, 0.3, m, 1.0)
        diffs = [b[s] - a[s] for s in sorted(a)]
        row = claim[(claim["metric"] == m) & (claim["severity"] == 0.3)].iloc[0]
        assert row["diff_last_first"] == pytest.approx(statistics.mean(diffs), abs=1e-9)
        hw = stats.t.ppf(0.975, 1) * statistics.stdev(diffs) / math.sqrt(2) if len(set(diffs)) > 1 else 0.0
        lo, hi = statistics.mean(diffs) - hw, statistics.mean(diffs) + hw
        want = "holds" if lo > 0 else "fails" if hi < 0 else "inconclusive"
        assert row["verdict"] == want and row["n_seeds"] == 2


def test_one_seed_report_has_no_plus_minus_and_says_1_seed(store, tmp_path):
    out = tmp_path / "one"
    res = _cli("report", store["suite"], "--tracking-uri", store["uri"], "--out", out, "--only", "seed=0")
    assert res.exit_code == 0, res.output
    md = (out / "08-accuracy_vs_noise-top1.md").read_text() + (out / "08-accuracy_vs_noise-top2.md").read_text()
    assert "±" not in md
    index = (out / "index.md").read_text()
    assert "mean over 1 seed (no ± from one seed)" in index
    results = index.split("## Results")[1].split("## Contents")[0]
    assert "±" not in results and "| 1 seed |" in results
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims["verdict"]) == ["inconclusive"] * 4 and set(claims["n"]) <= {0, 1}
    claim = pd.read_csv(out / "08-accuracy_vs_noise-claim-monotone.csv")
    assert set(claim["verdict"]) == {"inconclusive"} and set(claim["n_seeds"]) == {1}


@pytest.mark.parametrize("diffs,want", [([1.0, 1.2, 0.9], "holds"), ([-2.0, -2.5, -1.8], "fails"),
                                        ([1.0, -1.0, 0.5], "inconclusive"), ([3.0], "inconclusive")])
def test_verdict_rule(diffs, want):
    from bench.report.kinds._common import verdict

    assert verdict(diffs)[0] == want


def test_invariant_drift_is_zero_on_the_exact_orbit_and_positive_off_it(store):
    import numpy as np

    from bench.report.kinds.trajectories import _invariant_drift
    from bench.tasks.ode import lotka_invariant, lotka_rhs, lotka_solution

    z = np.stack([lotka_solution((1.0, 1.0 + 0.2 * k), 0.2, 500) for k in range(3)])  # t in [0, 100]
    assert _invariant_drift(z) < 1e-7
    # the equilibrium (1, 1/2) by the vector field (independent of lotka_equilibrium): V's minimum, 1.6667 + (2/3) ln 2
    assert np.allclose(lotka_rhs(0.0, [1.0, 0.5]), 0.0)
    v_min = lotka_invariant(1.0, 0.5)
    assert v_min == pytest.approx(1 + 2 / 3 + 2 / 3 * np.log(2))
    t = np.arange(501) * 0.2
    decay = z * np.exp(-0.002 * t)[None, :, None]
    V = lotka_invariant(decay[..., 0], decay[..., 1])
    want = np.mean(np.max(np.abs(V - V[:, :1]), axis=1) / (V[:, 0] - v_min))
    assert _invariant_drift(decay) == pytest.approx(want) and want > 1e-3
    neg = z.copy()
    neg[0, 10, 0] = -0.1
    assert _invariant_drift(neg) == float("inf")
    from bench.report.kinds.trajectories import _orbit_drifts

    per = _orbit_drifts(np.concatenate([decay, neg[:1]]))  # 3 decaying orbits + one that leaves z > 0
    want_each = np.max(np.abs(V - V[:, :1]), axis=1) / (V[:, 0] - v_min)
    assert np.allclose(per[:3], want_each) and np.isinf(per[3])
    assert np.median(per) == pytest.approx(np.median(np.append(want_each, np.inf)))  # finite: 1 of 4 leaves
    # an orbit that spirals into the equilibrium scores 1 (z(t) = z* + (z(0) − z*)e^{−t/10} ends at z*)
    eq = np.array([1.0, 0.5])
    spiral = eq + (z[:, :1] - eq) * np.exp(-t / 10)[None, :, None]
    assert np.allclose(_orbit_drifts(spiral), 1.0, atol=1e-6)
    got = pd.read_csv(store["out"] / "06-trajectories-ex3.csv")
    assert "invariant_drift/continuous/mean" in got.columns and "invariant_drift/discrete/mean" in got.columns
    assert "invariant_drift_median/continuous/mean" in got.columns
    assert "invariant_drift/continuous/mean" not in pd.read_csv(store["out"] / "06-trajectories-ex2.csv").columns
    # a claim on a derived/… metric reads the per-run values the table averaged (paired over the 2 seeds)
    claim = pd.read_csv(store["out"] / "claims.csv").set_index("name").loc["derived"]
    by = got.set_index("cell")["rmse/continuous/in/mean"]
    diff = by["θ=1"] - by["θ=0"]
    assert claim["n"] == 2 and "paired over 2 seed(s)" in claim["evidence"], claim["evidence"]
    assert claim["evidence"].split(": ")[1].startswith(f"{diff:.4g}"), (claim["evidence"], diff)


def test_a_render_killed_midway_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    """Rendering goes to a staging folder and is published file by file, index last: an interrupt in the middle of a
    render leaves the previous report complete (before, the folder was emptied first), and files in the folder that
    are not ours (an archived store) are never touched."""
    monkeypatch.setenv("IRN_RESULTS", str(tmp_path))
    s = tmp_path / "s.yaml"
    s.write_text("name: tiny\ntask: {name: ex1_sine, n_train: 4}\ntrain: {epochs: 2}\nseeds: [0]\n"
                 "reports:\n  - {kind: training_curves}\n  - {kind: solver_cost}\n")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert _cli("run", s, "--tracking-uri", uri, "--no-report").exit_code == 0
    out = tmp_path / "rep"
    assert _cli("report", s, "--tracking-uri", uri, "--out", out).exit_code == 0
    (out / "runs-store.tar.xz").write_bytes(b"keep me")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from bench.report import registry

    kind = registry.get_report("solver_cost")

    def boom(ctx, e):
        raise KeyboardInterrupt("killed while rendering")

    monkeypatch.setitem(registry.REPORTS._entries, "solver_cost", dataclasses.replace(kind, render=boom))
    with pytest.raises(KeyboardInterrupt):
        from bench.report import render_suite
        from bench.suite import load_suite

        render_suite(load_suite(s), tracking_uri=uri, out_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".rep.rendering-*")), "the staging folder was not removed"


def test_bundled_table_5_4_matches_the_spec():
    """The transcription of Zhang & Schaeffer's Table 5.4 against ../shared/SPEC.md §4 (skipped without it)."""
    spec = Path(__file__).resolve().parents[2] / "shared" / "SPEC.md"
    if not spec.exists():
        pytest.skip(f"{spec} not present")
    text = spec.read_text(encoding="utf-8").split("Table 5.4", 1)[1].split("Claim (text)", 1)[0]
    want, current = {}, None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or not cells[1].isdigit():
            continue
        current = cells[0] or current
        variant, ds = current.split()
        task = "cifar10" if ds == "C10" else "cifar100"
        for cond, v in zip(["clean", "unstructured eps1", "unstructured eps2", "structured delta1", "structured delta2"],
                           cells[2:]):
            want[(task, variant, int(cells[1]), cond)] = float(v)
    from bench.report.references import load_reference

    ref = load_reference("paper-table-5-4")
    got = {(t, v, int(d), c): float(x) for t, v, d, c, x in
           zip(ref["task"], ref["model.variant"], ref["depth"], ref["condition"], ref["value"])}
    assert len(want) == 70 and got == want


def test_the_report_opens_with_claims_and_a_results_table_from_the_logged_metrics(store):
    """Claims and results come before the contents; each results cell is the mean ± std [95 % t-interval] of the
    logged final metric over the cell's two seeds; each claim's verdict is the paired-by-seed rule's."""
    from bench.report.kinds._common import verdict

    index = (store["out"] / "index.md").read_text()
    assert index.index("## Claims") < index.index("## Results") < index.index("## Contents")
    runs, _ = _runs(store["uri"], "rtest")
    by = {}
    for r in runs:
        if r.data.tags.get("irn.case") == "ex1":
            by.setdefault(_theta(r), {})[int(r.data.params["seed"])] = r.data.metrics["final/test/mse"]
    res = pd.read_csv(store["out"] / "results.csv")
    row = res[res["cell"] == "case=ex1 theta=0.0"].iloc[0]
    vals = list(by[0.0].values())
    m, sd = statistics.mean(vals), statistics.stdev(vals)
    assert row["n"] == "2 seeds" and row["final/test/mse"].startswith(f"{m:.4g} ± {sd:.2g} [")
    claims = pd.read_csv(store["out"] / "claims.csv")
    greater = claims[claims["kind"] == "greater"].iloc[0]
    assert greater["verdict"] == verdict([by[0.0][s] - by[1.0][s] for s in (0, 1)])[0] and greater["n"] == 2


def test_the_papers_depth_claim_read_in_its_own_table_5_4():
    """SPEC §4: Table 5.4 has exceptions to "accuracy grows with depth" — e.g. ResNet-D, CIFAR-10, structured δ2:
    41.24 → 35.18 → 32.07 → 40.25. The reading finds it, and every row it calls monotone is monotone."""
    from bench.report.kinds.depth_vs_accuracy import depth_claim_in_table
    from bench.report.references import load_reference

    t = depth_claim_in_table(load_reference("paper-table-5-4"))
    row = t[(t["task"] == "cifar10") & (t["variant"] == "D") & (t["condition"] == "structured delta2")].iloc[0]
    assert row["accuracy (%)"] == "41.24 → 35.18 → 32.07 → 40.25"
    assert row["grows with depth"].startswith("no (drops 18→36, 36→54")
    for _, r in t.iterrows():
        vals = [float(v) for v in r["accuracy (%)"].split(" → ")]
        assert (r["grows with depth"] == "yes") == all(b >= a for a, b in zip(vals, vals[1:]))
    assert 0 < (t["grows with depth"] != "yes").sum() < len(t)


def test_spectrum_axes_zoom_to_the_eigenvalues():
    """The spectra figure's axes follow the eigenvalues (a cluster near 0 is not a dot on [−3, 3]) and keep 0 in view."""
    import numpy as np

    from bench.report.kinds.spectrum import zoom

    small = np.array([0.01 + 0.02j, -0.05 - 0.01j, 0.03 + 0j])
    re, im = zoom(small)
    assert re[0] < -0.05 and re[1] > 0.03 and re[1] - re[0] <= 1.0 and im[1] <= 0.5
    far = np.array([-5.0 + 1j, -4.0 - 1j])
    re, im = zoom(far)
    assert re[0] < -5.0 and re[1] >= 0.0 and im[1] >= 1.0
    assert zoom(np.array([np.nan + 0j])) == ((-3.0, 3.0), (-3.0, 3.0))


def test_the_report_opens_with_the_suites_provenance(store):
    """Provenance (setting · value · source · where) comes first, before Claims and Results, and as provenance.csv."""
    index = (store["out"] / "index.md").read_text()
    assert index.index("## Provenance") < index.index("## Claims") < index.index("## Results")
    head = index.split("## Provenance")[1].split("## Claims")[0]
    assert "| optimiser | Adam 1e-3 | authors' code | ex_1D.py:136-137 |" in head
    assert "| seeds | 0, 1 | ours (a choice of this benchmark) |" in head
    prov = pd.read_csv(store["out"] / "provenance.csv")
    assert list(prov["setting"]) == ["optimiser", "seeds"]


def test_trajectories_continuous_by_small_theta_steps_agrees_with_solve_ivp(store):
    """``continuous: {theta: .5, h: .01}`` (the authors' ex3 "continuous" solution) integrates the same learned field
    as solve_ivp: their rollouts agree on the training horizon, and the caption names the θ-steps."""
    text = store["suite"].read_text()
    head, _ = text.split("reports:\n", 1)
    other = store["tmp"] / "rtest_theta.yaml"
    other.write_text(head + "reports:\n  - {kind: trajectories, where: {case: ex3}, continuous: {theta: 0.5, h: 0.01}}\n")
    out = store["tmp"] / "out_theta"
    res = _cli("report", other, "--tracking-uri", store["uri"], "--out", out)
    assert res.exit_code == 0, res.output
    got = pd.read_csv(next(out.glob("01-trajectories*.csv")))
    ivp = pd.read_csv(store["out"] / "06-trajectories-ex3.csv")
    for theta in (0.0, 1.0):
        a = got[got["theta"] == theta]["rmse/continuous/in/mean"].iloc[0]
        b = ivp[ivp["theta"] == theta]["rmse/continuous/in/mean"].iloc[0]
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)  # h² = 1e-4: a second-order rule next to an adaptive one
    assert "θ = 0.5 steps of h = 0.01" in (out / "index.md").read_text()
    from bench.report.registry import check_reports

    errs = check_reports([{"kind": "trajectories", "continuous": {"theta": 2, "h": 0.01}},
                          {"kind": "trajectories", "continuous": {"h": 0.01}}])
    assert len(errs) == 2 and all("continuous: omit it" in e for e in errs)
