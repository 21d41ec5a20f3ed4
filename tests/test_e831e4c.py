"""The options that express the authors' code (AUTHORS-CODE.md §1-2.4), each against an independent computation:
the e831e4c MNIST network, gated F^{a,b}, exact spectral norm, unit-Frobenius Xavier, the solve's initial guess,
the divergence time weights / field time / detached states, class weights, corruption repeats."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from irn_core.analysis import stability_function
from irn_core.fields import ConvField, xavier_unit_frobenius_
from irn_core.layers import ImplicitBlock, ThetaLayer
from irn_core.models import build_model
from irn_core.normalization import EigenGates, GatedEigenRangeField, SpectralNorm, eig_limits_from_stability
from irn_core.regularizers import regularization, trajectory_penalty


def test_e831e4c_network_has_the_authors_parameter_count_and_shapes():
    m = build_model({"name": "mnist_e831e4c", "layer": {"theta": 1.0}})
    assert sum(p.numel() for p in m.parameters()) == 32420  # weights 31,208 + scales 1,204 + shifts 8
    assert sum(p.numel() for n, p in m.named_parameters() if "gates" not in n) == 31208
    plain = build_model({"name": "mnist_e831e4c", "layer": {"theta": 0.0}, "stability_limits": None,
                         "spectral_norm": None, "learnable_scale": False, "learnable_ends": False})
    assert sum(p.numel() for p in plain.parameters()) == 31208
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    blocks = [mod for mod in m.modules() if isinstance(mod, ImplicitBlock)]
    assert [tuple(b.fields[0].gates.scales.shape) for b in blocks] == [(1, 28, 28), (6, 6, 6), (12, 3, 3), (24, 2, 2)]
    assert all(b.steps == 2 and b.h == 1.0 and not b.shared and b.fields[0].gates is b.fields[1].gates for b in blocks)


@pytest.mark.parametrize("theta,expected", [(0.0, (-0.8, 0.0, 0.2)), (0.25, (-1.0, 0.0, 0.1905)),
                                            (0.5, (-1.3333, 0.0, 0.1818)), (0.75, (-2.0, 0.0, 0.1739)),
                                            (1.0, (-4.0, 0.0, 0.1667))])
def test_eig_limits_from_stability_match_the_authors_table_and_invert_R(theta, expected):
    z = eig_limits_from_stability(theta, (0.2, 1.0, 1.2))
    assert z == pytest.approx(expected, abs=1e-4)  # AUTHORS-CODE §2.4
    for zi, y in zip(z, (0.2, 1.0, 1.2)):  # R(z) = y, R the θ-method's stability function
        assert float(stability_function(complex(zi), theta).real) == pytest.approx(y, abs=1e-12)


def test_fixed_gates_give_0_9801_F_and_learnable_start_symmetric_10pc():
    torch.manual_seed(0)
    f = nn.Linear(4, 4, bias=False)
    fixed = GatedEigenRangeField(f, EigenGates((-1.0, 0.0, 1.0), (4,)), spectral_norm=None)
    y = torch.randn(5, 4)
    assert torch.allclose(fixed(y), 0.9801 * f(y), atol=1e-6)
    g = EigenGates((-4.0, 0.0, 1 / 6), (4,), learnable_scale=True, learnable_ends=True)
    a, b = (v.detach() for v in g.ends())
    assert float(a) == pytest.approx(-0.1 / 6) and float(b) == pytest.approx(0.1 / 6)
    assert torch.allclose(g.scale(), torch.full((4,), 0.5))
    assert sum(p.numel() for p in g.parameters()) == 4 + 2


def test_gated_field_eigenvalues_lie_in_the_disc():
    torch.manual_seed(1)
    d = 6
    field = nn.Sequential(nn.Linear(d, 12), nn.ReLU(), nn.Linear(12, d)).double()
    g = EigenGates((-3.0, -1.0, 0.5), (d,), learnable_scale=True, learnable_ends=True).double()
    with torch.no_grad():
        g.shift_a.fill_(1.3)
        g.shift_b.fill_(-0.4)
        g.scales.copy_(torch.randn(d, dtype=torch.float64))
    F = GatedEigenRangeField(field, g, spectral_norm="exact", init_iterations=200).double()
    a, b = (float(v.detach()) for v in g.ends())
    c, r = 0.5 * (a + b), 0.5 * (b - a) * float(g.scale().max())
    for _ in range(5):
        y = torch.randn(d, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda v: F(v[None])[0], y)
        ev = torch.linalg.eigvals(J)
        assert bool(((ev - c).abs() <= r + 1e-9).all()), (ev, c, r)


def test_exact_spectral_norm_rescales_up_and_bound_does_not():
    torch.manual_seed(2)
    lin = nn.Linear(5, 7).double()
    with torch.no_grad():
        lin.weight.mul_(0.1 / torch.linalg.matrix_norm(lin.weight, 2))  # ‖W‖₂ = 0.1
    exact = SpectralNorm(lin, exact=True, init_iterations=100)
    assert float(torch.linalg.matrix_norm(exact.normalized_weight().detach(), 2)) == pytest.approx(1.0, rel=1e-6)
    bound = SpectralNorm(lin, exact=False, init_iterations=100)
    assert torch.allclose(bound.normalized_weight().detach(), lin.weight)


def test_xavier_unit_frobenius_is_the_authors_redraw():
    torch.manual_seed(3)
    f = ConvField(4)
    torch.manual_seed(7)
    xavier_unit_frobenius_(f)
    torch.manual_seed(7)  # the oracle: draw, take the norm, draw again with gain 1/norm, in parameter order
    for name, p in f.named_parameters():
        if name.endswith("weight"):
            w0 = torch.empty_like(p)
            nn.init.xavier_uniform_(w0)
            w1 = torch.empty_like(p)
            nn.init.xavier_uniform_(w1, gain=1.0 / float(w0.norm()))
            assert torch.equal(p, w1)
        else:
            assert bool((p == 0).all())
    norms = [float(f.conv1.weight.norm()), float(f.conv2.weight.norm())]
    assert all(0.8 < n < 1.2 for n in norms)


def test_initial_guess_previous_starts_the_solve_at_x():
    torch.manual_seed(4)
    A = 0.3 * torch.randn(3, 3, dtype=torch.float64)
    field = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        field.weight.copy_(A)
    x = torch.randn(4, 3, dtype=torch.float64)
    outs = {}
    for guess in ("explicit", "previous"):
        layer = ThetaLayer(field, theta=1.0, h=1.0, solver={"name": "anderson", "tol": 1e-12, "max_iter": 100},
                           initial_guess=guess)
        outs[guess] = layer(x)
        r0 = layer.last_stats.init_residual
        y0 = x if guess == "previous" else x + field(x)
        assert torch.allclose(r0, (x + field(y0) - y0).norm(dim=1))
    exact = torch.linalg.solve(torch.eye(3, dtype=torch.float64) - A, x.T).T  # y = x + A y
    assert torch.allclose(outs["explicit"], exact, atol=1e-10) and torch.allclose(outs["previous"], exact, atol=1e-10)
    with pytest.raises(ValueError, match="initial_guess"):
        ThetaLayer(field, initial_guess="zero")


@pytest.mark.parametrize("theta", [0.5, 1.0])
def test_returns_update_is_the_theta_update_at_the_solution_with_the_ift_gradient(theta):
    """returns="update" returns x + hA((1−θ)x + θŷ) (the authors' ode.py:336). A solve accepted at ŷ = x (loose tol)
    then gives the explicit step, and its gradient is the IFT gradient at ŷ = x:
    ∇_x = (I + h(1−θ)Aᵀ)(I − hθAᵀ)⁻¹ dy (closed form for F(y) = Ay). With a tight tol the output is the exact solution."""
    torch.manual_seed(5)
    A = 0.3 * torch.randn(3, 3, dtype=torch.float64)
    field = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        field.weight.copy_(A)
    h, eye = 0.4, torch.eye(3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4, 3, dtype=torch.float64)
    loose = ThetaLayer(field, theta=theta, h=h, initial_guess="previous", returns="update",
                       solver={"name": "lbfgs", "tol": 1e3}, backward={"name": "direct"})
    y = loose(x)
    st = loose.last_stats
    assert st.iterations == 0 and st.nfe == 2  # the initial residual and the update, no solve
    assert torch.allclose(y, x + h * x @ A.T, atol=1e-14)  # the explicit step, not x
    (gx,) = torch.autograd.grad(y, x, dy)
    expect = dy @ torch.linalg.inv(eye - h * theta * A) @ (eye + h * (1 - theta) * A)  # the closed form, row-wise
    assert torch.allclose(gx, expect, atol=1e-12)
    plain = ThetaLayer(field, theta=theta, h=h, initial_guess="previous", solver={"name": "lbfgs", "tol": 1e3})
    assert torch.equal(plain(x), x)  # returns="solution" gives the accepted guess itself
    tight = ThetaLayer(field, theta=theta, h=h, initial_guess="previous", returns="update",
                       solver={"name": "anderson", "tol": 1e-13, "max_iter": 200})
    exact = torch.linalg.solve(eye - h * theta * A, (eye + h * (1 - theta) * A) @ x.detach().T).T
    assert torch.allclose(tight(x), exact, atol=1e-11)
    tight_solution = ThetaLayer(field, theta=theta, h=h, initial_guess="previous",
                                solver={"name": "anderson", "tol": 1e-13, "max_iter": 200})
    assert torch.allclose(tight_solution(x), exact, atol=1e-11)
    assert tight.last_stats.nfe == tight_solution.last_stats.nfe + 1  # the update's one F-evaluation
    with pytest.raises(ValueError, match="returns must be one of solution, update"):
        ThetaLayer(field, returns="explicit")


class _Quadratic(nn.Module):
    """F(y) = a·y²/2 on 1-D states: ∂F/∂y = a·y."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a), dtype=torch.float64))

    def forward(self, y):
        return 0.5 * self.a * y * y


@pytest.mark.parametrize("time_weights,field_time", [("t/T", "step_end"), ("(t+1)/(T+1)", "step_start"),
                                                     ("(t+1)/(T+1)", "step_end")])
def test_divergence_time_weights_and_field_time_closed_form(monkeypatch, time_weights, field_time):
    import irn_core.regularizers as R

    monkeypatch.setattr(R, "_randn", lambda like, generator=None: torch.ones_like(like))  # zᵀJz = J exactly (d = 1)
    T, p, alpha = 3, 2.0, 0.7
    a = [0.5, -1.0, 2.0]
    block = ImplicitBlock([_Quadratic(ai) for ai in a], steps=T, theta=0.0, h=0.1)
    block.keep_trajectory = True
    x = torch.tensor([[0.8], [-0.3]], dtype=torch.float64)
    block(x)
    traj = block.last_trajectory
    out = trajectory_penalty(block, divergence=alpha, p=p, time_weights=time_weights, field_time=field_time)
    expected = 0.0
    for t in range(T + 1):
        c = (t / T if time_weights == "t/T" else (t + 1) / (T + 1)) ** p
        w = 0.5 if t in (0, T) else 1.0
        k = (max(t, 1) if field_time == "step_end" else min(t + 1, T)) - 1
        expected += w * c * float((a[k] * traj[t]).mean())
    assert float(out["divergence"]) == pytest.approx(alpha * expected / T, rel=1e-12)


def test_detached_states_send_no_gradient_to_the_input():
    block = ImplicitBlock([_Quadratic(0.5), _Quadratic(1.5)], steps=2, theta=0.0, h=0.1)
    block.keep_trajectory = True
    grads = {}
    for states in ("attached", "detached"):
        x = torch.tensor([[0.8], [-0.3]], dtype=torch.float64, requires_grad=True)
        block(x)
        total, _ = regularization(block, {"divergence": {"weight": 1.0, "p": 1, "states": states}})
        total.backward()
        grads[states] = x.grad
    assert grads["detached"] is None or bool((grads["detached"] == 0).all())
    assert bool((grads["attached"].abs() > 0).any())
    with pytest.raises(ValueError, match="time_weights"):
        regularization(block, {"divergence": {"weight": 1.0, "time_weights": "t"}})


def test_class_weighted_cross_entropy_is_the_weighted_mean():
    from bench.tasks.images import inverse_frequency_weights

    y = torch.tensor([0, 0, 0, 1, 2, 2])
    w = inverse_frequency_weights(y, 4)
    assert torch.allclose(w, torch.tensor([1 / 3, 1.0, 0.5, 0.0]) / (1 / 3 + 1.0 + 0.5))
    logits = torch.randn(6, 4)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    manual = float((w[y] * ce).sum() / w[y].sum())
    assert float(torch.nn.functional.cross_entropy(logits, y, weight=w)) == pytest.approx(manual, rel=1e-6)


def test_corruption_repeats_equal_the_dataset_seen_k_times():
    from torch.utils.data import ConcatDataset, TensorDataset

    from bench.corruptions import evaluate_corruptions
    from bench.tasks.base import ImageTask

    class Tiny(ImageTask):
        name = "tiny"
        input_shape = (1, 4, 4)
        num_classes = 3

    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    data = TensorDataset(torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,)))
    k = 4
    rep = evaluate_corruptions(model, Tiny(), data, {"gaussian": {"std": [0.3], "repeats": k}}, batch_size=10)
    cat = evaluate_corruptions(model, Tiny(), ConcatDataset([data] * k), {"gaussian": {"std": [0.3]}}, batch_size=10)
    assert rep["value"].tolist() == pytest.approx(cat["value"].tolist(), rel=1e-12)
    with pytest.raises(ValueError, match="repeats"):
        evaluate_corruptions(model, Tiny(), data, {"gaussian": {"std": [0.3], "repeats": 0}})
    assert not math.isnan(rep["value"].iloc[0])


