"""publish and run (filled by issue 7)."""
from __future__ import annotations

import typer

from quantkit.cli.common import EXTRA, not_yet


def register(app: typer.Typer) -> None:
    @app.command("publish", context_settings=EXTRA, help="Upload an artifact with its model card to the Hugging Face Hub. Not available yet (issue 7).")
    def publish(ctx: typer.Context) -> None:
        not_yet("publish", "issue 7")

    @app.command("run", context_settings=EXTRA, help="Run a release recipe (YAML): formats, verify gates, publish targets. Not available yet (issue 7).")
    def run(ctx: typer.Context) -> None:
        not_yet("run", "issue 7")
