"""What planning asks of a data config (the recipe's ``CHECK_DATA``): can every file be read
(:func:`~recipes.components.data.readable.check_readable`), and does ``data.test`` hold out
cases that training would otherwise see, as it says? A held-out case id that is also a
training case (nnU-Net's ``imagesTs`` beside ``imagesTr``), a listed id the dataset lacks, or
an outer fold the cases can't fill would fail every cell at start-up: here it is one message
before anything is submitted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recipes.components.data.readable import check_readable, listed_cases
from recipes.components.testtime.held_out import exclude_test
from recipes.contract import PredictInputError


def check_data(data_cfg: Mapping[str, Any], *, listing_errors: bool = False) -> list[str]:
    """The problems that would stop training from reading ``data_cfg``'s dataset or from
    holding out its ``data.test`` (one readable message each; empty: none)."""
    problems = check_readable(data_cfg, listing_errors=listing_errors)
    if problems or data_cfg.get("test") is None:
        return problems
    items = listed_cases(data_cfg)
    if items is None:
        return problems
    try:
        exclude_test(items, data_cfg)
    except PredictInputError as err:
        problems.append(str(err))
    return problems
