"""Time per training epoch of each task's default model at θ = 0 and θ = 1 (issue 4). A script, not a test.

    OMP_NUM_THREADS=2 python benchmarks/epoch_times.py [--device cpu|cuda] [--batches 3] [--tasks ex1_sine,...]

Times ``--batches`` training steps of train_epoch (after one warm-up step) and extrapolates to one
epoch (len(train) / batch_size steps). MNIST and CIFAR use random [0, 1] tensors of the real shapes
and sizes when their files are absent (the time of a step does not depend on pixel values much;
implicit solves may need a few more iterations on real data). Prints a markdown table and the θ=1/θ=0
ratios. Timings on a shared machine are noisy: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
import warnings

import torch
from torch.utils.data import Subset

from bench.tasks import DataError, build_task
from bench.tasks.data import ImageTensorDataset
from bench.train import make_loader, make_optimizer, set_seed, train_epoch
from irn_core import ConvergenceWarning
from irn_core.models import build_model

CASES = [
    ("ex1_sine", {"name": "ex1_sine"}, {}),
    ("ex2_stiff (points 2)", {"name": "ex2_stiff", "points": 2}, {}),
    ("ex3_lotka", {"name": "ex3_lotka", "extrapolate": 10.0}, {}),
    ("v1_function", {"name": "v1_function"}, {}),
    ("v1_spirals", {"name": "v1_spirals"}, {}),
    ("digits resnet18_preact", {"name": "digits"}, {}),
    ("digits mnist_compact", {"name": "digits", "arch": "mnist_compact"}, {}),
    ("mnist subset 1000 resnet18_preact", {"name": "mnist", "subset": 1000}, {}),
    ("mnist full resnet18_preact", {"name": "mnist"}, {}),
    ("mnist subset 1000 mnist_compact", {"name": "mnist", "subset": 1000, "arch": "mnist_compact"}, {}),
    # θ-form (no batch norm) diverges at the paper's SGD lr 0.1 (NaN within a few steps): timed at lr 0.01
    ("cifar10 resnet_d n=3 (θ-form, lr 0.01)", {"name": "cifar10"}, {"form": "theta"}),
    ("cifar10 resnet_d n=3 (paper post-act, θ=0 only)", {"name": "cifar10"}, {}),
]

FAKE = {"mnist": ((1, 28, 28), 60000, 10), "cifar10": ((3, 32, 32), 50000, 10), "cifar100": ((3, 32, 32), 50000, 100)}


def train_set(task):
    try:
        return task.data(0)[0]
    except DataError:
        shape, n, k = FAKE[task.name]
        n = task.options.subset or n
        g = torch.Generator().manual_seed(0)
        return ImageTensorDataset(torch.rand(n, *shape, generator=g), torch.randint(0, k, (n,), generator=g))


def time_epoch(task, model_cfg, train, batches, device):
    set_seed(0)
    model = build_model(model_cfg).to(device)
    tr = task.default_train()
    if model_cfg.get("form") == "theta":
        tr["optimizer"] = {**tr["optimizer"], "lr": 0.01}
    bs = tr["batch_size"] or len(train)
    opt = make_optimizer(model.parameters(), tr["optimizer"])
    steps_epoch = math.ceil(len(train) / bs)
    k = min(batches, steps_epoch)  # distinct batches per timed pass
    sub = Subset(train, range(min(len(train), (k + 1) * bs)))
    loader = make_loader(sub, bs, shuffle=True, seed=0)
    warm = make_loader(Subset(train, range(min(len(train), bs))), bs, shuffle=False)
    train_epoch(model, warm, task, opt, device)  # warm-up step
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    while done < batches:  # small epochs: repeat them until `batches` steps were timed
        done += int(train_epoch(model, loader, task, opt, device, max_steps=k)["steps"])
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / done
    return dt * steps_epoch, dt, steps_epoch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--tasks", default="")
    args = ap.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    rows = []
    for label, tcfg, mover in CASES:
        if args.tasks and not any(s in label for s in args.tasks.split(",")):
            continue
        task = build_task(tcfg)
        train = train_set(task)
        out = {}
        for theta in (0.0, 1.0):
            cfg = {**copy.deepcopy(task.default_model()), **mover}
            if cfg.get("form") == "post_activation" and theta > 0:
                continue
            cfg["layer"] = {**cfg.get("layer", {}), "theta": theta}
            try:
                out[theta] = time_epoch(task, cfg, train, args.batches, args.device)
            except Exception as e:  # e.g. a diverging θ-form ResNet-D (NaN in the solver)
                print(f"{label} θ={theta}: failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
                out[theta] = (float("nan"), float("nan"), math.nan)
        e0 = out[0.0][0]
        e1 = out.get(1.0, (float("nan"),))[0]
        rows.append((label, out[0.0][2], e0, e1, e1 / e0 if e0 == e0 and e0 > 0 else float("nan")))
        print(f"{label}: steps/epoch {out[0.0][2]}, θ=0 {e0:.2f}s, θ=1 {e1:.2f}s, ratio {rows[-1][-1]:.1f}", flush=True)
    print(f"\n| task / model ({args.device}) | steps/epoch | epoch θ=0 (s) | epoch θ=1 (s) | θ=1/θ=0 |")
    print("|---|---|---|---|---|")
    for label, n, e0, e1, r in rows:
        print(f"| {label} | {n} | {e0:.2f} | {e1:.2f} | {r:.1f} |")


if __name__ == "__main__":
    main()
