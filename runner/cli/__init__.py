"""The command line: ``runner`` and its commands (``main``), the argument parser, and how
things are shown (status tables, the live progress display, report tables, exports).
Everything a user types starts here; nothing below imports it."""

from runner.cli.main import main

__all__ = ["main"]
