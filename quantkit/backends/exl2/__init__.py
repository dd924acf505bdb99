"""EXL2 as exllamav2 0.3.2 loads it, written by quantkit's own encoder (backend.py)."""
from quantkit.backends.exl2.backend import EXL2, EXL2Options, EXL2Plan

__all__ = ["EXL2", "EXL2Options", "EXL2Plan"]
