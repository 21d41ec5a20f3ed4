"""bench.corruptions: identity at severity 0, the Gaussian definition, determinism, attacks hurt."""
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from bench.corruptions import CORRUPTIONS, Context, evaluate_corruptions, input_gradient, parse_spec
from bench.tasks import build_task
from bench.train import fit, set_seed
from irn_core import ImplicitBlock
from irn_core.models import build_model


@pytest.fixture(scope="module")
def digits():
    task = build_task({"name": "digits", "subset": 600})
    train, _, test = task.data(0)
    return task, train, Subset(test, range(200))


def _ctx(task, model=None, y=None, seed=0, fixed=None, corr=None):
    bounds = task.pixel_range if corr is None else corr.bounds(task)
    return Context(model, task, y, torch.Generator().manual_seed(seed), "cpu", bounds, fixed)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_severity_zero_is_the_identity(name, digits):
    task, _, test = digits
    x = torch.stack([test[i][0] for i in range(8)])
    y = torch.tensor([test[i][1] for i in range(8)])
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    ((corr, sev),) = parse_spec({name: {CORRUPTIONS[name].severity_key: [0.0]}})
    out = corr.apply(x, 0.0, _ctx(task, model, y, fixed=x[0]))
    assert torch.equal(out, x)
    df = evaluate_corruptions(model, task, Subset(test, range(32)), {name: {CORRUPTIONS[name].severity_key: 0.0}})
    clean = evaluate_corruptions(model, task, Subset(test, range(32)), {"gaussian": {"std": 0}})
    assert df["value"].tolist() == clean["value"].tolist()


def test_gaussian_matches_its_definition():
    task = build_task({"name": "digits"})
    x = torch.full((64, 1, 28, 28), 0.5)
    ((corr, _),) = parse_spec({"gaussian": {"std": 0.1}})
    noise = corr.apply(x, 0.1, _ctx(task)) - x  # |noise| ≤ 0.5 w.p. ~1: clamping inactive
    assert abs(float(noise.mean())) < 2e-3 and abs(float(noise.std()) - 0.1) < 2e-3
    ((raw, _),) = parse_spec({"gaussian": {"std": 2.0, "clamp": None}})
    big = raw.apply(x, 2.0, _ctx(task, corr=raw)) - x
    assert abs(float(big.std()) - 2.0) < 0.03
    clamped = corr.apply(torch.rand(16, 1, 28, 28), 0.5, _ctx(task))
    assert float(clamped.min()) >= 0 and float(clamped.max()) <= 1
    a = corr.apply(x, 0.1, _ctx(task, seed=1))
    assert torch.equal(a, corr.apply(x, 0.1, _ctx(task, seed=1)))
    assert not torch.equal(a, corr.apply(x, 0.1, _ctx(task, seed=2)))


def test_other_noises_and_structured():
    task = build_task({"name": "digits"})
    x = torch.full((32, 1, 28, 28), 0.5)
    ((u, _),) = parse_spec({"uniform": {"eps": 0.2}})
    d = u.apply(x, 0.2, _ctx(task)) - x
    assert float(d.abs().max()) <= 0.2 + 1e-6 and abs(float(d.std()) - 0.2 / 3 ** 0.5) < 3e-3
    ((sp, _),) = parse_spec({"salt_pepper": {"amount": 0.1}})
    s = sp.apply(x, 0.1, _ctx(task))
    changed = s != x
    assert abs(float(changed.float().mean()) - 0.1) < 5e-3 and set(s[changed].unique().tolist()) <= {0.0, 1.0}
    xh = torch.rand(1, 28, 28) * 0.2
    ((st, _),) = parse_spec({"structured": {"eps": 0.5, "clamp": None}})
    torch.testing.assert_close(st.apply(x, 0.5, _ctx(task, fixed=xh, corr=st)), x + 0.5 * xh)


def test_spec_errors_list_the_valid_names():
    with pytest.raises(ValueError, match="unknown corruption 'blur'; valid: fgsm, gaussian"):
        parse_spec({"blur": {"severity": [1]}})
    with pytest.raises(ValueError, match="unknown option.*'sdt'.*valid: std, clamp"):
        parse_spec({"gaussian": {"std": [0.1], "sdt": 1}})
    with pytest.raises(ValueError, match="needs its severities as 'eps'"):
        parse_spec({"fgsm": {}})


def _train_linear(task, train):
    set_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    fit(model, task, train, {"epochs": 15, "batch_size": 600, "optimizer": {"name": "adam", "lr": 0.05},
                             "scheduler": None}, seed=0)
    return model


def test_adversarial_attacks_lower_accuracy_and_table_is_deterministic(digits):
    task, train, test = digits
    model = _train_linear(task, train)
    spec = {"gaussian": {"std": [0.0, 0.3]}, "fgsm": {"eps": [0.0, 0.1]}, "pgd": {"eps": [0.1], "steps": 5}}
    df = evaluate_corruptions(model, task, test, spec, seed=0, batch_size=64)
    assert list(df.columns) == ["corruption", "severity", "metric", "value"]
    assert set(df.metric) == {"top1", "top2", "loss"}
    top1 = df[df.metric == "top1"].set_index(["corruption", "severity"])["value"]
    clean = top1[("fgsm", 0.0)]
    assert clean > 0.8 and top1[("gaussian", 0.0)] == clean
    assert top1[("fgsm", 0.1)] < clean - 0.3
    assert top1[("pgd", 0.1)] <= top1[("fgsm", 0.1)] + 1e-9
    df2 = evaluate_corruptions(model, task, test, spec, seed=0, batch_size=64)
    assert df.equals(df2)


def test_fgsm_goes_through_the_implicit_backward(digits):
    task, train, test = digits
    set_seed(0)
    cfg = {**build_task({"name": "digits", "arch": "mnist_compact"}).default_model(), "h": 0.5}
    cfg["layer"] = {**cfg["layer"], "theta": 1.0, "solver": {"name": "anderson", "tol": 1e-4, "max_iter": 30},
                    "backward": {"name": "gmres", "tol": 1e-4, "max_iter": 20}, "on_nonconvergence": "ignore"}
    model = build_model(cfg)
    fit(model, task, train, {"epochs": 4, "batch_size": 64, "optimizer": {"name": "adam", "lr": 1e-2},
                             "scheduler": None}, seed=0)
    df = evaluate_corruptions(model, task, Subset(test, range(100)), {"fgsm": {"eps": [0.0, 0.1]}}, seed=0)
    top1 = df[df.metric == "top1"].set_index("severity")["value"]
    assert top1[0.0] > 0.5 and top1[0.1] < top1[0.0] - 0.1
    x = torch.stack([test[i][0] for i in range(8)])
    y = torch.tensor([test[i][1] for i in range(8)])
    g = input_gradient(model.eval(), task, x, y)
    assert g.shape == x.shape and float(g.abs().sum()) > 0
    blocks = [m for m in model.modules() if isinstance(m, ImplicitBlock)]
    assert blocks and all(any(s is not None for s in b.last_backward_stats) for b in blocks)  # IFT backward ran
    assert all(p.requires_grad for p in model.parameters())  # restored after the attack
