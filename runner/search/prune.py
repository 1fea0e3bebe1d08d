"""The job's side of a search: report each validation to the cell's Optuna trial, stop the
cell at a rung where ASHA says so, and tell the study how the cell ended.

:class:`SearchSpec` travels in the pickled :class:`~runner.job.cell.CellJob`; :class:`Reporter`
is built inside the job and handed to the recipe as ``RunContext.should_prune`` (the recipe
stays runner-free: it only calls it after each validation and stops when it gets a reason).
A trial already finished (a pruned cell resumed with ``resume --only pruned``, a diverged
cell retried) is not reported to again: the cell runs to ``max_epochs`` without pruning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from runner.matrix.asha import Asha, decide, reason, rung_key


@dataclass(frozen=True)
class SearchSpec:
    metric: str
    mode: str
    journal: str | None = None  # the study's journal file, when the cell is a trial
    study: str | None = None
    trial_id: int | None = None
    trial_number: int | None = None
    asha: tuple[int, int, int] | None = None  # (min_epochs, max_epochs, eta): pruned
    bracket: int = 0
    rungs: tuple[int, ...] | None = None  # rungs placed by epochs (num_rungs, rungs)


class Reporter:
    """Called by the recipe after each validation: ``(epoch, metrics) -> reason | None``."""

    def __init__(self, spec: SearchSpec, previous_best: float | None = None) -> None:
        self.spec = spec
        self.best = previous_best
        self.pruned_rung: int | None = None
        self.store: Any = None
        self.active = False  # reporting to a running trial
        if spec.journal is not None and spec.trial_id is not None:
            from runner.search.study import storage

            self.store = storage(spec.journal)
            trial = self.store.get_trial(spec.trial_id)
            self.active = not trial.state.is_finished()
            # A requeued or resumed cell does not validate its first epochs again: its best
            # so far is in the trial's history.
            for value in trial.intermediate_values.values():
                if self._better(float(value), self.best):
                    self.best = float(value)

    def _better(self, value: float, than: float | None) -> bool:
        if math.isnan(value):
            return False
        return than is None or (value > than if self.spec.mode == "max" else value < than)

    def __call__(self, epoch: int, metrics: dict[str, float]) -> str | None:
        metric = self.spec.metric
        if metric not in metrics:
            have = sorted(k for k in metrics if k.startswith("val_"))
            raise KeyError(f"search metric {metric!r} is not a validation metric; have {have}")
        value = float(metrics[metric])
        if self._better(value, self.best):
            self.best = value
        if not self.active:
            return None
        trial_id = self.spec.trial_id
        assert trial_id is not None
        self.store.set_trial_intermediate_value(trial_id, epoch, value)
        if self.spec.asha is None:
            return None
        return self._rungs(trial_id, epoch, value)

    def _rungs(self, trial_id: int, epoch: int, value: float) -> str | None:
        low, high, eta = self.spec.asha or (1, 2, 3)
        b = self.spec.bracket
        done = self.store.get_trial_system_attrs(trial_id)
        study_id = self.store.get_study_id_from_name(self.spec.study)
        for rung, at in enumerate(Asha(low, high, eta, placed=self.spec.rungs).rungs(b)):
            key = rung_key(b, rung)
            if at > epoch or key in done:
                continue
            # Recorded before comparing: a cell arriving later at this rung sees this one.
            self.store.set_trial_system_attr(trial_id, key, value)
            seen = [
                (float(t.system_attrs[key]), t.number)
                for t in self.store.get_all_trials(study_id, deepcopy=False)
                if key in t.system_attrs
            ]
            mine = self.spec.trial_number
            assert mine is not None
            # A tie goes to the trial started first: a fixed order, so that cells tied at the
            # same moment (each seeing the other) do not both stop.
            ahead = sum(1 for v, n in seen if n < mine and v == value)
            verdict = decide(value, [v for v, _ in seen], eta, self.spec.mode, ahead)
            # How many results the verdict weighed: what an asynchronous rung is judged by.
            self.store.set_trial_system_attr(trial_id, f"{key}:seen", verdict.seen)
            if not verdict.promote:
                self.pruned_rung = rung
                return reason(self.spec.metric, value, rung, at, eta, verdict)
        return None

    def finish(self, state: str) -> None:
        """Tell the study how the cell ended. Failed, cancelled and lost cells leave their
        trial running: they may be resumed, and a failure says nothing of the config."""
        if not self.active or state not in ("done", "pruned", "diverged"):
            return
        import optuna
        from optuna.trial import TrialState

        s = optuna.load_study(study_name=self.spec.study, storage=self.store)
        number = self.spec.trial_number
        if state == "pruned":
            s.tell(number, state=TrialState.PRUNED)
        elif state == "done" and self.best is not None:
            s.tell(number, self.best)
        else:  # diverged, or done without a single value of the metric
            s.tell(number, state=TrialState.FAIL)
        self.active = False
