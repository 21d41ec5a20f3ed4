"""Networks built from θ-blocks, by name from plain config dicts.

    model = build_model({"name": "mnist_compact", "layer": {"theta": 0.5, "solver": "anderson"}})

``config = {"name": ..., "layer": {...}, **model options}``. ``layer`` holds theta, phi, solver,
backward, on_nonconvergence and field (see :mod:`irn_core.models.common`); the other keys are the
builder's keyword options (each builder's docstring lists them). Unknown names and options raise
ValueError listing the valid ones. Every implicit layer is named after its module path
(:func:`irn_core.layers.assign_names`) and the config is kept as ``model.config``.

Models: mlp_ode, resnet18_preact, mnist_compact, mnist_e831e4c, resnet_ds, nemon.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List

from torch import nn

from ..layers import DEFAULT_BACKWARD, DEFAULT_PHI, DEFAULT_SOLVER, DEFAULT_THETA, assign_names
from ..registry import Registry
from ..solvers import LINEAR_SOLVERS, NONLINEAR_SOLVERS
from .common import check_kwargs
from .conv import mnist_compact, mnist_e831e4c, resnet18_preact
from .ds_nemon import nemon, resnet_ds
from .mlp_ode import MLPODE, mlp_ode

__all__ = ["MODELS", "register_model", "get_model", "build_model", "model_names", "layer_kind", "complete_layer",
           "MLPODE"]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a model builder (its keyword options are checked by :func:`build_model`)."""
    return MODELS.register(name)


def model_names() -> List[str]:
    return MODELS.names()


def get_model(name: str) -> Callable[..., nn.Module]:
    return MODELS.get(name)


def layer_kind(config: Dict[str, Any]) -> str:
    """What the ``layer`` dict of a model config drives: ``"theta"`` (θ-method layers: theta, phi, solver,
    backward), ``"equilibrium"`` (NEMON: solver and backward only) or ``"none"`` (explicit-only networks,
    e.g. ResNet-D/-S in the paper's post-activation form)."""
    name = config.get("name")
    if name == "nemon":
        return "equilibrium"
    if name == "resnet_ds" and config.get("form", "post_activation") != "theta":
        return "none"
    return "theta"


def complete_layer(config: Dict[str, Any]) -> Dict[str, Any]:
    """The ``layer`` dict of a model config with every default the model will use filled in — the one owner of the
    layer defaults. θ-method layers (eqs 11/12: y = x + h Φ(x, y; θ)): ``theta`` (:data:`~irn_core.layers.DEFAULT_THETA`),
    ``phi`` and the forward/backward solvers with all their options; NEMON (an equilibrium, no θ): only the solvers
    given are completed; explicit-only networks: unchanged. Raises ValueError for an unknown solver or option."""
    kind = layer_kind(config)
    layer = config.get("layer")
    layer = dict(layer) if isinstance(layer, dict) else {}
    if kind == "none":
        return layer
    theta_method = kind == "theta"
    if theta_method:
        layer.setdefault("theta", DEFAULT_THETA)
        layer.setdefault("phi", DEFAULT_PHI)
    for key, reg, default in (("solver", NONLINEAR_SOLVERS, DEFAULT_SOLVER), ("backward", LINEAR_SOLVERS, DEFAULT_BACKWARD)):
        spec = layer.get(key, default if theta_method else None)
        if spec is not None:
            layer[key] = reg.resolve(spec).full()
    return layer


def build_model(config: Dict[str, Any]) -> nn.Module:
    """Build a model from ``{"name": ..., "layer": {...}, **options}``; see the module docstring."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"model config must be a dict with a 'name'; valid names: {', '.join(model_names())}")
    opts = dict(config)
    name = opts.pop("name")
    builder = get_model(name)
    check_kwargs(builder, opts, what=f"model {name!r}")
    model = builder(**opts)
    assign_names(model)
    model.config = copy.deepcopy(dict(config))
    return model


register_model("mlp_ode")(mlp_ode)
register_model("resnet18_preact")(resnet18_preact)
register_model("mnist_compact")(mnist_compact)
register_model("mnist_e831e4c")(mnist_e831e4c)

register_model("resnet_ds")(resnet_ds)
register_model("nemon")(nemon)
