"""``sweep``, ``resume`` and ``rerun``: choose the cells, submit them, say what happened.

Ctrl-C of a sweep that follows its cells (a terminal's, to the sweep alone: the cells'
processes have sessions of their own) stops the sweep, not the cells: the submitted ones
run on, those that waited for a slot are given back (pending again), and the sweep says
which and the two commands that follow (cancel them, or sweep again to continue). A second
Ctrl-C within a few seconds cancels the running ones too.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

from runner.cli.common import _plan, _reconcile, _warn, console, err
from runner.errors import RunnerError
from runner.sweep.queue import SweepInterrupted

#: How long after a first Ctrl-C a second one cancels the running cells.
SECOND_CTRL_C_S = 5.0


def _submit(
    args: argparse.Namespace, choose: Any = None, verb: str = "sweep", plan: Any = None
) -> int:
    from runner.cli import sweep_view
    from runner.cli.progress import LiveProgress
    from runner.cli.tables import summary
    from runner.sweep.submit import submit

    if plan is None:
        plan = _plan(args)
        _reconcile(plan)
    spec = plan.matrix.spec
    console.print(f"matrix {spec.name}: {len(plan.cells)} cells, executor {spec.executor.kind}")
    # The live display comes down however the sweep ends (done, error, Ctrl-C).
    try:
        with LiveProgress(console, plan.cells) as observe:
            outcome = submit(
                plan,
                wait=args.wait,
                observe=observe,
                choose=choose,
                check_other_ledgers=verb == "sweep"
                and not getattr(args, "ignore_other_ledgers", False),
            )
    except SweepInterrupted as stop:
        return interrupted(plan, stop)
    for line in sweep_view.submitted_lines(outcome, verb):
        console.print(line, markup=False, soft_wrap=True)
    states = plan.states()
    console.print(f"states: {summary(states)}")
    uri = plan.tracking_uri
    console.print(f"MLflow store: {uri}  (experiment '{spec.name}')")
    console.print(f"ledger: {plan.ledger.root}", markup=False)
    from runner.report import mlflow_view

    lines, warnings = mlflow_view.publish(plan, outcome.experiment_id)
    for warning in warnings:
        _warn(warning)
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)
    sweep_view.ending(console, plan, states, outcome.mode == "follow" and bool(outcome.submitted))
    mine = [states[c] for c in outcome.submitted]
    return 1 if any(s.state in ("failed", "diverged", "cancelled") for s in mine) else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from runner.sweep.selection import chosen, parse_list

    ids = parse_list(args.cells)
    if not ids and not args.where:
        return _submit(args)

    def subset(cells: list[Any], states: dict[str, Any]) -> list[Any]:
        named = chosen(cells, ids, args.where)
        return [c for c in named if states[c.id].state == "pending"]

    return _submit(args, subset)


def cmd_rerun(args: argparse.Namespace) -> int:
    from runner import tracking
    from runner.sweep.rerun import supersede
    from runner.sweep.selection import chosen, for_rerun, parse_list

    ids = parse_list(args.cells)
    if not ids and not args.where:
        raise RunnerError("rerun: name the cells with --cells ID,... and/or --where KEY=VALUE")
    plan = _plan(args)
    _reconcile(plan)
    picked = for_rerun(
        plan.cells, plan.states(), chosen(plan.cells, ids, args.where, plan.matrix.labels)
    )
    if not picked:
        console.print("nothing to rerun: the cells named never ran (`runner sweep` runs them)")
        return 0
    tracking.check_reachable(plan.tracking_uri)
    runs = supersede(plan, picked)
    console.print(
        f"rerunning {len(picked)} cells from scratch; their earlier runs stay in MLflow, "
        f"tagged superseded ({len(runs)})"
    )
    return _submit(args, lambda cells, states: picked, "rerun", plan)


def cmd_resume(args: argparse.Namespace) -> int:
    from runner.sweep.selection import for_resume, parse_list

    only, ids = parse_list(args.only), parse_list(args.cells)
    if args.cells is not None and not ids:
        raise RunnerError("--cells: give at least one cell id")
    from runner.cli.remedy_view import resume_chooser

    plan = _plan(args)
    _reconcile(plan)
    choose = resume_chooser(plan, lambda cells, states: for_resume(cells, states, only, ids))
    return _submit(args, choose, "resume", plan)


def interrupted(plan: Any, stop: SweepInterrupted) -> int:
    """Say what a Ctrl-C left running and dropped, and what to type next; a second Ctrl-C
    within SECOND_CTRL_C_S cancels the running cells. Exit status 130, as for any Ctrl-C."""
    names = {c.id: c.run_name or c.id for c in plan.cells}
    matrix = plan.matrix.file
    say = err.print
    say("interrupted: the sweep stopped submitting.", markup=False)
    if stop.running:
        say(f"{len(stop.running)} cells keep running:", markup=False)
        for cid in stop.running:
            say(f"  {cid}  {names.get(cid, '')}", markup=False)
    if stop.dropped:
        say(f"{len(stop.dropped)} cells waited for a slot and were dropped (pending again):")
        for cid in stop.dropped:
            say(f"  {cid}  {names.get(cid, '')}", markup=False)
    say(f"stop the running ones: runner cancel {matrix}", markup=False, soft_wrap=True)
    say(f"continue the others:   runner sweep {matrix}", markup=False, soft_wrap=True)
    if not stop.running or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        return 130
    try:
        # The handler first, then the prompt: a Ctrl-C typed as soon as it shows must find it.
        with _interruptible():
            say(f"press Ctrl-C again within {SECOND_CTRL_C_S:.0f} s to cancel the running ones now")
            time.sleep(SECOND_CTRL_C_S)
    except KeyboardInterrupt:
        from runner.sweep.cancel import cancel

        outcome = cancel(plan, stop.running, say=lambda line: say(line, markup=False))
        say(f"cancelled {len(outcome.cancelled)} cells", markup=False)
        if outcome.still_running:
            _warn(f"still running after the kill: {', '.join(outcome.still_running)}")
    return 130


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this block (Python's own handler, restored after)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
