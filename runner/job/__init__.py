"""The job side: what runs inside a cell's process, on any executor.

cell.py: :class:`~runner.job.cell.CellJob`, the payload every executor runs (compose, train,
record the outcome). process.py: what the process keeps up around the recipe (heartbeat,
failure reasons). signals.py: what each signal means to a running cell, per executor.
"""
