"""ThetaLayer / ImplicitBlock: paper properties, IFT gradients, stats, errors."""
import itertools
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

from irn_core import ConvergenceWarning, ImplicitBlock, SolverError, ThetaLayer, assign_names, solver_stats
from irn_core.fields import ConvField, MLPField

D = torch.float64
TIGHT = {"name": "anderson", "tol": 1e-13, "max_iter": 300}


def _mlp(d=3, width=5, scale=0.4, seed=0):
    torch.manual_seed(seed)
    f = MLPField([d, width, d], activation="tanh").double()
    with torch.no_grad():  # Lip(F) ≈ scale² · (norms) < 1 so Neumann and Picard converge
        for p in f.parameters():
            if p.dim() == 2:
                p.mul_(scale / torch.linalg.matrix_norm(p, ord=2))
            else:
                p.normal_(0, 0.1)
    return f


def test_theta_zero_is_explicit_resnet_bit_for_bit():
    f = _mlp().float()
    x = torch.randn(7, 3)
    for phi in ("one_leg", "convex"):
        layer = ThetaLayer(f, theta=0.0, h=0.3, phi=phi)
        assert torch.equal(layer(x), x + 0.3 * f(x))
        assert layer.last_stats is None
    block = ImplicitBlock(f, steps=3, theta=0.0, h=0.3)
    y = x
    for _ in range(3):
        y = y + 0.3 * f(y)
    assert torch.equal(block(x), y)


@pytest.mark.parametrize("theta", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("phi", ["one_leg", "convex"])
def test_scalar_linear_field_reproduces_stability_function(theta, phi):
    """y/x = R(hλ) = (1 + (1−θ)hλ)/(1 − θhλ) for F(y) = λy."""
    lam = torch.tensor([-20.0, -3.0, -1.0, -0.5, 0.3, 0.9], dtype=D)
    h = 0.5
    x = torch.ones(6, 1, dtype=D)

    class Scalar(nn.Module):
        def forward(self, y):
            return lam[:, None] * y

    layer = ThetaLayer(Scalar(), theta=theta, h=h, phi=phi, solver={"name": "newton_krylov", "tol": 1e-13})
    y = layer(x)
    z = h * lam
    R = (1 + (1 - theta) * z) / (1 - theta * z)
    torch.testing.assert_close(y[:, 0], R, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "lbfgs", "newton_krylov"])
def test_layer_solution_matches_closed_form(solver, linear_field):
    d, h, theta = 5, 0.5, 0.75
    g = torch.Generator().manual_seed(0)
    A = torch.randn(d, d, generator=g, dtype=D)
    A = A / torch.linalg.matrix_norm(A, ord=2)
    layer = ThetaLayer(linear_field(A), theta=theta, h=h, solver={"name": solver, "tol": 1e-12, "max_iter": 300})
    x = torch.randn(4, d, dtype=D)
    I = torch.eye(d, dtype=D)
    exact = torch.linalg.solve(I - h * theta * A, (I + h * (1 - theta) * A) @ x.T).T
    torch.testing.assert_close(layer(x), exact, atol=1e-10, rtol=0)
    assert layer.last_stats.all_converged


CASES = list(itertools.product([0.25, 0.5, 1.0], ["one_leg", "convex"], ["neumann", "gmres", "direct"]))


@pytest.mark.parametrize("theta,phi,backward", CASES)
def test_block_gradcheck(theta, phi, backward):
    """IFT gradients of a 3-step block (one field per step) w.r.t. input and all parameters match
    finite differences in float64."""
    fields = [_mlp(seed=s) for s in range(3)]
    block = ImplicitBlock(fields, steps=3, theta=theta, h=1.0, phi=phi, solver=TIGHT,
                          backward={"name": backward, "tol": 1e-13, "max_iter": 200})
    names = [n for n, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in block.parameters())
    x = torch.randn(2, 3, dtype=D, requires_grad=True)

    def f(x, *ps):
        return functional_call(block, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)
    st = block.last_backward_stats
    assert len(st) == 3 and all(s is not None and s.solver == backward for s in st)


