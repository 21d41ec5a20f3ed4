"""arXiv v1 Example 2 as its same-day code built it (ex_2.py, CustomLayers.py at commit 2a59029): the data against a
numpy transcription of the code, the antisymmetric field, the sigmoid head's loss and metrics in closed form, the
model's explicit forward by hand."""
import math

import numpy as np
import pytest
import torch

from bench.tasks import build_task
from irn_core.fields import AntisymmetricLinear, MLPField
from irn_core.models import build_model


def test_data_are_the_v1_codes_spirals_with_its_holdout():
    task = build_task({"name": "v1_spirals"})
    train, val, test = task.data(seed=5)
    # ex_2.py:205-222, transcribed
    n = 513
    angle, rad = np.linspace(0, 4 * np.pi, n), np.linspace(0, 1, n)
    x1 = rad * np.array([np.cos(angle), np.sin(angle)])
    x2 = (rad + 0.2) * np.array([np.cos(angle), np.sin(angle)])
    x = np.hstack((x1, x2)).T
    y = np.vstack((np.zeros((n, 1)), np.ones((n, 1))))[:, 0]
    np.testing.assert_allclose(val.tensors[0].numpy(), x[0::2], atol=1e-6)
    np.testing.assert_array_equal(val.tensors[1].numpy(), y[0::2])
    np.testing.assert_allclose(train.tensors[0].numpy(), x[1::2], atol=1e-6)
    np.testing.assert_array_equal(train.tensors[1].numpy(), y[1::2])
    assert test is val and len(train) == len(val) == 513
    assert torch.equal(task.data(seed=0)[0].tensors[0], train.tensors[0])  # no randomness without noise


