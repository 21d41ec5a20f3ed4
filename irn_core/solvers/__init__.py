"""Solver registries: nonlinear (forward fixed point) and linear (implicit backward)."""
from .base import Registry, SolverError, SolverSpec, SolverStats, batch_norm
from .linear import LINEAR_SOLVERS, direct, get_linear, gmres, neumann, register_linear
from .nonlinear import (
    NONLINEAR_SOLVERS,
    anderson,
    fixed_point,
    get_nonlinear,
    lbfgs,
    newton_krylov,
    register_nonlinear,
)
from .average import nemon_average, picard_average  # registers "picard_average", "nemon_average" (NEMON)

__all__ = [
    "Registry", "SolverError", "SolverSpec", "SolverStats", "batch_norm",
    "NONLINEAR_SOLVERS", "register_nonlinear", "get_nonlinear",
    "fixed_point", "anderson", "lbfgs", "newton_krylov", "picard_average", "nemon_average",
    "LINEAR_SOLVERS", "register_linear", "get_linear", "neumann", "gmres", "direct",
]
