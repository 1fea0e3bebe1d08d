"""The suite passes however it is started: from a terminal (SIGINT at its default) and the way
cron, nohup, a script's ``cmd &`` or a CI runner starts it (SIGINT ignored, inherited by
every child). A part of the suite whose tests start children both ways runs here under each
disposition, in a pytest of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.e2e import STARTS, start_as

#: Tests that start children "as a terminal would" and "as a script would" and check the
#: disposition each child got: they failed when the suite itself ran with SIGINT ignored.
PART = [
    "tests/test_cancel_signals.py::test_an_interrupt_during_a_checkpoint_write_lands_after_it",
]

#: Prints the disposition this pytest inherited, then runs the part.
RUN = (
    "import signal, sys\n"
    "handler = signal.getsignal(signal.SIGINT)\n"
    "print('SIGINT:', 'ignored' if handler == signal.SIG_IGN else handler.__name__, flush=True)\n"
    "import pytest\n"
    "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', *sys.argv[1:]]))\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("start", STARTS)
def test_a_part_of_the_suite_passes_however_it_is_started(start: str) -> None:
    # Not part of this run: its own controller, which must not stop this run's services.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RUNNER_TEST_"))}
    out = subprocess.run(
        [sys.executable, "-c", RUN, *PART],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=start_as(start),
        start_new_session=True,  # no terminal of ours
        check=False,
    )
    inherited = "ignored" if start == "sigint_ignored" else "default_int_handler"
    first = out.stdout.splitlines()[0] if out.stdout else ""
    assert first.startswith("SIGINT:") and inherited in first, out.stdout[-3000:] + out.stderr
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 passed" in out.stdout, out.stdout[-3000:]
