"""verify and vram: the proof behind every artifact, and memory before download."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from quantkit.cli.common import AllowPickle, Json, emit_json, human_bytes, kv_table, notice, stdout

if TYPE_CHECKING:
    from quantkit.manifest import VerifyResult


def register(app: typer.Typer) -> None:
    @app.command(
        "verify",
        epilog="Examples:  quantkit verify SmolLM2-135M-Instruct-FP8-Dynamic   |   "
        "quantkit verify out/*-FP8-Dynamic model.Q4_K_M.gguf --source ./Llama-3.2-1B --max-ppl-ratio 1.05 --json",
    )
    def verify(
        artifacts: Annotated[list[Path], typer.Argument(help="Artifact folders or .gguf files quantkit reads.", show_default=False)],
        source: Annotated[Optional[str], typer.Option("--source", help="The unquantized checkpoint [default: the source named in the first artifact's quantkit.json].")] = None,
        eval_text: Annotated[Optional[str], typer.Option("--eval-text", help="Evaluation text: a file, or a dataset (path:config:split[:column]), e.g. wikitext:wikitext-2-raw-v1:test [default: built-in text].")] = None,
        ctx: Annotated[int, typer.Option("--ctx", help="Window length in tokens; the second half of each window is scored.")] = 512,
        tokens: Annotated[int, typer.Option("--tokens", min=0, help="Use the first N tokens of the text (0: all of it).")] = 8192,
        max_ppl_ratio: Annotated[Optional[float], typer.Option("--max-ppl-ratio", help="Gate: exit 1 if any artifact's PPL ratio exceeds this.")] = None,
        max_kld: Annotated[Optional[float], typer.Option("--max-kld", help="Gate: exit 1 if any artifact's mean KL divergence exceeds this.")] = None,
        chart: Annotated[Optional[Path], typer.Option("--chart", help="Write a PNG of size against PPL ratio and KLD [default with several artifacts: verify-chart.png].")] = None,
        record: Annotated[bool, typer.Option("--record/--no-record", help="Write the results into each artifact's quantkit.json.")] = True,
        runtime: Annotated[str, typer.Option("--runtime", help="Where GGUF artifacts run: transformers (dequantized, float32) | llamacpp (llama.cpp's own kernels; needs quantkit[llamacpp]).")] = "transformers",
        device: Annotated[str, typer.Option("--device", help="Where the layers run: auto (CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N.")] = "auto",
        allow_pickle: AllowPickle = False,
        json_: Json = False,
    ) -> None:
        """Perplexity of source and artifacts on the same token windows, KL divergence, top-token agreement; a CI gate."""
        from quantkit import output, scoring as v

        v.check_gate_values(max_ppl_ratio, max_kld)
        if chart is None and len(artifacts) > 1:
            chart = Path("verify-chart.png")
        if chart is not None:  # before minutes of scoring, not after
            chart = output.check_file_target(chart, "--chart")
        results = v.verify(artifacts, source, eval_text, ctx, tokens or None, show_progress=not json_, runtime=runtime,
                           allow_pickle=allow_pickle, notice=notice, device=device)
        if chart is not None:
            v.chart(results, chart)
        if json_:
            shown = [r.to_dict() for r in results]
            emit_json(shown[0] if len(shown) == 1 else shown)
        else:
            show_results(results, chart)
        if record:  # after the figures are shown: an artifact that cannot be written does not lose them
            v.record(results)
        v.check_gates(results, max_ppl_ratio, max_kld)

    @app.command(
        "vram",
        epilog="Examples:  quantkit vram meta-llama/Llama-3.1-8B-Instruct --format fp8 --context 8k,32k,128k   |   "
        "quantkit vram ./model --format gguf:Q4_K_M --gpu 24GiB --json",
    )
    def vram(
        model: Annotated[str, typer.Argument(help="A model folder, its config.json, or a Hub id (only config.json is fetched).", show_default=False)],
        format_: Annotated[Optional[str], typer.Option("--format", help="bf16 | fp16 | fp8 | int4-g128 | exl2:BPW[:HEAD_BITS] | gguf:TYPE; exl2 alone for an EXL2 folder's stored tensors [default: exl2 for an EXL2 folder, else bf16]")] = None,
        context: Annotated[str, typer.Option("--context", help="Comma-separated context lengths: 4096, 16k, 128k.")] = "1k,16k",
        batch: Annotated[int, typer.Option("--batch", min=1, help="Concurrent sequences.")] = 1,
        kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="fp16 | bf16 | fp8 | q8_0 | q4_0")] = "fp16",
        gpu: Annotated[Optional[str], typer.Option("--gpu", help="GPU memory, e.g. 24GiB: also report the longest context that fits.")] = None,
        json_: Json = False,
    ) -> None:
        """Memory for weights plus KV cache at each context, from config.json alone (no weights needed)."""
        from quantkit.memory import OVERHEAD_ASSUMPTION, estimate, parse_bytes, parse_contexts

        contexts = parse_contexts(context)
        est = estimate(model, format_, contexts, batch, kv_dtype, parse_bytes(gpu) if gpu else None)
        past = [c for c in contexts if est.max_positions and c > est.max_positions]
        if past:
            notice(f"--context {', '.join(f'{c:,}' for c in past)} is past the model's maximum of {est.max_positions:,} "
                   "tokens (max_position_embeddings in config.json); the estimate assumes a runtime that allows it")
        if json_:
            emit_json(est.as_dict())
            return
        from rich.table import Table

        t = Table(title=f"{model}  {est.format}  KV {kv_dtype}  batch {batch}", title_justify="left")
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


def show_results(results: list[VerifyResult], chart: Path | None) -> None:
    from rich.table import Table

    from quantkit import figures

    first = results[0]
    t = Table(title="quantkit verify", title_justify="left")
    t.add_column("")
    t.add_column("source", justify="right")
    for r in results:
        t.add_column(Path(r.artifact).name, justify="right", overflow="fold")
    cells = [figures.cells(r) for r in results]
    rows = [("format", "", [r.format for r in results]),
            ("size", "", [human_bytes(r.size_bytes) for r in results]),
            ("PPL", cells[0]["PPL source"], [c["PPL quantized"] for c in cells])]
    rows += [(label, src, [c[label] for c in cells]) for label, src in (
        ("PPL ratio", "1"), ("KLD mean", "0"), ("KLD median", "0"), ("KLD p99", "0"), ("KLD max", "0"),
        ("top-1 agreement", "100%"), ("RMS Δp", "0"))]
    for label, src, row in rows:
        t.add_row(label, src, *row)
    stdout.print(t)
    notes = [("source", first.source), ("text", first.text),
             ("windows", f"{first.windows} of {first.ctx} tokens, {first.tokens_scored:,} tokens scored per model"),
             ("method", first.method)]
    notes += [(f"activations: {Path(r.artifact).name}", r.activations) for r in results]
    if chart is not None:
        notes.append(("chart", str(chart)))
    stdout.print(kv_table("how it was measured", notes))
