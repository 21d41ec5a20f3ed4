"""bench.tasks: registry, shapes, reference data, determinism, and a few training steps per task."""
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from bench.tasks import TASKS, build_task, get_task
from bench.tasks.base import aggregate
from bench.tasks.ode import lotka_invariant, lotka_rhs, stiff_solution
from bench.train import evaluate, fit, make_loader, make_optimizer, make_scheduler, set_seed
from irn_core import ConvergenceWarning
from irn_core.models import build_model

ALL = ["ex1_sine", "ex2_stiff", "ex3_lotka", "v1_function", "v1_spirals", "mnist", "cifar10", "cifar100", "digits"]

# (task config, input shape, target shape) of one sample
SHAPES = {
    "ex1_sine": ({"name": "ex1_sine"}, (1,), (1,), 20),
    "ex2_stiff": ({"name": "ex2_stiff", "points": 4}, (1,), (4, 1), 100),
    "ex3_lotka": ({"name": "ex3_lotka", "extrapolate": 20.0}, (2,), (50, 2), 5),
    "v1_function": ({"name": "v1_function"}, (1,), (1,), 100),
    "v1_spirals": ({"name": "v1_spirals"}, (2,), (), 513),
    "digits": ({"name": "digits"}, (1, 28, 28), (), 1347),
}


def test_registry_and_errors():
    assert sorted(TASKS) == sorted(ALL)
    assert get_task("mnist").name == "mnist"
    with pytest.raises(ValueError, match="unknown task 'nope'; valid: cifar10"):
        build_task({"name": "nope"})
    with pytest.raises(ValueError, match="unknown option.*'pointz'.*valid: points"):
        build_task({"name": "ex2_stiff", "pointz": 2})
    with pytest.raises(ValueError, match="subset_mode"):
        build_task({"name": "mnist", "subset_mode": "middle"})
    for name in ALL:  # every task has its defaults and metadata without touching data files
        t = build_task({"name": name})
        assert t.kind in ("regression", "classification") and t.config()["name"] == name
        assert t.default_model()["name"] in ("mlp_ode", "resnet18_preact", "mnist_compact", "resnet_ds", "nemon")
        tr = t.default_train()
        assert {"epochs", "batch_size", "optimizer", "scheduler"} <= set(tr)
        make_scheduler(make_optimizer([torch.nn.Parameter(torch.zeros(1))], tr["optimizer"]), tr["scheduler"])


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_and_determinism(name):
    cfg, xs, ys, n = SHAPES[name]
    task = build_task(cfg)
    train, val, test = task.data(seed=3)
    assert len(train) == n
    x, y = train[0]
    assert tuple(x.shape) == xs and tuple(torch.as_tensor(y).shape) == ys
    train2, _, test2 = task.data(seed=3)
    assert torch.equal(train2[len(train) - 1][0], train[len(train) - 1][0])
    assert torch.equal(torch.as_tensor(test2[0][1]), torch.as_tensor(test[0][1]))
    if task.kind == "classification" and hasattr(task, "input_shape"):
        assert float(x.min()) >= 0 and float(x.max()) <= 1  # [0, 1] pixels; the model normalises


def test_ex2_reference_matches_a_high_accuracy_ode_solution():
    task = build_task({"name": "ex2_stiff", "points": 10, "n_train": 5})
    train, _, _ = task.data(seed=0)
    t = np.arange(1, 11) * 0.2
    for i in range(5):
        z0, z = train[i]
        ref = solve_ivp(lambda s, v: -20.0 * (v - np.cos(s)), (0, 2), [float(z0)], method="Radau", t_eval=t,
                        rtol=1e-12, atol=1e-12).y[0]
        closed = stiff_solution(np.array([float(z0)]), t)[0]
        assert np.max(np.abs(closed - ref)) < 1e-6
        np.testing.assert_allclose(z[:, 0].numpy(), ref, atol=1e-6)  # float32 storage
    a, b = task.data(seed=0)[0], task.data(seed=1)[0]
    assert not torch.equal(a[0][0], b[0][0])  # initial conditions depend on the seed


def test_ex3_reference_matches_a_high_accuracy_ode_solution():
    task = build_task({"name": "ex3_lotka", "extrapolate": 40.0})
    train, _, test = task.data(0)
    assert len(train) == 5 and train[0][1].shape == (50, 2) and test[0][1].shape == (200, 2)
    for k in range(5):
        z0, z = train[k]
        assert torch.allclose(z0, torch.tensor([1.0, 1.0 + 0.2 * k]))
        ref = solve_ivp(lotka_rhs, (0, 10), [1.0, 1.0 + 0.2 * k], method="Radau", rtol=1e-12, atol=1e-12,
                        t_eval=np.arange(1, 51) * 0.2).y.T
        np.testing.assert_allclose(z.numpy(), ref, atol=1e-6)
        zt = test[k][1].double().numpy()
        inv = lotka_invariant(zt[:, 0], zt[:, 1])
        assert np.ptp(inv) < 1e-5  # the orbit is closed: the invariant is conserved to t = 40
        np.testing.assert_allclose(zt[:50], z.numpy(), atol=1e-6)