def test_shared_field_block_gradcheck():
    f = _mlp()
    block = ImplicitBlock(f, steps=3, theta=0.5, horizon=1.5, solver=TIGHT, backward={"name": "gmres", "tol": 1e-13})
    assert block.h == 0.5 and block.shared
    names = [n for n, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in block.parameters())
    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    f_ = lambda x, *ps: functional_call(block, dict(zip(names, ps)), (x,))  # noqa: E731
    assert torch.autograd.gradcheck(f_, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("phi", ["one_leg", "convex"])
def test_ift_gradients_equal_unrolled_autograd(phi):
    """Backprop through a fully converged unrolled Picard solve gives the IFT gradients."""
    theta, h = 0.5, 1.0
    f = _mlp()
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    w = torch.randn(4, 3, dtype=D)

    layer = ThetaLayer(f, theta=theta, h=h, phi=phi, solver=TIGHT, backward={"name": "gmres", "tol": 1e-14})
    loss = (layer(x) * w).sum()
    gx_ift, *gp_ift = torch.autograd.grad(loss, [x, *f.parameters()])

    y = x + h * f(x)
    for _ in range(200):
        if phi == "one_leg":
            y = x + h * f((1 - theta) * x + theta * y)
        else:
            y = x + h * ((1 - theta) * f(x) + theta * f(y))
    loss_u = (y * w).sum()
    gx_u, *gp_u = torch.autograd.grad(loss_u, [x, *f.parameters()])
    torch.testing.assert_close(gx_ift, gx_u, atol=1e-10, rtol=1e-9)
    for a, b in zip(gp_ift, gp_u):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_conv_feature_maps_float32_and_trajectory():
    torch.manual_seed(0)
    field = ConvField(4)
    with torch.no_grad():
        for m in (field.conv1, field.conv2):
            m.weight.mul_(0.3)
    block = ImplicitBlock(field, steps=2, theta=1.0, h=0.5, solver={"name": "anderson", "tol": 1e-4})
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    y, traj = block(x, return_trajectory=True)
    assert y.shape == x.shape and y.dtype == torch.float32 and len(traj) == 3
    assert traj[0] is x and traj[-1] is y
    y.square().mean().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert field.conv1.weight.grad is not None and torch.isfinite(field.conv1.weight.grad).all()
    fwd = block.last_stats
    assert len(fwd) == 2 and all(s.all_converged for s in fwd)
    assert all(s is not None for s in block.last_backward_stats)


def test_no_graph_built_during_solve_and_weights_fixed():
    f = _mlp()
    before = [p.detach().clone() for p in f.parameters()]
    layer = ThetaLayer(f, theta=1.0, solver={"name": "lbfgs", "tol": 1e-10})
    x = torch.randn(3, 3, dtype=D)
    y = layer(x)
    # only the one ImplicitStep node hangs on the output: the solver iterations are not in the graph
    assert y.grad_fn is not None and type(y.grad_fn).__name__.startswith("ImplicitStep")
    assert all(p.grad is None for p in f.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, f.parameters()))
    with torch.no_grad():
        assert layer(x).grad_fn is None


def test_nonconvergence_warns_once_per_layer_and_can_raise():
    field = nn.Sequential(nn.Linear(3, 3))
    with torch.no_grad():
        field[0].weight.copy_(-5.0 * torch.eye(3))
        field[0].bias.zero_()
    layer = ThetaLayer(field, theta=0.5, solver={"name": "fixed_point", "tol": 1e-8, "max_iter": 20}, name="stiff")
    x = torch.randn(2, 3)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            layer(x)
    msgs = [str(w.message) for w in rec if issubclass(w.category, ConvergenceWarning)]
    assert len(msgs) == 1 and msgs[0].startswith("stiff: forward solve (fixed_point) did not reach tol")
    assert not layer.last_stats.all_converged
    strict = ThetaLayer(field, theta=0.5, solver={"name": "fixed_point", "tol": 1e-8, "max_iter": 20},
                        on_nonconvergence="raise", name="strict")
    with pytest.raises(SolverError, match="strict: forward solve"):
        strict(x)


