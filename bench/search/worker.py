"""Search workers: each claims trials of its studies under the claim lock and runs them with
:func:`bench.runner.train_and_log`; stale trials of dead workers are failed and replaced (see :mod:`bench.search`).
Also the driver's side: creating the studies with their MLflow parent runs, and their summaries."""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .. import tracking as T
from ..locks import FileLock, exclusive, lock_is_free
from ..metrics import metric_catalog, metric_value, mlflow_name
from ..paths import no_space
from ..runner import train_and_log
from ..suite import Suite, SuiteError, spec_hash
from .cells import Cell, pruner_direction, pruner_metric, suite_cells, trial_config
from .spec import FIXED_SEED_SAMPLERS, SearchSpec, pruners, samplers
from .storage import open_storage, storage_lock_paths, storage_url_of

__all__ = ["OUTCOME", "StudyPlan", "WorkerPlan", "counted", "quiet_optuna", "best_trials", "update_best",
           "run_worker", "plan_studies", "study_summary"]

OUTCOME = "irn.outcome"  # trial user attr: complete | pruned | fail | interrupted | no_space | stale | surplus


@dataclass(frozen=True)
class StudyPlan:
    study: str
    cell: Cell
    spec: SearchSpec
    n_trials: Optional[int]
    parent_run_id: str
    experiment_id: str
    suite: str


@dataclass(frozen=True)
class WorkerPlan:
    storage: str
    tracking_uri: str
    studies: Tuple[StudyPlan, ...]
    deadline: Optional[float]  # time.time() after which no new trial starts
    device: str = "cpu"
    threads: Optional[int] = None  # torch threads of each trial (train_and_log sets them)
    verbose: bool = True

    def with_device(self, device: str) -> "WorkerPlan":
        return replace(self, device=device)

    def with_threads(self, threads: Optional[int]) -> "WorkerPlan":
        return replace(self, threads=threads)


def counted(t) -> bool:
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return t.state == TrialState.FAIL and t.user_attrs.get(OUTCOME) == "fail"


def _make_sampler(spec: SearchSpec, n_existing: int):
    seed = spec.sampler.seed
    if seed is not None and spec.sampler.name not in FIXED_SEED_SAMPLERS:
        seed = seed + n_existing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return samplers().get(spec.sampler.name)(seed=seed, **spec.sampler.options)


def _make_pruner(spec: SearchSpec):
    return pruners().get(spec.pruner.name)(**spec.pruner.options)


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")


def _load_study(storage, plan: StudyPlan):
    import optuna

    return optuna.load_study(study_name=plan.study, storage=storage, sampler=_make_sampler(plan.spec, 0),
                             pruner=_make_pruner(plan.spec))


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


