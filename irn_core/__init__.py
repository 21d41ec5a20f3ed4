"""irn_core — implicit residual networks (θ-method layers, solvers, IFT backprop).

Usable on its own: ``from irn_core import ThetaLayer, ImplicitBlock``.
"""
from .layers import ConvergenceWarning, ImplicitBlock, ThetaLayer, assign_names, implicit_layers, solver_stats
from .solvers import LINEAR_SOLVERS, NONLINEAR_SOLVERS, SolverError, SolverStats
from .linf import LInfParam
from .normalization import EigenRangeField, SpectralNorm, frozen_normalization, spectral_normalize, update_normalization
from .regularizers import REGULARIZERS, PerturbationStreams, regularization
from .variants import (
    NEMONLayer, ResNetDField, ResNetDLayer, ResNetSField, ResNetSLayer, project_nonnegative, resnet_d_block,
    resnet_s_block,
)

__version__ = "0.1.0"

__all__ = [
    "ThetaLayer", "ImplicitBlock", "ConvergenceWarning", "assign_names", "implicit_layers", "solver_stats",
    "NONLINEAR_SOLVERS", "LINEAR_SOLVERS", "SolverError", "SolverStats",
    "SpectralNorm", "spectral_normalize", "update_normalization", "frozen_normalization", "EigenRangeField",
    "LInfParam", "REGULARIZERS", "regularization", "PerturbationStreams",
    "ResNetDField", "ResNetSField", "ResNetDLayer", "ResNetSLayer", "project_nonnegative", "resnet_d_block",
    "resnet_s_block", "NEMONLayer",
]
