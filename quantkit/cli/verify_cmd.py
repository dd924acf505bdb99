"""verify and vram: the proof behind every artifact, and memory before download."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from quantkit.cli.common import EXTRA, Json, emit_json, human_bytes, kv_table, not_yet, stdout


def register(app: typer.Typer) -> None:
    @app.command("verify", context_settings=EXTRA, help="Perplexity, KL divergence and top-token agreement of artifacts against their source; a CI gate. Not available yet (issue 3).")
    def verify(ctx: typer.Context) -> None:
        not_yet("verify", "issue 3")

    @app.command(
        "vram",
        epilog="Examples:  quantkit vram meta-llama/Llama-3.1-8B-Instruct --format fp8 --context 8k,32k,128k   |   "
        "quantkit vram ./model --format gguf:Q4_K_M --gpu 24GiB --json",
    )
    def vram(
        model: Annotated[str, typer.Argument(help="A model folder, its config.json, or a Hub id (only config.json is fetched).", show_default=False)],
        format_: Annotated[str, typer.Option("--format", help="bf16 | fp16 | fp8 | int4-g128 | exl2:BPW[:HEAD_BITS] | gguf:TYPE")] = "bf16",
        context: Annotated[str, typer.Option("--context", help="Comma-separated context lengths: 4096, 16k, 128k.")] = "1k,16k",
        batch: Annotated[int, typer.Option("--batch", min=1, help="Concurrent sequences.")] = 1,
        kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="fp16 | bf16 | fp8 | q8_0 | q4_0")] = "fp16",
        gpu: Annotated[Optional[str], typer.Option("--gpu", help="GPU memory, e.g. 24GiB: also report the longest context that fits.")] = None,
        json_: Json = False,
    ) -> None:
        """Memory for weights plus KV cache at each context, from config.json alone (no weights needed)."""
        from quantkit.vram import OVERHEAD_ASSUMPTION, estimate, parse_bytes, parse_tokens

        contexts = [parse_tokens(c) for c in context.split(",") if c.strip()]
        est = estimate(model, format_, contexts, batch, kv_dtype, parse_bytes(gpu) if gpu else None)
        if json_:
            emit_json(est.as_dict())
            return
        from rich.table import Table

        t = Table(title=f"{model}  {format_}  KV {kv_dtype}  batch {batch}", title_justify="left")
        for col in ("context", "weights", "KV cache", "overhead", "total") + (("fits",) if gpu else ()):
            t.add_column(col, justify="right")
        for r in est.contexts:
            cells = [f"{r['context']:,}", human_bytes(r["weights_bytes"]), human_bytes(r["kv_cache_bytes"]),
                     human_bytes(r["overhead_bytes"]), human_bytes(r["total_bytes"])]
            if gpu:
                cells.append("yes" if r["fits"] else "no")
            t.add_row(*cells)
        stdout.print(t)
        notes = [("weights", est.weights_method), ("KV cache", f"{human_bytes(int(est.kv_bytes_per_token))} per token per sequence"),
                 ("overhead", OVERHEAD_ASSUMPTION)]
        if gpu:
            notes.append(("longest context in " + gpu, f"{est.max_context_fitting:,} tokens (model maximum {est.max_positions:,})"))
        stdout.print(kv_table("how it is counted", notes))