def test_paper_suites_build_the_authors_fields():
    from pathlib import Path

    from bench.suite import load_suite

    root = Path(__file__).resolve().parents[1] / "suites" / "paper"
    for suite, n_params in (("ex1_sine.yaml", 380), ("ex3_lotka.yaml", 1780)):  # AUTHORS-CODE §2.1, §2.3
        m = build_model(load_suite(root / suite).specs[0].config["model"])
        assert sum(p.numel() for p in m.parameters()) == n_params
        f = m.block.fields[0]
        y = torch.randn(4, f.gates.scales.shape[0])
        assert torch.allclose(f(y), 0.9801 * f.field(y), atol=1e-6)  # fixed gates: 0.99 · 0.99
        weights = [p for n, p in f.field.named_parameters() if n.endswith("weight")]
        assert all(0.6 < float(w.norm()) < 1.4 for w in weights)  # unit-Frobenius redraw
        assert all(bool((p == 0).all()) for n, p in f.field.named_parameters() if n.endswith("bias"))


def test_plateau_on_last_batch_loss_follows_a_hand_stepped_scheduler():
    """The scheduler sees the data loss of each epoch's last minibatch (not the epoch mean)."""
    from torch.utils.data import TensorDataset

    from bench.tasks.base import Task
    from bench.train import fit

    class Reg(Task):
        name, kind = "reg", "regression"

        def loss(self, out, y):
            return ((out - y) ** 2).mean()

        def metrics(self, out, y):
            return {"n": float(y.shape[0]), "loss": float(((out - y) ** 2).mean(1).sum())}

    torch.manual_seed(0)
    x, y = torch.randn(12, 3), torch.randn(12, 1)
    cfg = {"epochs": 12, "batch_size": 5, "optimizer": {"name": "sgd", "lr": 0.5},
           "scheduler": {"name": "plateau", "factor": 0.5, "patience": 1, "threshold": 0.0, "monitor": "last_batch_loss"}}
    torch.manual_seed(1)
    model = nn.Linear(3, 1)
    hist = fit(model, Reg(), TensorDataset(x, y), cfg, seed=3)
    # the oracle: the same loop by hand, a torch ReduceLROnPlateau stepped on the last batch's loss
    torch.manual_seed(1)
    ref = nn.Linear(3, 1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1, threshold=0.0)
    from bench.train import make_loader

    loader = make_loader(TensorDataset(x, y), 5, shuffle=True, seed=3)  # the same batches as fit's
    lrs = []
    for _ in range(12):
        for xb, yb in loader:
            opt.zero_grad()
            loss = ((ref(xb) - yb) ** 2).mean()
            loss.backward()
            opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(float(loss))
    assert [h["lr"] for h in hist] == pytest.approx(lrs)
    assert len(set(lrs)) > 1  # the schedule did reduce
    assert "train/last_batch_loss" not in hist[0]


