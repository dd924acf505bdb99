"""Options shared by commands, and how results are shown (rich for people, --json for machines)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from quantkit.output import human_bytes  # noqa: F401  (commands import it from here)


stdout = Console()
stderr = Console(stderr=True)

Model = Annotated[str, typer.Argument(help="Source checkpoint: a local folder, a Hub id (org/name), or builtin:smollm2 / builtin:tiny-llama.", show_default=False)]
Output = Annotated[Optional[Path], typer.Option("-o", "--output", help="Output folder [default: ./<model-name>-<FORMAT>].")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="Read pickle (.bin) weights; only for sources you trust.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables; no progress bar.")]


def notice(msg: str) -> None:
    stderr.print(f"[yellow]notice:[/] {msg}", highlight=False)


def emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def invocation() -> dict:
    """The command line as typed, for the manifest and the model card (quantkit takes no secrets as arguments)."""
    import shlex

    return {"command": shlex.join(["quantkit", *sys.argv[1:]])}


def kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    return t
