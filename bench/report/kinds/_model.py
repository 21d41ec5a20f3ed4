"""Loading a run's trained model (the logged ``model/state_dict.pt``) on the CPU, for the kinds that
recompute from it (vector_field, spectrum, trajectories)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch


class ModelUnavailable(RuntimeError):
    pass


def load_model(ctx, row) -> Tuple[torch.nn.Module, Any, dict]:
    """(model in eval mode on CPU, task, config) of a finished run."""
    from irn_core.models import build_model

    from ...tasks import build_task

    cache = ctx.data.__dict__.setdefault("_models", {})
    rid = row["run_id"]
    if rid in cache:
        return cache[rid]
    cfg = ctx.data.config(row["spec_hash"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            p = ctx.data.artifact(rid, "model/state_dict.pt", tmp)
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailable(f"run {row['label']!r}: no model/state_dict.pt artifact ({e})") from None
        state = torch.load(p, map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    model = build_model(cfg["model"])
    model.load_state_dict(state)
    model.eval()
    for m in model.modules():  # the solve warns on non-convergence; a figure should not stop for that
        if hasattr(m, "on_nonconvergence"):
            try:
                m.on_nonconvergence = "ignore"
            except Exception:  # noqa: BLE001
                pass
    task = build_task(cfg["task"])
    cache[rid] = (model, task, cfg)
    return cache[rid]


def pick_run(cell, seed: Optional[int]):
    fin = cell.finished
    if fin.empty:
        return None
    if seed is not None:
        fin = fin[fin["seed"] == int(seed)]
        if fin.empty:
            return None
    return fin.sort_values("seed").iloc[0]


def is_state_model(model) -> bool:
    return hasattr(model, "block") and hasattr(model, "lift")


def inputs(ds) -> Tuple[torch.Tensor, torch.Tensor]:
    x, y = ds.tensors if hasattr(ds, "tensors") else zip(*[ds[i] for i in range(len(ds))])
    return (torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x), (torch.as_tensor(y) if not isinstance(y, torch.Tensor) else y)


def block_trajectory(model, x: torch.Tensor) -> List[torch.Tensor]:
    with torch.no_grad():
        _, traj = model.block(model.lift(x.float()), return_trajectory=True)
    return [t.detach() for t in traj]
