"""The claim evaluator (bench.report.claims) on synthetic runs: holds / fails / inconclusive where the paired
Student-t rule says so (oracle: scipy's t quantile on the differences computed here), and strict checking of the
``claims:`` block."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
from scipy import stats

from bench.report.claims import check_claims, evaluate_claims


def _data(values, metric="final/test/top1"):
    """values: {(case, theta): {seed: value}} → a SuiteData-like object with those finished runs."""
    rows, configs = [], {}
    for (case, theta), by_seed in values.items():
        for seed, v in by_seed.items():
            h = f"{case}-{theta}-{seed}"
            configs[h] = {"model": {"layer": {"theta": theta}}}
            rows.append({"spec_hash": h, "cell": f"case={case} theta={theta}", "case": case, "seed": seed,
                         "status": "finished", metric: v})
    runs = pd.DataFrame(rows)
    return SimpleNamespace(runs=runs, corruptions=pd.DataFrame(), epochs=pd.DataFrame(), config=configs.__getitem__)


def _one(claim, data):
    return evaluate_claims([claim], data).iloc[0]


MONO = {"kind": "monotone", "metric": "final/test/top1", "over": "model.layer.theta", "where": {"case": "t"}}


def _interval(diffs):
    n = len(diffs)
    m = sum(diffs) / n
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1))
    hw = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return m - hw, m + hw


def test_monotone_holds_when_every_step_is_up_and_last_minus_first_is_clearly_positive():
    d = _data({("t", 0.0): {0: 0.80, 1: 0.82, 2: 0.81}, ("t", 0.5): {0: 0.85, 1: 0.86, 2: 0.86},
               ("t", 1.0): {0: 0.90, 1: 0.93, 2: 0.91}})
    lo, _ = _interval([0.90 - 0.80, 0.93 - 0.82, 0.91 - 0.81])
    assert lo > 0
    row = _one(MONO, d)
    assert row["verdict"] == "holds" and row["n"] == 3


def test_monotone_fails_when_a_step_goes_clearly_down():
    d = _data({("t", 0.0): {0: 0.80, 1: 0.82, 2: 0.81}, ("t", 0.5): {0: 0.95, 1: 0.96, 2: 0.95},
               ("t", 1.0): {0: 0.90, 1: 0.91, 2: 0.90}})
    _, hi = _interval([0.90 - 0.95, 0.91 - 0.96, 0.90 - 0.95])
    assert hi < 0  # the 0.5 → 1.0 step is down, though 1.0 − 0.0 is up
    assert _one(MONO, d)["verdict"] == "fails"
    assert _one({**MONO, "direction": "decreasing"}, d)["verdict"] == "fails"  # 1.0 − 0.0 is clearly up


def test_monotone_decreasing_holds_for_a_falling_metric():
    d = _data({("t", 0.0): {0: 0.9, 1: 0.92}, ("t", 1.0): {0: 0.5, 1: 0.51}})
    assert _one({**MONO, "direction": "decreasing"}, d)["verdict"] == "holds"


def test_monotone_is_inconclusive_within_seed_noise_and_with_one_seed():
    noisy = _data({("t", 0.0): {0: 0.80, 1: 0.90, 2: 0.70}, ("t", 1.0): {0: 0.85, 1: 0.80, 2: 0.78}})
    lo, hi = _interval([0.05, -0.10, 0.08])
    assert lo < 0 < hi
    assert _one(MONO, noisy)["verdict"] == "inconclusive"
    single = _data({("t", 0.0): {0: 0.1}, ("t", 1.0): {0: 0.9}})  # a huge gap, one seed: no interval, no verdict
    row = _one(MONO, single)
    assert row["verdict"] == "inconclusive" and "1 seed" in row["evidence"]


def test_greater_paired_by_seed_and_welch_when_seeds_differ():
    claim = {"kind": "greater", "metric": "final/test/top1", "a": {"case": "a"}, "b": {"case": "b"}}
    # b − a varies a lot across seeds, but a − b is always +0.01: pairing decides it
    paired = _data({("a", 0.0): {0: 0.51, 1: 0.71, 2: 0.91}, ("b", 0.0): {0: 0.50, 1: 0.70, 2: 0.90}})
    row = _one(claim, paired)
    assert row["verdict"] == "holds" and "paired over 3" in row["evidence"]
    assert _one({**claim, "a": {"case": "b"}, "b": {"case": "a"}}, paired)["verdict"] == "fails"
    assert _one({**claim, "margin": 0.05}, paired)["verdict"] == "fails"
    disjoint = _data({("a", 0.0): {0: 0.90, 1: 0.91}, ("b", 0.0): {2: 0.50, 3: 0.52}})
    row = _one(claim, disjoint)
    assert row["verdict"] == "holds" and "Welch" in row["evidence"]
    overlap = _data({("a", 0.0): {0: 0.9, 1: 0.5}, ("b", 0.0): {2: 0.7, 3: 0.6}})
    assert _one(claim, overlap)["verdict"] == "inconclusive"


def test_within_a_factor_of_a_value():
    claim = {"kind": "within", "metric": "final/test/top1", "where": {"case": "t"}, "factor": 2.0, "value": 1.0e-4}
    assert _one(claim, _data({("t", 0.0): {0: 1.1e-4, 1: 1.2e-4, 2: 1.15e-4}}))["verdict"] == "holds"
    assert _one(claim, _data({("t", 0.0): {0: 5.0e-4, 1: 5.2e-4, 2: 5.1e-4}}))["verdict"] == "fails"
    straddles = _data({("t", 0.0): {0: 1.0e-4, 1: 4.0e-4}})  # the interval reaches past 2e-4
    assert _one(claim, straddles)["verdict"] == "inconclusive"
    assert _one(claim, _data({("t", 0.0): {0: 1.0e-4}}))["verdict"] == "inconclusive"


def test_within_a_bundled_reference_row():
    claim = {"kind": "within", "metric": "final/test/top1", "where": {"case": "t"}, "factor": 1.05,
             "reference": "paper-table-3", "select": {"model.layer.theta": "0.0", "severity": "0.3", "metric": "top1"}}
    from bench.report.references import load_reference

    t = load_reference("paper-table-3")
    ref = float(t[(t["model.layer.theta"].astype(str) == "0.0") & (t["severity"].astype(str) == "0.3")
                  & (t["metric"] == "top1")]["value"].iloc[0])
    row = _one(claim, _data({("t", 0.0): {0: ref, 1: ref * 1.001, 2: ref * 0.999}}))
    assert row["verdict"] == "holds" and f"{ref:.4g}" in row["evidence"]


@pytest.mark.parametrize("claims,needle", [
    ([{"kind": "bigger", "metric": "final/test/top1"}], "claims[0].kind"),
    ([{"kind": "monotone", "over": "model.layer.theta"}], "claims[0].metric: required"),
    ([{**MONO, "direction": "up"}], "claims[0].direction"),
    ([{**MONO, "over": "model.h"}], "is not a matrix key"),
    ([{**MONO, "metric": "top1"}], "claims[0].metric"),
    ([{**MONO, "colour": 1}], "unknown key(s) colour"),
    ([{"kind": "within", "metric": "final/test/top1", "where": {}, "factor": 2, "value": 1, "reference": "x"}],
     "exactly one of value"),
    ([{"kind": "within", "metric": "final/test/top1", "where": {}, "factor": 0.5, "value": 1}], "factor"),
    ([{**MONO, "name": "x"}, {**MONO, "name": "x"}], "used twice"),
    ({"kind": "monotone"}, "must be a list"),
    ([{"kind": "bound", "metric": "final/test/mse", "where": {}, "value": 1.0, "side": "below"}], "claims[0].side"),
    ([{"kind": "bound", "metric": "final/test/mse", "where": {}, "side": "at_most"}], "claims[0].value: required"),
    ([{**MONO, "metric": "derived/invariant_drift/sideways"}], "unknown derived metric"),
])
def test_claims_block_is_checked_strictly(claims, needle):
    spec = SimpleNamespace(overrides={"model.layer.theta": 0.0})
    errors = check_claims(claims, [spec])
    assert any(needle in e for e in errors), errors


def test_a_suite_with_a_bad_claim_is_refused(tmp_path):
    from bench.suite import SuiteError
    from bench.validation import load_checked

    p = tmp_path / "s.yaml"
    p.write_text("name: s\ntask: {name: ex1_sine}\nmatrix: {model.layer.theta: [0.0, 1.0]}\n"
                 "claims:\n  - {kind: monotone, metric: final/test/mse, over: model.layer.thetaa}\n")
    with pytest.raises(SuiteError) as e:
        load_checked(p)
    assert any("claims[0].over" in x for x in e.value.errors)


BOUND = {"kind": "bound", "metric": "final/test/mse", "where": {"case": "t"}, "value": 0.3, "side": "at_most"}


@pytest.mark.parametrize("vals,side,want", [
    ({0: 0.10, 1: 0.12, 2: 0.11}, "at_most", "holds"),       # the whole interval below 0.3
    ({0: 0.50, 1: 0.52, 2: 0.51}, "at_most", "fails"),       # the whole interval above
    ({0: 0.10, 1: 0.50, 2: 0.30}, "at_most", "inconclusive"),  # the interval straddles 0.3
    ({0: 0.50, 1: 0.52, 2: 0.51}, "at_least", "holds"),
    ({0: 0.10, 1: 0.12, 2: 0.11}, "at_least", "fails"),
    ({0: 0.10}, "at_most", "inconclusive"),                  # one seed: no interval, no verdict
])
def test_bound_decides_by_the_95_percent_interval_against_the_value(vals, side, want):
    row = _one({**BOUND, "side": side}, _data({("t", 0.0): vals}, "final/test/mse"))
    assert row["verdict"] == want, row["evidence"]
    if len(vals) >= 2:  # the oracle: the t interval of the values themselves
        m = sum(vals.values()) / len(vals)
        lo, hi = _interval(list(vals.values()))
        assert f"{lo:.4g}" in row["evidence"] and f"{hi:.4g}" in row["evidence"] and f"{m:.4g}" in row["evidence"]
    else:
        assert "1 seed" in row["evidence"]


def test_a_derived_metric_is_read_from_what_the_report_kind_recorded():
    """derived/… values land in the runs table (ReportContext.derive) and are paired by seed like any metric."""
    from bench.report.output import ReportContext, Section

    d = _data({("t", 0.0): {0: 0.0, 1: 0.0, 2: 0.0}, ("t", 0.5): {0: 0.0, 1: 0.0, 2: 0.0}})
    ctx = ReportContext(d, d.runs, None, Section(title="t", stem="t", kind="trajectories"))
    drift = {("t", 0.0): [0.30, 0.35, 0.32], ("t", 0.5): [0.01, 0.02, 0.015]}
    for (case, theta), vals in drift.items():
        for seed, v in enumerate(vals):
            ctx.derive(f"{case}-{theta}-{seed}", "derived/invariant_drift/continuous", v)
    claim = {"kind": "greater", "metric": "derived/invariant_drift/continuous",
             "a": {"model.layer.theta": 0.0}, "b": {"model.layer.theta": 0.5}}
    d.runs["model.layer.theta"] = [0.0] * 3 + [0.5] * 3
    row = _one(claim, d)
    lo, hi = _interval([a - b for a, b in zip(drift[("t", 0.0)], drift[("t", 0.5)])])
    assert row["verdict"] == "holds" and f"{lo:.4g}" in row["evidence"]


def test_a_derived_metric_needs_the_report_that_computes_it(tmp_path):
    from bench.suite import SuiteError
    from bench.validation import load_checked

    p = tmp_path / "s.yaml"
    p.write_text("name: s\ntask: {name: ex1_sine}\nmatrix: {model.layer.theta: [0.0, 1.0]}\n"
                 "claims:\n  - {kind: bound, metric: derived/max_error/discrete, where: {model.layer.theta: 0.0},"
                 " value: 1.0, side: at_least}\nreports:\n  - {kind: training_curves}\n")
    with pytest.raises(SuiteError) as e:
        load_checked(p)
    assert any("claims[0].metric" in x and "trajectories" in x for x in e.value.errors), e.value.errors
    p.write_text(p.read_text() + "  - {kind: trajectories}\n")
    load_checked(p)


def test_infinite_paired_differences_are_decided_by_the_sign_test_and_say_so():
    """An ∞ measure (an orbit that left z > 0) has no t-interval; the exact sign test decides: 3 of 3 seeds one way
    is p = 0.25 (inconclusive), 6 of 6 is p = 0.031 (holds / fails); the evidence never claims '1 seed'."""
    from bench.report.claims import _interval
    from bench.report.kinds._common import verdict

    inf = float("inf")
    v = verdict([inf, inf, 0.5])
    assert v[0] == "inconclusive" and v[4] == 3 and math.isnan(v[2])
    assert "1 seed" not in _interval(v) and "n=3" in _interval(v) and "sign test" in _interval(v)
    assert verdict([inf] * 3 + [0.1] * 3)[0] == "holds"
    assert verdict([-inf] * 6)[0] == "fails"
    assert verdict([inf, -inf, inf, -inf, inf, -inf])[0] == "inconclusive"
    assert verdict([inf])[0] == "inconclusive" and "1 seed" in _interval(verdict([inf]))
