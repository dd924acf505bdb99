"""quantkit's Python API: the commands as functions, taking the same options models (docs/api.md).

    import quantkit
    art = quantkit.convert("builtin:tiny-llama", quantkit.GGUFOptions(type="Q8_0,Q4_K_M"), "out/tiny-gguf")
    results = quantkit.verify(art.targets, tokens=2048)

Errors a user can cause raise quantkit.QuantkitError (one line, as the CLI prints it). Nothing
here prints; `notice` receives what the CLI would show as a notice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantkit.backends.base import Options
from quantkit.backends.registry import REGISTRY
from quantkit.errors import InputError

Notice = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True)
class Artifact:
    """What `convert` wrote: its folder, its manifest (quantkit.json), and what `verify` scores in it."""

    folder: Path
    manifest: dict
    targets: list[Path]


def backend_for(options: Options):
    """The backend whose options model `options` is."""
    for backend in REGISTRY.values():
        if type(options) is backend.Options:
            return backend
    raise InputError(f"{type(options).__name__} is not the options model of any format; "
                     f"use one of {', '.join(b.Options.__name__ for b in REGISTRY.values())}")


def convert(model: str, options: Options | str, output: str | Path | None = None, *, force: bool = False,
            allow_pickle: bool = False, progress: bool = False, notice: Notice = _quiet) -> Artifact:
    """Convert `model` (a folder, Hub id or builtin:NAME) to the format of `options`: an options
    model such as `GGUFOptions(type="Q4_K_M")`, or a format's name for its defaults ("fp8").
    The output folder defaults to ./<model-name>-<FORMAT>, as on the command line."""
    from quantkit.pipeline import convert as run

    if isinstance(options, str):
        if options not in REGISTRY:
            raise InputError(f"unknown format {options!r}; choose one of {', '.join(REGISTRY)}")
        options = REGISTRY[options].Options()
    backend = backend_for(options)
    folder, manifest = run(backend.name, str(model), Path(output) if output is not None else None, force, allow_pickle,
                           show_progress=progress, notice=notice, options=options, provenance={"api": "quantkit.convert"})
    return Artifact(folder, manifest, backend.verify_targets(folder, manifest))


def verify(artifacts: list[str | Path] | str | Path, source: str | Path | None = None, *, eval_text: str | None = None,
           ctx: int = 512, tokens: int = 8192, runtime: str = "transformers", record: bool = True,
           allow_pickle: bool = False, progress: bool = False, notice: Notice = _quiet,
           device: str = "auto") -> list[dict]:
    """Score each artifact (a folder, or a .gguf file) against its source (default: the one its
    quantkit.json names): perplexity, KL divergence and top-1 agreement on the same windows.
    With `record`, the figures go into each artifact's quantkit.json and card, as the CLI does."""
    from quantkit import scoring as scoring

    items = [artifacts] if isinstance(artifacts, (str, Path)) else list(artifacts)
    results = scoring.verify([Path(a) for a in items], Path(source) if source is not None else None, eval_text, ctx,
                             tokens, show_progress=progress, runtime=runtime, allow_pickle=allow_pickle, notice=notice,
                             device=device)
    if record:
        scoring.record(results)
    return [r.to_dict() for r in results]


def vram(model: str | Path, format: str | None = None, *, contexts: list[int] = (1024, 16384), batch: int = 1,
         kv_dtype: str = "fp16", gpu: int | None = None):
    """Memory for weights plus KV cache of `model` in `format` (as `quantkit vram --format`) at each context."""
    from quantkit import memory

    return memory.estimate(str(model), format, list(contexts), batch, kv_dtype, gpu)


def publish(folder: str | Path, repo: str, *, private: bool = False, revision: str | None = None,
            dry_run: bool = False, message: str | None = None, token: str | None = None,
            progress: bool = False, notice: Notice = _quiet) -> dict:
    """Upload an artifact folder with its model card to the Hub repository `repo` (resumable)."""
    from quantkit.upload import publish as upload

    return upload(Path(folder), repo, private=private, revision=revision, dry_run=dry_run, token=token,
                  commit_message=message, show_progress=progress, notice=notice)


def run_recipe(recipe: str | Path, output: str | Path | None = None, *, force: bool = False, publish: bool = True,
               org: str | None = None, allow_pickle: bool = False, check: bool = False, progress: bool = False,
               notice: Notice = _quiet) -> dict:
    """Run a release recipe (YAML): every artifact, its verify gates and publish targets; returns the report.
    With `check`, only read and check the recipe and return what it would make (`quantkit run --check`)."""
    from quantkit import recipe as recipes, release

    if check:
        return recipes.check(Path(recipe))

    return release.run(Path(recipe), Path(output) if output is not None else None, force=force, publish=publish,
                       org=org, allow_pickle=allow_pickle, show_progress=progress, notice=notice)
