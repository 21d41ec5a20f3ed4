"""The built-in report kinds, one module each; importing this package registers them."""
from . import (accuracy_vs_noise, decision_regions, depth_vs_accuracy, search, solver_cost, spectrum, training_curves,  # noqa: F401
               trajectories, vector_field)
