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
