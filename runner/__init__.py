"""runner: a declarative experiment-matrix runner for medical image segmentation.

matrix (YAML) -> expand/validate -> schedule (ledger) -> executors -> recipes -> MLflow.
"""

__version__ = "0.1.0"
