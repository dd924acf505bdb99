"""inspect: what a checkpoint, artifact or file is."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantkit.cli.common import Json, emit_json, human_bytes, kv_table, stdout


def register(app: typer.Typer) -> None:
    @app.command("inspect", epilog="Examples:  quantkit inspect SmolLM2-135M-Instruct-FP8-Dynamic   |   quantkit inspect model.gguf --json")
    def inspect(
        path: Annotated[Path, typer.Argument(help="A checkpoint or artifact folder, a .safetensors or a .gguf file.", show_default=False)],
        json_: Json = False,
    ) -> None:
        """Format, architecture, parameter count, bytes per dtype, and the quantkit manifest when present."""
        from quantkit import figures
        from quantkit.inspection import inspect_path

        info = inspect_path(path)
        if json_:
            emit_json(info)
            return
        for item in info.get("files", [info]):
            rows = [(k, str(item[k])) for k in ("path", "kind", "format", "architecture") if k in item]
            rows.append(("parameters", f"{item['parameters']:,}"))
            rows += [(f"bytes {d}", human_bytes(b)) for d, b in sorted(item["bytes_per_dtype"].items())]
            stdout.print(kv_table("quantkit inspect", rows))
        m = info.get("manifest")
        if m:
            rows = [("method", m.get("method", "?")), ("source", m.get("source", {}).get("spec", "?")),
                    ("quantkit", m.get("quantkit_version", "?")), ("created", m.get("created", "?")),
                    ("files", str(len(m.get("files", {}))))]
            ev = m.get("verify")
            if ev:
                rows.append(("verify", figures.line(ev)))
            stdout.print(kv_table("manifest (quantkit.json)", rows))
