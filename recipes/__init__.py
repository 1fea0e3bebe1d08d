"""Recipes: one readable trainer per task, configured by Hydra config groups.

A recipe is a package ``recipes.<name>`` that exposes, without importing torch:

- ``CONFIG_DIR``: the directory holding ``<CONFIG_NAME>.yaml`` and one sub-directory per
  config group (``model/``, ``optimizer/``, ...), one YAML file per choice;
- ``CONFIG_NAME``: the primary config's name;
- ``TRAIN``: ``"module:function"`` of the entry point, a ``recipes.contract.TrainFn``.

The runner only relies on this surface and on :mod:`recipes.contract`; recipes never import
the runner, so data flows one way: runner -> recipe -> MLflow.
"""
