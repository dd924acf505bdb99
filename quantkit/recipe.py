"""Release recipes: one YAML file naming a source, the artifacts to make with their options,
verify gates and publish targets (`quantkit run RECIPE.yaml`).

A recipe is untrusted input. It is read with PyYAML's safe loader (no Python objects),
anchors and aliases are refused (no alias bombs), explicit tags (`!foo`, `!!python/...`) are
refused, duplicate keys are refused (YAML would keep the last silently), and the typed schema
below forbids unknown fields. Every error names the recipe's line and the field. Artifact
names are single folder names, so every output stays inside the folder `quantkit run` writes to.

An artifact's `options:` is its backend's options model (quantkit/backends/base.py Options),
the same model the conversion command is derived from: a field `head_bits` is `--head-bits`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from quantkit.backends.registry import REGISTRY

from quantkit.errors import InputError, validation_problem
from quantkit.figures import Gates
from quantkit.hub_ids import BRANCH, REPO_ID_PATTERN

MAX_RECIPE_BYTES = 1 << 20
FOLDER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"  # one path component: no '/', no '..'
RECIPE_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, validate_default=True)


class VerifySpec(Strict):
    eval_text: str | None = None  # a file (relative to the recipe) or a dataset spec; default: built-in text
    tokens: int = Field(8192, ge=64)
    ctx: int = Field(512, ge=16)
    runtime: Literal["transformers", "llamacpp"] = "transformers"
    gates: Gates = Gates()

    @field_validator("ctx")
    @classmethod
    def _even(cls, v: int) -> int:  # verify scores the second half of each window
        if v % 2:
            raise ValueError("use an even window, e.g. 512")
        return v


class PublishSpec(Strict):
    repo: str = Field(pattern=REPO_ID_PATTERN)
    private: bool = False
    revision: str | None = Field(None, pattern=r"^[\w./-]+$")

    @field_validator("revision")
    @classmethod
    def _branch(cls, v: str | None) -> str | None:
        if v is not None and not BRANCH.match(v):
            raise ValueError("not a usable branch name; use letters, digits and '-', '_', '.', '/', e.g. fp8-v2")
        return v


# --- artifacts: one kind per backend, its options the backend's own model ---------------

class ArtifactBase(Strict):
    name: str | None = Field(None, pattern=FOLDER_NAME, description="output folder name [default: <model>-<FORMAT>]")
    verify: bool = True
    gates: Gates | None = None  # per-key override of verify.gates
    publish: PublishSpec | None = None

    def backend_options(self) -> dict:
        return self.options.model_dump(mode="json")


def _artifact_model(name: str, options: type) -> type[ArtifactBase]:
    return create_model(f"{name.upper()}Artifact", __base__=ArtifactBase,
                        format=(Literal[name], ...), options=(options, options()))


ARTIFACTS = {name: _artifact_model(name, backend.Options) for name, backend in REGISTRY.items()}
OPTION_MODELS = {name: backend.Options for name, backend in REGISTRY.items()}
Artifact = Annotated[Union[tuple(ARTIFACTS.values())], Field(discriminator="format")]


class Recipe(Strict):
    recipe: Literal[1] = Field(description="schema version")
    name: str = Field(pattern=FOLDER_NAME, description="the release; its default output folder")
    source: str = Field(min_length=1, description="local folder (relative to the recipe), Hub id, or builtin:NAME")
    verify: VerifySpec = VerifySpec()
    artifacts: list[Artifact] = Field(min_length=1)


# --- loading, with line numbers ----------------------------------------------------------


def load(path: Path) -> tuple[Recipe, str]:
    """Read and check a recipe; returns it and its text. Raises InputError naming line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such recipe file; pass a YAML recipe (see recipes/)")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise InputError(f"{path}: {path.stat().st_size} bytes is too large for a recipe (limit 1 MiB)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; a recipe is a YAML file") from None
    return parse(text, path.name), text


