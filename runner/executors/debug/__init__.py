"""Cells in the sweep's own process, one after another (submitit's DebugExecutor), for
stepping through a recipe with a debugger: options.py and backend.py."""
