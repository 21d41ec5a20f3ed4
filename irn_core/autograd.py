"""Implicit-function-theorem backward of one θ-step (SPEC §1 "Backward", journal eq 17).

At the solution y of r(y) = y − x − hΦ(γ, x, y) = 0 the implicit-function theorem gives, for a loss L,

    (I − h ∂Φ/∂y)ᵀ v = ∇_y L,    ∇_x L = v + h (∂Φ/∂x)ᵀ v,    ∇_γ L = h (∂Φ/∂γ)ᵀ v.

Only x and y are kept (memory of an explicit layer); the backward rebuilds Φ once with a local graph
and uses vector–Jacobian products of it for every product above. The solver iterations are never
differentiated.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from .solvers.base import SolverStats

__all__ = ["ImplicitStep", "StepProblem"]


class StepProblem:
    """Everything the backward needs about one θ-step, handed to :class:`ImplicitStep`.

    phi(x, y) -> Φ(γ, x, y) (built with a graph during backward); h the step; y the solution;
    backward_solve(A, b) -> (v, SolverStats); on_stats(stats) receives the backward stats; out, if given, the
    value the step returns instead of y (the update x + hΦ(γ, x, y), differentiated as y is).
    """

    __slots__ = ("phi", "h", "y", "params", "backward_solve", "on_stats", "out")

    def __init__(self, phi: Callable, h: float, y: torch.Tensor, params: Sequence[torch.Tensor],
                 backward_solve: Callable, on_stats: Optional[Callable[[SolverStats], None]] = None,
                 out: Optional[torch.Tensor] = None):
        self.phi, self.h, self.y, self.params = phi, h, y, tuple(params)
        self.backward_solve, self.on_stats, self.out = backward_solve, on_stats, out


class ImplicitStep(torch.autograd.Function):
    """y = solution of the θ-step, with the IFT gradient (eq 17) for x and the field's parameters.

    Call as ``ImplicitStep.apply(problem, x, *problem.params)``.
    """

    @staticmethod
    def forward(ctx, problem: StepProblem, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.problem = problem
        y = problem.y
        ctx.save_for_backward(x, y)
        out = y if problem.out is None else problem.out
        problem.y = problem.out = None  # the tensors live on in ctx / the graph only
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        problem: StepProblem = ctx.problem
        x, y = ctx.saved_tensors
        h = problem.h
        need_x = ctx.needs_input_grad[1]
        params = problem.params
        need_p = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(need_x)
            y_ = y.detach().requires_grad_(True)
            ph = problem.phi(x_, y_)

            def A(v: torch.Tensor) -> torch.Tensor:  # (I − h ∂Φ/∂y)ᵀ v
                (vjp,) = torch.autograd.grad(ph, y_, v, retain_graph=True)
                return v - h * vjp

            v, stats = problem.backward_solve(A, grad_y)
            if problem.on_stats is not None:
                problem.on_stats(stats)
            inputs = ([x_] if need_x else []) + [p for p, n in zip(params, need_p) if n]
            grads = list(torch.autograd.grad(ph, inputs, v, allow_unused=True)) if inputs else []
        grad_x = None
        if need_x:
            gx = grads.pop(0)
            grad_x = v if gx is None else v + h * gx
        grad_params = []
        for p, n in zip(params, need_p):
            if not n:
                grad_params.append(None)
                continue
            gp = grads.pop(0)
            grad_params.append(torch.zeros_like(p) if gp is None else h * gp)
        return (None, grad_x, *grad_params)
