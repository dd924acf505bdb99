"""Which backend describes an artifact, and the facts the card shows for one no backend knows."""
from __future__ import annotations

from pathlib import Path

from quantkit.backends.base import CardFacts
from quantkit.backends.registry import for_manifest


def card_facts(manifest: dict) -> CardFacts:
    """The backend's card facts, or generic ones (the manifest's format string, no runtimes)."""
    backend = for_manifest(manifest)
    return backend.card(manifest) if backend is not None else CardFacts.unknown(manifest)


def verify_files(manifest: dict, name: str) -> list[str]:
    """The files `quantkit verify` scores one by one in a folder that holds several models (its
    targets other than the folder itself), as names inside the folder; [] when it scores the folder."""
    backend = for_manifest(manifest)
    if backend is None:
        return []
    folder = Path(name)
    return [t.name for t in backend.verify_targets(folder, manifest) if t != folder]
