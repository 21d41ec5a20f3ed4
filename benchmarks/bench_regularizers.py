"""Overhead of the trajectory regularisers (issue 3). A script, not a test.

    python benchmarks/bench_regularizers.py [--device cpu|cuda] [--repeats 7] [--kind mlp|conv]

Measures, in one process, the wall time of one training step (forward, loss, backward, optimiser
step) of the same ImplicitBlock model, plain vs regularised with eq 20's divergence + Jacobian terms
(one Hutchinson sample, shared VJP), and prints the median of each and their ratio. The regularisers
add one forward of F per trajectory point plus one VJP per Hutchinson sample (with create_graph, so
the backward also does a double-backward through F at each point).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from irn_core import ImplicitBlock, regularization
from irn_core.fields import ConvField, MLPField

REG = {"divergence": {"weight": 0.01, "p": 2, "samples": 1}, "jacobian": {"weight": 0.1, "samples": 1}}


def build(kind: str, device: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mlp":
        field = MLPField([32, 64, 64, 32], activation="tanh")
        x = torch.randn(256, 32)
    else:
        field = ConvField(8, activation="relu")
        x = torch.randn(32, 8, 16, 16)
    with torch.no_grad():  # a mildly contractive field: a few solver iterations per step
        for p in field.parameters():
            p.mul_(0.5)
    block = ImplicitBlock(field, steps=5, theta=0.5, h=0.2, solver={"name": "anderson", "tol": 1e-5, "max_iter": 50},
                          backward={"name": "gmres", "tol": 1e-5, "max_iter": 30}, on_nonconvergence="ignore")
    return block.to(device), x.to(device)


def step(block, x, opt, regularized: bool, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    block.keep_trajectory = regularized
    y = block(x)
    loss = y.pow(2).mean()
    if regularized:
        total, _ = regularization(block, REG)
        loss = loss + total
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--kind", choices=["mlp", "conv"], default="mlp")
    args = ap.parse_args()
    block, x = build(args.kind, args.device)
    opt = torch.optim.SGD(block.parameters(), lr=0.0)  # lr 0: every step solves the same problem
    for _ in range(2):  # warm-up
        step(block, x, opt, False, args.device)
        step(block, x, opt, True, args.device)
    plain, reg = [], []
    for _ in range(args.repeats):  # interleaved, so drifts of the machine hit both alike
        plain.append(step(block, x, opt, False, args.device))
        reg.append(step(block, x, opt, True, args.device))
    mp, mr = statistics.median(plain), statistics.median(reg)
    nfe = sum(s.nfe for s in block.last_stats if s is not None)
    print(f"device={args.device} kind={args.kind} batch={x.shape[0]} steps={block.steps} "
          f"forward F-evaluations per block forward={nfe}")
    print(f"plain training step:       median {mp * 1e3:8.2f} ms over {args.repeats}")
    print(f"regularised (div+jac, n=1): median {mr * 1e3:8.2f} ms over {args.repeats}")
    print(f"overhead ratio regularised/plain: {mr / mp:.2f}")


if __name__ == "__main__":
    main()
