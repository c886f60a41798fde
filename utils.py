"""The notebooks' face of the `aerialkd` package: `import utils` gives all of it.

The notebooks, the README and the Colab cells say `import utils`; this module
re-exports the package's public API, so `utils.Distiller`, `utils.load_dataset`,
`utils.fit_segmentation` and the rest are the package's own objects. The code
lives in `aerialkd/`, one topic per module (see `aerialkd.__doc__`).

Example:

>>> import utils
>>> utils.Distiller is __import__("aerialkd").Distiller
True
"""

from aerialkd import *  # noqa: F401,F403
from aerialkd import __all__  # noqa: F401
