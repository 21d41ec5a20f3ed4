"""Spectral normalisation (Algorithm 1), F^{α,β} (eq 19), ℓ∞ parameterisation; update-once-per-forward."""
import pytest
import torch
from torch import nn

from irn_core import EigenRangeField, ImplicitBlock, SpectralNorm, ThetaLayer, frozen_normalization, update_normalization
from irn_core.analysis import jacobian, jacobian_eigenvalues
from irn_core.fields import ConvField, MLPField
from irn_core.linf import LInfParam, linf_log_norm
from irn_core.normalization import conv2d_adjoint, spectral_normalize

D = torch.float64


def _conv_matrix(conv, weight, shape):
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, *shape)
    return conv._conv_forward(basis, weight, None).reshape(n, -1).T  # columns = A e_i


def test_dense_power_iteration_converges_to_spectral_norm():
    lin = nn.Linear(7, 5).double()
    sn = SpectralNorm(lin, init_iterations=50)
    exact = torch.linalg.matrix_norm(lin.weight.detach(), ord=2)
    assert abs(float(sn.sigma) - float(exact)) < 0.01 * float(exact)
    assert abs(float(sn.sigma_estimate().detach()) - float(exact)) < 0.01 * float(exact)


@pytest.mark.parametrize("padding_mode,stride", [("zeros", 1), ("circular", 1), ("zeros", 2)])
def test_conv_power_iteration_is_operator_norm_on_input_shape(padding_mode, stride):
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=stride, padding_mode=padding_mode).double()
    shape = (2, 6, 6)
    M = _conv_matrix(conv, conv.weight.detach(), shape)
    exact = torch.linalg.matrix_norm(M, ord=2)
    sn = SpectralNorm(conv, input_shape=shape, init_iterations=200)
    assert abs(float(sn.sigma) - float(exact)) < 0.01 * float(exact)
    # the adjoint used by the power iteration is exactly Mᵀ
    y = torch.randn(1, *conv(torch.zeros(1, *shape, dtype=D)).shape[1:], dtype=D)
    aty = conv2d_adjoint(y, conv, conv.weight.detach(), shape)
    torch.testing.assert_close(aty.reshape(-1), M.T @ y.reshape(-1))


def test_normalized_weight_bound_and_alpha():
    lin = nn.Linear(6, 6).double()
    with torch.no_grad():
        lin.weight.mul_(5.0)
    sn = SpectralNorm(lin, alpha=0.5, init_iterations=100)
    assert abs(float(torch.linalg.matrix_norm(sn.normalized_weight().detach(), ord=2)) - 0.5) < 5e-3
    small = SpectralNorm(nn.Linear(6, 6).double().requires_grad_(False), alpha=100.0)
    torch.testing.assert_close(small.normalized_weight(), small.module.weight)  # max(1, σ/α) = 1: untouched


def _eig_field(kind, eig_range, learnable, seed=0):
    torch.manual_seed(seed)
    if kind == "mlp":
        inner = MLPField([4, 16, 16, 4], activation="relu").double()
        with torch.no_grad():
            for p in inner.parameters():
                p.mul_(3.0)
        f = EigenRangeField(inner, eig_range, learnable_scale=learnable, init_iterations=200)
        y = torch.randn(16, 4, dtype=D)
    else:
        inner = ConvField(2, activation="relu").double()
        f = EigenRangeField(inner, eig_range, shape=(2, 4, 4), learnable_scale=learnable, init_iterations=200,
                            input_shape=None)
        y = torch.randn(6, 2, 4, 4, dtype=D)
        f(y)  # lazy conv v: initialised (200 power steps) from the first input
    if learnable:
        with torch.no_grad():
            f.vartheta.normal_(0, 2.0)  # any S(ϑ) ∈ (0, 1)
    return f, y


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("eig_range,learnable", [((-3.0, 1.0), True), ((-25.0, -15.0), False), ((-1.0, 1.0), True)])
def test_eigen_range_field_spectrum_in_disc(kind, eig_range, learnable):
    f, y = _eig_field(kind, eig_range, learnable)
    a, b = eig_range
    ev = jacobian_eigenvalues(f, y)
    dist = (ev - (a + b) / 2).abs()
    assert float(dist.max()) <= (b - a) / 2 * (1 + 1e-3), float(dist.max())
    # and the 1-Lipschitz part really is ≤ 1 (the disc is not trivially satisfied)
    J = jacobian(f.field, y)
    assert float(torch.linalg.matrix_norm(J, ord=2).max()) <= 1 + 1e-3


