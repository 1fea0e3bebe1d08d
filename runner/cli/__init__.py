"""The command line: ``runner`` and its commands (``commands.py``; ``main`` is its entry
point), the argument parser, and how things are shown (status tables, the live progress
display, report tables, exports, logs). Everything a user types starts here; nothing below
imports it."""

from runner.cli.commands import main

__all__ = ["main"]
