"""A cell past its container's memory limit (issue 30, item 1): the docker executor's
``mem_limit`` enforced by the real engine's memory cgroup, the kernel's OOM killer ending the
cell, and the cell recorded ``oom: host`` (a remedy's kind), never ``lost`` or ``exception``.

Real parts: the suite's own Docker Engine and base image (tests/conftest.py), the local
executor's twin of this test is in tests/test_oom_remedies.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.job import memory
from runner.plan import make_plan
from tests.e2e import make_tiny_dataset, matrix_text
from tests.test_docker import _executor, _ours

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def test_a_container_past_its_memory_limit_reads_host_memory(
    docker_engine: Any, project: Path
) -> None:
    """The cell builds a network whose ~7 GiB of weights the kernel grants (overcommit) but
    the container's 1 GiB limit can't back once they are written: the kernel kills it, and
    the reason says host memory with the evidence."""
    from runner.cli import main

    data = make_tiny_dataset(project / "data" / "demo")
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "oom.yaml"
    axes = "  model: [segresnet]\n  model.init_filters: [8192]"
    executor = _executor(data, slots=1, extra="mem_limit: 1g")
    path.write_text(matrix_text("docker_oom", data, axes, executor, uri))
    assert main(["sweep", str(path), "--wait"]) == 1
    plan = make_plan(path)
    state = plan.states()[plan.cells[0].id]
    assert state.state == "failed", state
    assert memory.oom_kind(state.reason) == "host", state.reason
    assert "OOM" in state.reason, state.reason  # the engine's or the cgroup's word for it
    container = (plan.ledger.cell(plan.cells[0].id).attempt(1).read("docker") or {}).get(
        "container_id"
    )
    assert container, "the attempt names its container"
    assert _ours(docker_engine) == []  # the killed container is removed as any other
