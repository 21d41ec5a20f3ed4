"""Solver overhead, memory and a torchdeq comparison (issue 14). A script, not a test: every number it prints is a
ratio against a baseline measured in the same process, so a noisy machine shifts both sides alike.

    OMP_NUM_THREADS=2 python benchmarks/bench_overhead.py [--device cpu|cuda] [--repeats 7] [--sections 1,2,3]

1. **Implicit step vs its F-evaluation lower bound**: wall time of one forward solve divided by nfe × (time of one
   evaluation of the step's map g; both the fastest of many calls) — 1.0 means the solver costs nothing beyond the field. Three states:
   ex1's (20 points × 2, the paper's GELU MLP 2→10→10→10→10→2, θ = 0.5), an MLP state (256 × 100, tanh MLP
   100→100→100, Lip ≈ 0.9) and a conv state (64 × 16 × 32 × 32, pre-activation tanh conv field, Lip 0.9, θ = 1),
   and a slowly contracting conv field (0.95 × a 3×3 channel-wise average of tanh(y): Jacobian spectral radius
   0.95), where Picard needs ~200 evaluations and Anderson saves most.
   The library's default forward tolerance (``rms`` 1e-5, float32). With torchdeq installed
   (``pip install torchdeq``, optional, benchmark only), its Anderson on the same maps with the same stopping
   rule (max over the batch of the per-sample ‖g(y) − y‖ ≤ 1e-5·√n, memory 5, from the same y₀).
2. **Peak memory of one training step**, implicit (θ = 1, IFT backward, default solvers) vs explicit (θ = 0) on the
   conv state — and on a network, ResNet-D n = 3 in θ-form (18 layers, batch 128 of MNIST-shaped inputs), θ = 1 vs
   θ = 0: peak bytes allocated during forward + backward (CPU: the profiler's per-op allocations in time order;
   CUDA: ``max_memory_allocated``), and the bytes held from forward to backward (autograd's saved tensors, each
   storage once).
3. **One ex1 training epoch** at the paper suite's settings (full batch, T = 5, Jacobian + divergence penalties,
   Adam) with L-BFGS (the suite) and Anderson, and the cost of logging the epoch's metrics to a fresh SQLite MLflow
   store: immediately (one write per epoch) vs buffered (``bench.tracking.MetricBuffer``).
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from irn_core import ThetaLayer
from irn_core.solvers import get_nonlinear

TOL_RMS = 1e-5


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats, device, warmup=2):
    """The fastest of ``repeats`` timed calls (after ``warmup``): on a shared machine noise only ever adds time, so
    the minimum is the stable estimate of what the code costs."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return out, min(ts)


def opnorm(f, shape, device, iters=40):
    """Largest singular value of the Jacobian of a linear-at-0 map at 0 (power iteration on JᵀJ by autograd)."""
    u = torch.randn(1, *shape, device=device)
    for _ in range(iters):
        u.requires_grad_(True)
        v = f(u)
        (w,) = torch.autograd.grad(v, u, v)
        u = (w / w.norm()).detach()
    with torch.no_grad():
        return float(f(u).norm())


