"""The suite's view of the registries it validates against (tasks, models, solvers, regularisers,
corruptions, optimisers): each ``check_*`` returns a list of 'field: message' errors (empty = fine),
so that a suite reports every problem at once, before anything runs.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from .tasks import build_task  # noqa: F401  (re-exported)


def _msg(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_train(train: Dict[str, Any]) -> List[str]:
    from .train import make_optimizer, make_scheduler

    errors = []
    p = torch.nn.Parameter(torch.zeros(1))
    try:
        opt = make_optimizer([p], train.get("optimizer") or {})
    except Exception as e:  # noqa: BLE001
        return [f"train.optimizer: {_msg(e)}"]
    try:
        make_scheduler(opt, train.get("scheduler"))
    except Exception as e:  # noqa: BLE001
        errors.append(f"train.scheduler: {_msg(e)}")
    return errors


def check_model(model: Dict[str, Any], build: bool = True) -> List[str]:
    """Build the model once (on the CPU, cheap) so every option — layer, field, solvers — is checked by the
    code that uses it; ``build=False`` (the section has errors already): only the solver names."""
    from irn_core.models import build_model

    errors = []
    layer = model.get("layer") or {}
    from irn_core.solvers import LINEAR_SOLVERS, NONLINEAR_SOLVERS

    for key, reg in (("solver", NONLINEAR_SOLVERS), ("backward", LINEAR_SOLVERS)):
        if layer.get(key) is not None:
            try:
                reg.resolve(layer[key])
            except (ValueError, TypeError) as e:
                errors.append(f"model.layer.{key}: {_msg(e)}")
    if errors or not build:
        return errors
    try:
        build_model(model)
    except Exception as e:  # noqa: BLE001
        errors.append(f"model: {_msg(e)}")
    return errors


def check_regularizers(reg: Dict[str, Any]) -> List[str]:
    from irn_core.regularizers import check_config

    cfg, streams = _split_streams(reg)
    try:
        check_config(cfg)
        if streams is not None:
            _make_streams(streams, 0)
    except Exception as e:  # noqa: BLE001
        return [f"regularizers: {_msg(e)}"]
    return []


def check_corruptions(spec: Dict[str, Any]) -> List[str]:
    from .corruptions import parse_spec

    try:
        parse_spec(spec or {})
    except Exception as e:  # noqa: BLE001
        return [f"evaluate.corruptions: {_msg(e)}"]
    return []


# --------------------------------------------------------------------------- penalties for training

STREAMS = "perturbation_streams"


def _split_streams(reg: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    reg = dict(reg or {})
    return reg, reg.pop(STREAMS, None)


def _make_streams(opts: Dict[str, Any], seed: int):
    from irn_core.regularizers import PerturbationStreams

    # frozen: the training loop already made the clean forward (and its normalisation update)
    return PerturbationStreams(**{"seed": seed, "frozen": True, **opts})


def build_penalty(reg: Dict[str, Any], model: torch.nn.Module, seed: int = 0):
    """``penalty_fn(model, (x, y)) -> (total, {name: float})`` for :func:`bench.train.train_epoch`, or None.

    Trajectory regularisers (eq 20) read the states the implicit layers keep after the training
    forward (``keep_trajectory``); perturbation streams (arxiv-v1) run their own forward on perturbed
    copies of the batch.
    """
    from irn_core.layers import theta_layers
    from irn_core.regularizers import regularization

    cfg, streams_cfg = _split_streams(reg)
    active = {k: v for k, v in cfg.items() if float((v or {}).get("weight", 0.0)) != 0.0}
    streams = _make_streams(streams_cfg, seed) if streams_cfg and float(streams_cfg.get("weight", 0.0)) else None
    if not active and streams is None:
        return None
    for layer in theta_layers(model).values():
        layer.keep_trajectory = True
    gen = torch.Generator().manual_seed(int(seed))

    def penalty(model, batch):
        comps: Dict[str, float] = {}
        total = None
        if active:
            t, c = regularization(model, active, generator=gen if _same_device(model, gen) else None)
            total = t
            comps.update({k: float(v.detach()) for k, v in c.items()})
        if streams is not None:
            _, c = streams(model, batch[0])
            p = sum(c.values())
            total = p if total is None else total + p
            comps.update({k: float(v.detach()) for k, v in c.items()})
        return total, comps

    return penalty


def _same_device(model: torch.nn.Module, gen: torch.Generator) -> bool:
    p = next(model.parameters(), None)
    return p is None or p.device.type == gen.device.type
