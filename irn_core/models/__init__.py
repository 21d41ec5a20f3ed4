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

from ..layers import assign_names
from .common import check_kwargs
from .conv import mnist_compact, mnist_e831e4c, resnet18_preact
from .mlp_ode import MLPODE, mlp_ode

__all__ = ["MODELS", "register_model", "get_model", "build_model", "model_names", "layer_kind", "MLPODE"]

MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn):
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        return fn
    return deco


def model_names() -> List[str]:
    return sorted(MODELS)


def get_model(name: str) -> Callable[..., nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
    return MODELS[name]


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

try:  # models over the ResNet-D/-S and NEMON parts of irn_core.variants
    from . import ds_nemon as _ds_nemon  # noqa: F401  (registers resnet_ds and nemon)
except ImportError as _e:  # pragma: no cover - only while irn_core.variants is missing
    _VARIANTS_ERROR = _e
