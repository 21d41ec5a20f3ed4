"""Loading a run's trained model (the logged ``model/state_dict.pt``) on the CPU, for the kinds that
recompute from it (vector_field, spectrum, trajectories)."""
from __future__ import annotations

import tempfile
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


def state_model_groups(ctx, e, what: str):
    """:func:`model_groups` keeping only state-space models (mlp_ode: ``lift`` + ``block``)."""
    return model_groups(ctx, e, what, state_model=True)


def model_groups(ctx, e, what: str, state_model: bool = False):
    """For model-based kinds: yield ``(suffix, title_part, hue, [(cell, run row, model, task, config)])`` per
    split group, one entry per cell whose chosen run (``seed:`` or the first finished) has a loadable
    model (a state-space one if ``state_model``); cells without one get a note naming ``what`` is missing."""
    from ..output import default_hue, split_groups
    from ._common import make_cells, split_by_default

    split_by = split_by_default(ctx, e["split_by"])
    hue = default_hue(ctx.data, ctx.runs, e["hue"])
    for suffix, title_part, runs in split_groups(ctx.runs, split_by):
        items = []
        for c in make_cells(ctx, runs, hue, exclude=(split_by,) if split_by else ()):
            row = pick_run(c, e["seed"])
            if row is None:
                ctx.note(f"{c.label}: {c.status_text} — no {what}.")
                continue
            try:
                model, task, cfg = load_model(ctx, row)
            except ModelUnavailable as ex:
                ctx.note(str(ex))
                continue
            if state_model and not is_state_model(model):
                ctx.note(f"{c.label}: {what} needs a state-space model (mlp_ode), got {cfg['model']['name']!r}.")
                continue
            items.append((c, row, model, task, cfg))
        yield suffix, title_part, hue, items
