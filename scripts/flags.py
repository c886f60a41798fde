"""Argument types shared by the scripts' command lines."""

import argparse


def count(text: str) -> int:
    """An `argparse` type: a whole number of at least 1 (epochs, images, repeats).

    argparse names the flag in the error, e.g. "argument --epochs: must be a whole
    number of at least 1, got '0'", before anything is trained or written.

    Example:

    >>> count("16")
    16
    >>> count("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a whole number of at least 1, got '0'
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def at_least_zero(text: str) -> int:
    """An `argparse` type: a whole number of at least 0 (retries, pixels).

    Example:

    >>> at_least_zero("0")
    0
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, got {text!r}")
    return value