def test_loss_mean_over_entries_with_initial_is_the_authors_normalisation():
    from bench.tasks import build_task

    task = build_task({"name": "ex3_lotka", "n_orbits": 2, "extrapolate": 20.0, "loss_mean": "entries_with_initial"})
    target = torch.randn(2, 50, 2)
    out = torch.randn(2, 51, 2)  # a trajectory: y_0 .. y_50
    out[:, 0] = 0.0
    full_out = out
    full_tgt = torch.cat([torch.zeros(2, 1, 2), target], dim=1)  # the error-free initial point included
    expected = float(((full_out - full_tgt) ** 2).mean())  # mean over 2 x 51 x 2 entries
    assert float(task.loss(out, target)) == pytest.approx(expected, rel=1e-6)
    m = task.metrics(out, target)
    assert m["loss"] / m["n"] == pytest.approx(expected, rel=1e-6)


def _authors_lbfgs(g, x0, tol_sq, min_grads=3):
    """The authors' forward solve as AUTHORS-CODE §1.5 describes it (written here independently of irn_core): skip
    when max_i ‖r_i‖² ≤ tol at x0; else torch's L-BFGS (history 10, strong Wolfe, tolerances 1e-9, 200 iterations)
    on mean_i ‖r_i‖², the gradient only while max_i ‖r_i‖² > tol or fewer than min_grads closures ran."""
    err = ((g(x0) - x0) ** 2).sum(1)
    if float(err.max()) <= tol_sq:
        return x0, 0
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-9, history_size=10,
                            line_search_fn="strong_wolfe")
    calls = [0]

    def closure():
        opt.zero_grad()
        res = ((g(x) - x) ** 2).sum(1)
        if float(res.detach().max()) > tol_sq or calls[0] < min_grads:
            x.grad, = torch.autograd.grad(res.mean(), x)
        calls[0] += 1
        return res.mean()
    opt.step(closure)
    return x.detach(), calls[0]


