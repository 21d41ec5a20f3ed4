"""Weight normalisations (SPEC §2, §5; journal §2.4.1, Algorithm 1, eq 19).

- :class:`SpectralNorm` wraps an ``nn.Linear`` / ``nn.Conv2d`` (conv: the operator on its *input
  shape*) and uses W̃ = W / max(1, ‖W‖₂/α), with ‖W‖₂ ≈ σ = ‖W v‖ from a power-iteration vector v
  (Algorithm 1). :func:`spectral_normalize` applies it to every such layer of a module.
- :class:`EigenRangeField` is F^{α,β} of eq 19.

**When the power iteration runs.** One power step per *model forward in training mode*, never per
solver iteration (SPEC §1: weights stay fixed while the solver iterates). The field's own ``forward``
never changes v; it only evaluates σ = ‖W v‖ with the stored v (differentiable in W, v detached,
as in Miyato et al.). The step is made by :meth:`SpectralNorm.normalization_update`, which
``ThetaLayer``/``ImplicitBlock`` call once for all their submodules at the start of their forward when
``training`` (the outermost implicit layer only, see :func:`normalization_scope`). Outside implicit
layers call :func:`update_normalization` (or ``model.apply``-style) once per training step yourself.
:func:`frozen_normalization` suspends the updates (e.g. extra forwards of the same step such as
perturbation streams). The vector v and the last σ are buffers: they survive ``state_dict`` round
trips (a lazily shaped conv v is resized on load).
"""
from __future__ import annotations

import contextlib
import math
import threading
import warnings
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .operators import circular_conv_norm, conv2d_adjoint, power_iteration

__all__ = [
    "SpectralNorm", "spectral_normalize", "update_normalization", "normalization_scope", "frozen_normalization",
    "power_iteration", "conv2d_adjoint", "circular_conv_norm", "EigenRangeField", "check_eig_range",
    "EigenGates", "GatedEigenRangeField", "eig_limits_from_stability", "solve_constants",
]

# --------------------------------------------------------------------------------------------------
# when to update: once per outermost implicit-layer forward in training mode
# --------------------------------------------------------------------------------------------------

_STATE = threading.local()


def _depth() -> int:
    return getattr(_STATE, "depth", 0)


def _frozen() -> int:
    return getattr(_STATE, "frozen", 0)


def update_normalization(module: nn.Module) -> int:
    """Advance every normalisation in ``module`` by one power step (unless frozen); returns how many."""
    if _frozen():
        return 0
    n = 0
    for m in module.modules():
        upd = getattr(m, "normalization_update", None)
        if callable(upd):
            upd()
            n += 1
    return n


@contextlib.contextmanager
def normalization_scope(module: nn.Module):
    """Used by ThetaLayer/ImplicitBlock around their forward: in training mode the *outermost* one
    advances the normalisations of its submodules once; nested implicit layers (called during the
    outer solve) do not, so every weight stays fixed for the whole solve."""
    if _depth() == 0 and module.training and torch.is_grad_enabled():
        update_normalization(module)
    _STATE.depth = _depth() + 1
    try:
        yield
    finally:
        _STATE.depth = _depth() - 1


@contextlib.contextmanager
def frozen_normalization():
    """No power-iteration updates inside this context (extra forwards within one training step)."""
    _STATE.frozen = _frozen() + 1
    try:
        yield
    finally:
        _STATE.frozen = _frozen() - 1


@contextlib.contextmanager
def solve_constants():
    """Inside this context the weight-derived constants of the normalisations (W̃ = W/σ or W/max(1, σ/α) of
    :class:`SpectralNorm`, the gated end points of :class:`GatedEigenRangeField`, S(ϑ) of
    :class:`EigenRangeField`) are computed once, detached, and reused by every later call: the implicit layers
    enter it around a forward solve, where the weights are fixed (SPEC §1) and only gradients w.r.t. the state
    are taken. A cached value is reused only while the tensors it came from are the same objects at the same
    version (``functional_call`` swaps or an in-place update recompute it). Nests: the outermost context owns
    the cache."""
    outer = getattr(_STATE, "cache", None)
    if outer is None:
        _STATE.cache = {}
    try:
        yield
    finally:
        if outer is None:
            _STATE.cache = None


