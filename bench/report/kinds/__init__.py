"""The built-in report kinds, one module each; importing this package registers them."""
from . import (accuracy_vs_noise, decision_regions, depth_vs_accuracy, iterations_grid, search, solver_cost,  # noqa: F401
               spectrum, training_curves, trajectories, vector_field)
