"""The built-in report kinds, one module each; importing this package registers them."""
from . import (accuracy_vs_noise, decision_regions, depth_vs_accuracy, function_fit, iterations_grid, search,  # noqa: F401
               solver_cost,
               spectrum, training_curves, trajectories, vector_field)
