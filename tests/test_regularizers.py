"""Regularisers: Hutchinson (unbiased), eq 20 weighting, TV, Algorithm 2, arxiv-v1 penalties, config errors, gradcheck."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from irn_core import ImplicitBlock, NEMONLayer, PerturbationStreams, ThetaLayer, regularization
from irn_core.analysis import jacobian
from irn_core.fields import MLPField
from irn_core.regularizers import (
    convergence_rate_penalty, diagonal_estimate, hutchinson, trajectory_penalty, trapezoid_weights, tv_penalty,
)

D = torch.float64
FAST = {"name": "anderson", "tol": 1e-10, "max_iter": 100}


def _mlp(d=4, seed=0):
    torch.manual_seed(seed)
    return MLPField([d, 8, d], activation="tanh").double()


def test_hutchinson_is_unbiased():
    f = _mlp()
    y0 = torch.randn(1, 4, dtype=D)
    J = jacobian(f, y0)[0]
    div_exact, frob_exact = torch.trace(J), (J ** 2).sum()
    N = 4000  # the same point N times: per-sample estimates are N independent draws
    g = torch.Generator().manual_seed(0)
    div, frob = hutchinson(f, y0.expand(N, 4).clone(), samples=1, generator=g, create_graph=False)
    for est, exact in ((div, div_exact), (frob, frob_exact)):
        se = est.std() / N ** 0.5
        assert abs(float(est.mean() - exact)) < 3 * float(se), (float(est.mean()), float(exact), float(se))
    # more samples per call: still unbiased, smaller variance
    div4, _ = hutchinson(f, y0.expand(N, 4).clone(), samples=4, generator=g, create_graph=False)
    assert float(div4.std()) < float(div.std())


def test_diagonal_estimator_converges():
    torch.manual_seed(0)
    A = torch.randn(6, 6, dtype=D)
    g = torch.Generator().manual_seed(1)
    like = torch.zeros(6, dtype=D)
    errs = [float((diagonal_estimate(lambda v: A @ v, like, k, g) - torch.diagonal(A)).abs().max()) for k in (10, 20000)]
    assert errs[1] < 0.05 and errs[1] < errs[0]
    # batched: A acting per sample
    Ab = torch.randn(3, 5, 5, dtype=D)
    Db = diagonal_estimate(lambda v: (Ab @ v[..., None])[..., 0], torch.zeros(3, 5, dtype=D), 20000, g)
    torch.testing.assert_close(Db, torch.diagonal(Ab, dim1=1, dim2=2), atol=0.06, rtol=0)


def test_tv_is_exact():
    fields = [_mlp(seed=s) for s in range(3)]
    block = ImplicitBlock(fields, steps=3, theta=0.5)
    expected = sum(((p1 - p0) ** 2).sum() for t in (1, 2)
                   for p0, p1 in zip(fields[t - 1].parameters(), fields[t].parameters()))
    torch.testing.assert_close(tv_penalty(block, 0.1), 0.1 / 3 * expected)
    shared = ImplicitBlock(fields[0], steps=3)
    assert float(tv_penalty(shared, 1.0)) == 0.0


class Linear(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, y):
        return y @ self.A.T


@pytest.mark.parametrize("p", [0.0, 2.0])
def test_eq20_weighting_with_linear_field(p):
    """F(y) = Ay: ∇·F = tr A, ‖J‖²_F = ‖A‖²_F at every point; check trapezoid, (t/T)^p, 1/d, 1/d², 1/T."""
    torch.manual_seed(0)
    d, T = 3, 4
    A = torch.randn(d, d, dtype=D) * 0.3
    block = ImplicitBlock(Linear(A), steps=T, theta=0.5, h=0.25, solver=FAST)
    block.keep_trajectory = True
    block(torch.randn(20000, d, dtype=D))
    g = torch.Generator().manual_seed(0)
    total, comps = regularization(block, {"divergence": {"weight": 0.5, "p": p}, "jacobian": {"weight": 0.2}}, generator=g)
    w = trapezoid_weights(T)
    div_exact = sum(w[t] * 0.5 / d * (t / T) ** p * torch.trace(A) for t in range(T + 1)) / T
    jac_exact = sum(w[t] * 0.2 / d ** 2 * (A ** 2).sum() for t in range(T + 1)) / T
    torch.testing.assert_close(comps["divergence"], div_exact, atol=0.02 * abs(float(div_exact)) + 5e-3, rtol=0)
    torch.testing.assert_close(comps["jacobian"], jac_exact, rtol=0.03, atol=0)
    torch.testing.assert_close(total, comps["divergence"] + comps["jacobian"])


def test_regularization_config_errors_and_zero_weights():
    block = ImplicitBlock(_mlp(), steps=2, theta=0.0)
    block.keep_trajectory = True
    block(torch.randn(3, 4, dtype=D))
    with pytest.raises(ValueError, match=r"unknown regularizer 'curvature'; valid: convergence_rate, divergence, "
                                         r"frobenius, jacobian, nemon_lipschitz, tv"):
        regularization(block, {"curvature": {"weight": 1}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'power' for regularizer 'divergence'; valid: weight, p, samples"):
        regularization(block, {"divergence": {"weight": 1, "power": 2}})
    total, comps = regularization(block, {"tv": {"weight": 0.0}, "divergence": {"weight": 0.0}})
    assert float(total) == 0.0 and set(comps) == {"tv", "divergence"}
    fresh = ImplicitBlock(_mlp(), steps=2)
    with pytest.raises(ValueError, match="keep_trajectory"):
        regularization(fresh, {"jacobian": {"weight": 1.0}})


def test_regularization_trains_through_the_trajectory():
    """The penalty reaches the parameters of every step and the input (gradients through the IFT states)."""
    torch.manual_seed(0)
    block = ImplicitBlock([_mlp(seed=s) for s in range(3)], steps=3, theta=0.5, h=0.3, solver=FAST,
                          backward={"name": "direct"})
    block.keep_trajectory = True
    x = torch.randn(5, 4, dtype=D, requires_grad=True)
    y = block(x)
    total, comps = regularization(block, {"divergence": {"weight": 0.1, "p": 1}, "jacobian": {"weight": 0.1},
                                          "tv": {"weight": 0.1}, "convergence_rate": {"weight": 0.1}})
    (y.pow(2).mean() + total).backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())
    assert set(comps) == {"divergence", "jacobian", "tv", "convergence_rate"}


def test_perturbation_streams_zero_without_perturbation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), ImplicitBlock(_mlp().float(), steps=2, theta=0.5,
                                                         solver={"name": "anderson", "tol": 1e-6}), nn.Linear(4, 1))
    x = torch.randn(6, 2)
    out, pen = PerturbationStreams(num_streams=3, std=0.0)(model, x)
    assert float(pen["perturbation"].detach()) == 0.0
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=0)
    out, pen = PerturbationStreams(num_streams=3, std=0.1, layer_weights=[1.0, 2.0])(model, x)
    assert float(pen["perturbation"].detach()) > 0
    assert model[1].last_trajectory is None and model[1].keep_trajectory is False
    with pytest.raises(ValueError, match="2 hidden states"):
        PerturbationStreams(layer_weights=[1.0])(model, x)


def test_perturbation_streams_fresh_each_epoch():
    model = ImplicitBlock(_mlp(), steps=1, theta=0.0)
    s = PerturbationStreams(num_streams=1, std=0.1, seed=3)
    x = torch.randn(4, 4, dtype=D)
    s.set_epoch(0)
    a = s(model, x)[1]["perturbation"]
    b = s(model, x)[1]["perturbation"]
    s.set_epoch(0)
    c = s(model, x)[1]["perturbation"]
    a, b, c = (float(v.detach()) for v in (a, b, c))
    assert a != b and a == c


def test_convergence_rate_penalty():
    torch.manual_seed(0)
    f = _mlp()
    explicit = ThetaLayer(f, theta=0.0)
    explicit.keep_trajectory = True
    explicit(torch.randn(3, 4, dtype=D))
    assert float(convergence_rate_penalty(explicit)) == 0.0
    with torch.no_grad():
        for prm in f.parameters():
            prm.mul_(2.0)  # slow Picard contraction
    layer = ThetaLayer(f, theta=1.0, h=1.0, solver={"name": "newton_krylov", "tol": 1e-10}, on_nonconvergence="ignore")
    layer.keep_trajectory = True
    layer(torch.randn(3, 4, dtype=D))
    assert float(convergence_rate_penalty(layer, rate=0.1).detach()) > 0
    assert float(convergence_rate_penalty(layer, rate=1e6).detach()) == 0.0


# ------------------------------ gradcheck of every regulariser (float64) ------------------------------

def _as_fn(module, build):
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def fn(*ps):
        return build(lambda *a: functional_call(module, dict(zip(names, ps)), a))

    return fn, params


def test_gradcheck_hutchinson_and_trajectory_penalty():
    f = _mlp()
    y = torch.randn(3, 4, dtype=D, requires_grad=True)

    def build(field):
        g = torch.Generator().manual_seed(0)
        div, frob = hutchinson(field, y, samples=2, generator=g)
        return div.sum() + frob.sum()

    fn, params = _as_fn(f, build)
    assert torch.autograd.gradcheck(fn, params)
    assert torch.autograd.gradcheck(lambda y_: hutchinson(f, y_, z=[torch.ones_like(y_)])[1].sum(), (y,))

    class Holder(nn.Module):  # a one-step "layer" view for trajectory_penalty
        steps, h, layer_name = 2, 0.5, "holder"

        def __init__(self, field):
            super().__init__()
            self.field = field

        def field_at(self, t):
            return self.field

    traj = [y, y * 0.9, y * 0.8]

    def build2(field):
        holder = Holder(field)
        g = torch.Generator().manual_seed(1)
        r = trajectory_penalty(holder, traj, divergence=0.3, p=1.0, jacobian=0.2, generator=g)
        return r["divergence"] + r["jacobian"]

    fn2, params2 = _as_fn(f, build2)
    assert torch.autograd.gradcheck(fn2, params2)


class _Call(nn.Module):
    """forward() = fn(module): lets functional_call swap the parameters of ``module`` for gradcheck."""

    def __init__(self, module, fn):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self):
        return self.fn(self.module)


def _gradcheck_module_fn(module, fn):
    call = _Call(module, fn)
    names = [n for n, _ in call.named_parameters()]
    ps = tuple(p.detach().clone().requires_grad_(True) for p in call.parameters())
    value = call().detach()
    assert torch.autograd.gradcheck(lambda *a: functional_call(call, dict(zip(names, a)), ()), ps)
    return value


def test_gradcheck_tv():
    block = ImplicitBlock([_mlp(seed=s) for s in range(3)], steps=3, theta=0.5)
    assert float(_gradcheck_module_fn(block, lambda b: tv_penalty(b, 0.3))) > 0


def test_gradcheck_convergence_rate():
    f = _mlp()
    with torch.no_grad():
        for prm in f.parameters():
            prm.mul_(2.0)
    y0 = torch.randn(3, 4, dtype=D)
    layer = ThetaLayer(f, theta=1.0, h=1.0)

    def fn(lay):
        y1 = y0 + lay.field(y0)  # any trajectory: the penalty is differentiated through the Picard iterates
        return convergence_rate_penalty(lay, [y0, y1], rate=0.3, iterations=3)

    assert float(_gradcheck_module_fn(layer, fn)) > 0


def test_gradcheck_diagonal_estimator_and_nemon_bound():
    A = torch.randn(4, 4, dtype=D, requires_grad=True)

    def diag_fn(A):
        g = torch.Generator().manual_seed(0)
        return diagonal_estimate(lambda v: A @ v, torch.zeros(4, dtype=D), 50, g)

    assert torch.autograd.gradcheck(diag_fn, (A,))
    torch.manual_seed(2)
    nem = NEMONLayer(3, 5, out_features=2).double()
    with torch.no_grad():
        nem.A.d.normal_(0, 0.1)
    assert float(_gradcheck_module_fn(nem, lambda m: m.lipschitz_bound())) > 0


def test_gradcheck_perturbation_streams():
    block = ImplicitBlock([_mlp(seed=s) for s in range(2)], steps=2, theta=0.0, h=0.5)  # explicit: exact gradients
    x = torch.randn(3, 4, dtype=D)

    def fn(b):
        s = PerturbationStreams(num_streams=2, std=0.1, seed=0)
        s.set_epoch(1)
        return s(b, x)[1]["perturbation"]

    assert float(_gradcheck_module_fn(block, fn)) > 0


def test_frobenius_penalty_is_the_sum_of_squared_filters_and_weights():
    """Table 4.1's norm penalty: λ Σ‖W‖_F² over conv and dense weights only (closed form)."""
    from irn_core.regularizers import frobenius_penalty

    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 4))
    expect = 0.5 * (m[0].weight.pow(2).sum() + m[3].weight.pow(2).sum())
    torch.testing.assert_close(frobenius_penalty(m, 0.5), expect)
    total, comps = regularization(m, {"frobenius": {"weight": 0.5}})
    torch.testing.assert_close(total, expect)
    total.backward()
    torch.testing.assert_close(m[3].weight.grad, 2 * 0.5 * m[3].weight)  # = weight decay 2λ for SGD
    assert m[0].bias.grad is None and m[1].weight.grad is None
