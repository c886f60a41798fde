"""check_count: the one check of a count every module uses."""

import numpy as np
import pytest

from aerialkd.checks import check_count


@pytest.mark.parametrize("value", [16, np.int64(16), np.uint8(16)])
def test_a_whole_number_passes_as_a_python_int(value):
    checked = check_count("batch_size", value)
    assert checked == 16 and type(checked) is int


@pytest.mark.parametrize("value", [0, -3, True, np.bool_(True), 16.0, "16", None])
def test_anything_else_is_refused_by_name(value):
    with pytest.raises(ValueError, match=rf"batch_size must be an int >= 1, got {value!r}\."):
        check_count("batch_size", value)


def test_the_minimum_is_the_callers():
    assert check_count("retries", 0, minimum=0) == 0
    with pytest.raises(ValueError, match="n_classes must be an int >= 2, got 1"):
        check_count("n_classes", 1, minimum=2)
