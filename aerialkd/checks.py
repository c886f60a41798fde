"""Argument checks the modules share: a count is a whole number of at least one."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_count(label: str, value: Any, minimum: int = 1) -> int:
    """Returns `value` as an `int` if it is a whole number `>= minimum`.

    Python and numpy integers pass; booleans, floats (even `16.0`) and strings
    do not, so a count read from a JSON or a command line is converted by the
    caller, on purpose.

    Args:
        label: the argument's name, for the error.
        value: the count to check.
        minimum: the smallest count allowed.

    Returns:
        `value` as a Python `int`.

    Raises:
        ValueError: naming `label`, if `value` is not a whole number `>= minimum`.

    Example:

    >>> check_count("batch_size", np.int64(16))
    16
    >>> check_count("batch_size", 0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an int >= 1, got 0.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise ValueError(f"{label} must be an int >= {minimum}, got {value!r}.")
    return int(value)
