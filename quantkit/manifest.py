"""quantkit.json, an artifact's manifest: its typed form, read and written here only.

The JSON keeps the keys it has always had, so artifacts written by earlier versions still
read. Every model allows extra keys (an older or newer quantkit may write more), and writing
leaves out what was never set, so a manifest read and written again keeps the same keys.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from quantkit.output import MANIFEST, write_json


class Record(BaseModel):
    """A part of the manifest: typed fields, and whatever else the JSON holds kept as it is."""

    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict:
        """The JSON form: the keys that were read or set, nothing else."""
        return self.model_dump(mode="json", exclude_unset=True)


class VerifyResult(Record):
    """One artifact scored against its source (quantkit/scoring.py). `artifact` and
    `artifact_created` name what was scored; the manifest records the rest (`figures`)."""

    artifact: str | None = None
    artifact_created: str | None = None  # the scored build's manifest "created": record only into that one
    format: str | None = None
    size_bytes: int | None = None
    source: str | None = None
    ppl_source: float
    ppl_source_err: float | None = None
    ppl_quant: float
    ppl_quant_err: float | None = None
    ppl_ratio: float
    kld_mean: float
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float
    rms_delta_p: float | None = None
    tokens_scored: int
    ctx: int | None = None
    windows: int | None = None
    text: str | None = None
    activations: str | None = None
    method: str | None = None

    def figures(self) -> dict:
        """What the manifest records: everything but which artifact and build was scored."""
        return self.model_dump(mode="json", exclude_unset=True, exclude={"artifact", "artifact_created"})


class FileEntry(Record):
    bytes: int
    sha256: str | None = None


class SourceRecord(Record):
    """The checkpoint an artifact was made from."""

    spec: str | None = None  # as the user gave it
    path: str | None = None  # where it was read
    hub_id: str | None = None
    upstream_id: str | None = None
    card_metadata: dict[str, Any] | None = None
    architecture: str | None = None
    weight_files: dict[str, FileEntry] = {}


class Manifest(Record):
    """quantkit.json. `parameters` and `options` are the backend's own (open-ended) records."""

    quantkit_version: str | None = None
    created: str | None = None
    backend: str | None = None
    format: str | None = None
    method: str | None = None
    parameters: dict[str, Any] = {}
    options: dict[str, Any] = {}
    produced_by: dict[str, Any] = {}
    source: SourceRecord = SourceRecord()
    carried_files: list[str] = []
    files: dict[str, FileEntry] = {}
    timings: dict[str, Any] = {}
    peak_rss_bytes: int | None = None
    host: dict[str, Any] = {}
    verify: VerifyResult | None = None  # the folder scored as one model
    verify_files: dict[str, VerifyResult] | None = None  # several models in one folder (GGUF types), by file name
    verify_settings: dict[str, Any] | None = None  # what a recipe run verified with, to reuse its figures
    card_sha256: str | None = None  # of the README.md quantkit last wrote (quantkit/card/)

    @field_validator("verify", mode="wrap")
    @classmethod
    def _readable_figures(cls, value, handler):
        """Figures in a form this quantkit does not read (another version's) are left unread, not
        a reason to reject the whole manifest; the next verify writes them again."""
        try:
            return handler(value)
        except ValidationError:
            return None

    @field_validator("verify_files", mode="wrap")
    @classmethod
    def _readable_file_figures(cls, value, handler):
        try:
            return handler(value)
        except ValidationError:
            if not isinstance(value, dict):
                return None
            kept = {}
            for name, figures in value.items():
                try:
                    kept[str(name)] = VerifyResult.model_validate(figures)
                except ValidationError:
                    pass
            return kept

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        return cls.model_validate(data)

    def size_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())


def read(folder: Path) -> Manifest | None:
    """The manifest of `folder`; None when there is none, or it is not a manifest (not JSON,
    not an object, or fields of the wrong kind)."""
    data = read_dict(folder)
    if data is None:
        return None
    try:
        return Manifest.from_dict(data)
    except ValidationError:
        return None


def read_dict(folder: Path) -> dict | None:
    """The manifest of `folder` as its JSON object, for code that reads it as a dict (cards,
    backend descriptions); None as for `read`."""
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write(folder: Path, manifest: Manifest | dict) -> Path:
    """Write `manifest` as `folder`/quantkit.json, atomically."""
    data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    path = Path(folder) / MANIFEST
    write_json(path, data)
    return path
