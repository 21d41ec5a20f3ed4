"""``bench search``: Optuna studies over a suite's ``search:`` block, tracked in MLflow.

The only package of bench that talks to Optuna: :mod:`.spec` (the block's schema), :mod:`.cells` (one study per
matrix cell; checks against the cells), :mod:`.storage` (journal file or RDB), :mod:`.worker` (claiming and
running trials; creating studies), :mod:`.export` (the best parameters as a suite), :mod:`.figures` (Optuna's
plots). Workers run through :func:`bench.executors.execute`, like ``bench run``'s cells. A suite's ``search:`` block names the parameters to tune
(dotted paths into the run config), the objective(s) (any metric a run logs), the sampler, the pruner
and the budget::

    search:
      params:
        train.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
        regularizers.divergence.weight: {type: float, low: 0.0, high: 0.1}
        train.epochs: {type: int, low: 2, high: 8, step: 2}
        model.layer.solver.name: [anderson, fixed_point]        # a list = categorical choices
      objective: {metric: final/test/mse, direction: minimize}   # or objectives: [{...}, {...}] (Pareto)
      sampler: {name: tpe, seed: 0, n_startup_trials: 4}         # tpe | random | cmaes | qmc | gp | nsgaii | nsgaiii
      pruner: {name: median, n_warmup_steps: 2}                  # median | percentile | hyperband |
                                                                 #   successive_halving | threshold | patient | none
      n_trials: 20                                               # and/or timeout: 600 (seconds, per invocation)
      seed: 0                                                    # training seed of every trial (default: seeds[0])

One study per matrix cell (per case × matrix values), named ``<suite>[<cell label>]`` (``--study`` replaces
the prefix). A trial resolves the cell with its parameters exactly as ``bench run`` resolves a cell
(:func:`bench.suite.resolve_cell`), trains it with :func:`bench.runner.train_and_log` and reads the
objective(s) from the metrics it returns; the pruner is fed the per-epoch metric ``pruner.metric``.

Storage, resumption, cooperation
--------------------------------
* ``--storage``: default the journal file ``results/optuna.journal`` (Optuna's JournalStorage with a
  JournalFileBackend and its lock file: safe for several processes on one machine, and on NFS); any RDB URL
  (``sqlite:///…``, ``postgresql://…``, ``mysql://…``) for a shared database (with Optuna's heartbeat).
* The budget ``n_trials`` is the *total* of the study, not per invocation: rerunning continues the study
  until it holds ``n_trials`` counted trials. Counted: COMPLETE, PRUNED, RUNNING (alive) and FAIL raised by the
  trial itself (a diverging configuration is a result). Not counted: trials whose worker died or was
  interrupted — they are marked FAIL (``irn.outcome`` = stale/interrupted, their MLflow run FAILED/KILLED)
  and a fresh trial replaces them. ``timeout`` is wall-clock seconds per invocation.
* Claiming a trial (drop stale trials, count, ``study.ask()``, draw the parameters) happens under an
  exclusive ``flock`` beside a file storage, so processes on one machine never overshoot the budget and
  never share a trial. A RUNNING trial is stale when its worker's liveness lock (a ``flock`` held for the
  worker's lifetime, released by the kernel even on ``kill -9``) is free. For RDB URLs without a shared
  file system the claim is checked after the fact (a trial numbered past the budget is failed as
  ``surplus`` without running) and dead workers are found by Optuna's heartbeat.
* The sampler is re-created for every trial with seed ``sampler.seed + <trials in the study>``: a study run
  by one process is reproducible, and resumed or parallel workers never replay the same random draws.

MLflow: experiment ``<suite>-search``; one parent run per study (``irn.role=study``), one nested run per
trial (``irn.role=trial``: params, per-epoch metrics, tag ``irn.trial_state`` = COMPLETE/PRUNED/FAIL and
run status FINISHED/KILLED/FAILED); the best trial(s) (Pareto set when multi-objective) carry
``irn.best=true``, and the parent the best values and parameters.
"""
from __future__ import annotations

from .cells import Cell, check_search, check_suite_search, suite_cells, trial_config
from .export import export_best, safe_name
from .figures import render_search_report, search_figures, suite_studies
from .spec import PRUNERS, SAMPLERS, SearchCfg, SearchSpec, infer_direction, parse_search
from .storage import TornJournalError, check_journal, default_storage, open_storage, open_storage_url, repair_journal
from .worker import OUTCOME, StudyPlan, WorkerPlan, plan_studies, run_worker, study_summary

__all__ = ["Cell", "check_search", "check_suite_search", "suite_cells", "trial_config", "export_best", "safe_name",
           "render_search_report", "search_figures", "suite_studies", "PRUNERS", "SAMPLERS", "SearchCfg", "SearchSpec",
           "infer_direction", "parse_search", "TornJournalError", "check_journal", "repair_journal", "default_storage", "open_storage", "open_storage_url", "OUTCOME",
           "StudyPlan", "WorkerPlan", "plan_studies", "run_worker", "study_summary"]