def test_eigen_range_scale_init_and_validation():
    f = EigenRangeField(MLPField([3, 5, 3]), (-3, 1))
    torch.testing.assert_close(f.scale(), torch.full((3,), 0.5))
    assert isinstance(f.vartheta, nn.Parameter)
    g = EigenRangeField(MLPField([3, 5, 3]), (-3, 1), learnable_scale=False)
    torch.testing.assert_close(g.scale(), torch.full((3,), 0.99))
    assert "vartheta" in dict(g.named_buffers())
    for bad in [(1.0, -1.0), (1.0, 1.0), "ab", (1, 2, 3), (float("nan"), 1.0)]:
        with pytest.raises(ValueError, match="alpha < beta"):
            EigenRangeField(MLPField([3, 5, 3]), bad)
    with pytest.raises(ValueError, match="shape="):
        EigenRangeField(ConvField(2), (-1, 1))
    with pytest.warns(UserWarning, match="GELU"):
        EigenRangeField(MLPField([3, 5, 3], activation="gelu"), (-1, 1))


def test_state_dict_round_trip_dense_and_lazy_conv():
    f, y = _eig_field("mlp", (-3, 1), True)
    for _ in range(3):
        update_normalization(f)
    torch.manual_seed(123)
    g = EigenRangeField(MLPField([4, 16, 16, 4], activation="relu").double(), (-3, 1))
    g.load_state_dict(f.state_dict())
    for (n1, b1), (n2, b2) in zip(f.named_buffers(), g.named_buffers()):
        assert n1 == n2 and torch.equal(b1, b2)
    torch.testing.assert_close(g(y), f(y))
    # conv with lazily shaped v: a fresh module accepts the shaped buffer
    fc, yc = _eig_field("conv", (-3, 1), True)
    gc = EigenRangeField(ConvField(2, activation="relu").double(), (-3, 1), shape=(2, 4, 4))
    gc.load_state_dict(fc.state_dict())
    torch.testing.assert_close(gc(yc), fc(yc))
    assert gc.field.conv1.v.shape == (2, 4, 4)


class _Counting(nn.Module):
    """Records the normalised weights seen at every call of the wrapped SpectralNorm."""

    def __init__(self, sn):
        super().__init__()
        self.sn = sn
        self.seen = []

    def forward(self, x):
        self.seen.append(self.sn.normalized_weight().detach().clone())
        return self.sn(x)


def test_power_iteration_once_per_model_forward_and_weight_fixed_during_solve():
    torch.manual_seed(0)
    field = EigenRangeField(MLPField([3, 8, 3], activation="tanh").double(), (-2, 0.5), init_iterations=0)
    sn0 = field.field.net[0]
    field.field.net[0] = probe = _Counting(sn0)
    layer = ThetaLayer(field, theta=1.0, h=0.5, solver={"name": "fixed_point", "tol": 1e-10, "max_iter": 100})
    x = torch.randn(5, 3, dtype=D)
    sns = [m for m in layer.modules() if isinstance(m, SpectralNorm)]
    assert len(sns) == 2
    layer.train()
    for step in range(1, 4):
        probe.seen.clear()
        layer(x).sum().backward()
        assert all(m.num_updates == step for m in sns)  # one power step per forward ...
        assert len(probe.seen) > 3  # ... although the solver called the field many times
        assert all(torch.equal(w, probe.seen[0]) for w in probe.seen)  # weight fixed during the solve
    layer.eval()
    layer(x)
    assert all(m.num_updates == 3 for m in sns)  # no update in eval mode
    layer.train()
    with frozen_normalization():
        layer(x)
    assert all(m.num_updates == 3 for m in sns)


def test_block_with_per_step_fields_updates_each_once_and_backward_uses_same_weights():
    torch.manual_seed(0)
    fields = [EigenRangeField(MLPField([3, 6, 3], activation="relu").double(), (-3, 1)) for _ in range(4)]
    block = ImplicitBlock(fields, steps=4, theta=0.5, h=0.25,
                          solver={"name": "anderson", "tol": 1e-12, "max_iter": 100},
                          backward={"name": "direct"})
    block.train()
    x = torch.randn(3, 3, dtype=D, requires_grad=True)
    y = block(x)
    sns = [m for m in block.modules() if isinstance(m, SpectralNorm)]
    assert len(sns) == 8 and all(m.num_updates == 1 for m in sns)
    # IFT gradient = autograd through the same (fixed) weights in eval mode (no further update)
    gx, = torch.autograd.grad(y.sum(), x)
    block.eval()
    gx2, = torch.autograd.grad(block(x).sum(), x)
    torch.testing.assert_close(gx, gx2)
    assert all(m.num_updates == 1 for m in sns)