def problems(device):
    """(label, g, y0) — g the θ-step's fixed-point map, y0 the explicit-step initial guess."""
    torch.manual_seed(0)
    out = []
    # ex1: the paper's field at θ = 0.5, h = 1 (20 points, state dim 2)
    dims = [2, 10, 10, 10, 10, 2]
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [nn.Linear(a, b, bias=i < len(dims) - 2), nn.GELU()]
    f1 = nn.Sequential(*layers[:-1]).to(device)
    s1 = opnorm(f1, (2,), device)
    with torch.no_grad():
        f1[0].weight.mul_(0.9 / s1)
    x1 = torch.stack([torch.linspace(-5, 5, 20), torch.zeros(20)], 1).to(device)
    out.append(("ex1 20x2 (theta .5)", lambda y: x1 + f1(0.5 * x1 + 0.5 * y), x1 + f1(x1)))
    # MLP state
    f2 = nn.Sequential(nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 100)).to(device)
    with torch.no_grad():
        for lin in (f2[0], f2[2]):
            lin.weight.mul_(0.9 ** 0.5 / torch.linalg.matrix_norm(lin.weight, 2))
    x2 = torch.randn(256, 100, device=device)
    out.append(("mlp 256x100 (theta 1)", lambda y: x2 + f2(y), x2 + f2(x2)))
    # conv state
    from irn_core.fields import ConvField

    f3 = ConvField(16, activation="tanh").to(device)
    for conv in (f3.conv1, f3.conv2):
        s3 = opnorm(lambda u, c=conv: nn.functional.conv2d(u, c.weight.detach(), padding=c.padding), (16, 32, 32), device)
        with torch.no_grad():
            conv.weight.mul_(0.9 ** 0.5 / s3)
    x3 = torch.randn(64, 16, 32, 32, device=device)
    out.append(("conv 64x16x32x32 (theta 1)", lambda y: x3 + f3(y), x3 + f3(x3)))
    # a slowly contracting conv field: 0.95 × a per-channel 3x3 average (circular) of tanh(y) — its Jacobian's
    # spectral radius is 0.95 (the constant mode), so Picard needs ~200 steps where Anderson needs a few dozen
    f4 = nn.Conv2d(16, 16, 3, padding=1, padding_mode="circular", groups=16, bias=False).to(device)
    with torch.no_grad():
        f4.weight.fill_(0.95 / 9)
    x4 = torch.randn(64, 16, 32, 32, device=device)
    out.append(("conv slow (rho 0.95, theta 1)", lambda y: x4 + f4(torch.tanh(y)), x4 + f4(torch.tanh(x4))))
    return out


def torchdeq_anderson():
    try:
        from torchdeq.solver.anderson import anderson_solver
    except ImportError:
        return None
    return anderson_solver


def section_overhead(device, repeats):
    print(f"\n## 1. Forward solve vs its F-evaluation lower bound (tol rms {TOL_RMS:g}, float32, {device})")
    tdq = torchdeq_anderson()
    if tdq is None:
        print("(torchdeq not installed: `pip install torchdeq` adds its Anderson to the table)")
    print(f"{'problem':28s} {'solver':18s} {'nfe':>5s} {'stop':>9s} {'max res':>9s} {'solve ms':>9s} "
          f"{'g ms':>7s} {'solve/bound':>11s} {'vs fixed_point':>14s}")
    for label, g, y0 in problems(device):
        with torch.no_grad():
            n = y0[0].numel()
            _, t_g = best_time(lambda: g(y0), max(repeats * 5, 30), device)
            rows = []
            for name, opts in (("fixed_point", {}), ("anderson", {"m": 5})):
                solve = get_nonlinear(name)
                (y, st), t = best_time(lambda: solve(g, y0, tol=TOL_RMS, mode="rms", max_iter=300, **opts),
                                         repeats, device)
                rows.append((name, st.nfe, getattr(st, "stop", "") or "-", st.max_residual * math.sqrt(n), t))
            if tdq is not None:
                def run_tdq():
                    return tdq(g, y0, max_iter=300, tol=TOL_RMS * math.sqrt(n), stop_mode="abs", m=5)
                (y, _, info), t = best_time(run_tdq, repeats, device)
                nfe = int(info["nstep"].max()) + 1  # its loop evaluates f once per step, plus the two Picard starts
                res = float((g(y) - y).reshape(y.shape[0], -1).norm(dim=1).max())
                rows.append(("torchdeq anderson", nfe, "-", res, t))
        base = rows[0][4]
        for name, nfe, stop, res, t in rows:
            print(f"{label:28s} {name:18s} {nfe:5d} {stop:>9s} {res:9.2e} {t * 1e3:9.2f} {t_g * 1e3:7.3f} "
                  f"{t / (nfe * t_g):11.2f} {t / base:14.2f}")


