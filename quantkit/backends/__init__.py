"""Backends: one per format, found through the registry."""
from quantkit.backends.base import Backend, BackendResult, CardFacts, Options, Plan
from quantkit.backends.registry import REGISTRY, for_manifest, for_vram_kind

__all__ = ["REGISTRY", "Backend", "BackendResult", "CardFacts", "Options", "Plan", "for_manifest", "for_vram_kind"]
