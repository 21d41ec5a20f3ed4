"""Solver and implicit-backward measurements (issue 2). A script, not a test: prints ratios taken
in one process (the machines are noisy, so only ratios against a baseline from the same run mean
anything).

    python benchmarks/bench_solvers.py [--device cpu|cuda] [--repeats 5]

1. F-evaluations (and time) to reach tol per nonlinear solver on fixed problems, relative to Picard.
2. Memory of one training step: IFT backward vs autograd through the unrolled solver (5, 50 iters).
   On CPU "memory" is the bytes autograd keeps saved for backward (saved-tensor hooks, exact);
   on CUDA additionally torch.cuda.max_memory_allocated.
3. Wall time of an implicit forward step vs its lower bound nfe × (time of one F evaluation).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from irn_core import ThetaLayer
from irn_core.fields import ConvField
from irn_core.solvers import NONLINEAR_SOLVERS, get_nonlinear


def conv_opnorm(conv: nn.Conv2d, shape, iters: int = 50) -> float:
    """‖conv‖₂ as an operator on inputs of ``shape`` (C, H, W), by power iteration on WᵀW."""
    u = torch.randn(1, *shape)
    with torch.no_grad():
        for _ in range(iters):
            v = nn.functional.conv2d(u, conv.weight, padding=conv.padding)
            u = nn.functional.conv_transpose2d(v, conv.weight, padding=conv.padding)
            u = u / u.norm()
        return float(nn.functional.conv2d(u, conv.weight, padding=conv.padding).norm())


def conv_field(channels: int, lip: float, size: int = 16, seed: int = 0) -> nn.Module:
    """Pre-activation tanh conv field with Lipschitz bound ‖conv₂‖‖conv₁‖ = ``lip``."""
    torch.manual_seed(seed)
    f = ConvField(channels, activation="tanh")
    with torch.no_grad():
        for conv in (f.conv1, f.conv2):
            conv.weight.mul_(lip ** 0.5 / conv_opnorm(conv, (channels, size, size)))
    return f


def timed(fn, repeats):
    out, ts = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return out, statistics.median(ts)


def section_solvers(device, repeats):
    print("\n## 1. Nonlinear solvers: F-evaluations to reach tol (theta=1, h=1, conv field 16ch 16x16, batch 16)")
    x = torch.randn(16, 16, 16, 16, device=device)
    problems = []
    for lip in (0.5, 0.9):
        problems.append((f"contractive: F = conv field with Lip bound {lip}", conv_field(16, lip).to(device)))
    stiff_inner = conv_field(16, 0.9).to(device)
    problems.append(("stiff: F(y) = -2.5 y + conv field (theta·h·Lip >= 2.5, Picard diverges)",
                     lambda y: -2.5 * y + stiff_inner(y)))
    for label, f in problems:
        with torch.no_grad():
            g = lambda y: x + f(y)  # noqa: E731
            y0 = x + f(x)
            rows = []
            for name in NONLINEAR_SOLVERS.names():
                (y, st), t = timed(lambda: get_nonlinear(name)(g, y0, tol=1e-5, max_iter=300), repeats)
                rows.append((name, st.nfe, st.iterations, st.all_converged, st.max_residual, t))
        base = next(r for r in rows if r[0] == "fixed_point")
        print(f"\n{label}")
        print(f"{'solver':14s} {'nfe':>6s} {'iters':>6s} {'conv':>5s} {'residual':>9s} {'time s':>8s} {'nfe/picard':>10s} {'time/picard':>11s}")
        for name, nfe, it, conv, res, t in rows:
            print(f"{name:14s} {nfe:6d} {it:6d} {str(conv):>5s} {res:9.2e} {t:8.4f} {nfe / base[1]:10.2f} {t / base[5]:11.2f}")


class SavedBytes:
    """Peak bytes held by autograd's saved tensors (exact on any device). A tensor saved by several ops (the input
    of a conv and of the next activation, say) is one storage: each storage is counted once."""

    def __init__(self):
        self.cur = self.peak = 0
        self.seen = set()

    def pack(self, t):
        st = t.untyped_storage()
        key = (t.device, st.data_ptr())
        n = 0
        if key not in self.seen:
            self.seen.add(key)
            n = st.nbytes()
            self.cur += n
            self.peak = max(self.peak, self.cur)
        return (t, n)

    def unpack(self, packed):
        t, n = packed
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self.ctx.__enter__()
        return self

    def __exit__(self, *a):
        self.ctx.__exit__(*a)


def section_memory(device):
    print("\n## 2. Memory of one training step (theta=0.5, conv field 16ch 32x32, batch 32)")
    f = conv_field(16, 0.9, size=32).to(device)
    x = torch.randn(32, 16, 32, 32, device=device, requires_grad=True)
    theta, h = 0.5, 1.0

    def ift():
        layer = ThetaLayer(f, theta=theta, h=h, solver={"name": "fixed_point", "tol": 1e-30, "max_iter": 50},
                           backward={"name": "gmres", "tol": 1e-6, "max_iter": 30}, on_nonconvergence="ignore")
        return layer(x)

    def unrolled(k):
        def run():
            y = x + h * f(x)
            for _ in range(k):
                y = x + h * f((1 - theta) * x + theta * y)
            return y
        return run

    results = {}
    for label, fn in (("IFT backward", ift), ("unrolled 5", unrolled(5)), ("unrolled 50", unrolled(50))):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            m0 = torch.cuda.memory_allocated()
        with SavedBytes() as sb:
            y = fn()
        loss = y.square().mean()
        loss.backward()
        cuda_peak = (torch.cuda.max_memory_allocated() - m0) if device.type == "cuda" else None
        results[label] = (sb.peak, cuda_peak)
        x.grad = None
        f.zero_grad(set_to_none=True)
    base = results["IFT backward"][0]
    print(f"{'method':14s} {'saved MiB':>10s} {'ratio':>7s}" + ("  cuda peak MiB" if device.type == "cuda" else ""))
    for label, (b, cp) in results.items():
        extra = f"  {cp / 2**20:14.1f}" if cp is not None else ""
        print(f"{label:14s} {b / 2**20:10.2f} {b / base:7.1f}{extra}")


def section_overhead(device, repeats):
    print("\n## 3. Implicit forward step vs its F-evaluation lower bound (theta=1, conv field 16ch 16x16, batch 16)")
    f = conv_field(16, 0.9).to(device)
    x = torch.randn(16, 16, 16, 16, device=device)
    with torch.no_grad():
        _, t_f = timed(lambda: f(x), max(repeats, 20))
    print(f"one F evaluation: {t_f * 1e3:.3f} ms")
    print(f"{'solver':14s} {'nfe':>5s} {'step ms':>8s} {'bound ms':>9s} {'step/bound':>10s}")
    for name in NONLINEAR_SOLVERS.names():
        layer = ThetaLayer(f, theta=1.0, solver={"name": name, "tol": 1e-5, "max_iter": 300})
        with torch.no_grad():
            _, t = timed(lambda: layer(x), repeats)
        nfe = layer.last_stats.nfe
        print(f"{name:14s} {nfe:5d} {t * 1e3:8.2f} {nfe * t_f * 1e3:9.2f} {t / (nfe * t_f):10.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    section_solvers(device, a.repeats)
    section_memory(device)
    section_overhead(device, a.repeats)


if __name__ == "__main__":
    main()
