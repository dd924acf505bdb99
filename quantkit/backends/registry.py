"""The backend registry: a format's name (CLI command, recipe `format:`) -> the class that writes it.

Adding a format is one line here, its backend module or package, and its tests.
"""
from __future__ import annotations

from quantkit.backends.base import Backend
from quantkit.backends.exl2 import EXL2
from quantkit.backends.fp8 import FP8Dynamic
from quantkit.backends.gguf import GGUF
from quantkit.backends.int4 import AWQ, GPTQ
from quantkit.backends.schemes import INT8, MXFP4, NVFP4

REGISTRY: dict[str, type[Backend]] = {
    "fp8": FP8Dynamic,
    "gptq": GPTQ,
    "awq": AWQ,
    "gguf": GGUF,
    "exl2": EXL2,
    "nvfp4": NVFP4,
    "mxfp4": MXFP4,
    "int8": INT8,
}


def for_manifest(manifest: dict) -> type[Backend] | None:
    """The backend that wrote an artifact, from its manifest (None for one this quantkit does not know)."""
    by_name = REGISTRY.get(str(manifest.get("backend") or ""))
    if by_name is not None:
        return by_name
    method = manifest.get("method")
    return next((b for b in REGISTRY.values() if method in b.methods), None)


def for_vram_kind(kind: str) -> type[Backend] | None:
    """The backend that answers `quantkit vram --format KIND[:ARGS]`."""
    return next((b for b in REGISTRY.values() if kind in b.vram_kinds), None)