def check(path: Path) -> dict:
    """Read and check a recipe without running it (`quantkit run --check`): what it would make."""
    spec, _ = load(path)
    artifacts = [{"format": a.format, "name": a.name, "options": a.backend_options(), "verify": a.verify,
                  "publish": a.publish.repo if a.publish else None} for a in spec.artifacts]
    return {"recipe": str(path), "name": spec.name, "source": spec.source, "artifacts": artifacts}


def parse(text: str, where: str = "recipe") -> Recipe:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1
                raise InputError(f"{where}:{line}: anchors and aliases (&, *) are not allowed in a recipe; write the values out")
            if getattr(event, "tag", None) is not None:  # written by the author: `!foo x`, `!!python/...`, `! x`
                line = event.start_mark.line + 1
                raise InputError(f"{where}:{line}: YAML tags ({_short(event.tag)}) are not allowed in a recipe; "
                                 "remove the tag and write the plain value")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{where}{line}: not valid YAML ({problem})") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise InputError(f"{where}: a recipe is a YAML mapping with recipe, name, source and artifacts (see recipes/)")
    _refuse_duplicate_keys(root, where)
    data = yaml.safe_load(text)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        line, field = locate(root, err["loc"])
        raise InputError(f"{where}:{line}: {field}: {_message(err)}") from None


def _refuse_duplicate_keys(node, where: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            if k.value in seen:
                raise InputError(f"{where}:{k.start_mark.line + 1}: {k.value} is given twice; keep one")
            seen.add(k.value)
            _refuse_duplicate_keys(v, where)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _refuse_duplicate_keys(v, where)


def locate(root, loc: tuple) -> tuple[int, str]:
    """The line of the deepest YAML node on pydantic's error path, and that path as a field name.
    A missing field is reported at the line of the mapping that lacks it."""
    node, parts, line = root, [], root.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(key, str):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                if key in OPTION_MODELS:  # the discriminated union's tag, not a YAML key
                    continue
                parts.append(key)
                break
            parts.append(key)
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            parts.append(f"[{key}]")
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line, ".".join(parts).replace(".[", "[") or "(top level)"


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "union_tag_invalid":
        return f"unknown format; choose one of {', '.join(OPTION_MODELS)}"
    if kind == "union_tag_not_found":
        return f"each artifact needs `format:` ({', '.join(OPTION_MODELS)})"
    if kind == "string_pattern_mismatch":
        return f"{_short(err['input'])} is not allowed here ({_PATTERN_HELP.get(err['ctx']['pattern'], err['ctx']['pattern'])})"
    return validation_problem(err)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_PATTERN_HELP = {
    REPO_ID_PATTERN: "a Hub repository id, ORG/NAME",
    FOLDER_NAME: "a single folder name of letters, digits, '.', '_', '+', '-'; outputs stay inside the run's folder",
}


def option_paths(artifact: ArtifactBase, base: Path) -> dict:
    """The artifact's options, with the input files they name (fields marked `path`) resolved
    against the recipe's folder when they exist there."""
    out = artifact.backend_options()
    fields = type(artifact.options).model_fields
    for key in (k for k, f in fields.items() if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("path")):
        v = out.get(key)
        if isinstance(v, str) and not Path(v).is_absolute() and (base / v).exists():
            out[key] = str((base / v).resolve())
    return out


def resolve_source(spec: str, base: Path) -> str:
    if spec.startswith("builtin:") or Path(spec).is_absolute():
        return spec
    local = base / spec
    return str(local.resolve()) if local.exists() else spec


def safe_child(folder: Path, name: str) -> Path:
    """folder/name, refusing anything that would land outside folder (e.g. through a symlink)."""
    if not re.match(FOLDER_NAME, name):
        raise InputError(f"artifact name {name!r} must be a single folder name; outputs stay inside {folder}")
    target = folder / name
    if target.is_symlink() or not target.resolve().is_relative_to(folder.resolve()):
        raise InputError(f"{target} points outside {folder}; remove it or choose another name")
    return target
