"""Stability function/region (eq 13), Jacobian spectra, continuous-time rollout, Lipschitz estimates."""
import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch import nn

from irn_core import EigenRangeField, ImplicitBlock
from irn_core.analysis import (
    jacobian, jacobian_eigenvalues, jacobian_norm, lipschitz_lower_bound, lipschitz_upper_bound, rollout,
    stability_function, stability_region, trajectory_spectra,
)
from irn_core.fields import ConvField, MLPField

D = torch.float64


class Linear(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(torch.as_tensor(A, dtype=D))

    def forward(self, y):
        return y @ self.A.T


@pytest.mark.parametrize("theta", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_stability_function_closed_form_and_region(theta):
    rng = np.random.default_rng(0)
    z = rng.normal(size=50) * 3 + 1j * rng.normal(size=50) * 3
    R = stability_function(z, theta)
    np.testing.assert_allclose(R, (1 + (1 - theta) * z) / (1 - theta * z))
    # torch input works too
    zt = torch.tensor(z)
    np.testing.assert_allclose(stability_function(zt, theta).numpy(), R)
    with np.errstate(divide="ignore", invalid="ignore"):
        Z, absR, inside = stability_region(theta, re=(-6, 6), im=(-6, 6), n=121)
        closed = np.abs((1 + (1 - theta) * Z) / (1 - theta * Z))
    assert Z.shape == absR.shape == inside.shape == (121, 121)
    ok = np.isfinite(closed)
    np.testing.assert_allclose(absR[ok], closed[ok])
    assert np.isinf(absR[~ok]).all() and (theta == 0 or (~ok).sum() <= 1)
    left = Z.real < 0
    if theta >= 0.5:  # A-stable: the whole left half-plane is stable
        assert inside[left].all()
    else:
        assert not inside[left].all()
    if theta == 0.5:  # midpoint: |R| = 1 on the imaginary axis
        np.testing.assert_allclose(np.abs(stability_function(1j * np.linspace(-5, 5, 11), 0.5)), 1.0)


def test_stability_region_bad_theta():
    with pytest.raises(ValueError, match="theta"):
        stability_function(1.0, 1.5)


def test_jacobian_eigenvalues_and_trajectory_spectra():
    A = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]], dtype=D)  # eigenvalues −1 ± 2i
    ev = jacobian_eigenvalues(Linear(A), torch.randn(3, 2, dtype=D))
    assert ev.shape == (3, 2)
    for row in ev:
        np.testing.assert_allclose(sorted(row.imag.tolist()), [-2.0, 2.0], atol=1e-12)
        np.testing.assert_allclose(row.real.numpy(), [-1.0, -1.0], atol=1e-12)
    block = ImplicitBlock(Linear(A), steps=3, theta=1.0, h=0.5, solver={"name": "anderson", "tol": 1e-10})
    block.keep_trajectory = True
    block(torch.randn(4, 2, dtype=D))
    spectra = trajectory_spectra(block, scaled=True)
    assert len(spectra) == 4 and spectra[0].shape == (4, 2)
    np.testing.assert_allclose(spectra[2][0].real.numpy(), [-0.5, -0.5], atol=1e-12)
    # conv field: the exact Jacobian per sample of a feature map
    conv = ConvField(2, activation="tanh").double()
    J = jacobian(conv, torch.randn(2, 2, 3, 3, dtype=D))
    assert J.shape == (2, 18, 18)


def test_rollout_shared_linear_field_matches_matrix_exponential():
    A = np.array([[-0.5, 1.0], [-1.0, -0.5]])
    block = ImplicitBlock(Linear(A), steps=5, theta=0.5, h=0.2)
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=D)
    t = np.linspace(0, 3.0, 7)  # beyond the horizon 1.0: the shared field everywhere
    times, Y = rollout(block, y0, t, rtol=1e-10, atol=1e-12)
    assert Y.shape == (7, 2, 2) and Y.dtype == D
    for k, tk in enumerate(times):
        np.testing.assert_allclose(Y[k].numpy(), (expm(tk * A) @ y0.numpy().T).T, atol=1e-8)


def test_rollout_piecewise_constant_per_step_fields():
    lams = [-1.0, 2.0, -3.0]

    class Scalar(nn.Module):
        def __init__(self, lam):
            super().__init__()
            self.lam = nn.Parameter(torch.tensor(lam, dtype=D))

        def forward(self, y):
            return self.lam * y

    h = 0.5
    block = ImplicitBlock([Scalar(l) for l in lams], steps=3, theta=0.0, h=h)
    y0 = torch.ones(2, 1, dtype=D)
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.4, 2.0])  # 2.0 > horizon 1.5: the last field continues

    def exact(tt):
        acc = 0.0
        for i, l in enumerate(lams):
            a, b = i * h, ((i + 1) * h if i < 2 else np.inf)
            acc += l * max(0.0, min(tt, b) - a)
        return np.exp(acc)

    _, Y = rollout(block, y0, t, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(Y[:, 0, 0].numpy(), [exact(tt) for tt in t], rtol=1e-7)
    with pytest.raises(ValueError, match="increasing"):
        rollout(block, y0, [1.0, 0.5])
    # a field module directly, stiff method
    _, Yb = rollout(Scalar(-20.0), y0, [0.0, 0.1, 1.0], method="Radau", rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Yb[:, 0, 0].numpy(), np.exp(-20 * np.array([0.0, 0.1, 1.0])), rtol=1e-5, atol=1e-12)


def test_lipschitz_bounds():
    torch.manual_seed(0)
    f = MLPField([3, 10, 10, 3], activation="tanh").double()
    ws = [m.weight for m in f.modules() if isinstance(m, nn.Linear)]
    upper = lipschitz_upper_bound(f)
    np.testing.assert_allclose(upper, np.prod([float(torch.linalg.matrix_norm(w.detach(), ord=2)) for w in ws]), rtol=1e-10)
    y = torch.randn(50, 3, dtype=D)
    norms = jacobian_norm(f, y, iterations=100)
    exact = torch.linalg.matrix_norm(jacobian(f, y), ord=2)
    torch.testing.assert_close(norms, exact, rtol=1e-6, atol=0)
    lower = lipschitz_lower_bound(f, y)
    assert float(lower) <= upper
    # a 1-Lipschitz F^{-1,1} inside F^{α,β}: upper bound ≤ |α+β|/2 + (β−α)/2 up to the power-iteration error
    e = EigenRangeField(MLPField([3, 10, 3], activation="relu").double(), (-3.0, 1.0), init_iterations=100)
    assert lipschitz_upper_bound(e) <= 1.0 + 2.0 * 0.5 * 1.01
    conv = ConvField(2, activation="relu").double()
    assert lipschitz_upper_bound(conv, input_shape=(2, 5, 5)) >= float(lipschitz_lower_bound(conv, torch.randn(4, 2, 5, 5, dtype=D)))
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz_upper_bound(conv)
