"""The one interface every backend implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from quantkit.source import Source

Progress = Callable[[int], None]  # advance by n source bytes


@dataclass
class BackendResult:
    method: str  # e.g. "fp8-dynamic"
    parameters: dict  # every parameter that shaped the output
    file_hashes: dict[str, str] = field(default_factory=dict)  # sha256 computed while writing
    source_hashes: dict[str, str] = field(default_factory=dict)  # sha256 of source weight files
    format: str = ""  # what `inspect` will call it


class Backend(Protocol):
    name: str  # the CLI command
    suffix: str  # default output folder is <model-name>-<suffix>

    def estimate_bytes(self, source: Source) -> int:
        """Upper estimate of the artifact's size, for the free-disk check."""

    def check(self, source: Source) -> list[str]:
        """Refuse options this source cannot take (raise a QuantkitError); return notices."""

    def run(self, source: Source, staging: Path, progress: Progress) -> BackendResult:
        """Write the artifact's weights and config.json into staging."""
