"""Executors: how cells run. One small package per kind (local, debug, slurm, docker), each
with an ``options.py`` (the matrix's ``executor`` block: pydantic only) and a ``backend.py``
(a :class:`~runner.executors.base.Backend` over submitit), and its job side where it has one
(``slurm/job.py``, ``docker/job.py``).

``options.py`` here is the registry of options models (the matrix schema imports it, and it
costs no backend); ``backends.py`` the registry of backends (the sweep imports it). Both list
the built-in kinds plainly; a third-party kind is found through the entry-point groups
``runner.executor_options`` and ``runner.executor_backends`` (``kind = "module:Class"``).
This file imports nothing, so that importing the options never imports a backend.
"""
