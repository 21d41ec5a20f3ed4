"""ResNet-D/-S (explicit and θ-method), NEMON layer and its average iteration."""
import pytest
import torch

from irn_core import (
    ImplicitBlock, NEMONLayer, ResNetDField, ResNetDLayer, ResNetSField, ResNetSLayer, ThetaLayer,
    project_nonnegative, resnet_d_block, resnet_s_block,
)
from irn_core.linf import linf_log_norm
from irn_core.normalization import power_iteration
from irn_core.solvers import get_nonlinear
from irn_core.variants import nemon_lipschitz_bound

D = torch.float64


def _scale_to_norm_sq(field, target_sq, shape):
    A = field.A
    W = A.weight.detach()
    if isinstance(A, torch.nn.Linear):
        n = torch.linalg.matrix_norm(W, ord=2)
    else:
        n, _ = power_iteration(lambda v: A._conv_forward(v[None], W, None)[0], torch.randn(*shape, dtype=W.dtype),
                               300, adjoint=lambda z: field.adjoint(z[None], (1,) + tuple(shape))[0])
    with torch.no_grad():
        A.weight.mul_(target_sq ** 0.5 / n)


@pytest.mark.parametrize("kind,shape", [("linear", (6,)), ("conv", (2, 5, 5))])
@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_resnet_s_exact_adjoint(kind, shape, padding_mode):
    f = ResNetSField(shape[0], kind=kind, hidden=3, padding_mode=padding_mode).double()
    x = torch.randn(2, *shape, dtype=D)
    Ax = f.A(x) - (f.A.bias.view(-1, *[1] * (x.dim() - 2)))
    z = torch.randn_like(Ax)
    torch.testing.assert_close((Ax * z).sum(), (x * f.adjoint(z, x.shape)).sum())


@pytest.mark.parametrize("kind,shape", [("linear", (6,)), ("conv", (2, 5, 5))])
def test_resnet_s_non_expansive_when_norm_sq_at_most_two(kind, shape):
    torch.manual_seed(1)
    layer = ResNetSLayer(shape[0], kind=kind, hidden=4).double()
    with torch.no_grad():
        layer.field.A.bias.normal_(0, 0.5)
    _scale_to_norm_sq(layer.field, 2.0 * (1 - 1e-6), shape)
    x, x2 = torch.randn(200, *shape, dtype=D), torch.randn(200, *shape, dtype=D)
    x2 = x + torch.rand(200, *[1] * len(shape), dtype=D) * (x2 - x)  # pairs at every distance
    num = (layer(x) - layer(x2)).reshape(200, -1).norm(dim=1)
    den = (x - x2).reshape(200, -1).norm(dim=1)
    assert bool((num <= den * (1 + 1e-9)).all())
    # the implicit S-field is monotone: <F(x) − F(x'), x − x'> ≤ 0 (dissipative for every θ-step)
    f = layer.field
    assert bool((((f(x) - f(x2)) * (x - x2)).reshape(200, -1).sum(1) <= 1e-12).all())


def test_resnet_s_expansive_without_the_bound():
    """Sanity of the previous test: with ‖A‖₂² = 8 some pair expands."""
    torch.manual_seed(1)
    layer = ResNetSLayer(6, kind="linear", hidden=4).double()
    _scale_to_norm_sq(layer.field, 8.0, (6,))
    x = torch.rand(500, 6, dtype=D) + 0.5
    x2 = x + 1e-3 * torch.randn(500, 6, dtype=D)
    ratio = (layer(x) - layer(x2)).norm(dim=1) / (x - x2).norm(dim=1)
    assert float(ratio.detach().max()) > 1.01


@pytest.mark.parametrize("kind,shape", [("linear", (5,)), ("conv", (3, 4, 4))])
def test_resnet_d_projection_keeps_a2_nonnegative(kind, shape):
    block = resnet_d_block(shape[0], steps=2, theta=0.5, kind=kind, solver={"name": "anderson", "tol": 1e-5})
    for f in block.fields:
        assert bool((f.A2.weight >= 0).all())  # initialised non-negative
    opt = torch.optim.SGD(block.parameters(), lr=0.05)
    x = torch.randn(4, *shape)
    for _ in range(3):
        opt.zero_grad()
        (-block(x).sum()).backward()  # pushes A₂ (F = −A₂σ(·)) to negative values
        opt.step()
        had_neg = any(bool((f.A2.weight < 0).any()) for f in block.fields)
        assert project_nonnegative(block) == 2
        assert all(bool((f.A2.weight >= 0).all()) for f in block.fields)
    assert had_neg


