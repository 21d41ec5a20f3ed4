"""NEMON inside the implicit-layer protocol (its solves are found and reported like the θ-layers'), and model
constraints reaching the training loop through a generic hook (ResNet-D's A₂ ≥ 0)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.runner import _solver_metrics
from bench.tasks import build_task
from bench.train import make_optimizer, train_epoch
from irn_core.layers import ImplicitLayer, constraint_projections, implicit_layers, solver_stats, theta_layers
from irn_core.models import build_model
from irn_core.variants import ResNetDField, ResNetDPooling


def test_nemon_layer_is_found_and_its_solves_reported():
    torch.manual_seed(0)
    model = build_model({"name": "nemon", "kind": "dense", "hidden": 16, "image_size": 8,
                         "layer": {"solver": {"name": "picard_average", "tol": 1e-6, "max_iter": 300}}})
    layers = implicit_layers(model)
    assert len(layers) == 1 and all(isinstance(m, ImplicitLayer) for m in layers.values())
    assert not theta_layers(model)  # no trajectory: the regularisers of eq 20 skip it
    (name, layer), = layers.items()
    assert layer.name == name  # assign_names reached it
    x = torch.rand(4, 1, 8, 8)
    model(x).sum().backward()
    st = solver_stats(model)[name]
    assert len(st["forward"]) == 1 and st["forward"][0].solver == "picard_average" and st["forward"][0].all_converged
    assert st["backward"][0] is not None and st["backward"][0].all_converged  # the IFT solve ran and was recorded
    metrics = _solver_metrics(model)  # what a run logs per epoch
    assert metrics[f"solver/{name}/fwd_iters"][0] == st["forward"][0].iterations > 0
    assert f"solver/{name}/bwd_iters" in metrics


def test_nemon_gradient_matches_finite_differences():
    """The IFT gradient through the equilibrium x* = relu(Ax* + Bu + b) against central differences (float64)."""
    torch.manual_seed(1)
    model = build_model({"name": "nemon", "kind": "dense", "hidden": 6, "image_size": 2, "num_classes": 3,
                         "layer": {"solver": {"name": "picard_average", "tol": 1e-12, "max_iter": 5000},
                                   "backward": {"name": "direct"}}}).double()
    u = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    p = model.get_submodule(next(iter(implicit_layers(model)))).B.weight
    (model(u) * w).sum().backward()
    grad = p.grad.clone()
    eps, fd = 1e-6, torch.zeros_like(p)
    with torch.no_grad():
        for i in range(p.shape[0]):
            for j in range(p.shape[1]):
                p[i, j] += eps
                hi = (model(u) * w).sum()
                p[i, j] -= 2 * eps
                lo = (model(u) * w).sum()
                p[i, j] += eps
                fd[i, j] = (hi - lo) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7)


def test_constraints_reach_the_training_loop_through_the_model():
    """ResNet-D keeps A₂ ≥ 0 by projection: its fields expose project_(), and bench.train calls every such hook after
    each optimiser step (no model-specific code in the loop)."""
    torch.manual_seed(0)
    model = build_model({"name": "resnet_ds", "variant": "D", "n": 1, "channels": 4})
    hooks = constraint_projections(model)
    fields = [m for m in model.modules() if isinstance(m, (ResNetDField, ResNetDPooling))]
    assert fields and len(hooks) == len(fields)
    task = build_task({"name": "cifar10"})
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = make_optimizer(model.parameters(), {"name": "sgd", "lr": 5.0})  # a step large enough to cross zero
    train_epoch(model, DataLoader(TensorDataset(x, y), batch_size=8), task, opt, "cpu")
    weights = [f.A2.weight if isinstance(f, ResNetDField) else f.A.weight for f in fields]
    assert all(bool((w >= 0).all()) for w in weights)
    assert any(bool((w == 0).any()) for w in weights)  # the projection was active, not vacuous


def test_nemon_average_is_the_authors_iteration_and_its_alpha_persists():
    """Oracle: the loop of splitting.py:12-66 written out here — scalar α, batch-wide relative change, α ÷ 1.5 when
    the change is above 0.85 × the previous one, and the α a call ends with is where the next call starts."""
    from irn_core.solvers import nemon_average

    torch.manual_seed(0)
    W = torch.randn(6, 6) * 0.9
    b = torch.randn(3, 6)

    def g(z):
        return torch.relu(z @ W.T + b)

    def oracle(alpha, tol=1e-2, max_iter=300):
        z, err, it = torch.zeros(3, 6), float("inf"), 0
        while it < max_iter:
            zn = (1 - alpha) * z + alpha * g(z)
            new = float((zn - z).norm() / (1e-6 + zn.norm()))
            z, it = zn, it + 1
            if new > 0.85 * err:
                alpha /= 1.5
            err = new
            if err <= tol:
                break
        return z, alpha, it

    state = {}
    z, st = nemon_average(g, torch.zeros(3, 6), state=state)
    z_ref, a_ref, it_ref = oracle(1.0)
    assert torch.equal(z, z_ref) and st.iterations == it_ref and state["alpha"] == a_ref
    z2, _ = nemon_average(g, torch.zeros(3, 6), state=state)  # starts from the α the last call ended with
    z2_ref, a2_ref, _ = oracle(a_ref)
    assert torch.equal(z2, z2_ref) and state["alpha"] == a2_ref <= a_ref


def test_the_authors_conv_nemon_reaches_its_equilibrium_and_its_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = build_model({"name": "nemon", "kind": "conv_equilibrium", "channels": 2, "image_size": 6,
                         "layer": {"solver": {"name": "anderson", "tol": 1e-12, "max_iter": 500},
                                   "backward": {"name": "direct"}}}).double()
    layer = model.body
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        z = layer.equilibrium(x)
        u = torch.nn.functional.pad(x, (1, 1, 1, 1))
        Ux = layer._circ(u, layer.U.weight) + layer.U.bias.view(1, -1, 1, 1)
        assert torch.allclose(z, layer._g_conv(z, layer.weight(), Ux), atol=1e-10)  # z = ρ(Wz + Ux)
        assert z[..., :2, :].abs().max() == 0 and z[..., -2:].abs().max() == 0  # the zeroed 2-pixel frame
    # backward (IFT) against central differences of the loss in float64, for the kernel A and the scale g
    loss = model(x).square().sum()
    loss.backward()
    for p in (layer.A, layer.g):
        flat = p.detach().reshape(-1)
        idx = torch.arange(flat.numel())[:4]
        for i in idx:
            eps = 1e-6
            with torch.no_grad():
                orig = flat[i].item()
                p.view(-1)[i] = orig + eps
                up = model(x).square().sum().item()
                p.view(-1)[i] = orig - eps
                down = model(x).square().sum().item()
                p.view(-1)[i] = orig
            fd = (up - down) / (2 * eps)
            assert abs(p.grad.reshape(-1)[i].item() - fd) < 1e-6 * max(1.0, abs(fd)), (p.shape, int(i), fd)