def test_metrics_are_sums_that_aggregate_to_means():
    t = build_task({"name": "digits"})
    out = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    m = t.metrics(out, y)
    assert m["n"] == 3 and m["top1"] == 2 and m["top2"] == 3
    agg = aggregate([m, t.metrics(out[:1], y[:1])])
    assert agg["top1"] == pytest.approx(3 / 4) and agg["n"] == 4
    assert agg["loss"] == pytest.approx((float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
                                         + float(torch.nn.functional.cross_entropy(out[:1], y[:1]))) / 4)


def _train(task, model_cfg, train_cfg, n_train=None, seed=0):
    set_seed(seed)
    train, _, _ = task.data(seed)
    if n_train is not None:
        train = torch.utils.data.Subset(train, range(n_train))
    model = build_model(model_cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        hist = fit(model, task, train, train_cfg, seed=seed)
    return model, [h["train/loss"] for h in hist]


TRAIN_CASES = {
    # task config, default-model overrides, train overrides
    "ex1_sine": ({"name": "ex1_sine"}, {}, {"epochs": 25, "optimizer": {"name": "adam", "lr": 1e-2}}),
    "ex2_stiff": ({"name": "ex2_stiff", "points": 2, "n_train": 20}, {},
                  {"epochs": 3, "batch_size": 4, "optimizer": {"name": "adam", "lr": 1e-2}}),
    "ex3_lotka": ({"name": "ex3_lotka", "extrapolate": 10.0}, {}, {"epochs": 8, "optimizer": {"name": "adam", "lr": 3e-3}}),
    "v1_function": ({"name": "v1_function", "steps": 2}, {}, {"epochs": 15}),
    "v1_spirals": ({"name": "v1_spirals", "steps": 5, "n_per_class": 40}, {},
                   {"epochs": 15, "batch_size": 10, "optimizer": {"name": "adam", "lr": 1e-2}}),
    "digits": ({"name": "digits", "arch": "mnist_compact", "subset": 256}, {"h": 0.5},
               {"epochs": 6, "batch_size": 64}),
}


@pytest.mark.parametrize("name", sorted(TRAIN_CASES))
def test_default_model_trains_a_few_steps(name):
    tcfg, mover, trover = TRAIN_CASES[name]
    task = build_task(tcfg)
    mcfg = {**task.default_model(), **mover}
    mcfg["layer"] = {**mcfg["layer"], "solver": {"name": "anderson", "tol": 1e-5, "max_iter": 30},
                     "backward": {"name": "gmres", "tol": 1e-5, "max_iter": 30}}
    _, losses = _train(task, mcfg, {**task.default_train(), **trover})
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


def test_trajectory_tasks_roll_out_to_the_target_horizon():
    task = build_task({"name": "ex3_lotka", "extrapolate": 20.0})
    _, _, test = task.data(0)
    model = build_model({**task.default_model(), "layer": {"theta": 0.0}})
    loader = make_loader(test, 5, shuffle=False)
    res = evaluate(model, loader, task, "cpu")
    assert res["n"] == 5 and np.isfinite(res["mse"])
    x, y = next(iter(loader))
    assert task.forward(model, x, y).shape == (5, 101, 2)  # 100 steps of h = 0.2 from a 50-step block


def test_set_seed_turns_tf32_off():
    """cuDNN convolutions default to TF32 (a 10-bit mantissa) on Ampere and later GPUs, which floors a fixed-point
    residual far above the default tolerance (the conv solve ran 300 iterations on an H200): every run keeps IEEE
    float32. The flags are process-wide and readable without a GPU."""
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    set_seed(0)
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False


def test_fit_is_deterministic_and_plateau_scheduler_runs():
    task = build_task({"name": "ex1_sine"})
    cfg = {**task.default_model(), "layer": {"theta": 0.0}}
    tr = {**task.default_train(), "epochs": 5,
          "scheduler": {"name": "plateau", "patience": 0, "cooldown": 0, "factor": 0.5}}
    _, a = _train(task, cfg, tr)
    _, b = _train(task, cfg, tr)
    assert a == b
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'; did you mean 'adam'\\? valid: adam"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], {"name": "adamm"})
    with pytest.raises(ValueError, match="unknown option.*'patiance'.*did you mean 'patience'"):
        make_scheduler(make_optimizer([torch.nn.Parameter(torch.zeros(1))], {"name": "sgd", "lr": 0.1}),
                       {"name": "plateau", "patiance": 3})