def peak_bytes(fn, device):
    """Peak bytes allocated while ``fn`` runs, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        m0 = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - m0
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every allocation and free the profiler saw, in time order (its "[memory]" records: +bytes, -bytes). Summing the
    # ops' self_cpu_memory_usage instead undercounts: an op's self usage nets its children's allocations against its
    # own frees and is placed at the op's start, before the children allocate.
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    cur = peak = 0
    for e in records:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def saved_bytes(fn):
    """Bytes held by autograd's saved tensors when ``fn`` returns (each storage once)."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def section_memory(device):
    print(f"\n## 2. Memory of one training step on the conv state (batch 64, 16 ch, 32x32, {device})")
    from irn_core.fields import ConvField

    torch.manual_seed(0)
    f = ConvField(16, activation="tanh").to(device)
    with torch.no_grad():
        for conv in (f.conv1, f.conv2):
            conv.weight.mul_(0.5)
    x = torch.randn(64, 16, 32, 32, device=device)
    rows = []
    for label, theta, solver in (("explicit (theta 0)", 0.0, None),
                                 ("implicit fixed_point", 1.0, {"name": "fixed_point", "tol": TOL_RMS, "mode": "rms"}),
                                 ("implicit anderson (default)", 1.0, None)):
        layer = ThetaLayer(f, theta=theta, solver=solver, on_nonconvergence="ignore")

        def step():
            f.zero_grad(set_to_none=True)
            y, held = saved_bytes(lambda: layer(x))
            y.square().mean().backward()
            step.held = held

        step()  # warm-up (allocator, lazy init)
        f.zero_grad(set_to_none=True)  # freed before measuring: the CPU profiler does not see frees of older blocks
        peak = peak_bytes(step, device)
        rows.append((label, peak, step.held))
    # a network: ResNet-D n = 3 in θ-form (16 channels, 18 layers), batch 128 of MNIST-shaped inputs, θ = 0 vs θ = 1
    from irn_core.models import build_model

    xb = torch.rand(128, 1, 28, 28, device=device)
    yb = torch.randint(0, 10, (128,), device=device)
    for label, theta in (("resnet_d n=3 theta 0", 0.0), ("resnet_d n=3 theta 1", 1.0)):
        torch.manual_seed(0)
        net = build_model({"name": "resnet_ds", "variant": "D", "n": 3, "in_channels": 1, "form": "theta",
                           "layer": {"theta": theta, "on_nonconvergence": "ignore"}}).to(device)

        def nstep(net=net):
            net.zero_grad(set_to_none=True)
            out, held = saved_bytes(lambda: net(xb))
            nn.functional.cross_entropy(out, yb).backward()
            nstep.held = held

        nstep()
        net.zero_grad(set_to_none=True)
        rows.append((label, peak_bytes(nstep, device), nstep.held))
    base_peak, base_held = rows[0][1], rows[0][2]
    state = x.numel() * x.element_size()
    print(f"(one state = {state / 2**20:.1f} MiB)")
    print(f"{'step':28s} {'peak MiB':>9s} {'peak/explicit':>13s} {'held MiB':>9s} {'held/explicit':>13s}")
    for i, (label, peak, held) in enumerate(rows):
        if i == 3:
            base_peak, base_held = peak, held
            print("network (ratios to its theta = 0 step):")
        print(f"{label:28s} {peak / 2**20:9.1f} {peak / base_peak:13.2f} {held / 2**20:9.1f} {held / base_held:13.2f}")


