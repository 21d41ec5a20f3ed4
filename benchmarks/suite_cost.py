"""Expected wall time of each run of a suite on this device, from a few timed steps (a script, not a test).

    OMP_NUM_THREADS=1 python benchmarks/suite_cost.py suites/paper/resnet_d_cifar.yaml [--device cuda] [--steps 5]

For every distinct cell (the seeds of a cell share one estimate) it builds the task, model, penalty and optimiser
of the resolved config exactly as ``bench run`` does, times ``--steps`` training steps after ``--warmup`` untimed
ones, and one evaluation pass over ``--eval-batches`` batches of the suite's evaluation split, then extrapolates:

    training  = steps per run × s/step,  steps per run = min(max_steps, epochs × ⌈n_train / batch⌉)
    evaluation = (epochs × |val| + (steps / every_steps + 1) × |eval split|) × s/sample
                 + |eval split| × Σ over (corruption, severity) [severity 0: s/sample;
                   else repeats × (s/sample + g × s/gradient)], g = 0 (noise, structured), 1 (FGSM), steps (PGD)

with s/gradient the timed input gradient ∇ₓ loss of the evaluation batches (what an attack step costs).

Image tasks whose files are absent are timed on random tensors of the real shape and size (what a step costs
does not depend on the pixel values much). Implicit cells: the solver's iterations change during training, so
the estimate holds for the early steps' iteration counts — the steps' median forward iterations are printed
beside it. Prints a markdown table and the suite's total (cells × seeds, run one after another).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from bench.corruptions import input_gradient, parse_spec
from bench.registries import build_penalty, build_task
from bench.suite import load_suite
from bench.tasks import DataError
from bench.tasks.data import ImageTensorDataset
from bench.train import make_loader, make_optimizer, set_seed
from irn_core import ConvergenceWarning
from irn_core.layers import implicit_layers
from irn_core.models import build_model

FAKE = {"mnist": ((1, 28, 28), 60000, 10000, 10), "cifar10": ((3, 32, 32), 50000, 10000, 10),
        "cifar100": ((3, 32, 32), 50000, 10000, 100)}


def splits(task, seed):
    """(train, val, eval sets, 'real' | 'random tensors')."""
    try:
        tr, va, te = task.data(seed)
        return tr, va, te, "real"
    except DataError:
        shape, n_tr, n_te, k = FAKE[task.name]
        n_tr = getattr(task.options, "subset", None) or n_tr
        g = torch.Generator().manual_seed(0)

        def fake(n):
            return ImageTensorDataset(torch.rand(n, *shape, generator=g), torch.randint(0, k, (n,), generator=g))
        return fake(n_tr), None, fake(n_te), "random tensors"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_cell(cfg, device, steps, warmup, eval_batches):
    seed = int(cfg["seed"])
    set_seed(seed)
    task = build_task(cfg["task"])
    train, val, test, data = splits(task, seed)
    set_seed(seed)
    model = build_model(cfg["model"]).to(device)
    penalty = build_penalty(cfg.get("regularizers") or {}, model, seed=seed)
    tcfg, ecfg = cfg["train"], cfg.get("evaluate") or {}
    opt = make_optimizer(model.parameters(), tcfg["optimizer"])
    bs = tcfg.get("batch_size")
    bs = len(train) if bs in (None, "full") else int(bs)
    loader = iter(make_loader(train, bs, shuffle=True, seed=seed))
    fwd_iters = []

    def step():
        nonlocal loader
        try:
            x, y = next(loader)
        except StopIteration:
            loader = iter(make_loader(train, bs, shuffle=True, seed=seed))
            x, y = next(loader)
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        total = task.loss(task.forward(model, x, y), y)
        if penalty is not None:
            total = total + penalty(model, (x, y))[0]
        total.backward()
        opt.step()
        for lay in implicit_layers(model).values():
            st = lay.last_stats
            for s in (st if isinstance(st, list) else [st]):
                if s is not None:
                    fwd_iters.append(s.iterations)

    model.train()
    for _ in range(warmup):
        step()
    fwd_iters.clear()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    s_step = (time.perf_counter() - t0) / steps

    name = ecfg.get("split", "test")
    split = {"test": test, "train": train, "val": val}[name]
    if split is None:  # as the runner: no silent fallback to another split
        raise ValueError(f"evaluate.split is {name!r} but task {task.name!r} has no {name} set")
    ebs = int(ecfg.get("batch_size", 256))
    n_eval = min(len(split), ecfg.get("max_samples") or len(split))
    sub = Subset(split, range(min(n_eval, eval_batches * ebs)))
    if len(sub) == 0:
        raise ValueError(f"the evaluation split {name!r} is empty")
    plan = parse_spec(ecfg.get("corruptions") or {})
    attacks = any(c.needs_model and any(s > 0 for s in sev) for c, sev in plan)
    model.eval()
    s_sample, s_grad = _time_eval(model, task, sub, ebs, device, attacks)

    n_steps = int(tcfg["epochs"]) * math.ceil(len(train) / bs)
    if tcfg.get("max_steps"):
        n_steps = min(n_steps, int(tcfg["max_steps"]))
    epochs = math.ceil(n_steps / math.ceil(len(train) / bs))
    periodic = ecfg.get("periodic") or {}
    passes = (n_steps // int(periodic["every_steps"]) if periodic else 0) + 1  # + the final evaluation
    corr_s = n_eval * corruption_cost(plan, s_sample, s_grad)
    eval_s = (epochs * (len(val) if val is not None else 0) + passes * n_eval) * s_sample + corr_s
    med = statistics.median(fwd_iters) if fwd_iters else None
    return {"s_step": s_step, "steps": n_steps, "train_s": n_steps * s_step, "eval_s": eval_s,
            "fwd_iters": med, "data": data}


def _time_eval(model, task, sub, ebs, device, attacks):
    """(s per sample of an evaluation forward, s per sample of an input gradient ∇ₓ loss or None)."""
    batches = [(x.to(device), y.to(device)) for x, y in DataLoader(sub, batch_size=ebs)]
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, y in batches:
            task.metrics(task.forward(model, x, y), y)
    sync(device)
    s_sample = (time.perf_counter() - t0) / len(sub)
    if not attacks:
        return s_sample, None
    t0 = time.perf_counter()
    for x, y in batches:
        input_gradient(model, task, x, y)
    sync(device)
    return s_sample, (time.perf_counter() - t0) / len(sub)


def corruption_cost(plan, s_sample, s_grad):
    """Seconds per evaluated sample of every (corruption, severity) pass, as ``evaluate_corruptions`` runs them:
    severity 0 is one plain pass; otherwise ``repeats`` passes, each one forward plus, for FGSM, one input
    gradient and for PGD ``steps`` of them."""
    total = 0.0
    for corr, severities in plan:
        for sev in severities:
            if sev == 0:
                total += s_sample
                continue
            grads = {"fgsm": 1, "pgd": int(corr.opts.get("steps", 10))}.get(corr.name, 0)
            total += int(corr.opts.get("repeats", 1)) * (s_sample + grads * (s_grad or 0.0))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--eval-batches", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of the cell labels to time")
    args = ap.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    device = torch.device(args.device)
    suite = load_suite(Path(args.suite))
    cells = {}
    for spec in suite.specs:  # the seeds of a cell share one estimate
        cells.setdefault(spec.cell_label or "(one cell)", []).append(spec)
    print(f"## {suite.cfg.name}: {len(suite.specs)} runs in {len(cells)} cells on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads), {args.steps} timed steps per cell\n")
    print("| cell | seeds | data | s/step | steps/run | fwd iters | train (min) | eval (min) | run (min) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    total = 0.0
    for label, specs in cells.items():
        if args.only and not any(s in label for s in args.only.split(",")):
            continue
        try:
            r = time_cell(specs[0].config, device, args.steps, args.warmup, args.eval_batches)
        except Exception as e:  # noqa: BLE001 - a failing cell says why; the others go on
            print(f"| {label} | {len(specs)} | | failed: {type(e).__name__}: {str(e)[:80]} | | | | | |", flush=True)
            continue
        run = r["train_s"] + r["eval_s"]
        total += run * len(specs)
        it = "" if r["fwd_iters"] is None else f"{r['fwd_iters']:g}"
        print(f"| {label} | {len(specs)} | {r['data']} | {r['s_step']:.4f} | {r['steps']} | {it} | "
              f"{r['train_s'] / 60:.1f} | {r['eval_s'] / 60:.1f} | {run / 60:.1f} |", flush=True)
    print(f"\n{'cells timed' if args.only else 'suite'} total, runs one after another: {total / 3600:.2f} h")


if __name__ == "__main__":
    main()
