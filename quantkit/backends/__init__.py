"""The backend registry: a format's CLI name -> the class that writes it."""
from __future__ import annotations

from quantkit.backends.base import Backend, BackendResult
from quantkit.backends.exl2 import EXL2
from quantkit.backends.fp8 import FP8Dynamic
from quantkit.backends.gguf import GGUF
from quantkit.backends.int4 import AWQ, GPTQ

REGISTRY: dict[str, type] = {
    "fp8": FP8Dynamic,
    "gptq": GPTQ,
    "awq": AWQ,
    "gguf": GGUF,
    "exl2": EXL2,
}

__all__ = ["REGISTRY", "Backend", "BackendResult"]
