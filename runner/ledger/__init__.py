"""Durable per-cell state under ``<sweep_dir>/<matrix>/cells/``: what was submitted, what
ran, how it ended (store.py says how it is laid out and why it is files). The lowest layer
of the runner: it imports nothing of the runner's."""

from runner.ledger.hours import attempt_wall, ledger_hours
from runner.ledger.records import (
    Cancel,
    Claim,
    Docker,
    Go,
    Heartbeat,
    Job,
    Monitor,
    Record,
    Remedy,
    Slurm,
    Status,
)
from runner.ledger.store import (
    IN_FLIGHT,
    LOST_AFTER_S,
    STATES,
    STOPPED_AFTER_S,
    TERMINAL,
    Attempt,
    CellRecord,
    CellState,
    Ledger,
    json_beside,
    pid_alive,
    read_json,
    write_json_atomic,
)

__all__ = [
    "IN_FLIGHT",
    "LOST_AFTER_S",
    "STATES",
    "STOPPED_AFTER_S",
    "TERMINAL",
    "Attempt",
    "Cancel",
    "CellRecord",
    "CellState",
    "Claim",
    "Docker",
    "Go",
    "Heartbeat",
    "Job",
    "Ledger",
    "Monitor",
    "Record",
    "Remedy",
    "Slurm",
    "Status",
    "attempt_wall",
    "json_beside",
    "ledger_hours",
    "pid_alive",
    "read_json",
    "write_json_atomic",
]
