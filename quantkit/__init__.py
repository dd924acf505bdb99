"""quantkit: one BF16 checkpoint in, every published quantized format out, each one verified.

The Python API (docs/api.md): convert, verify, vram, publish, run_recipe, and each format's options model.
"""

__version__ = "0.1.0"

from quantkit.api import Artifact, convert, publish, run_recipe, verify, vram  # noqa: E402
from quantkit.backends.exl2 import EXL2Options  # noqa: E402
from quantkit.backends.fp8 import FP8Options  # noqa: E402
from quantkit.backends.gguf import GGUFOptions  # noqa: E402
from quantkit.backends.int4 import AWQOptions, GPTQOptions  # noqa: E402
from quantkit.errors import QuantkitError  # noqa: E402

__all__ = ["Artifact", "AWQOptions", "EXL2Options", "FP8Options", "GGUFOptions", "GPTQOptions", "QuantkitError",
           "convert", "publish", "run_recipe", "verify", "vram"]