def test_antisymmetric_field_is_tanh_of_a_skew_map():
    torch.manual_seed(1)
    f = MLPField([6, 6], activation="tanh", activation_last=True, antisymmetric=True)
    lin = f.net[0]
    assert isinstance(lin, AntisymmetricLinear) and torch.count_nonzero(lin.bias) == 0
    W = lin.raw_weight.detach().double()
    torch.testing.assert_close(lin.weight.detach().double(), W - W.T)  # every reader of .weight sees W - Wᵀ
    with torch.no_grad():
        lin.bias.copy_(torch.linspace(-0.5, 0.5, 6))
    y = torch.randn(9, 6)
    torch.testing.assert_close(f(y), torch.tanh(y @ (W - W.T).T.float() + lin.bias.detach()))
    # the linear part has a purely imaginary spectrum: Jacobian at a point where tanh' = 1 is W - Wᵀ (float64 FD)
    g = MLPField([6, 6], activation="identity", activation_last=True, antisymmetric=True).double()
    with torch.no_grad():
        g.net[0].raw_weight.copy_(W)
    z0 = torch.randn(6, dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        J = torch.stack([(g(z0 + eps * e) - g(z0 - eps * e)) / (2 * eps) for e in torch.eye(6, dtype=torch.float64)], 1)
    assert torch.allclose(J, -J.T, atol=1e-8)
    assert np.abs(np.linalg.eigvals(J.numpy()).real).max() < 1e-8
    with pytest.raises(ValueError, match="square"):
        MLPField([4, 6, 4], antisymmetric=True)
    with pytest.raises(ValueError, match="antisymmetric takes init"):
        MLPField([6, 6], antisymmetric=True, init="normal_spectral_radius")


def test_antisymmetric_weight_is_what_normalisation_bounds_and_penalties_read():
    """Spectral normalisation, the Lipschitz bound and the Frobenius penalty read a Linear's ``weight``: for the
    antisymmetric field it is W − Wᵀ (they once read W, and the normalised field lost its antisymmetry)."""
    from irn_core.analysis import lipschitz_upper_bound
    from irn_core.normalization import spectral_normalize
    from irn_core.regularizers import frobenius_penalty

    torch.manual_seed(4)
    f = MLPField([6, 6], activation="identity", activation_last=True, antisymmetric=True).double()
    with torch.no_grad():
        f.net[0].bias.zero_()
    W = f.net[0].raw_weight.detach()
    K = W - W.T
    true = float(torch.linalg.matrix_norm(K, 2))
    assert lipschitz_upper_bound(f) == pytest.approx(true, rel=1e-6)
    assert float(frobenius_penalty(f).detach()) == pytest.approx(float((K ** 2).sum()), rel=1e-6)
    g = spectral_normalize(f, alpha=0.5, exact=True, init_iterations=200)
    eye = torch.eye(6, dtype=torch.float64)
    with torch.no_grad():
        J = torch.stack([g(e) for e in eye], 1)  # linear and bias-free: the columns are the Jacobian's
    assert torch.allclose(J, -J.T, atol=1e-6)  # still antisymmetric
    assert float(torch.linalg.matrix_norm(J, 2)) == pytest.approx(0.5, rel=1e-3)  # normalised by ‖W − Wᵀ‖


def test_a_model_saved_before_the_parametrisation_loads_unchanged():
    torch.manual_seed(5)
    f = MLPField([6, 6], activation="tanh", activation_last=True, antisymmetric=True)
    W, b = f.net[0].raw_weight.detach().clone(), f.net[0].bias.detach().clone()
    old = {"net.0.weight": W, "net.0.bias": b}  # the earlier layout: W stored as ``weight``
    g = MLPField([6, 6], activation="tanh", activation_last=True, antisymmetric=True)
    g.load_state_dict(old)
    y = torch.randn(4, 6)
    torch.testing.assert_close(g(y), torch.tanh(y @ (W - W.T).T + b))


def test_sigmoid_head_loss_metrics_and_probabilities_in_closed_form():
    task = build_task({"name": "v1_spirals"})
    logit = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    target = torch.tensor([1, 1, 0, 0])
    p = 1 / (1 + np.exp(-logit[:, 0].numpy()))
    t = target.numpy()
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    assert float(task.loss(logit, target)) == pytest.approx(bce.mean(), rel=1e-6)
    m = task.metrics(logit, target)
    assert m["n"] == 4 and m["top1"] == 2 and m["loss"] == pytest.approx(bce.sum(), rel=1e-6)
    prob = task.probabilities(logit)
    np.testing.assert_allclose(prob[:, 1].numpy(), p, rtol=1e-6)
    np.testing.assert_allclose(prob.sum(1).numpy(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="one output per point.*head: softmax"):
        task.loss(torch.zeros(4, 2), target)
    soft = build_task({"name": "v1_spirals", "head": "softmax"})
    assert soft.default_model()["out_features"] == 2
    assert float(soft.loss(torch.zeros(3, 2), torch.tensor([0, 1, 0]))) == pytest.approx(math.log(2))


def test_explicit_model_is_the_codes_forward_by_hand():
    task = build_task({"name": "v1_spirals", "steps": 3})
    cfg = {**task.default_model(), "layer": {"theta": 0.0}}
    torch.manual_seed(2)
    m = build_model(cfg).double()
    assert cfg["horizon"] == 12.5 and sum(p.numel() for p in m.parameters()) == 2 * 6 + 6 + 3 * (36 + 6) + 6 + 1
    x = torch.randn(5, 2, dtype=torch.float64)
    lift = m.input_map
    y = x @ lift.weight.T + lift.bias
    h = 12.5 / 3
    fields = [mod for mod in m.modules() if isinstance(mod, AntisymmetricLinear)]
    assert len(fields) == 3
    for a in fields:
        W = a.raw_weight
        y = y + h * torch.tanh(y @ (W - W.T).T + a.bias)
    head = m.head
    assert torch.count_nonzero(head.bias) == 0
    torch.testing.assert_close(m(x), y @ head.weight.T + head.bias)