def test_backward_nonconvergence_warns():
    field = _mlp()
    layer = ThetaLayer(field, theta=1.0, solver=TIGHT, backward={"name": "gmres", "tol": 1e-30, "max_iter": 1},
                       name="lay")
    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    with pytest.warns(ConvergenceWarning, match="lay: backward solve"):
        layer(x).sum().backward()


def test_nan_raises_naming_the_layer():
    class Bad(nn.Module):
        def forward(self, y):
            return y / 0.0 * 0.0

    model = nn.Sequential(ThetaLayer(Bad(), theta=0.5))
    assign_names(model)
    with pytest.raises(SolverError, match=r"^0: forward solve failed: .*NaN"):
        model(torch.ones(2, 3))


def test_invalid_configuration_errors():
    f = _mlp()
    with pytest.raises(ValueError, match=r"theta must be in \[0, 1\]"):
        ThetaLayer(f, theta=1.5)
    with pytest.raises(ValueError, match="unknown phi 'midpoint'; valid: one_leg, convex"):
        ThetaLayer(f, phi="midpoint")
    with pytest.raises(ValueError, match="unknown nonlinear solver 'newton'"):
        ThetaLayer(f, solver="newton")
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'restarts' for linear solver 'gmres'"):
        ThetaLayer(f, backward={"name": "gmres", "restarts": 3})
    with pytest.raises(ValueError, match="3 fields"):
        ImplicitBlock([f, f], steps=3)
    with pytest.raises(ValueError, match="on_nonconvergence"):
        ThetaLayer(f, on_nonconvergence="panic")


def test_solver_stats_collects_per_layer():
    model = nn.Sequential(ThetaLayer(_mlp(), theta=0.5), ImplicitBlock(_mlp(), steps=2, theta=1.0))
    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    model(x).sum().backward()
    st = solver_stats(model)
    assert set(st) == {"0", "1"}
    assert len(st["1"]["forward"]) == 2 and all(s.iterations >= 1 for s in st["1"]["forward"])
    assert all(s is not None for s in st["1"]["backward"])
    assert st["0"]["forward"][0].summary()["converged_frac"] == 1.0


def test_state_dict_roundtrip_shared_field():
    block = ImplicitBlock(_mlp(), steps=4, theta=0.5)
    block2 = ImplicitBlock(_mlp(seed=5), steps=4, theta=0.5)
    block2.load_state_dict(block.state_dict())
    x = torch.randn(2, 3, dtype=D)
    torch.testing.assert_close(block(x), block2(x))


def test_keep_trajectory_for_regularisers():
    block = ImplicitBlock(_mlp(), steps=3, theta=0.5)
    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    block(x)
    assert block.last_trajectory is None
    block.keep_trajectory = True
    y = block(x)
    traj = block.last_trajectory
    assert len(traj) == 4 and traj[0] is x and traj[-1] is y
    # the stored states carry their graph: a penalty on them reaches the parameters through the IFT
    traj[1].square().sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_backward_uses_the_forward_tensors_after_a_swap():
    """The IFT backward rebuilds Φ from the tensors the forward used: directly when the module still holds them,
    through functional_call when a parameter was replaced in between — the gradients are the same either way."""
    import copy

    f = _mlp(seed=3)
    layer = ThetaLayer(f, theta=1.0, h=0.7, solver=TIGHT, backward={"name": "direct"})
    twin = copy.deepcopy(layer)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    w = torch.randn(4, 3, dtype=D)

    (layer(x) * w).sum().backward()
    y2 = twin(x.detach().requires_grad_())
    w0 = twin.field.net[0].weight
    twin.field.net[0].weight = nn.Parameter(torch.randn_like(w0))  # swapped between forward and backward
    (y2 * w).sum().backward()
    torch.testing.assert_close(w0.grad, layer.field.net[0].weight.grad, rtol=0, atol=0)
    assert twin.field.net[0].weight.grad is None
