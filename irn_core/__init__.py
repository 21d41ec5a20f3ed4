"""irn_core — implicit residual networks (θ-method layers, solvers, IFT backprop).

Usable on its own: ``from irn_core import ThetaLayer, ImplicitBlock``.
"""
from .layers import ConvergenceWarning, ImplicitBlock, ThetaLayer, assign_names, implicit_layers, solver_stats
from .solvers import LINEAR_SOLVERS, NONLINEAR_SOLVERS, SolverError, SolverStats

__version__ = "0.1.0"

__all__ = [
    "ThetaLayer", "ImplicitBlock", "ConvergenceWarning", "assign_names", "implicit_layers", "solver_stats",
    "NONLINEAR_SOLVERS", "LINEAR_SOLVERS", "SolverError", "SolverStats",
]
