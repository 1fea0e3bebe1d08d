"""``python -m runner.cli.background SPEC``: the process of a sweep's background scheduler
(:mod:`runner.sweep.background` starts it and says what it does). Its output goes to the
scheduler's log: plain progress lines, no terminal."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from runner.cli.progress import LiveProgress
from runner.sweep.background import serve


def main(spec_file: Path) -> int:
    console = Console(file=sys.stdout, width=160, force_terminal=False)
    return serve(
        spec_file,
        observer=lambda plan: LiveProgress(console, plan.cells),
        say=lambda text: console.print(text, markup=False),
    )


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
