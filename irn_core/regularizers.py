"""Regularisers of implicit residual networks (SPEC §2, §5; journal eq 20, Algorithm 2; arxiv-v1 §2).

Trajectory regularisers use the states [y_0, …, y_T] that a layer keeps after its forward when
``layer.keep_trajectory = True`` (``last_trajectory``, with graph). At trajectory point t = 0..T the
field is F(γ_t, ·) = ``layer.field_at(max(t, 1))``, i.e. γ_0 := γ_1 (the field of the first step also
acts on the input). For one layer with state size d (per sample) and T steps, eq 20 is

    R = (1/T) Σ′_{t=0..T} [ α_div/d (t/T)^p ∇·F(γ_t, y_t) + α_jac/d² ‖∂F(γ_t, y_t)/∂y_t‖²_F ]
        + α_TV/T Σ_{t=1..T} ‖γ_t − γ_{t−1}‖²

with Σ′ the trapezoidal rule (end points weighted ½) and the divergence / squared Frobenius norm by
Hutchinson's estimator, averaged over the batch. Both estimates share one vector–Jacobian product
per Hutchinson sample and trajectory point (zᵀJ, with ``create_graph=True``): z·(zᵀJ) estimates
∇·F, ‖zᵀJ‖² estimates ‖J‖²_F. That is one extra forward of F per point and one VJP per sample.
The TV term follows SPEC (α_TV/T; the paper's typesetting could also be read as α_TV/T²).

Everything returns ``{name: tensor}``; :func:`regularization` sums the configured ones over every
implicit layer of a model. Valid names: see :data:`REGULARIZERS`.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .layers import ThetaMethod, theta_layers
from .registry import Registry
from .normalization import frozen_normalization

__all__ = [
    "REGULARIZERS", "regularization", "frobenius_penalty", "hutchinson", "trajectory_penalty", "tv_penalty", "diagonal_estimate",
    "convergence_rate_penalty", "PerturbationStreams", "check_config", "nemon_lipschitz_penalty", "trapezoid_weights",
]

# name -> accepted options and their defaults
REGULARIZERS: Registry[Dict[str, object]] = Registry("regularizer")
for _name, _defaults in (
        ("divergence", {"weight": 0.0, "p": 0.0, "samples": 1, "time_weights": "t/T", "states": "attached",
                        "field_time": "step_end"}),
        ("jacobian", {"weight": 0.0, "samples": 1, "states": "attached", "field_time": "step_end"}),
        ("tv", {"weight": 0.0}),
        ("convergence_rate", {"weight": 0.0, "rate": 0.5, "iterations": 3}),
        ("nemon_lipschitz", {"weight": 0.0}),
        ("frobenius", {"weight": 0.0})):
    REGULARIZERS.register(_name, _defaults, options=list(_defaults))


def check_config(config: Mapping[str, Mapping[str, object]]) -> Dict[str, Dict[str, object]]:
    """Every regulariser's options completed with their defaults; unknown names, options or values raise."""
    out = {}
    for name, opts in (config or {}).items():
        opts = dict(opts or {})
        REGULARIZERS.check(name, opts)
        out[name] = {**REGULARIZERS.get(name), **opts}
        if int(out[name].get("samples", 1)) < 1:
            raise ValueError(f"regularizer {name!r}: samples must be >= 1")
        for key, allowed in _CHOICES.items():
            if key in out[name] and out[name][key] not in allowed:
                raise ValueError(f"regularizer {name!r}: {key} must be one of {', '.join(allowed)}, "
                                 f"got {out[name][key]!r}")
    return out


# the trajectory options (AUTHORS-CODE §1.6 gives the authors' choice, the second of each):
#   time_weights  c_t = (t/T)^p (eq 20) | ((t+1)/(T+1))^p (ode.py:389)
#   states        regularise at the states with their graph (gradient reaches y_t) | detached (calc.py:39)
#   field_time    at point t use the field of the step ending at t (γ_0 := γ_1) | starting at t (γ_{T+1} := γ_T;
#                 the authors' time-indexed rhs(t), index ⌊t/h⌋ clamped)
_CHOICES = {"time_weights": ("t/T", "(t+1)/(T+1)"), "states": ("attached", "detached"),
            "field_time": ("step_end", "step_start")}


def _randn(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)


def trapezoid_weights(T: int) -> List[float]:
    """Σ′ over t = 0..T: weights ½, 1, …, 1, ½."""
    return [0.5 if t in (0, T) else 1.0 for t in range(T + 1)]


