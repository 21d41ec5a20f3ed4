"""A resolved run config made canonical and checked: the layer completed by its owner (irn_core.models), real-valued
options as floats, and the numbers a run cannot start with — what the spec hash is computed over."""
from __future__ import annotations

from typing import Any, Dict, List

from .suitefile import get_path, set_path

__all__ = ["canonical_layer", "canonical_numbers", "value_errors"]


def value_errors(resolved: Dict[str, Any]) -> List[str]:
    """Numbers a run cannot start with: non-finite anywhere, a learning rate ≤ 0, a negative regulariser weight,
    booleans or strings where θ or a learning rate goes."""
    import math

    errors: List[str] = []

    def walk(v, path):
        if isinstance(v, float) and not math.isfinite(v):
            errors.append(f"{path}: must be a finite number (got {v!r})")
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}" if path else str(k))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    walk(resolved, "")
    nonfinite = {e.split(":")[0] for e in errors}  # one message per value: no range check on top of "not finite"

    def add(path: str, message: str) -> None:
        if path not in nonfinite:
            errors.append(f"{path}: {message}")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    lr = (resolved.get("train", {}).get("optimizer") or {}).get("lr")
    if lr is not None and (not number(lr) or not lr > 0):
        add("train.optimizer.lr", f"must be a number > 0 (got {lr!r})")
    for name, opts in (resolved.get("regularizers") or {}).items():
        w = (opts or {}).get("weight") if isinstance(opts, dict) else None
        if w is not None and (not number(w) or w < 0):
            add(f"regularizers.{name}.weight", f"must be a number >= 0 (got {w!r})")
    layer = (resolved.get("model") or {}).get("layer") or {}
    theta = layer.get("theta") if isinstance(layer, dict) else None
    if theta is not None and (not number(theta) or not 0 <= theta <= 1):
        add("model.layer.theta", f"must be a number in [0, 1] (got {theta!r})")
    for key in ("solver", "backward"):
        spec = layer.get(key) if isinstance(layer, dict) else None
        if isinstance(spec, dict):
            tol, iters = spec.get("tol"), spec.get("max_iter")
            if tol is not None and (not number(tol) or not tol > 0):
                add(f"model.layer.{key}.tol", f"must be a number > 0 (got {tol!r})")
            if iters is not None and (not isinstance(iters, int) or isinstance(iters, bool) or iters < 1):
                add(f"model.layer.{key}.max_iter", f"must be an integer >= 1 (got {iters!r})")
    return errors


_FLOAT_PATHS = ("model.layer.theta", "model.layer.solver.tol", "model.layer.backward.tol", "train.optimizer.lr",
                "model.h")


def canonical_numbers(resolved: Dict[str, Any]) -> None:
    """Real-valued options written as integers become floats (``theta: 1`` is ``theta: 1.0``), so that the same run
    has one identity however it was written (booleans are left for the value checks to refuse)."""
    paths = list(_FLOAT_PATHS) + [f"regularizers.{k}.weight" for k in (resolved.get("regularizers") or {})]
    for path in paths:
        v = get_path(resolved, path, None)
        if isinstance(v, int) and not isinstance(v, bool):
            set_path(resolved, path, float(v))


def canonical_layer(model: Dict[str, Any]) -> None:
    """Record the implicit layers' effective settings in the run config (and so in its identity), completed by their
    one owner, :func:`irn_core.models.complete_layer`: a library default that changes later cannot make a cached run
    look like the new one. Unknown solvers or options are left for the registry check to report."""
    from irn_core.models import complete_layer, layer_kind

    if not isinstance(model, dict) or not model.get("name") or layer_kind(model) == "none":
        return
    try:
        model["layer"] = complete_layer(model)
    except (ValueError, TypeError):
        return
