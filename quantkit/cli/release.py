"""publish and run: releases (model cards, Hub uploads, recipes)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.errors import QuantkitError
from quantkit.cli.common import AllowPickle, Json, emit_json, human_bytes, kv_table, notice, stderr, stdout


def register(app: typer.Typer) -> None:
    @app.command(
        "publish",
        epilog="Examples:  quantkit publish SmolLM2-135M-Instruct-FP8-Dynamic --repo my-org/SmolLM2-135M-Instruct-FP8-Dynamic   |   "
        "quantkit publish out/Llama-3.1-8B-Instruct-GGUF --repo my-org/Llama-3.1-8B-Instruct-GGUF --private --dry-run --json",
    )
    def publish(
        folder: Annotated[Path, typer.Argument(help="An artifact folder quantkit wrote (it holds quantkit.json).", show_default=False)],
        repo: Annotated[str, typer.Option("--repo", help="Hub repository ORG/NAME; created when missing.", show_default=False)],
        private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
        revision: Annotated[Optional[str], typer.Option("--revision", help="Branch to upload to; created when missing [default: main].")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be uploaded; change nothing (needs no token).")] = False,
        message: Annotated[Optional[str], typer.Option("--message", help="Commit message.")] = None,
        json_: Json = False,
    ) -> None:
        """Upload an artifact with its model card to the Hugging Face Hub: resumable, and a rerun uploads nothing new.

        The token comes from HF_TOKEN or `hf auth login` and is never printed or written. Files are
        checked against the sha256 in quantkit.json first; a changed artifact is refused.
        """
        from quantkit.upload import publish as do_publish

        result = do_publish(folder, repo, private=private, revision=revision, dry_run=dry_run,
                            commit_message=message, show_progress=not json_, notice=notice)
        if json_:
            emit_json(result)
            return
        rows = [("repository", result["url"]), ("revision", result["revision"] or "main"),
                ("uploaded" if not result["dry_run"] else "would upload", f"{len(result['uploaded'])} files"),
                ("unchanged", f"{len(result['unchanged'])} files"), ("commits", str(len(result["commits"])))]
        stdout.print(kv_table("quantkit publish" + (" (dry run)" if result["dry_run"] else ""), rows))

    @app.command(
        "run",
        epilog="Examples:  quantkit run recipes/smollm2.yaml   |   quantkit run recipes/llama-3.1-8b-instruct.yaml -o release/ --org my-org --json   |   "
        "quantkit run recipes/smollm2.yaml --check",
    )
    def run(
        recipe: Annotated[Path, typer.Argument(help="A release recipe (YAML); see recipes/README.md.", show_default=False)],
        output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Release folder; every artifact is written inside it [default: ./<recipe name>].")] = None,
        force: Annotated[bool, typer.Option("--force", help="Rebuild artifacts whose folder holds something else (other options, another source, changed files); complete matching ones are still reused.")] = False,
        publish: Annotated[bool, typer.Option("--publish/--no-publish", help="Upload the artifacts that name a publish target, once all have passed their gates.")] = True,
        org: Annotated[Optional[str], typer.Option("--org", help="Publish under this Hub organisation instead of the one in the recipe.")] = None,
        check: Annotated[bool, typer.Option("--check", help="Only check the recipe and show the plan; convert nothing.")] = False,
        allow_pickle: AllowPickle = False,
        json_: Json = False,
    ) -> None:
        """Run a release recipe: each format with its options, verify gates (a failed gate stops the run, exit 1), publish targets.

        Artifacts already complete with a matching quantkit.json are reused, so a crashed release resumes.
        Writes release.json, release.md and release.png (size against PPL ratio and KLD) into the release folder.
        """
        from quantkit import recipe as recipes

        if check:  # the recipe alone, against every backend's options model: no torch import
            plan = recipes.check(recipe)
            if json_:
                emit_json(plan)
            else:
                stdout.print(kv_table(f"recipe {recipe} is valid: {plan['name']}",
                                      [(f"{i + 1}. {p['format']}", ", ".join(f"{k}={v}" for k, v in p["options"].items() if v is not None) or "defaults")
                                       for i, p in enumerate(plan["artifacts"])]))
            return
        from quantkit import release

        say = (lambda m: None) if json_ else (lambda m: stderr.print(f"[bold]quantkit run:[/] {m}", highlight=False))
        try:
            report = release.run(recipe, output, force=force, publish=publish, org=org, allow_pickle=allow_pickle,
                                 show_progress=not json_, notice=notice, say=say)
        except QuantkitError as e:
            last = getattr(e, "report", None)
            if last is not None and last["artifacts"]:
                if json_:
                    emit_json(last)
                else:
                    show_report(last)
            raise
        if json_:
            emit_json(report)
        else:
            show_report(report)


def show_report(report: dict) -> None:
    from rich.table import Table

    from quantkit import figures

    t = Table(title=f"release {report['name']}: {report['status']}", title_justify="left")
    for col in ("artifact", "format", "size", "PPL ratio", "KLD mean", "top-1", "status", "published"):
        t.add_column(col, justify="right" if col in ("size", "PPL ratio", "KLD mean", "top-1") else "left", overflow="fold")
    for a in report["artifacts"]:
        for r in a["results"] or [None]:
            name = Path(r["artifact"]).name if r else a["name"]
            size = human_bytes(r["size_bytes"]) if r else (human_bytes(a["size_bytes"]) if a["size_bytes"] else "")
            c = figures.cells(r) if r else {}
            figs = tuple(c.get(k, "") for k in ("PPL ratio", "KLD mean", "top-1 agreement"))
            pub = a["published"]["url"] if a.get("published") else ""
            t.add_row(name, a["format"], size, *figs, a["status"], pub)
    stdout.print(t)
    stdout.print(f"report: {report['output']}/release.md, release.json" + (", release.png" if report.get("chart") else ""))