def _per_sample_dim(y: torch.Tensor) -> int:
    return y[0].numel() if y.dim() > 0 and y.shape[0] > 0 else y.numel()


def hutchinson(field: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, samples: int = 1,
               generator: Optional[torch.Generator] = None, z: Optional[Sequence[torch.Tensor]] = None,
               create_graph: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Hutchinson estimates of ∇·F(y) = E[zᵀJz] and ‖J‖²_F = E[‖zᵀJ‖²], z ~ N(0, I).

    One forward of F and one VJP per sample (shared by both). ``z`` (list of tensors shaped like y)
    overrides the random draws. Returns (divergence, frobenius²), each of shape (batch,), differentiable
    (w.r.t. the field's parameters and y) when ``create_graph``.
    """
    if not y.requires_grad:
        y = y.detach().requires_grad_(True)
    with torch.enable_grad():
        f = field(y)
        zs = list(z) if z is not None else [_randn(y, generator) for _ in range(int(samples))]
        div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        frob = torch.zeros_like(div)
        for k, zk in enumerate(zs):
            (vjp,) = torch.autograd.grad(f, y, zk, create_graph=create_graph, retain_graph=True)
            div = div + (vjp * zk).reshape(y.shape[0], -1).sum(1)
            frob = frob + vjp.pow(2).reshape(y.shape[0], -1).sum(1)
    n = len(zs)
    return div / n, frob / n


def _trajectory_of(layer: ThetaMethod, trajectory: Optional[Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    traj = trajectory if trajectory is not None else layer.last_trajectory
    if traj is None:
        raise ValueError(f"{layer.layer_name}: no trajectory; set layer.keep_trajectory = True before the forward "
                         "(or pass trajectory=)")
    if len(traj) != layer.steps + 1:
        raise ValueError(f"{layer.layer_name}: trajectory has {len(traj)} states, expected steps + 1 = {layer.steps + 1}")
    return list(traj)


def trajectory_penalty(layer: ThetaMethod, trajectory: Optional[Sequence[torch.Tensor]] = None, *,
                       divergence: float = 0.0, p: float = 0.0, jacobian: float = 0.0,
                       div_samples: int = 1, jac_samples: int = 1,
                       generator: Optional[torch.Generator] = None, time_weights: str = "t/T",
                       states: str = "attached", field_time: str = "step_end") -> Dict[str, torch.Tensor]:
    """The divergence and Jacobian terms of eq 20 for one layer: {"divergence": …, "jacobian": …}.

    ``divergence`` = α_div, ``p`` the exponent of the time weight c_t = (t/T)^p (``time_weights="t/T"``,
    eq 20) or ((t+1)/(T+1))^p (``"(t+1)/(T+1)"``, the authors' code), ``jacobian`` = α_jac.
    ``states="detached"``: the gradient reaches the parameters only, not y_t (the authors'). ``field_time``:
    at point t the field of the step ending at t (``"step_end"``, γ_0 := γ_1) or starting at t
    (``"step_start"``, γ_{T+1} := γ_T). The first max(div_samples, jac_samples) Hutchinson vectors are
    shared; each term uses its own count. Points with zero weight are skipped.
    """
    for key, val in (("time_weights", time_weights), ("states", states), ("field_time", field_time)):
        if val not in _CHOICES[key]:
            raise ValueError(f"{key} must be one of {', '.join(_CHOICES[key])}, got {val!r}")
    traj = _trajectory_of(layer, trajectory)
    T = layer.steps
    w = trapezoid_weights(T)
    out: Dict[str, torch.Tensor] = {}
    ref = traj[-1]
    zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
    div_total, jac_total = zero, zero
    n = max(int(div_samples) if divergence else 0, int(jac_samples) if jacobian else 0)
    if n > 0:
        d = _per_sample_dim(ref)
        for t, y in enumerate(traj):
            c_t = t / T if time_weights == "t/T" else (t + 1) / (T + 1)
            cdiv = divergence / d * c_t ** p if divergence else 0.0
            cjac = jacobian / d ** 2 if jacobian else 0.0
            if cdiv == 0.0 and cjac == 0.0:
                continue
            field = layer.field_at(max(t, 1) if field_time == "step_end" else min(t + 1, T))
            if states == "detached":
                y = y.detach()
            zs = [_randn(y, generator) for _ in range(n)]
            if cdiv != 0.0 and cjac != 0.0 and div_samples != jac_samples:
                dv, _ = hutchinson(field, y, z=zs[:div_samples])
                _, fr = hutchinson(field, y, z=zs[:jac_samples])
            else:
                dv, fr = hutchinson(field, y, z=zs)
            if cdiv != 0.0:
                div_total = div_total + w[t] * cdiv * dv.mean()
            if cjac != 0.0:
                jac_total = jac_total + w[t] * cjac * fr.mean()
    if divergence:
        out["divergence"] = div_total / T
    if jacobian:
        out["jacobian"] = jac_total / T
    return out


def _param_vector(field: nn.Module) -> Dict[str, torch.Tensor]:
    return dict(field.named_parameters())


def tv_penalty(layer: ThetaMethod, weight: float = 1.0) -> torch.Tensor:
    """α_TV/T Σ_{t=1..T} ‖γ_t − γ_{t−1}‖² (eq 20) over the parameters of the per-step fields (γ_0 := γ_1;
    zero for a shared field). Parameters are matched by name. A layer with fields indexed by absolute time
    (``time_fields``, e.g. :class:`~irn_core.time_indexed.TimeIndexedBlock`) sums over *all* its consecutive fields,
    still divided by its T steps, as the authors' code (AUTHORS-CODE §1.6: ex2, 39 differences / 20)."""
    T = layer.steps
    fields = getattr(layer, "time_fields", None)
    if fields is not None:
        vecs = [_param_vector(f) for f in fields]
        ref = next(iter(vecs[0].values()), None)
        total = torch.zeros((), dtype=ref.dtype if ref is not None else torch.get_default_dtype(),
                            device=ref.device if ref is not None else None)
        for a, b in zip(vecs[:-1], vecs[1:]):
            if a.keys() != b.keys():
                raise ValueError(f"{layer.layer_name}: time-indexed fields differ in their parameters; TV needs equal ones")
            for k, v in b.items():
                total = total + (v - a[k]).pow(2).sum()
        return weight / T * total
    prev = _param_vector(layer.field_at(1))
    ref = next(iter(prev.values()), None)
    total = torch.zeros((), dtype=ref.dtype if ref is not None else torch.get_default_dtype(),
                        device=ref.device if ref is not None else None)
    for t in range(2, T + 1):
        cur = _param_vector(layer.field_at(t))
        if cur.keys() != prev.keys():
            raise ValueError(f"{layer.layer_name}: fields of steps {t - 1} and {t} have different parameters; "
                             "TV needs identically shaped per-step fields")
        for k, v in cur.items():
            if v is not prev[k]:
                total = total + (v - prev[k]).pow(2).sum()
        prev = cur
    return weight / T * total


def diagonal_estimate(A: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, iterations: int = 100,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Algorithm 2 (stochastic diagonal estimator): t_k = t_{k−1} + A(v_k) ⊙ v_k, q_k = q_{k−1} + v_k ⊙ v_k,
    D = t ⊘ q, v_k ~ N(0, I) shaped like ``like`` (A acts per sample for a batched ``like``)."""
    t = torch.zeros_like(like)
    q = torch.zeros_like(like)
    for _ in range(int(iterations)):
        v = _randn(like, generator)
        t = t + A(v) * v
        q = q + v * v
    return t / q


def _fixed_point_map(layer: ThetaMethod, field: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    theta, h = layer.theta, layer.h
    if layer.phi == "one_leg":
        return lambda y: x + h * field((1.0 - theta) * x + theta * y)
    fx = field(x)
    return lambda y: x + h * ((1.0 - theta) * fx + theta * field(y))


def convergence_rate_penalty(layer: ThetaMethod, trajectory: Optional[Sequence[torch.Tensor]] = None, *,
                             weight: float = 1.0, rate: float = 0.5, iterations: int = 3) -> torch.Tensor:
    """Convergence-rate penalty of the fixed-point iteration (arxiv-v1 eq 9; *inferred form*, SPEC §2):

        weight/T Σ_t mean_batch Σ_{k} max(0, ‖r_{k+1}‖ − rate·‖r_k‖)

    with r_k = g(y^k) − y^k of Picard iterates y^{k+1} = g(y^k), g(y) = y_{t−1} + hΦ(γ_t, y_{t−1}, y),
    started at the explicit step y^0 = y_{t−1} + hF(y_{t−1}), ``iterations`` residual ratios per step,
    differentiated through the iterates (the arxiv version caches them). Zero for θ = 0 (no solve).
    Smaller ``rate`` asks for faster convergence.
    """
    traj = _trajectory_of(layer, trajectory)
    T = layer.steps
    ref = traj[-1]
    total = torch.zeros((), dtype=ref.dtype, device=ref.device)
    if layer.theta == 0.0:
        return total
    for t in range(1, T + 1):
        x = traj[t - 1]
        g = _fixed_point_map(layer, layer.field_at(t), x)
        y = x + layer.h * layer.field_at(t)(x)
        gy = g(y)
        r_prev = (gy - y).reshape(y.shape[0], -1).norm(dim=1)
        pen = torch.zeros_like(r_prev)
        for _ in range(int(iterations)):
            y = gy
            gy = g(y)
            r = (gy - y).reshape(y.shape[0], -1).norm(dim=1)
            pen = pen + torch.relu(r - rate * r_prev)
            r_prev = r
        total = total + pen.mean()
    return weight / T * total


def _zero(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((), dtype=p.dtype if p is not None else None, device=p.device if p is not None else None)


def nemon_lipschitz_penalty(model: nn.Module, weight: float = 1.0) -> torch.Tensor:
    """weight · Σ Lipschitz bounds ‖B‖∞‖C‖∞/(1 − μ∞(A)⁺) of every NEMONLayer in ``model`` (SPEC §5)."""
    from .variants import NEMONLayer

    bounds = [m.lipschitz_bound() for m in model.modules() if isinstance(m, NEMONLayer)]
    if not bounds:
        return _zero(model)
    return weight * torch.stack(bounds).sum()


def frobenius_penalty(model: nn.Module, weight: float = 1.0) -> torch.Tensor:
    """weight · Σ ‖W‖_F² over every convolution filter and dense weight of ``model`` (not biases or batch norm):
    Zhang & Schaeffer's Table 4.1 norm penalty on filters and weights (its λ is lost; the suites say what they use)."""
    terms = [m.weight.pow(2).sum() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return weight * sum(terms, _zero(model))


def regularization(model: nn.Module, config: Mapping[str, Mapping[str, object]], *,
                   generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total penalty and its components for ``model`` after a forward with ``keep_trajectory`` on.

    ``config`` e.g. ``{"divergence": {"weight": 0.01, "p": 2, "samples": 1}, "jacobian": {"weight": 0.1},
    "tv": {"weight": 0.1}}``; the trajectory terms are summed over every ThetaLayer/ImplicitBlock.
    Unknown names or options raise ValueError listing the valid ones. Returns ``(total, {name: value})``
    (values are weighted, i.e. they add up to ``total``).
    """
    cfg = check_config(config)
    comps: Dict[str, torch.Tensor] = {}
    layers = list(theta_layers(model).values())

    def add(name, val):
        comps[name] = comps[name] + val if name in comps else val

    dv, jc = cfg.get("divergence"), cfg.get("jacobian")
    if (dv and dv["weight"]) or (jc and jc["weight"]):
        shared = {}
        for key in ("states", "field_time"):
            vals = {c[key] for c in (dv, jc) if c and c["weight"]}
            if len(vals) > 1:
                raise ValueError(f"divergence and jacobian share the trajectory: their {key} must agree, got "
                                 f"{sorted(vals)}")
            shared[key] = vals.pop()
        for layer in layers:
            res = trajectory_penalty(
                layer,
                divergence=float(dv["weight"]) if dv else 0.0, p=float(dv["p"]) if dv else 0.0,
                jacobian=float(jc["weight"]) if jc else 0.0,
                div_samples=int(dv["samples"]) if dv else 1, jac_samples=int(jc["samples"]) if jc else 1,
                generator=generator, time_weights=dv["time_weights"] if dv else "t/T", **shared)
            for k, v in res.items():
                add(k, v)
    if "tv" in cfg and cfg["tv"]["weight"]:
        for layer in layers:
            add("tv", tv_penalty(layer, float(cfg["tv"]["weight"])))
    if "convergence_rate" in cfg and cfg["convergence_rate"]["weight"]:
        c = cfg["convergence_rate"]
        for layer in layers:
            add("convergence_rate", convergence_rate_penalty(layer, weight=float(c["weight"]), rate=float(c["rate"]),
                                                             iterations=int(c["iterations"])))
    if "nemon_lipschitz" in cfg and cfg["nemon_lipschitz"]["weight"]:
        add("nemon_lipschitz", nemon_lipschitz_penalty(model, float(cfg["nemon_lipschitz"]["weight"])))
    if "frobenius" in cfg and cfg["frobenius"]["weight"]:
        add("frobenius", frobenius_penalty(model, float(cfg["frobenius"]["weight"])))
    for name in cfg:  # every configured name is reported, zero if its weight is zero / nothing applies
        comps.setdefault(name, _zero(model))
    total = sum(comps.values(), _zero(model))
    return total, comps


class PerturbationStreams:
    """Stochastic perturbation streams (arxiv-v1 eq 10; SPEC §2(b)).

    ``streams(model, x)`` runs ``model`` once on the batch [x, x + δ₁, …, x + δ_K] (K = ``num_streams``,
    δ_k ~ ``std``·N(0, I), fresh draws every call, so fresh every epoch), with every implicit layer
    keeping its trajectory, and returns ``(output, {"perturbation": penalty})`` where ``output`` is the
    model's output on the clean x (use it for the loss: no extra clean forward) and

        penalty = weight · (1/K) Σ_k Σ_l w_l · mean_batch ‖y_l(x + δ_k) − y_l(x)‖² / d_l

    over the hidden states y_l = every trajectory point y_1..y_T of every implicit layer, in module
    registration order (``theta_layers(model)``; l = 1..L). ``layer_weights``: a float, a sequence of L weights, or a callable (l, L) → w_l; the
    weight of a state sets how strongly its perturbation must be damped. Weight normalisations are not
    advanced by this forward when ``frozen=True`` (use it when the training step makes its own clean forward
    too, so that both see the same weights). The model sees a batch of (K+1)·B samples (batch norm
    statistics included); a layer that keeps its trajectory anyway keeps that of the whole batch.
    ``set_epoch(e)`` reseeds the generator with (seed, e) for reproducible streams.
    """

    def __init__(self, num_streams: int = 1, std: float = 0.1, weight: float = 1.0,
                 layer_weights: Union[float, Sequence[float], Callable[[int, int], float]] = 1.0, seed: int = 0,
                 frozen: bool = False):
        if int(num_streams) < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if std < 0:
            raise ValueError(f"perturbation std must be >= 0, got {std}")
        self.num_streams, self.std, self.weight = int(num_streams), float(std), float(weight)
        self.layer_weights = layer_weights
        self.seed = int(seed)
        self.frozen = bool(frozen)
        self.generator = torch.Generator().manual_seed(self.seed)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + int(epoch))

    def _w(self, L: int) -> List[float]:
        lw = self.layer_weights
        if callable(lw):
            return [float(lw(l, L)) for l in range(1, L + 1)]
        if isinstance(lw, (int, float)):
            return [float(lw)] * L
        lw = [float(v) for v in lw]
        if len(lw) != L:
            raise ValueError(f"layer_weights has {len(lw)} entries, the model has {L} hidden states")
        return lw

    def __call__(self, model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        B, K = x.shape[0], self.num_streams
        noise = torch.randn((K,) + tuple(x.shape), generator=self.generator, dtype=x.dtype).to(x.device)
        xs = torch.cat([x, (x.unsqueeze(0) + self.std * noise).reshape(K * B, *x.shape[1:])], dim=0)
        layers = list(theta_layers(model).values())
        saved = [m.keep_trajectory for m in layers]
        try:
            for m in layers:
                m.keep_trajectory = True
            if self.frozen:
                with frozen_normalization():
                    out = model(xs)
            else:
                out = model(xs)
            states: List[torch.Tensor] = []
            for m in layers:
                if m.last_trajectory is None:
                    continue  # layer not used in this forward
                states.extend(m.last_trajectory[1:])
        finally:
            for m, s in zip(layers, saved):
                m.keep_trajectory = s
        w = self._w(len(states))
        pen = torch.zeros((), dtype=x.dtype, device=x.device)
        for wl, y in zip(w, states):
            if y.shape[0] != (K + 1) * B:
                raise ValueError("PerturbationStreams: hidden states must keep the batch dimension first")
            clean = y[:B]
            pert = y[B:].reshape(K, B, -1)
            d = pert.shape[-1]
            pen = pen + wl * (pert - clean.reshape(1, B, -1)).pow(2).sum(-1).mean() / d
        for m in layers:
            if not m.keep_trajectory:
                m.last_trajectory = None
        return out[:B], {"perturbation": self.weight * pen}
