"""Recipes: one readable trainer per task, configured by Hydra config groups.

A recipe is a package ``recipes.<name>`` that exposes, without importing torch:

- ``CONFIG_DIR``: the directory holding ``<CONFIG_NAME>.yaml`` and one sub-directory per
  config group (``model/``, ``optimizer/``, ...), one YAML file per choice;
- ``CONFIG_NAME``: the primary config's name;
- ``TRAIN``: ``"module:function"`` of the entry point, a ``recipes.contract.TrainFn``;
- optionally ``PREDICT`` (a ``recipes.contract.PredictFn``: label maps for new images or the
  ``data.test`` cases, one model or an ensemble) and ``EVALUATE`` (a
  ``recipes.contract.EvaluateFn``: predictions against references, nnU-Net's
  ``summary.json``), which ``runner predict`` and ``runner evaluate`` call;
- optionally ``PROFILE``: ``(cfg, steps, report) -> dict``, the cell's first ``steps``
  optimizer steps trained as ``TRAIN`` trains them, and their figures (step time,
  memory, the run's length; an out-of-memory as a result), which ``runner profile`` calls;
- optionally ``CHECK_DATA``: ``(data config, listing_errors: bool) -> list[str]``, the
  problems that would stop training from reading the data (no reader installed for an
  extension; with ``listing_errors``, also cases that can't be found: a missing root or
  file), which ``runner plan`` and ``runner sweep`` report before anything is submitted;
- optionally ``CASES``: ``(data config) -> list[str] | None``, the dataset's case ids (None
  where it can't be listed here), against which ``runner plan`` checks a matrix's nested
  cross-validation (``cv``) fold counts;
- optionally ``UNAVAILABLE``: ``{group: {choice: reason}}``, plain data: choices the recipe
  names but can't offer (U-Mamba without CUDA), refused at plan time with the reason.

The runner only relies on this surface and on :mod:`recipes.contract`; recipes never import
the runner, so data flows one way: runner -> recipe -> MLflow.
"""
