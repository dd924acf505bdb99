"""verify and vram (filled by issue 3)."""
from __future__ import annotations

import typer

from quantkit.cli.common import EXTRA, not_yet


def register(app: typer.Typer) -> None:
    @app.command("verify", context_settings=EXTRA, help="Perplexity, KL divergence and top-token agreement of artifacts against their source; a CI gate. Not available yet (issue 3).")
    def verify(ctx: typer.Context) -> None:
        not_yet("verify", "issue 3")

    @app.command("vram", context_settings=EXTRA, help="Memory for weights plus KV cache at given contexts, from config.json alone. Not available yet (issue 3).")
    def vram(ctx: typer.Context) -> None:
        not_yet("vram", "issue 3")
