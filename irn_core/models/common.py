"""Pieces shared by the model builders: the ``layer`` dict, field wrapping, input normalisation.

The ``layer`` dict of a model config (same for every model)::

    layer:
      theta: 0.5                 # θ ∈ [0, 1]; 0 = explicit ResNet (no solver); default 0 (DEFAULT_THETA)
      phi: one_leg               # one_leg (eq 12) | convex (eq 11)
      solver: {name: anderson, tol: 1.0e-6, max_iter: 100}   # or a registered name
      backward: {name: gmres, tol: 1.0e-6, max_iter: 50}
      on_nonconvergence: warn    # warn | raise | ignore
      initial_guess: explicit    # explicit (x + hF(x)) | previous (x, the authors' code)
      returns: solution          # solution (the solver's ŷ) | update (x + hΦ(x, ŷ), the authors' code)
      # omitted: theta 0.0 (explicit), phi/solver/backward as irn_core.layers.DEFAULT_*; see complete_layer
      field: {eig_range: [-3, 1], ...}   # optional wrapping of every field F (see make_field)
      # or field: {gated: {limits: [-1, 0, 1], spectral_norm: null}}: the authors' gated F^{a,b} (0.9801·F)

The step size h (and the number of steps) are model options, not layer options.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers import DEFAULT_THETA

__all__ = ["LAYER_KEYS", "split_layer", "make_field", "Normalize", "check_kwargs", "eigen_range_class"]

LAYER_KEYS = ("theta", "phi", "solver", "backward", "on_nonconvergence", "initial_guess", "returns", "field")
_DEFAULT_LAYER = {"theta": DEFAULT_THETA}


def split_layer(layer: Optional[Dict[str, Any]], defaults: bool = True) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Validate a ``layer`` dict; return (kwargs for ThetaLayer/ImplicitBlock, field options).

    With ``defaults`` an omitted ``theta`` is 0.0 (explicit): a model is explicit unless told."""
    layer = {**(_DEFAULT_LAYER if defaults else {}), **(layer or {})}
    bad = sorted(set(layer) - set(LAYER_KEYS))
    if bad:
        raise ValueError(f"unknown layer option(s) {', '.join(map(repr, bad))}; valid: {', '.join(LAYER_KEYS)}")
    field = layer.pop("field", None) or {}
    if not isinstance(field, dict):
        raise ValueError(f"layer.field must be a dict (e.g. {{eig_range: [-3, 1]}}), got {field!r}")
    return layer, dict(field)


def eigen_range_class():
    """The F^{α,β} wrapper of eq 19 from :mod:`irn_core.normalization` (written separately)."""
    try:
        from .. import normalization
    except ImportError as e:  # pragma: no cover - depends on the other module being present
        raise ValueError("layer.field.eig_range needs irn_core.normalization (EigenRangeField), "
                         f"which could not be imported: {e}") from e
    cls = getattr(normalization, "EigenRangeField", None)
    if cls is None:  # pragma: no cover
        raise ValueError("irn_core.normalization has no EigenRangeField; layer.field.eig_range is unavailable")
    return cls


def make_field(base: nn.Module, field_cfg: Dict[str, Any], input_shape: Optional[Sequence[int]] = None) -> nn.Module:
    """Wrap ``base`` as layer.field says.

    ``field_cfg`` keys: ``eig_range: [α, β]`` wraps the field as F^{α,β} (eq 19,
    :class:`irn_core.normalization.EigenRangeField`; the inner field is spectrally normalised to
    F^{−1,1}); the wrapper's other options may be given too: ``learnable_scale`` (default true: S
    starts at 0.5; false: fixed 0.99), ``n_power_iterations``, ``init_iterations``. An empty dict
    returns ``base`` unchanged. ``input_shape`` = the state's shape without batch: it is the shape of
    S(ϑ) and the input shape of the conv spectral norms.
    """
    cfg = dict(field_cfg)
    if "gated" in cfg:
        return _gated(base, cfg, input_shape)
    rng = cfg.pop("eig_range", None)
    if rng is None:
        if cfg:
            raise ValueError(f"layer.field option(s) {', '.join(map(repr, sorted(cfg)))} need eig_range; "
                             "valid: eig_range, learnable_scale, n_power_iterations, init_iterations")
        return base
    cls = eigen_range_class()
    check_kwargs(cls, cfg, what="layer.field", skip=("field", "eig_range", "shape", "input_shape"))
    if input_shape is not None:
        cfg["shape"] = tuple(input_shape)
        if len(input_shape) > 1:
            cfg["input_shape"] = tuple(input_shape)
    return cls(base, eig_range=tuple(rng), **cfg)


GATED_KEYS = ("limits", "spectral_norm", "learnable_scale", "learnable_ends")


def _gated(base: nn.Module, cfg: Dict[str, Any], input_shape: Optional[Sequence[int]]) -> nn.Module:
    """``field: {gated: {limits: [min, init, max], spectral_norm: exact|bound|null, learnable_scale, learnable_ends}}``:
    the authors' gated F^{a,b} (:class:`irn_core.normalization.GatedEigenRangeField`); ``gated: {}`` is their
    default 0.9801·F (limits (−1, 0, 1), nothing learnable, no spectral norm)."""
    from ..normalization import EigenGates, GatedEigenRangeField

    g = cfg.pop("gated")
    if cfg:
        raise ValueError(f"layer.field.gated excludes {', '.join(map(repr, sorted(cfg)))}")
    g = dict(g or {})
    bad = sorted(set(g) - set(GATED_KEYS))
    if bad:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, bad))} for layer.field.gated; valid: {', '.join(GATED_KEYS)}")
    if input_shape is None:
        raise ValueError("layer.field.gated needs the state shape")
    gates = EigenGates(g.get("limits", (-1.0, 0.0, 1.0)), tuple(input_shape), bool(g.get("learnable_scale", False)),
                       bool(g.get("learnable_ends", False)))
    return GatedEigenRangeField(base, gates, g.get("spectral_norm"), init_iterations=5,
                                input_shape=input_shape if len(input_shape) > 1 else None)


def check_kwargs(fn: Callable, kwargs: Dict[str, Any], what: str, skip: Sequence[str] = ()) -> None:
    """Raise ValueError naming the valid keyword options if ``kwargs`` has unknown ones."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if n not in skip and n != "self"
             and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, bad))} for {what}; valid: {', '.join(valid)}")


class Normalize(nn.Module):
    """(x − mean) / std per channel. Models apply it first, so data and corruptions live in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean = torch.as_tensor(list(mean), dtype=torch.float32)
        std = torch.as_tensor(list(std), dtype=torch.float32)
        if mean.shape != std.shape or bool((std <= 0).any()):
            raise ValueError(f"normalize needs mean and std of equal length with std > 0, got {mean}, {std}")
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def make_normalize(normalize: Optional[Dict[str, Sequence[float]]]) -> nn.Module:
    if normalize is None:
        return nn.Identity()
    if not isinstance(normalize, dict) or set(normalize) != {"mean", "std"}:
        raise ValueError(f"normalize must be {{mean: [...], std: [...]}} or null, got {normalize!r}")
    return Normalize(normalize["mean"], normalize["std"])
