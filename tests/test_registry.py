"""irn_core.registry.Registry: the one registry class (solvers, models, regularisers, tasks, corruptions, report
kinds, executors, optimisers, schedulers, samplers, pruners) and its one error wording."""
from __future__ import annotations

import pytest

from irn_core.registry import Registry


def test_register_get_names_options_check():
    reg: Registry = Registry("solver")

    @reg.register("anderson")
    def anderson(f, x0, *, tol=1e-6, m=5):
        return f, x0, tol, m

    class Picard:
        def __init__(self, damping=1.0, verbose=False):
            pass

    reg.register("picard", Picard)
    reg.register("custom", object, options=["a", "b"])
    assert reg.names() == ["anderson", "custom", "picard"] and "anderson" in reg and len(reg) == 3
    assert reg.get("anderson") is anderson and reg["picard"] is Picard
    assert reg.options("anderson") == ["tol", "m"]  # a function: keyword-only (f, x0 are the problem)
    assert reg.options("picard") == ["damping", "verbose"]  # a class: every named constructor parameter
    assert reg.options("custom") == ["a", "b"]  # declared
    reg.check("anderson", {"tol": 1e-3})
    with pytest.raises(ValueError, match=r"^unknown solver 'andersen'; did you mean 'anderson'\? valid: anderson, "
                                         r"custom, picard$"):
        reg.get("andersen")
    with pytest.raises(ValueError, match=r"^unknown solver 'zzz'; valid: anderson, custom, picard$"):
        reg.get("zzz")
    with pytest.raises(ValueError, match=r"^unknown option\(s\) 'mm' for solver 'anderson'; did you mean 'm'\? "
                                         r"valid: tol, m$"):
        reg.check("anderson", {"mm": 3})
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'x', 'y' for solver 'picard'; valid: damping"):
        reg.check("picard", {"x": 1, "y": 2})
    with pytest.raises(ValueError, match="solver 'picard' is already registered"):
        reg.register("picard", Picard)


def test_every_registry_of_the_project_is_one_class():
    from bench.corruptions import CORRUPTIONS
    from bench.executors import EXECUTORS
    from bench.report.registry import REPORTS
    from bench.search.spec import pruners, samplers
    from bench.tasks import TASKS
    from bench.train import OPTIMIZERS, SCHEDULERS
    from irn_core.models import MODELS
    from irn_core.regularizers import REGULARIZERS
    from irn_core.solvers import LINEAR_SOLVERS, NONLINEAR_SOLVERS

    regs = [CORRUPTIONS, EXECUTORS, REPORTS, pruners(), samplers(), TASKS, OPTIMIZERS, SCHEDULERS, MODELS,
            REGULARIZERS, LINEAR_SOLVERS, NONLINEAR_SOLVERS]
    assert all(isinstance(r, Registry) and len(r) > 0 for r in regs)
    assert "adam" in OPTIMIZERS and "lr" in OPTIMIZERS.options("adam") and "params" not in OPTIMIZERS.options("adam")
    assert "optimizer" not in SCHEDULERS.options("step") and "step_size" in SCHEDULERS.options("step")