def _solve_constant(owner: nn.Module, sources: Tuple[torch.Tensor, ...], compute: Callable[[], object]):
    """``compute()``, or inside :func:`solve_constants` its cached (detached) value for ``owner`` while
    ``sources`` are unchanged."""
    cache = getattr(_STATE, "cache", None)
    if cache is None:
        return compute()
    stamp = tuple(t._version for t in sources)
    hit = cache.get(id(owner))
    if hit is not None and hit[0] is owner and hit[2] == stamp and all(a is b for a, b in zip(hit[1], sources)):
        return hit[3]
    with torch.no_grad():
        value = compute()
    cache[id(owner)] = (owner, sources, stamp, value)  # holds owner and sources: their ids cannot be reused
    return value


# --------------------------------------------------------------------------------------------------
# spectral normalisation
# --------------------------------------------------------------------------------------------------

class SpectralNorm(nn.Module):
    """W̃ = W / max(1, σ/α), σ = ‖A_W v‖ ≈ ‖W‖₂ (journal §2.4.1, Algorithm 1); with ``exact=True``
    W̃ = α·W/σ always (‖W̃‖₂ = α exactly, as the authors' code divides by σ: AUTHORS-CODE §1.4).

    Wraps ``nn.Linear`` (v ∈ R^{in_features}) or ``nn.Conv2d`` (v of the input shape (C, H, W): the
    norm of the convolution *as an operator on that shape*; given as ``input_shape`` or taken from the
    first input, then ``init_iterations`` power steps are made). Each :meth:`normalization_update` makes
    ``n_power_iterations`` steps (default 1: one per training step). ``forward`` never changes v.
    Buffers: ``v`` and ``sigma`` (the last σ, for logging).
    """

    def __init__(self, module: nn.Module, alpha: float = 1.0, n_power_iterations: int = 1,
                 input_shape: Optional[Sequence[int]] = None, init_iterations: int = 10, eps: float = 1e-12,
                 exact: bool = False):
        super().__init__()
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"SpectralNorm supports nn.Linear and nn.Conv2d, got {type(module).__name__}")
        if alpha <= 0:
            raise ValueError(f"spectral norm bound alpha must be positive, got {alpha}")
        self.module = module
        self.alpha = float(alpha)
        self.exact = bool(exact)
        self.n_power_iterations = int(n_power_iterations)
        self.init_iterations = int(init_iterations)
        self.eps = eps
        self.num_updates = 0  # power steps taken by normalization_update (not a buffer; for tests/logging)
        w = module.weight
        self.register_buffer("sigma", torch.ones((), dtype=w.dtype, device=w.device))
        if isinstance(module, nn.Linear):
            shape: Optional[Sequence[int]] = (module.in_features,)
        else:
            shape = tuple(input_shape) if input_shape is not None else None
        if shape is None:
            self.register_buffer("v", torch.empty(0, dtype=w.dtype, device=w.device))
        else:
            self.register_buffer("v", self._fresh_v(shape))
            self._power(self.init_iterations)

    # the linear operator and its adjoint on a single "sample" v
    def _A(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.Linear):
            return F.linear(v, weight)
        return self.module._conv_forward(v[None], weight, None)[0]

    def _AT(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.Linear):
            return y @ weight
        return conv2d_adjoint(y[None], self.module, weight, self.v.shape)[0]

    def _fresh_v(self, shape) -> torch.Tensor:
        w = self.module.weight
        v = torch.randn(*shape, dtype=w.dtype, device=w.device)
        return v / v.norm().clamp_min(self.eps)

    @torch.no_grad()
    def _power(self, iterations: int) -> None:
        W = self.module.weight.detach()
        mu, v = power_iteration(lambda u: self._A(u, W), self.v, iterations, adjoint=lambda y: self._AT(y, W),
                                eps=self.eps)
        self.v.copy_(v)
        self.sigma.copy_(mu)

    def normalization_update(self) -> None:
        """One training step's power iteration (called once per model forward by the implicit layers)."""
        if self.v.numel() == 0:  # conv whose input shape is not known yet: initialised at first forward
            return
        self._power(self.n_power_iterations)
        self.num_updates += 1

    def _check_shape(self, x: torch.Tensor) -> None:
        if isinstance(self.module, nn.Conv2d) and tuple(self.v.shape) != tuple(x.shape[1:]):
            if self.v.numel():
                warnings.warn(f"SpectralNorm: conv input shape changed from {tuple(self.v.shape)} to "
                              f"{tuple(x.shape[1:])}; re-initialising the power iteration", stacklevel=3)
            self.v = self._fresh_v(x.shape[1:])
            self._power(self.init_iterations)

    def sigma_estimate(self) -> torch.Tensor:
        """σ = ‖A_W v‖ with v fixed: differentiable in W (v detached)."""
        return self._A(self.v.clone(), self.module.weight).norm()

    def normalized_weight(self) -> torch.Tensor:
        W = self.module.weight
        sigma = self.sigma_estimate()
        if self.exact:
            return W * (self.alpha / sigma.clamp_min(self.eps))
        return W / torch.clamp(sigma / self.alpha, min=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_shape(x)
        W = _solve_constant(self, (self.module.weight, self.v), self.normalized_weight)
        if isinstance(self.module, nn.Linear):
            return F.linear(x, W, self.module.bias)
        return self.module._conv_forward(x, W, self.module.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "v"
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.v.shape):
            self.v = torch.empty_like(state_dict[key], device=self.v.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, exact={self.exact}, n_power_iterations={self.n_power_iterations}, "
                f"v_shape={tuple(self.v.shape)}")


def spectral_normalize(module: nn.Module, alpha: float = 1.0, n_power_iterations: int = 1,
                       input_shape: Optional[Sequence[int]] = None, init_iterations: int = 10,
                       exact: bool = False) -> nn.Module:
    """Wrap every ``nn.Linear``/``nn.Conv2d`` in ``module`` (in place) with :class:`SpectralNorm`.

    Each gets the bound ``alpha`` (so a composition of n layers and 1-Lipschitz activations is
    αⁿ-Lipschitz; ``exact``: normalised to α exactly). ``input_shape`` is only used for a convolution
    that *is* ``module``. Returns the (possibly new) module; already normalised layers are left alone.
    """
    kw = dict(alpha=alpha, n_power_iterations=n_power_iterations, init_iterations=init_iterations, exact=exact)
    if isinstance(module, SpectralNorm):
        return module
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return SpectralNorm(module, input_shape=input_shape, **kw)
    for name, child in list(module.named_children()):
        if isinstance(child, SpectralNorm):
            continue
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            setattr(module, name, SpectralNorm(child, **kw))
        else:
            spectral_normalize(child, alpha, n_power_iterations, None, init_iterations, exact)
    return module


# activations with Lipschitz constant ≤ 1 (the premise of F^{-1,1})
_ONE_LIPSCHITZ = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity, nn.ELU, nn.Hardtanh,
                  nn.ReLU6, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)


