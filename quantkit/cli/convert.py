"""Conversion commands: one per backend in the registry, plus the ones later issues fill."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from quantkit.output import read_manifest
from quantkit.cli.common import EXTRA, AllowPickle, Force, Json, Model, Output, emit_json, human_bytes, kv_table, not_yet, notice, stdout

LATER = {
    "gptq": ("INT4 GPTQ, group size 128, calibrated", "issue 4"),
    "awq": ("INT4 AWQ with zero points, group size 128, calibrated", "issue 4"),
    "exl2": ("EXL2 as exllamav2 loads it", "issue 6"),
    "gguf": ("GGUF as llama.cpp and Ollama load it", "issue 5"),
}

def register(app: typer.Typer) -> None:
    @app.command(
        "fp8",
        epilog="Examples:  quantkit fp8 builtin:smollm2 --eval   |   quantkit fp8 ./Llama-3.1-8B-Instruct -o out/ --json",
    )
    def fp8(
        model: Model,
        output: Output = None,
        force: Force = False,
        allow_pickle: AllowPickle = False,
        eval_: Annotated[bool, typer.Option("--eval", help="Afterwards, run `quantkit verify` on the result (PPL, KLD, top-1 agreement against the source).")] = False,
        eval_text: Annotated[Optional[str], typer.Option("--eval-text", help="Evaluation text file or dataset [default: built-in text].")] = None,
        eval_tokens: Annotated[int, typer.Option("--eval-tokens", help="Tokens of evaluation text to use.", min=1024)] = 8192,
        json_: Json = False,
    ) -> None:
        """FP8-dynamic: FP8 per-channel weights, per-token dynamic activations, compressed-tensors format (vLLM, transformers).

        lm_head and embeddings stay in the source dtype. Streams tensor by tensor:
        memory holds one weight matrix, whatever the shard size.
        """
        from quantkit.pipeline import convert

        folder, manifest = convert("fp8", model, output, force, allow_pickle, show_progress=not json_, notice=notice)
        if eval_:
            from quantkit import verify

            verify.record(verify.verify([folder], None, eval_text, 512, eval_tokens, show_progress=not json_))
            manifest = read_manifest(folder)
        show_artifact(folder, manifest, json_)

    for name, (what, issue) in LATER.items():
        def stub(ctx: typer.Context, _name: str = name, _issue: str = issue) -> None:
            not_yet(_name, _issue)

        app.command(name, help=f"{what}. Not available yet ({issue}).", context_settings=EXTRA)(stub)


def show_artifact(folder, manifest: dict, json_: bool) -> None:
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
        rows += [
            ("PPL source", f"{ev['ppl_source']:.3f} ± {ev['ppl_source_err']:.3f}"),
            ("PPL quantized", f"{ev['ppl_quant']:.3f} ± {ev['ppl_quant_err']:.3f}"),
            ("PPL ratio", f"{ev['ppl_ratio']:.4f}  ({ev['tokens_scored']:,} tokens scored, {ev['text']})"),
            ("KLD mean / p99", f"{ev['kld_mean']:.5f} / {ev['kld_p99']:.4f}"),
            ("top-1 agreement", f"{100 * ev['top1_agreement']:.2f}%"),
        ]
    stdout.print(kv_table("quantkit artifact", rows))
