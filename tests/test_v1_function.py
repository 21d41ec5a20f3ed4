"""arXiv v1 Example 1: the one-layer ReLU field with the spectral-radius initialisation, the learned affine lift, the
task's data and the derived step-stability measure, against closed forms and numpy."""
import math

import numpy as np
import pytest
import torch

from bench.report.kinds.spectrum import step_stability
from bench.tasks import build_task
from irn_core.fields import MLPField, normal_spectral_radius_
from irn_core.models import build_model


def test_normal_spectral_radius_init_has_unit_spectral_radius_and_zero_bias():
    torch.manual_seed(3)
    f = MLPField([6, 6], activation="relu", init="normal_spectral_radius", activation_last=True)
    W = f.net[0].weight.detach().double().numpy()
    assert abs(np.abs(np.linalg.eigvals(W)).max() - 1.0) < 1e-6  # numpy's eigenvalues, float64
    assert torch.count_nonzero(f.net[0].bias) == 0
    # drawn from N(0, 1) before the scaling: not a multiple of the identity, entries of both signs
    assert (W > 0).any() and (W < 0).any()
    with pytest.raises(ValueError, match="square"):
        MLPField([3, 4, 3], init="normal_spectral_radius")
    with pytest.raises(ValueError, match="square"):
        normal_spectral_radius_(torch.empty(3, 4))


def test_activation_last_gives_relu_of_affine_map():
    torch.manual_seed(0)
    f = MLPField([5, 5], activation="relu", init="normal_spectral_radius", activation_last=True)
    with torch.no_grad():
        f.net[0].bias.copy_(torch.linspace(-1, 1, 5))
    y = torch.randn(7, 5)
    W, b = f.net[0].weight.detach(), f.net[0].bias.detach()
    torch.testing.assert_close(f(y), torch.clamp(y @ W.T + b, min=0.0))
    g = MLPField([5, 5], activation="relu")  # without activation_last: affine only
    assert (g(-10 * y.abs() - 10)).lt(0).any()


def test_linear_lift_and_its_option_errors():
    cfg = {"name": "mlp_ode", "dims": [5, 5], "activation": "relu", "activation_last": True, "lift": "linear",
           "in_features": 1, "steps": 2, "horizon": 1.0, "output": "linear", "out_features": 1,
           "layer": {"theta": 0.0}}
    torch.manual_seed(1)
    m = build_model(cfg)
    x = torch.linspace(-1, 1, 9).unsqueeze(1)
    W, b = m.input_map.weight.detach(), m.input_map.bias.detach()
    torch.testing.assert_close(m.lift(x), x @ W.T + b)
    assert torch.count_nonzero(b) == 0
    # θ = 0, two steps of h = 0.5 through F = ReLU(W y + b), then the readout: the forward by hand
    F = m.block.field_at(1)
    y = m.lift(x)
    for _ in range(2):
        y = y + 0.5 * F(y)
    torch.testing.assert_close(m(x), m.head(y))
    for bad, msg in (({"in_features": None}, "in_features"), ({"augment": 2}, "augment 0"),
                     ({"lift": "zeros"}, "in_features is for lift: linear"), ({"lift": "affine"}, "unknown lift")):
        with pytest.raises(ValueError, match=msg):
            build_model({**cfg, **bad})


def test_v1_function_data():
    t = build_task({"name": "v1_function"})
    (x0, y0), (xv, yv), (xt, yt) = (s.tensors for s in t.data(0))
    assert x0.shape == (100, 1) and xv.shape == (200, 1) and xt.shape == (1000, 1)
    assert float(x0.min()) >= -1.0 and float(x0.max()) <= 1.0
    assert float(x0.std()) > 0.4  # spread over the interval (U[-1, 1] has std 0.577)
    torch.testing.assert_close(xv[[0, -1]].ravel(), torch.tensor([-1.0, 1.0]))
    xs = x0.double().numpy()
    np.testing.assert_allclose(y0.numpy().ravel(), (np.sin(2 * np.pi * xs) * np.exp(-xs ** 2 / 2)).ravel(), atol=1e-6)
    assert torch.equal(t.data(0)[0].tensors[0], x0)  # seeded
    assert not torch.equal(t.data(1)[0].tensors[0], x0)  # a new draw per seed
    even = build_task({"name": "v1_function", "sampling": "even"}).data(5)[0].tensors[0]
    torch.testing.assert_close(even.ravel(), torch.linspace(-1, 1, 100))
    with pytest.raises(Exception, match="a < b"):
        build_task({"name": "v1_function", "interval": [1.0, -1.0]})


def test_step_stability_against_the_stability_function():
    # θ = 0: R(z) = 1 + z; θ = 1: R(z) = 1 / (1 − z); θ = .5: (1 + z/2) / (1 − z/2)
    z = np.array([-0.5, -3.0, 0.2j])
    amp, frac = step_stability(z, 0.0)
    assert amp == pytest.approx(2.0) and frac == pytest.approx(2 / 3)  # |1 + 0.2i| = 1.0198 > 1 too
    amp, frac = step_stability(z, 1.0)
    assert amp == pytest.approx(1 / abs(1 - 0.2j)) and frac == 0.0  # max of 1/1.5, 1/4, 1/|1 − 0.2i| < 1
    amp, frac = step_stability(np.array([0.3j, -1.0]), 0.5)
    assert amp == pytest.approx(1.0) and frac == 0.0  # the midpoint rule keeps the imaginary axis on |R| = 1
    amp, frac = step_stability(np.array([1.0, -1.0]), 1.0)
    assert math.isinf(amp) and frac == 0.5  # the pole z = 1/θ
    assert all(math.isnan(v) for v in step_stability(np.array([np.nan]), 0.5))