class _Worker:
    """One process's worker: claims trials of each study under the claim lock and runs them."""

    def __init__(self, plan: WorkerPlan):

        quiet_optuna()
        self.plan = plan
        self.storage = open_storage(plan.storage)
        self.claim_path, wdir = storage_lock_paths(plan.storage)
        self.tracker = T.Tracker(plan.tracking_uri)
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lock_path = str(Path(wdir) / f"{self.worker_id}.lock")
        self._lock = FileLock(self.lock_path)  # held while this worker lives: see fail_stale
        self._lock.acquire(wait=True)
        self._closed_runs: set = set()
        self.ran = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)
        self._lock.release()

    # ------------------------------------------------------------- stale trials
    def fail_stale(self, study, sp: StudyPlan) -> List[int]:
        """Mark trials whose worker is dead FAIL (not counted) and close their MLflow runs. Called under the claim
        lock: a worker claims a trial and records its lock and host in one claim section, so a RUNNING trial without
        them seen here was orphaned inside that section (its worker killed between ``ask`` and the attributes)."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        storage = study._storage
        stale = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            wl, host = t.user_attrs.get("irn.worker_lock"), t.user_attrs.get("irn.host")
            if not wl or (host == self.host and wl != self.lock_path and lock_is_free(wl)):
                try:
                    storage.set_trial_user_attr(t._trial_id, OUTCOME, "stale")
                    storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                    stale.append(t.number)
                except Exception:  # noqa: BLE001 - finished meanwhile by someone else
                    pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fail_stale_trials(study)  # heartbeat (RDB storages); no-op for journal files
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get(OUTCOME) in (None, "stale") and t.number not in self._closed_runs:
                self._closed_runs.add(t.number)
                rid = t.user_attrs.get("irn.mlflow_run_id")
                # killed between starting its MLflow run and recording the run's id: find the run by its tags
                rids = [rid] if rid else [r.info.run_id for r in self._trial_runs(sp, t.number)
                                          if r.info.status == "RUNNING"]
                for rid in rids:
                    with contextlib.suppress(Exception):
                        self.tracker.set_tags(rid, {T.TAG_TRIAL_STATE: "FAIL", T.TAG_REASON:
                                                    "worker died or was killed; the trial is not counted"})
                        self.tracker.finish(rid, "FAILED")
        return stale

    def _trial_runs(self, sp: StudyPlan, number: int) -> List[Any]:
        with contextlib.suppress(Exception):
            return self.tracker.search(sp.experiment_id, f"tags.`{T.TAG_STUDY}` = '{sp.study}' and "
                                                         f"tags.`{T.TAG_TRIAL}` = '{number}'")
        return []

    # ------------------------------------------------------------- loop
    def run(self) -> int:
        try:
            for sp in self.plan.studies:
                if self.plan.deadline is not None and time.time() >= self.plan.deadline:
                    break
                self.run_study(sp)
        finally:
            self.close()
        return self.ran

    def run_study(self, sp: StudyPlan) -> None:
        import optuna

        study = _load_study(self.storage, sp)
        while True:
            if self.plan.deadline is not None and time.time() >= self.plan.deadline:
                return
            with exclusive(self.claim_path):
                self.fail_stale(study, sp)
                trials = study.get_trials(deepcopy=False)
                if sp.n_trials is not None and sum(counted(t) for t in trials) >= sp.n_trials:
                    return
                study.sampler = _make_sampler(sp.spec, len(trials))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trial = study.ask()
                try:
                    for k, v in (("irn.worker", self.worker_id), ("irn.worker_lock", self.lock_path),
                                 ("irn.host", self.host), ("irn.pid", os.getpid())):
                        trial.set_user_attr(k, v)
                    values = {p.path: p.suggest(trial) for p in sp.spec.params}
                    if sp.n_trials is not None:  # claimed past the budget by a worker without the claim lock
                        before = [t for t in study.get_trials(deepcopy=False)
                                  if t.number < trial.number and counted(t)]
                        if len(before) >= sp.n_trials:
                            trial.set_user_attr(OUTCOME, "surplus")
                            study.tell(trial, state=optuna.trial.TrialState.FAIL)
                            return
                except KeyboardInterrupt:
                    self._interrupted(study, trial)
                    raise
            self.run_trial(study, sp, trial, values)

    def _interrupted(self, study, trial, run_id: Optional[str] = None, outcome: str = "interrupted") -> None:
        """A claimed trial stopped by an interrupt (or a full disk, ``outcome="no_space"``): FAIL, not counted (a fresh
        trial replaces it), its MLflow run KILLED where the store still accepts it — never left RUNNING."""
        from optuna.trial import TrialState

        with contextlib.suppress(Exception):
            trial.set_user_attr(OUTCOME, outcome)
            study.tell(trial, state=TrialState.FAIL)
        if run_id:
            with contextlib.suppress(Exception):
                self.tracker.set_tags(run_id, {T.TAG_TRIAL_STATE: "FAIL", T.TAG_REASON: f"{outcome} (not counted)"})
                self.tracker.finish(run_id, "KILLED")

    def run_trial(self, study, sp: StudyPlan, trial, values: Dict[str, Any]) -> None:
        import optuna
        from optuna.trial import TrialState

        t0 = time.perf_counter()
        spec = sp.spec
        tag_base = {T.TAG_ROLE: "trial", T.PARENT_TAG: sp.parent_run_id, T.TAG_SUITE: sp.suite, T.TAG_STUDY: sp.study,
                    T.TAG_TRIAL: str(trial.number), T.TAG_LABEL: (sp.cell.label + " " if sp.cell.label else "")
                    + f"trial={trial.number}", T.TAG_CELL: json.dumps(sp.cell.overrides, sort_keys=True, default=str),
                    T.TAG_SEARCH_PARAMS: json.dumps(values, sort_keys=True, default=str)}
        run_id = None
        try:
            try:
                config = trial_config(sp.cell, values, spec.seed)
                tag_base[T.TAG_HASH] = spec_hash(config)
            except ValueError as e:
                config = None
                reason = str(e)
            run_id = self.tracker.start_run(sp.experiment_id, f"trial {trial.number}" +
                                            (f" [{sp.cell.label}]" if sp.cell.label else ""), tag_base)
            trial.set_user_attr("irn.mlflow_run_id", run_id)
            hb = _Heartbeat(study._storage, trial._trial_id)
        except KeyboardInterrupt:
            self._interrupted(study, trial, run_id)
            raise
        state, vals, reason_txt = None, None, ""
        try:
            if config is None:
                raise ValueError(reason)
            trial.set_user_attr("irn.spec_hash", tag_base[T.TAG_HASH])
            pm = pdir = None
            if spec.pruner.name != "none":
                pm, _ = pruner_metric(spec, metric_catalog(config))
                pdir = pruner_direction(spec, pm)
            sign = 1.0 if pdir == spec.objectives[0].direction else -1.0

            def hook(epoch: int, metrics: Dict[str, float]) -> None:
                if pm is None:
                    return
                v = metric_value(metrics, pm)
                if not math.isfinite(v):
                    return
                trial.report(sign * v, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} ({pm} = {v:.6g})")

            metrics = train_and_log(config, self.tracker, run_id, device=self.plan.device, threads=self.plan.threads,
                                    epoch_hook=hook)
            vals = [metric_value(metrics, o.metric) for o in spec.objectives]
            bad = [o.metric for o, v in zip(spec.objectives, vals) if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"non-finite objective {', '.join(bad)}")
            state = TrialState.COMPLETE
        except optuna.TrialPruned as e:
            state, reason_txt = TrialState.PRUNED, str(e)
        except KeyboardInterrupt:
            hb.stop()
            self._interrupted(study, trial, run_id)
            raise
        except Exception as e:  # noqa: BLE001 - a failing trial is a result, never stops the study ...
            if no_space(e):  # ... unless the disk is full: not the configuration's fault, and nothing can be saved
                hb.stop()
                self._interrupted(study, trial, run_id, outcome="no_space")
                raise
            state, reason_txt = TrialState.FAIL, f"{type(e).__name__}: {e}".strip()
            with contextlib.suppress(Exception):
                self.tracker.log_text(run_id, traceback.format_exc(), "failure/traceback.txt")
        except BaseException:
            hb.stop()
            raise
        try:  # the heartbeat runs until Optuna is told (RDB storages fail trials whose heartbeat stops)
            outcome = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail"}[state]
            trial.set_user_attr(OUTCOME, outcome)
            if reason_txt:
                trial.set_user_attr("irn.reason", reason_txt[:1000])
            # the MLflow run is closed before Optuna is told: a worker killed in between leaves a RUNNING trial, which
            # the next worker fails as stale (closing its run again as FAILED); told first, it would leave a finished
            # trial whose run stays RUNNING for ever. A store error here still lets the result reach Optuna.
            tags = {T.TAG_TRIAL_STATE: state.name, T.TAG_BEST: "false"}
            if reason_txt:
                tags[T.TAG_REASON if state == TrialState.FAIL else T.TAG_PRUNE_REASON] = reason_txt[:4000]
            try:
                self.tracker.set_tags(run_id, tags)
                if vals is not None:
                    self.tracker.log_metrics(run_id, {mlflow_name(f"objective/{o.metric}"): v
                                                      for o, v in zip(spec.objectives, vals)}, step=0)
                self.tracker.finish(run_id, {TrialState.COMPLETE: "FINISHED",
                                             TrialState.PRUNED: "KILLED"}.get(state, "FAILED"))
            except Exception as e:  # noqa: BLE001 - the trial's result is kept; its run says so when it can
                warnings.warn(f"trial {trial.number}: closing its MLflow run failed ({type(e).__name__}: {e}); "
                              f"the result is told to Optuna anyway", RuntimeWarning, stacklevel=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study.tell(trial, vals if state == TrialState.COMPLETE else None, state=state)
        finally:
            hb.stop()
        self.ran += 1
        if state == TrialState.COMPLETE:
            with exclusive(self.claim_path):
                update_best(study, sp, self.tracker)
        shown = ", ".join(f"{o.metric}={v:.6g}" for o, v in zip(spec.objectives, vals)) if vals else reason_txt
        _say(self.plan.verbose, f"[{sp.study}] trial {trial.number} {state.name.lower()} "
                                f"({time.perf_counter() - t0:.1f}s) {shown}  {json.dumps(values, default=str)}")


class _Heartbeat:
    """Records Optuna heartbeats of a running trial (RDB storages) from a daemon thread."""

    def __init__(self, storage, trial_id: int):
        from optuna.storages._heartbeat import is_heartbeat_enabled

        self._stop = threading.Event()
        self._thread = None
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial_id)
            interval = storage.get_heartbeat_interval()

            def beat():
                while not self._stop.wait(interval):
                    with contextlib.suppress(Exception):
                        storage.record_heartbeat(trial_id)

            self._thread = threading.Thread(target=beat, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def best_trials(study) -> list:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def update_best(study, sp: StudyPlan, tracker) -> None:
    """Move the ``irn.best`` tag to the current best trial(s); best values and parameters on the parent run."""
    best = best_trials(study)
    now = sorted(t.number for t in best)
    prev = study.user_attrs.get("irn.best_trials") or []
    if now == prev:
        return
    runs = {t.number: t.user_attrs.get("irn.mlflow_run_id") for t in study.get_trials(deepcopy=False)}
    for n in set(prev) - set(now):
        if runs.get(n):
            with contextlib.suppress(Exception):
                tracker.set_tags(runs[n], {T.TAG_BEST: "false"})
    for n in now:
        if runs.get(n):
            tracker.set_tags(runs[n], {T.TAG_BEST: "true"})
    study.set_user_attr("irn.best_trials", now)
    tags = {T.TAG_BEST_TRIALS: ",".join(map(str, now))}
    if len(best) == 1:
        t = best[0]
        tags.update({f"best.{k}": v for k, v in t.params.items()})
        tags[T.TAG_BEST_RUN] = runs.get(t.number) or ""
        tracker.log_metrics(sp.parent_run_id, {mlflow_name(f"best/{o.metric}"): v for o, v in zip(sp.spec.objectives, t.values)},
                            step=len(study.get_trials(deepcopy=False)))
    tracker.set_tags(sp.parent_run_id, tags)


def run_worker(plan: WorkerPlan) -> int:
    """Entry point of a worker (a job of :func:`bench.executors.execute`): the number of trials it ran."""
    w = _Worker(plan)
    return w.run()


def plan_studies(suite: Suite, spec: SearchSpec, storage, tracker, prefix: Optional[str] = None,
                 n_trials: Optional[int] = None, create: bool = True) -> List[StudyPlan]:
    """Create (or load) one study per cell and its MLflow parent run; check they match the search block."""
    import optuna


    quiet_optuna()
    exp_id = tracker.experiment_id(f"{suite.name}-search") if create else \
        (tracker.experiment_id(f"{suite.name}-search", create=False) or "")
    plans = []
    claim, _ = storage_lock_paths(storage_url_of(storage))
    for cell in suite_cells(suite):
        name = (prefix or suite.name) + (f"[{cell.label}]" if cell.label else "")
        if not create:
            plans.append(StudyPlan(name, cell, spec, n_trials, "", exp_id, suite.name))
            continue
        with exclusive(claim):
            study = optuna.create_study(study_name=name, storage=storage, directions=spec.directions,
                                        load_if_exists=True)
            fp = study.user_attrs.get("irn.search")
            if fp is None:
                study.set_user_attr("irn.search", spec.fingerprint())
                study.set_user_attr("irn.cell", cell.overrides)
                study.set_metric_names([o.metric for o in spec.objectives])
            elif fp != spec.fingerprint() or [d.name.lower() for d in study.directions] != spec.directions:
                raise SuiteError(suite.path, [f"search: study {name!r} in this storage was made for "
                                              f"{fp} — this search block says {spec.fingerprint()}; "
                                              "use another --study name or --storage"])
            parents = tracker.search(exp_id, f"tags.`{T.TAG_ROLE}` = 'study' and tags.`{T.TAG_STUDY}` = '{name}'")
            if parents:
                parent = sorted(parents, key=lambda r: r.info.start_time)[0].info.run_id
                tracker.set_status(parent, "RUNNING")
            else:
                parent = tracker.start_run(exp_id, name, {T.TAG_ROLE: "study", T.TAG_STUDY: name, T.TAG_SUITE: suite.name,
                                                          T.TAG_CELL: json.dumps(cell.overrides, sort_keys=True, default=str),
                                                          T.TAG_STORAGE: storage_url_of(storage),
                                                          T.TAG_DIRECTIONS: ",".join(spec.directions),
                                                          T.TAG_OBJECTIVES: ",".join(o.metric for o in spec.objectives),
                                                          T.TAG_SUITE_FILE: str(Path(suite.path).resolve())})
                tracker.log_params(parent, {f"search.{k}": v for k, v in _search_params_summary(spec).items()})
        plans.append(StudyPlan(name, cell, spec, n_trials, parent, exp_id, suite.name))
    return plans


def _search_params_summary(spec: SearchSpec) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for p in spec.params:
        out[p.path] = (list(p.choices) if p.type == "categorical" else
                       f"{p.type}[{p.low:g}, {p.high:g}]" + (" log" if p.log else "") + (f" step {p.step:g}" if p.step else ""))
    out["sampler"] = spec.sampler.name
    out["pruner"] = spec.pruner.name
    out["n_trials"] = spec.n_trials
    out["seed"] = spec.seed
    return out


def study_summary(storage, plan: StudyPlan) -> Dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=plan.study, storage=storage)
    except KeyError:
        return {"study": plan.study, "exists": False, "counted": 0, "states": {}, "best": []}
    trials = study.get_trials(deepcopy=False)
    states: Dict[str, int] = {}
    for t in trials:
        k = t.state.name if t.state != TrialState.FAIL or t.user_attrs.get(OUTCOME) == "fail" else \
            f"FAIL ({t.user_attrs.get(OUTCOME) or 'stale'}, not counted)"
        states[k] = states.get(k, 0) + 1
    return {"study": plan.study, "exists": True, "counted": sum(counted(t) for t in trials), "states": states,
            "best": best_trials(study), "study_obj": study}