def test_spectral_norm_gradcheck():
    lin = nn.Linear(4, 3).double()
    sn = SpectralNorm(lin, alpha=0.5, init_iterations=20)
    x = torch.randn(2, 4, dtype=D)
    W = lin.weight.detach().clone().requires_grad_(True)

    def f(W):
        return torch.func.functional_call(sn, {"module.weight": W}, (x,))

    assert torch.autograd.gradcheck(f, (W,))


def test_spectral_normalize_wraps_every_linear_and_conv():
    net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    spectral_normalize(net)
    assert isinstance(net[0], SpectralNorm) and isinstance(net[3], SpectralNorm)
    spectral_normalize(net)  # idempotent
    assert isinstance(net[0].module, nn.Conv2d)


@pytest.mark.parametrize("seed", range(5))
def test_linf_parameterisation_log_norm_at_most_m(seed):
    torch.manual_seed(seed)
    for m in (0.0, 0.5, -1.0):
        P = LInfParam(7, m=m).double()
        with torch.no_grad():
            P.A_hat.normal_(0, 3.0)
            P.d.normal_(0, 1.0)
        assert float(P.log_norm().detach()) <= m + 1e-12
        Q = LInfParam(7, m=m, learn_d=False).double()
        with torch.no_grad():
            Q.A_hat.normal_(0, 3.0)
        assert float(linf_log_norm(Q().detach())) <= m + 1e-12  # D = I: the plain ℓ∞ log-norm


def test_solve_constants_once_per_solve_with_identical_values_and_gradients(monkeypatch):
    """W̃ and the gates are computed once per forward solve (not per solver iteration), and the layer's output and
    IFT gradients are bitwise those of recomputing them at every evaluation."""
    import contextlib
    import copy

    import irn_core.layers as layers
    from irn_core.normalization import EigenGates, GatedEigenRangeField

    torch.manual_seed(0)
    gated = GatedEigenRangeField(MLPField([3, 8, 3], activation="tanh").double(),
                                 EigenGates((-2.0, -0.5, 1.0), shape=3, learnable_ends=True, learnable_scale=True),
                                 spectral_norm="exact")
    field = nn.Sequential(gated, EigenRangeField(MLPField([3, 6, 3], activation="relu").double(), (-1, 0.5),
                                                 learnable_scale=True))
    layer = ThetaLayer(field, theta=1.0, h=0.4, solver={"name": "fixed_point", "tol": 1e-12, "max_iter": 200},
                       backward={"name": "direct"})
    twin = copy.deepcopy(layer)
    x = torch.randn(6, 3, dtype=D)
    calls = []
    real = SpectralNorm.normalized_weight
    monkeypatch.setattr(SpectralNorm, "normalized_weight", lambda self: calls.append(self) or real(self))

    def step(lay):
        calls.clear()
        xx = x.clone().requires_grad_(True)
        y = lay(xx)
        n_forward = len(calls)
        gx, *gp = torch.autograd.grad((y * torch.arange(1.0, 4.0, dtype=D)).sum(), [xx, *lay.parameters()])
        return y.detach(), gx, gp, n_forward, lay.last_stats.nfe

    y, gx, gp, n_cached, nfe = step(layer)
    n_sn = sum(isinstance(m, SpectralNorm) for m in layer.modules())
    assert n_sn == 4 and nfe > 10
    assert n_cached == n_sn  # once in the whole solve ...
    monkeypatch.setattr(layers, "solve_constants", contextlib.nullcontext)
    y2, gx2, gp2, n_plain, _ = step(twin)
    assert n_plain == n_sn * nfe  # ... instead of once per evaluation
    assert torch.equal(y, y2) and torch.equal(gx, gx2)
    assert all(torch.equal(a, b) for a, b in zip(gp, gp2))


def test_solve_constants_recomputed_when_the_weights_change():
    from irn_core.normalization import solve_constants

    torch.manual_seed(1)
    sn = SpectralNorm(nn.Linear(4, 3).double(), init_iterations=20, exact=True)
    x = torch.randn(2, 4, dtype=D)
    with solve_constants():
        a = sn(x)
        with solve_constants():  # nested: the outer cache is kept
            assert torch.equal(sn(x), a)
        with torch.no_grad():
            sn.module.weight.mul_(-3.0)  # in place: a new version of the same tensor
        b = sn(x)
        W = torch.randn(3, 4, dtype=D)  # a swapped tensor (functional_call)
        c = torch.func.functional_call(sn, {"module.weight": W}, (x,))
    bias = sn.module.bias.detach()
    torch.testing.assert_close(b - bias, -(a - bias))  # W/σ is invariant to scaling W by |c|: the sign survives
    torch.testing.assert_close(c, torch.func.functional_call(sn, {"module.weight": W}, (x,)))
    assert not torch.allclose(c, b)
