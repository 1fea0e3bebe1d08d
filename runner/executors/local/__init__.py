"""Cells as local processes (submitit's LocalExecutor): options.py (the matrix's executor
block, pydantic only) and backend.py."""
