"""Hyper-parameter tuning with Optuna: TPE over candidate lists, a resumable SQLite study,
and pruning on the validation metric after every epoch."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ..errors import KudaInputError
from ..training.metrics import lower_is_better
from .cells import Cell, CellResult, _first_line
from .executors import Executor


class TrialPruned(Exception):
    """Raised in a trial's process when the study prunes it (stops the training)."""


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise KudaInputError("--tuner optuna needs Optuna, which is not installed: pip install -e '.[optuna]' "
                             "(or tune with MMSA's random search: -t without --tuner).") from None
    return optuna


def _storage(optuna, url: str):
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def _pruner(optuna, n_startup_trials: int, n_warmup_steps: int = 1):
    # The pruner is not stored with the study: the tuner and each trial's process build the same.
    return optuna.pruners.MedianPruner(n_startup_trials=int(n_startup_trials), n_warmup_steps=int(n_warmup_steps))


class OptunaReporter:
    """In a trial's process: reports each epoch's validation value to the study and raises
    TrialPruned when the pruner says so. Storage errors switch pruning off (one notice)."""

    def __init__(self, spec: Dict[str, Any], log: Callable[[str], None] = print):
        self.spec, self.log, self._trial, self._off = dict(spec), log, None, False

    def __call__(self, epoch: int, value: float) -> None:
        if self._off:
            return
        try:
            if self._trial is None:
                optuna = _import_optuna()
                study = optuna.load_study(study_name=self.spec["study"], storage=_storage(optuna, self.spec["storage"]),
                                          pruner=_pruner(optuna, self.spec.get("n_startup_trials", 5)))
                self._trial = optuna.trial.Trial(study, int(self.spec["trial_id"]))
            self._trial.report(float(value), step=int(epoch))
            prune = self._trial.should_prune()
        except Exception as e:
            self._off = True
            self.log(f"Pruning is off for this trial: the study at {self.spec.get('storage')} could not be "
                     f"reached ({_first_line(e)}).")
            return
        if prune:
            raise TrialPruned(f"pruned by the study after epoch {epoch} (validation {value:.4f})")


class EpochMonitor:
    """The trainer's epoch callback in a trial: keeps the best validation ``key`` and reports
    each epoch's value to ``reporter`` (which may raise TrialPruned)."""

    def __init__(self, key: str, reporter: Optional[Callable[[int, float], None]] = None):
        self.key, self.reporter = key, reporter
        self.minimize = lower_is_better(key)
        self.best: Optional[float] = None
        self.epochs = 0

    def __call__(self, epoch: int, valid: Dict[str, float]) -> None:
        self.epochs = int(epoch)
        value = float(valid[self.key])
        if math.isfinite(value) and (self.best is None or (value < self.best if self.minimize else value > self.best)):
            self.best = value
        if self.reporter is not None:
            self.reporter(epoch, value)


def _choices(candidates: Sequence[Any]) -> tuple:
    """(optuna choices, back): scalars as themselves, anything else by its index."""
    if all(c is None or isinstance(c, (bool, int, float, str)) for c in candidates):
        return list(candidates), None
    return list(range(len(candidates))), list(candidates)


class OptunaTuner:
    """A TPE study over {key: candidates} stored in SQLite at ``db_path``."""

    def __init__(self, db_path, study_name: str, direction: str, space: Dict[str, Sequence[Any]],
                 seed: Optional[int] = None, n_startup_trials: int = 5, log: Callable[[str], None] = print):
        optuna = _import_optuna()
        self.optuna, self.log = optuna, log
        self.space = {k: _choices(v) for k, v in space.items()}
        if not self.space:
            raise KudaInputError("The tune section lists no keys to search (d_paras is empty).")
        db_path = Path(db_path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{db_path.resolve()}"
        self.study_name = study_name
        storage = _storage(optuna, self.url)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            existing = optuna.load_study(study_name=study_name, storage=storage)
            n_before = len(existing.trials)
            if existing.direction.name.lower() != direction:
                raise KudaInputError(
                    f"The study '{study_name}' in {db_path} maximises/minimises otherwise "
                    f"({existing.direction.name.lower()}) than this run ({direction}: the KeyEval changed). "
                    f"Move that file away to start a new study.")
        except KeyError:
            n_before = 0
        # A fresh seed per session: a resumed study does not repeat its first random trials.
        sampler = optuna.samplers.TPESampler(seed=None if seed is None else int(seed) + n_before,
                                             n_startup_trials=n_startup_trials)
        self.n_startup_trials = int(n_startup_trials)
        pruner = _pruner(optuna, n_startup_trials)
        self.study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                         direction=direction, load_if_exists=True)
        self.db_path = db_path

    def recover(self) -> int:
        """Trials left running by a killed tuner: marked failed, their parameters queued again."""
        TrialState = self.optuna.trial.TrialState
        stale = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in stale:
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            self.study.enqueue_trial(t.params, skip_if_exists=False)
        return len(stale)

    def finished(self) -> int:
        TrialState = self.optuna.trial.TrialState
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _suggest(self, trial) -> Dict[str, Any]:
        params = {}
        for name, (choices, back) in self.space.items():
            v = trial.suggest_categorical(name, choices)
            params[name] = back[v] if back is not None else v
        return params

    def run(self, n_trials: int, executor: Executor, make_cell: Callable[[int, Dict[str, Any], Dict[str, Any]], Cell],
            on_done: Optional[Callable[[int, Dict[str, Any], CellResult, str], None]] = None) -> int:
        """Run trials until the study has ``n_trials`` finished (complete or pruned) ones;
        returns how many ran now. ``make_cell(number, params, reporter_spec)``;
        ``on_done(number, params, result, state)``."""
        TrialState = self.optuna.trial.TrialState
        recovered = self.recover()
        if recovered:
            self.log(f"[tune] {recovered} trial(s) of an interrupted session are run again with their parameters.")
        todo = max(0, int(n_trials) - self.finished())
        running: Dict[str, tuple] = {}
        ran = 0
        try:
            while todo > 0 or running:
                while todo > 0 and len(running) < executor.slots:
                    trial = self.study.ask()
                    params = self._suggest(trial)
                    # the trial's storage id: how its process reopens it (optuna.trial.Trial(study, id))
                    spec = {"storage": self.url, "study": self.study_name, "trial_id": trial._trial_id,
                            "n_startup_trials": self.n_startup_trials}
                    cell = make_cell(trial.number, params, spec)
                    executor.submit(cell)
                    running[cell.key] = (trial, params)
                    todo -= 1
                for r in executor.wait():
                    trial, params = running.pop(r.key)
                    ran += 1
                    value = r.value if isinstance(r.value, dict) else {}
                    if r.ok and value.get("pruned"):
                        self.study.tell(trial, state=TrialState.PRUNED)
                        state = "pruned"
                    elif r.ok and isinstance(value.get("valid"), (int, float)) and math.isfinite(value["valid"]):
                        self.study.tell(trial, float(value["valid"]))
                        state = "complete"
                    else:
                        self.study.tell(trial, state=TrialState.FAIL)
                        state = "failed"
                    if on_done is not None:
                        on_done(trial.number, params, r, state)
        except BaseException:
            executor.close()
            raise
        return ran

    def best(self) -> Optional[Dict[str, Any]]:
        try:
            t = self.study.best_trial
        except ValueError:
            return None
        params = {}
        for name, (choices, back) in self.space.items():
            v = t.params.get(name)
            params[name] = back[v] if back is not None and v is not None else v
        return {"number": t.number, "value": t.value, "params": params}


