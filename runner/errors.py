"""User-facing errors: each names the file, line and key, what was expected and the choices.

The CLI prints these without a traceback and exits with code 2. Anything else that escapes
is a bug in runner and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

EXIT_USAGE = 2


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    options = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_choices(choices: Iterable[object], limit: int = 20) -> str:
    options = sorted({str(c) for c in choices})
    shown = ", ".join(options[:limit])
    return shown + (f", ... ({len(options) - limit} more)" if len(options) > limit else "")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a matrix file, located as precisely as we can."""

    key: str
    message: str
    line: int | None = None

    def render(self, file: Path | str) -> str:
        where = f"{file}:{self.line}" if self.line else f"{file}"
        key = f" {self.key}:" if self.key else ""
        return printable(f"{where}:{key} {self.message}")


def printable(text: str) -> str:
    """One line per problem: control characters from the input are shown escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class RunnerError(Exception):
    """An error caused by the user's input or environment, shown as one clear message."""

    exit_code = EXIT_USAGE


class MatrixError(RunnerError):
    """One or more problems in a matrix file; all of them are reported at once."""

    def __init__(self, file: Path | str, problems: Sequence[Problem]) -> None:
        self.file = file
        self.problems = list(problems)
        super().__init__("\n".join(p.render(file) for p in self.problems))