@pytest.mark.parametrize("scale", [0.1, 0.3, 0.6])  # 0.1: 4 closures, 3 without min_gradients
def test_lbfgs_zero_gradient_stop_is_the_authors_solve(scale):
    """stop="zero_gradient", objective="batch_mean", min_gradients=3, tolerances 1e-9: the same iterate and the same
    closure count as the authors' solve; tol 1e-3 on ‖r‖ is their 1e-6 on ‖r‖²."""
    from irn_core.solvers import get_nonlinear

    torch.manual_seed(7)
    W1, W2 = scale * torch.randn(8, 3, dtype=torch.float64), scale * torch.randn(3, 8, dtype=torch.float64)
    x = torch.randn(16, 3, dtype=torch.float64)
    g = lambda y: x + 0.5 * torch.tanh(y @ W1.T) @ W2.T  # noqa: E731
    want, calls = _authors_lbfgs(g, x, 1e-6)
    assert calls >= 4  # 3 forced gradients, then the zero-gradient closure
    got, st = get_nonlinear("lbfgs")(g, x, tol=1e-3, mode="abs", max_iter=200, history_size=10,
                                     objective="batch_mean", stop="zero_gradient", min_gradients=3,
                                     tolerance_grad=1e-9, tolerance_change=1e-9)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)  # the same iterates (summation order aside)
    assert st.nfe - 1 == calls and st.all_converged and st.stop == "converged"
    assert torch.allclose(st.residual, (g(got) - got).norm(dim=1))
    best, sb = get_nonlinear("lbfgs")(g, x, tol=1e-3, mode="abs", max_iter=200, history_size=10)
    assert sb.all_converged and float((g(best) - best).norm(dim=1).max()) <= 1e-3  # the library's stop: tol met


