"""Argument types shared by the scripts' command lines."""

import argparse
from collections.abc import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """An `argparse` type: a whole number of at least `minimum`.

    argparse names the flag in the error, e.g. "argument --epochs: must be a whole
    number of at least 1, got '0'", before anything is trained or written.

    Example:

    >>> whole_number(1)("16")
    16
    >>> whole_number(1)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a whole number of at least 1, got '0'
    >>> whole_number(0)("x")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a whole number of at least 0, got 'x'
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be a whole number of at least {minimum}, got {text!r}")
        return value

    return parse


count = whole_number(1)  # epochs, images, repeats, sizes
at_least_zero = whole_number(0)  # retries, pixels
