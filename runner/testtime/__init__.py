"""Test time on the runner's side: which cells predict (``select``), ``runner predict`` and
``runner evaluate`` (``commands``), and scoring a matrix's cells on its test split
(``matrix_eval``). The prediction and the metrics themselves are the recipe's (its
``PREDICT`` and ``EVALUATE`` entries); the runner only chooses cells and records results.
"""
