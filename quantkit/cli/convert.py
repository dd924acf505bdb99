"""Conversion commands: one per backend in the registry."""
from __future__ import annotations

import inspect
from typing import Annotated, Optional

import typer

from quantkit.cli.common import AllowPickle, Force, Json, Model, Output, emit_json, human_bytes, invocation, kv_table, notice, stdout
from quantkit.cli.options import build, parameters
from quantkit.manifest import read_dict

EvalFlag = Annotated[bool, typer.Option("--eval", help="Afterwards, run `quantkit verify` on the result (PPL, KLD, top-1 agreement against the source).")]
EvalText = Annotated[Optional[str], typer.Option("--eval-text", help="Evaluation text file or dataset [default: built-in text].")]
EvalTokens = Annotated[int, typer.Option("--eval-tokens", help="Tokens of evaluation text to use.", min=1024)]


def register(app: typer.Typer) -> None:
    """One command per registered backend; its options come from the backend's options model."""
    from quantkit.backends.registry import REGISTRY

    for backend in REGISTRY.values():
        epilog = ("Examples:  " + "   |   ".join(backend.examples)) if backend.examples else None
        app.command(backend.name, help=inspect.cleandoc(backend.__doc__ or ""), epilog=epilog)(command_for(backend))


def command_for(backend):
    """The conversion command of `backend`: common arguments, its options, then the --eval ones."""

    def command(**values) -> None:
        from quantkit.pipeline import convert

        options = build(backend.Options, {k: values.pop(k) for k in list(values) if k.startswith("opt_")}, values.pop("ctx"))
        check_eval_text(values["eval_"], values["eval_text"])
        folder, manifest = convert(backend.name, values["model"], values["output"], values["force"], values["allow_pickle"],
                                   show_progress=not values["json_"], notice=notice, options=options, provenance=invocation())
        finish(folder, manifest, values["json_"], values["eval_"], values["eval_text"], values["eval_tokens"],
               targets=backend.verify_targets(folder, manifest))

    def param(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    command.__signature__ = inspect.Signature([
        param("ctx", typer.Context), param("model", Model), param("output", Output, None), param("force", Force, False),
        param("allow_pickle", AllowPickle, False), *parameters(backend.Options),
        param("eval_", EvalFlag, False), param("eval_text", EvalText, None), param("eval_tokens", EvalTokens, 8192),
        param("json_", Json, False),
    ])
    command.__name__ = backend.name
    return command


def check_eval_text(eval_: bool, eval_text) -> None:
    """With --eval, the evaluation text is read before any conversion: a bad one fails at once."""
    if eval_:
        from quantkit.errors import InputError
        from quantkit.text import load_text

        text, described = load_text(eval_text, "evaluation")
        if not text.strip():
            raise InputError(f"--eval-text: {described} is empty; pass a text of at least a few thousand words")


def finish(folder, manifest: dict, json_: bool, eval_: bool, eval_text, eval_tokens: int, targets: list) -> None:
    """After a conversion: verify it when asked (`targets`, what the backend says verify scores in
    the folder; results go into quantkit.json), then show it."""
    if eval_:
        from quantkit import scoring

        scoring.record(scoring.verify(targets, None, eval_text, 512, eval_tokens, show_progress=not json_))
        manifest = read_dict(folder)
    show_artifact(folder, manifest, json_)


def show_artifact(folder, manifest: dict, json_: bool) -> None:
    from quantkit import figures

    if json_:
        emit_json({"output": str(folder), **manifest})
        return
    files = manifest["files"]
    rows = [
        ("output", str(folder)),
        ("format", manifest["format"]),
        ("source", manifest["source"]["spec"]),
        ("size", f"{human_bytes(sum(f['bytes'] for f in files.values()))} in {len(files)} files"),
        ("wall time", f"{manifest['timings']['wall_s']:.1f} s"),
        ("peak RSS", human_bytes(manifest["peak_rss_bytes"])),
    ]
    ev = manifest.get("verify")
    if ev:
        c = figures.cells(ev)
        rows += [(label, c[label]) for label in ("PPL source", "PPL quantized")]
        rows += [("PPL ratio", f"{c['PPL ratio']}  ({c['tokens scored']} tokens scored, {ev['text']})"),
                 *((label, c[label]) for label in ("KLD mean / p99", "top-1 agreement"))]
    for name, ev in sorted((manifest.get("verify_files") or {}).items()):
        rows.append((name, figures.short(ev)))
    stdout.print(kv_table("quantkit artifact", rows))