def _lipschitz_warnings(field: nn.Module) -> None:
    for name, m in field.named_modules():
        if isinstance(m, (nn.GELU, nn.SiLU, nn.Mish)):
            warnings.warn(f"EigenRangeField: {type(m).__name__} at {name!r} is not 1-Lipschitz (max slope > 1); "
                          "the eigenvalue range of eq 19 is then only approximate", stacklevel=3)
        elif isinstance(m, nn.ELU) and m.alpha > 1:
            warnings.warn(f"EigenRangeField: ELU(alpha={m.alpha}) is not 1-Lipschitz", stacklevel=3)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            warnings.warn(f"EigenRangeField: batch norm at {name!r} is not 1-Lipschitz", stacklevel=3)


def check_eig_range(eig_range) -> Tuple[float, float]:
    try:
        a, b = (float(v) for v in eig_range)
    except (TypeError, ValueError):
        raise ValueError(f"eig_range must be a pair (alpha, beta) with alpha < beta, got {eig_range!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or not a < b:
        raise ValueError(f"eig_range must be a pair (alpha, beta) of finite numbers with alpha < beta, got {eig_range!r}")
    return a, b


class EigenRangeField(nn.Module):
    """F^{α,β}(x) = (α+β)/2 · x + (β−α)/2 · S(ϑ) ⊙ F^{−1,1}(x)   (eq 19).

    ``field`` is made 1-Lipschitz in place by :func:`spectral_normalize` (bound 1 per layer; its
    activations must be 1-Lipschitz — a warning names those that are not). Then every eigenvalue of
    ∂F^{α,β}/∂x lies in the disc of radius (β−α)/2 centred at (α+β)/2.

    ``shape``: per-sample output shape of S (broadcastable; e.g. ``(d,)``, ``(C, H, W)`` or ``(C, 1, 1)``);
    inferred from ``field.dims[-1]`` (MLPField) when omitted. ``learnable_scale=True``: ϑ is a
    parameter initialised so S = 0.5; ``False``: a buffer with S = 0.99 (the authors' code).
    """

    def __init__(self, field: nn.Module, eig_range: Sequence[float], shape: Optional[Union[int, Sequence[int]]] = None,
                 learnable_scale: bool = True, n_power_iterations: int = 1, init_iterations: int = 10,
                 input_shape: Optional[Sequence[int]] = None):
        super().__init__()
        self.alpha, self.beta = check_eig_range(eig_range)
        if shape is None:
            dims = getattr(field, "dims", None)
            if dims is None:
                raise ValueError("EigenRangeField needs shape= (the per-sample output shape of the field, "
                                 "or a broadcastable one such as (C, 1, 1)) for this field")
            shape = (int(dims[-1]),)
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        _lipschitz_warnings(field)
        self.field = spectral_normalize(field, 1.0, n_power_iterations, input_shape, init_iterations)
        self.learnable_scale = bool(learnable_scale)
        p = next(field.parameters(), None)
        dt = p.dtype if p is not None else torch.get_default_dtype()
        s0 = 0.5 if self.learnable_scale else 0.99
        vartheta = torch.full(shape, math.log(s0 / (1 - s0)), dtype=dt)
        if self.learnable_scale:
            self.vartheta = nn.Parameter(vartheta)
        else:
            self.register_buffer("vartheta", vartheta)

    @property
    def eig_range(self) -> Tuple[float, float]:
        return (self.alpha, self.beta)

    def scale(self) -> torch.Tensor:
        """S(ϑ) ∈ (0, 1)."""
        return torch.sigmoid(self.vartheta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = 0.5 * (self.alpha + self.beta), 0.5 * (self.beta - self.alpha)
        rs = _solve_constant(self, (self.vartheta,), lambda: r * self.scale())
        return c * x + rs * self.field(x)

    def extra_repr(self) -> str:
        return f"eig_range=({self.alpha}, {self.beta}), learnable_scale={self.learnable_scale}"


def eig_limits_from_stability(theta: float, stability_limits: Sequence[float], clip: float = 10.0) -> Tuple[float, ...]:
    """Eigenvalue limits z of ∂F whose θ-method amplification R(z) = (1 + (1−θ)z)/(1 − θz) equals the given
    stability limits y (R(z) = y ⇔ z = (1 − y)/((1 − y)θ − 1)), clipped to [−clip, clip] — the authors'
    ``--stablim`` (AUTHORS-CODE §2.4: θ = 1 and (0.2, 1, 1.2) give (−4, 0, 0.1667))."""
    theta = float(theta)
    out = []
    for y in stability_limits:
        y = float(y)
        den = (1.0 - y) * theta - 1.0
        z = (1.0 - y) / den if den != 0.0 else -math.inf
        out.append(float(min(max(z, -clip), clip)))
    return tuple(out)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class EigenGates(nn.Module):
    """The gates of :class:`GatedEigenRangeField`, shareable by the time-indexed fields of one block.

    ``limits = (λ_min, λ_init, λ_max)``; end points a = λ_init + σ(ψ_a)(λ_min − λ_init), b = λ_init +
    σ(ψ_b)(λ_max − λ_init); scale S = σ(ϑ) of ``shape``. Fixed gates are buffers at σ = 0.99 (so a field with
    nothing learnable is 0.99·0.99 = 0.9801·F between ±1). ``learnable_ends``: ψ_a, ψ_b are parameters
    started so that the disc is symmetric about λ_init with radius 0.1(λ_max − λ_init);
    ``learnable_scale``: ϑ is a parameter started at S = 0.5. (AUTHORS-CODE §1.1, rhs.py:37-65.)
    """

    def __init__(self, limits: Sequence[float] = (-1.0, 0.0, 1.0), shape: Union[int, Sequence[int]] = (1,),
                 learnable_scale: bool = False, learnable_ends: bool = False):
        super().__init__()
        limits = tuple(float(v) for v in limits)
        if len(limits) == 2:
            limits = (limits[0], 0.5 * (limits[0] + limits[1]), limits[1])
        if len(limits) != 3 or not all(math.isfinite(v) for v in limits) or not limits[0] < limits[1] < limits[2]:
            raise ValueError(f"limits must be (min, init, max) finite with min < init < max (or (min, max)), "
                             f"got {limits!r}")
        self.limits = limits
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        lo, c, hi = limits
        if learnable_ends:
            pa, pb = 0.1 * (hi - c) / (c - lo), 0.1
        else:
            pa = pb = 0.99
        if not 0.0 < pa < 1.0:
            raise ValueError(f"limits {limits!r}: the symmetric initial disc does not fit below the centre")
        self.learnable_scale, self.learnable_ends = bool(learnable_scale), bool(learnable_ends)
        for name, value, learn in (("shift_a", torch.tensor(_logit(pa)), learnable_ends),
                                   ("shift_b", torch.tensor(_logit(pb)), learnable_ends),
                                   ("scales", torch.full(shape, _logit(0.5 if learnable_scale else 0.99)),
                                    learnable_scale)):
            if learn:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def ends(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(a, b): the current eigenvalue interval of the wrapped field."""
        lo, c, hi = self.limits
        return c + torch.sigmoid(self.shift_a) * (lo - c), c + torch.sigmoid(self.shift_b) * (hi - c)

    def scale(self) -> torch.Tensor:
        return torch.sigmoid(self.scales)

    def extra_repr(self) -> str:
        return (f"limits={self.limits}, shape={tuple(self.scales.shape)}, learnable_scale={self.learnable_scale}, "
                f"learnable_ends={self.learnable_ends}")


class GatedEigenRangeField(nn.Module):
    """F^{a,b}(y) = ½[(b − a) S ⊙ F(y) + (a + b) y] with gated end points a, b (:class:`EigenGates`) — eq 19
    as the authors' code implements it (AUTHORS-CODE §1.1). With F 1-Lipschitz (``spectral_norm``) every
    eigenvalue of ∂F^{a,b}/∂y lies in the disc of centre (a+b)/2 and radius (b−a)/2·max S ⊂ [a, b] × iR.

    ``spectral_norm``: ``"exact"`` (W/σ, the authors'), ``"bound"`` (W/max(1, σ), the paper's) or ``None``.
    ``gates`` may be shared between the time-indexed fields of one block (the authors' rhs wraps them all).
    """

    def __init__(self, field: nn.Module, gates: EigenGates, spectral_norm: Optional[str] = "exact",
                 n_power_iterations: int = 1, init_iterations: int = 5, input_shape: Optional[Sequence[int]] = None):
        super().__init__()
        if spectral_norm not in ("exact", "bound", None):
            raise ValueError(f"spectral_norm must be 'exact', 'bound' or null, got {spectral_norm!r}")
        if spectral_norm is not None:
            _lipschitz_warnings(field)
            field = spectral_normalize(field, 1.0, n_power_iterations, input_shape, init_iterations,
                                       exact=spectral_norm == "exact")
        self.field, self.gates, self.spectral_norm = field, gates, spectral_norm

    def _coefficients(self) -> Tuple[torch.Tensor, torch.Tensor]:
        a, b = self.gates.ends()
        return (b - a) * self.gates.scale(), a + b

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        g = self.gates
        r, c = _solve_constant(self, (g.shift_a, g.shift_b, g.scales), self._coefficients)
        return 0.5 * (r * self.field(y) + c * y)

    def extra_repr(self) -> str:
        return f"spectral_norm={self.spectral_norm}"
