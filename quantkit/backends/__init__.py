"""The backend registry: a format's CLI name -> the class that writes it."""
from __future__ import annotations

from quantkit.backends.base import Backend, BackendResult
from quantkit.backends.fp8 import FP8Dynamic

REGISTRY: dict[str, type] = {
    "fp8": FP8Dynamic,
}

__all__ = ["REGISTRY", "Backend", "BackendResult"]
