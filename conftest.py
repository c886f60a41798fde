"""The names the docstring examples of `aerialkd` use, for `pytest --doctest-modules aerialkd`.

Every example sees `np`, `keras` and the public API of `aerialkd` (what
`from aerialkd import *` gives), with Keras' random seed set to 0, and runs in a
fresh temporary folder, so the files it writes go there. Three more names are
built on first use, once per session, and only for the examples that use them:

- `data`: the tiny synthetic dataset (`make_tiny_dataset`) loaded at 32 px;
- `teacher`: `build_teacher()`, untrained;
- `student`: `build_student()`, untrained.

The unit tests in `tests/` see none of this: they have their own fixtures.
"""

import os
import re
import sys

import pytest
from _pytest.doctest import DoctestItem

# As tests/conftest.py does, before TensorFlow is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def _doctest_data(tmp_path_factory):
    import aerialkd

    root = aerialkd.make_tiny_dataset(tmp_path_factory.mktemp("doctest-data"))
    return aerialkd.load_dataset(root, patch_size=32)


@pytest.fixture(scope="session")
def _doctest_teacher():
    import aerialkd
    import keras

    keras.utils.set_random_seed(0)
    return aerialkd.build_teacher()


@pytest.fixture(scope="session")
def _doctest_student():
    import aerialkd
    import keras

    keras.utils.set_random_seed(0)
    return aerialkd.build_student()


_LAZY_NAMES = ("data", "teacher", "student")


@pytest.fixture(autouse=True)
def _doctest_names(request):
    """For a doctest only: the names above, a temporary folder, seed 0; figures closed after."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    import keras
    import numpy as np

    import aerialkd

    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update({name: getattr(aerialkd, name) for name in aerialkd.__all__})
    namespace.update(np=np, keras=keras)
    source = "\n".join(example.source for example in request.node.dtest.examples)
    used = set(re.findall(r"[A-Za-z_]\w*", source))
    for name in _LAZY_NAMES:
        if name in used:
            namespace[name] = request.getfixturevalue(f"_doctest_{name}")
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    keras.utils.set_random_seed(0)
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
