"""``python -m bench.gpu``: every GPU claim of the README measured by one script (``make
gpu-check``), each figure a ratio against a baseline measured in the same run, within a time
budget (``--budget-s``, default 480 s), written to ``gpu-check.json`` and ``gpu-check.md``
after every part. ``--tiny`` runs every part at tiny sizes on the CPU (the test suite does),
so that the script cannot rot between the times a GPU is lent.

This package imports only the standard library at import time: ``bench.gpu.wheels`` runs on
a machine where the project's dependencies are not installed yet.
"""

from bench.gpu.report import render_markdown

__all__ = ["render_markdown"]
