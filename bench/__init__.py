"""Benchmarks of the runner and the segmentation recipe: ``python -m bench [--quick]``.

Every figure is a ratio against a baseline measured in the same run and the same process
(or a fresh subprocess where process start is the point), never against a stored number:
timings on a shared machine drift, ratios taken side by side do not drift nearly as much.
Results go to ``bench/results/results.{json,md}``.
"""