def test_explicit_layers_with_and_without_batch_norm():
    x = torch.randn(4, 3, 6, 6)
    for cls in (ResNetDLayer, ResNetSLayer):
        for bn in (False, True):
            layer = cls(3, batch_norm=bn)
            y = layer(x)
            assert y.shape == x.shape and bool((y >= 0).all())  # post-activation
            y.sum().backward()
    d = ResNetDLayer(4, kind="linear")
    x = torch.randn(5, 4)
    f = d.field
    torch.testing.assert_close(d(x), torch.relu(x - f.A2(torch.relu(f.A1(x))) + d.b2))


@pytest.mark.parametrize("builder,field_cls", [(resnet_d_block, ResNetDField), (resnet_s_block, ResNetSField)])
def test_theta_method_variants(builder, field_cls):
    torch.manual_seed(0)
    layer0 = builder(4, steps=1, shared=True, theta=0.0, kind="linear", h=0.5)
    assert isinstance(layer0, ThetaLayer) and isinstance(layer0.field, field_cls)
    x = torch.randn(3, 4)
    torch.testing.assert_close(layer0(x), x + 0.5 * layer0.field(x))  # θ = 0: explicit residual with F
    block = builder(4, steps=3, theta=0.5, kind="linear", h=0.5, solver={"name": "anderson", "tol": 1e-5},
                    backward={"name": "direct"})
    assert isinstance(block, ImplicitBlock) and len(block.fields) == 3
    y = block(x)
    y.sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def _nemon(seed=0, activation="tanh", scale=1.0, **kw):
    torch.manual_seed(seed)
    layer = NEMONLayer(3, 8, out_features=2, activation=activation, **kw).double()
    with torch.no_grad():
        layer.A.A_hat.mul_(scale)
        layer.A.d.normal_(0, 0.3)
        layer.B.bias.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("activation,scale", [("relu", 1.0), ("tanh", 1.0), ("relu", 6.0)])
def test_nemon_average_iteration_reaches_fixed_point(activation, scale):
    # ratio 0.85 (the authors') over-shrinks α on strongly dissipative A (contraction 1 − α > 0.85 at the
    # admissible α): there ratio=1 (shrink only when the residual grows) is the robust choice
    ratio = 0.85 if scale == 1.0 else 1.0
    layer = _nemon(activation=activation, scale=scale,
                   solver={"name": "picard_average", "tol": 1e-11, "max_iter": 2000, "ratio": ratio})
    u = torch.randn(10, 3, dtype=D)
    x = layer.equilibrium(u).detach()
    with torch.no_grad():
        A = layer.A()
        Bu = layer.B(u)
    assert float(linf_log_norm(A, layer.A.d.detach())) <= 1e-12
    g = lambda z: layer.act(z @ A.T + Bu)  # noqa: E731
    st = layer.last_stats
    assert st.all_converged, st.max_residual
    ref, st_ref = get_nonlinear("newton_krylov")(g, torch.zeros_like(x), tol=1e-12, max_iter=100)
    torch.testing.assert_close(x, ref, atol=1e-9, rtol=0)
    if scale > 1:  # strongly negative diagonal: plain Picard (α = 1 fixed) fails, the adaptive α does not
        _, st_picard = get_nonlinear("fixed_point")(g, torch.zeros_like(x), tol=1e-11, max_iter=2000)
        assert not st_picard.all_converged


def test_nemon_gradcheck_and_lipschitz_bound():
    layer = _nemon(solver={"name": "picard_average", "tol": 1e-13, "max_iter": 5000},
                   backward={"name": "direct"})
    u = torch.randn(4, 3, dtype=D, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]

    def f(u, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (u,))

    assert torch.autograd.gradcheck(f, (u, *params), atol=1e-6, rtol=1e-5)
    assert layer.last_backward_stats is not None
    # input-output Lipschitz bound in the ℓ∞ norm holds on random pairs (D-weighted version)
    with torch.no_grad():
        bound = layer.lipschitz_bound()
        u1 = torch.randn(300, 3, dtype=D)
        u2 = u1 + 0.1 * torch.randn(300, 3, dtype=D)
        r = (layer(u1) - layer(u2)).abs().amax(1) / (u1 - u2).abs().amax(1)
    assert float(r.max()) <= float(bound)
    b0 = nemon_lipschitz_bound(torch.zeros(3, 3), torch.eye(3) * 2, torch.ones(1, 3))
    assert float(b0) == pytest.approx(6.0)


def test_nemon_requires_m_below_one():
    with pytest.raises(ValueError, match="m < 1"):
        NEMONLayer(3, 4, m=1.0)
