"""runner: a declarative experiment-matrix runner for medical image segmentation.

matrix (YAML) -> runner.matrix (load, expand, validate) -> runner.plan (cells + ledger)
-> runner.sweep (submit, queue, cancel) -> runner.executors -> runner.job -> recipes -> MLflow.
"""

__version__ = "0.1.0"