def test_lbfgs_rejects_unknown_objective_and_stop():
    from irn_core.solvers import get_nonlinear

    y = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="objective must be one of half_sum, batch_mean"):
        get_nonlinear("lbfgs")(lambda z: z + 1, y, objective="mean")
    with pytest.raises(ValueError, match="stop must be one of best, zero_gradient"):
        get_nonlinear("lbfgs")(lambda z: z + 1, y, stop="last")


def test_theta_rollout_is_the_implicit_midpoint_map_and_drops_a_sample_that_blows_up():
    """theta_rollout at θ = .5 on F(y) = Ay: y_{k+1} = (I − hA/2)⁻¹(I + hA/2) y_k (closed form), sampled at multiples
    of h; a sample on a blowing-up field goes NaN without stopping the others."""
    from irn_core.analysis import theta_rollout

    A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)  # rotation: the midpoint rule keeps |y|
    field = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        field.weight.copy_(A)
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    h, eye = 0.1, torch.eye(2, dtype=torch.float64)
    M = torch.linalg.solve(eye - h / 2 * A, eye + h / 2 * A)
    t, ys = theta_rollout(field, y0, [0.0, 0.5, 3.0], theta=0.5, h=h, tol=1e-13)
    assert torch.allclose(ys[1], y0 @ torch.linalg.matrix_power(M, 5).T, atol=1e-10)
    assert torch.allclose(ys[2], y0 @ torch.linalg.matrix_power(M, 30).T, atol=1e-10)
    assert torch.allclose(ys[2].norm(dim=1), y0.norm(dim=1), atol=1e-10)  # on the circle
    with pytest.raises(ValueError, match="multiple of h"):
        theta_rollout(field, y0, [0.0, 0.05], h=h)

    class Blow(nn.Module):  # y' = y² on the first coordinate: blows up in finite time from y = 1, not from y = 0
        def forward(self, y):
            return torch.stack([y[:, 0] ** 2, torch.zeros_like(y[:, 1])], 1)

    _, zs = theta_rollout(Blow(), torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), [0.0, 1.0, 3.0],
                          theta=0.5, h=0.1)
    assert torch.isnan(zs[2, 0]).all() and torch.equal(zs[2, 1], torch.tensor([0.0, 1.0], dtype=torch.float64))
