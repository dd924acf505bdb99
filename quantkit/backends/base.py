"""The one interface every backend implements, and the pieces it is made of.

A backend is found through the registry (quantkit/backends/registry.py) by its name, the CLI
command and the recipe's `format:`. It brings:

- `Options`: one pydantic model of its options. The CLI command, the recipe's artifact schema
  and the Python API are all derived from it (quantkit/cli/options.py, quantkit/recipe.py,
  quantkit/api.py); nothing else lists them.
- `check(source) -> Plan` before any work, `run(plan, staging, progress) -> BackendResult`.
  The plan holds all that run needs; the backend keeps no state on the side.
- a description of what it writes, read from an artifact's manifest without importing torch:
  card facts (`card`), the files verify scores (`verify_targets`), the weight bytes vram
  predicts (`vram_variants` and `weight_bytes`), the default output name (`suffix`).

Importing a backend module costs no torch: heavy modules are imported inside check and run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from quantkit.source import Source

Progress = Callable[[int], None]  # advance by n source bytes


class Options(BaseModel):
    """A backend's options. Field names are the recipe keys; the CLI flag is the name with '-'
    for '_', plus `json_schema_extra={"short": "-x"}`. Each field's description is its help.
    `json_schema_extra={"path": True}` marks a field naming an input file (a recipe resolves it
    against the recipe's folder)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


def calibration_field():
    """The `calibration` option every calibrated backend takes."""
    return Field(None, json_schema_extra={"path": True},
                 description="Calibration text: a file, or a dataset (path:config:split[:column]) [default: built-in text].")


@dataclass(kw_only=True)
class Plan:
    """What `check` decided and `run` takes. Backends subclass it (also kw_only) with their own fields."""

    source: Source
    notices: list[str] = field(default_factory=list)  # shown to the user before the work starts
    output_bytes: int = 0  # upper estimate of the artifact's size, for the free-disk check
    scratch_bytes: int = 0  # working files beside the output while it is built (removed after), also checked


@dataclass
class BackendResult:
    method: str  # e.g. "fp8-dynamic"
    parameters: dict  # every parameter that shaped the output
    file_hashes: dict[str, str] = field(default_factory=dict)  # sha256 computed while writing
    source_hashes: dict[str, str] = field(default_factory=dict)  # sha256 of source weight files
    format: str = ""  # what `inspect` will call it


@dataclass(frozen=True)
class CardFacts:
    """What the model card says about one artifact kind (quantkit/card/)."""

    title: str  # "FP8-dynamic (compressed-tensors)"
    what: str  # one sentence: what the files hold
    tags: tuple[str, ...]
    library_name: str | None  # the Hub library that loads it
    runtimes: tuple[tuple[str, str], ...] = ()  # (snippet key in card/snippets.py, note under it)
    memory_note: str = ""
    local_note: str = ""
    summary: str = ""  # the settings, one line, from the manifest's parameters
    run_note: str = ""  # a paragraph after the run snippets
    verify_note: str = ""  # a paragraph after the verify figures

    @classmethod
    def unknown(cls, manifest: dict, summary: str = "") -> CardFacts:
        """Facts for a kind this quantkit does not know: the manifest's own name for it, no runtimes."""
        return cls(title=manifest.get("format", "unknown format"), what=manifest.get("format", ""),
                   tags=("quantkit",), library_name=None, summary=summary)


class Backend:
    """Base of every backend; see the module docstring."""

    name: ClassVar[str]  # CLI command and recipe `format:`
    Options: ClassVar[type[Options]]
    examples: ClassVar[tuple[str, ...]] = ()  # command lines for --help
    # methods in manifests this backend writes (manifest["method"]): how an artifact finds its backend
    methods: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Options | None = None, **values):
        self.options = options if options is not None else self.Options(**values)

    # what it makes ---------------------------------------------------------------------

    def suffix(self) -> str:
        """The default output folder is <model-name>-<suffix>."""
        raise NotImplementedError

    def check(self, source: Source) -> Plan:
        """Refuse options this source cannot take (raise a QuantkitError, an OptionError for one
        option); decide everything run needs."""
        raise NotImplementedError

    def run(self, plan: Plan, staging: Path, progress: Progress) -> BackendResult:
        """Write the artifact's weights and config.json into staging."""
        raise NotImplementedError

    # what it made (from the manifest; no heavy imports) ---------------------------------

    @classmethod
    def card(cls, manifest: dict) -> CardFacts:
        raise NotImplementedError

    @classmethod
    def verify_targets(cls, folder: Path, manifest: dict) -> list[Path]:
        """What `verify` scores in the artifact folder: the folder itself unless it holds several models."""
        return [folder]

    @classmethod
    def snippet_values(cls, folder: Path, manifest: dict, repo: str, name: str) -> dict:
        """Values this format's run snippets need beyond the common ones (card/snippets.py)."""
        return {}

    @classmethod
    def snippet_rows(cls, manifest: dict) -> list[dict]:
        """One row per file for snippets repeated per file (GGUF); none for a one-model folder."""
        return []

    @classmethod
    def vram_variants(cls, folder: Path, manifest: dict) -> tuple[str, list[tuple[str, str]]]:
        """(model whose config vram reads, [(label, vram format spec)]) for the card's memory table."""
        raise NotImplementedError

    # `quantkit vram --format KIND[:ARGS]`: the kinds this backend answers, and their weight bytes
    vram_kinds: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def weight_bytes(cls, kind: str, args: str, model) -> tuple[int, str]:
        """Bytes of the weights in format `kind[:args]` for `model` (quantkit/memory.py Model: config,
        tensors, folder, spec as typed), and how they are counted (one line, for the table). A spec
        this format cannot take raises OptionError("format", model.spec, problem)."""
        raise NotImplementedError