def section_ex1(device, epochs):
    print(f"\n## 3. One ex1 training epoch at the paper suite's settings ({device}; median of {epochs} epochs)")
    from bench.suite import load_suite
    from bench.registries import build_penalty, build_task
    from bench.train import fit, set_seed
    from irn_core.models import build_model

    suite = load_suite(Path(__file__).resolve().parents[1] / "suites/paper/ex1_sine.yaml")
    cfg = next(c for c in suite.specs if c.config["model"]["layer"]["theta"] == 0.5
               and c.config["regularizers"]["divergence"]["weight"] == 0.5).config
    rows = {}
    for label, solver in (("lbfgs (suite)", None),
                          ("anderson", {"name": "anderson", "tol": 1e-3, "mode": "abs", "max_iter": 200})):
        c = {**cfg, "model": {**cfg["model"], "layer": dict(cfg["model"]["layer"])}}
        if solver:
            c["model"]["layer"]["solver"] = solver
        set_seed(10)
        task = build_task(c["task"])
        train, val, _ = task.data(10)
        model = build_model(c["model"]).to(device)
        penalty = build_penalty(c["regularizers"], model, seed=10)
        times = []
        t = [time.perf_counter()]

        losses = {}

        def on_epoch(epoch, metrics, t=t, times=times, losses=losses):
            now = time.perf_counter()
            times.append(now - t[0])
            t[0] = now
            on_epoch.last = metrics
            losses[epoch + 1] = metrics.get("train/loss")

        fit(model, task, train, {**c["train"], "epochs": epochs}, device=device, seed=10, val_set=val,
            penalty_fn=penalty, callback=on_epoch)
        rows[label] = (statistics.median(times[2:]), on_epoch.last.get("train/loss"), losses)
    import mlflow  # noqa: F401  (import cost not counted)

    from bench.tracking import MetricBuffer, Tracker

    metrics = {f"m{i}": 1.0 for i in range(24)}  # an ex1 epoch logs ~24 scalars
    with tempfile.TemporaryDirectory() as tmp:
        tr = Tracker(f"sqlite:///{tmp}/mlflow.db")
        exp = tr.experiment_id("bench")
        rid = tr.start_run(exp, "overhead", {})
        t0 = time.perf_counter()
        for e in range(epochs):
            tr.log_metrics(rid, metrics, step=e + 1)
        direct = (time.perf_counter() - t0) / epochs
        rid2 = tr.start_run(exp, "overhead-buffered", {})
        buf = MetricBuffer(tr, rid2)
        t0 = time.perf_counter()
        for e in range(epochs):
            buf.log(metrics, step=e + 1)
        buf.flush()
        buffered = (time.perf_counter() - t0) / epochs
    print(f"{'solver':16s} {'s/epoch':>9s} {'+ log each epoch':>17s} {'+ buffered log':>15s} {'loss at end':>12s}")
    for label, (t, loss, _) in rows.items():
        print(f"{label:16s} {t:9.4f} {t + direct:17.4f} {t + buffered:15.4f} {loss:12.4g}")
    marks = [e for e in (1, 10, 100, 300, 1000, 2000, 3000) if e <= epochs]
    ref, alt = rows["lbfgs (suite)"][2], rows["anderson"][2]
    print("training loss (the same seed, data and model; only the forward solver differs):")
    print(f"{'epoch':>6s} {'lbfgs':>11s} {'anderson':>11s} {'rel. diff':>9s}")
    for e in marks:
        print(f"{e:6d} {ref[e]:11.4e} {alt[e]:11.4e} {abs(alt[e] - ref[e]) / abs(ref[e]):9.2%}")
    base = rows["lbfgs (suite)"][0]
    print(f"tracking per epoch: immediate {direct * 1e3:.2f} ms ({direct / base:.1%} of an L-BFGS epoch), buffered "
          f"{buffered * 1e3:.3f} ms ({buffered / base:.2%})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=40, help="ex1 epochs timed in section 3")
    ap.add_argument("--sections", default="1,2,3")
    a = ap.parse_args()
    device = torch.device(a.device)
    from bench.train import ieee_float32

    ieee_float32()  # as every run: TF32 (cuDNN's default) floors a conv solve's residual above the tolerance
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, TF32 off")
    secs = {s.strip() for s in a.sections.split(",")}
    if "1" in secs:
        section_overhead(device, a.repeats)
    if "2" in secs:
        section_memory(device)
    if "3" in secs:
        section_ex1(device, a.epochs)


if __name__ == "__main__":
    main()
