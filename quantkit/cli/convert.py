"""Conversion commands: one per backend in the registry."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from quantkit.output import read_manifest
from quantkit.cli.common import AllowPickle, Calibration, Force, Json, Model, Output, emit_json, human_bytes, invocation, kv_table, notice, stdout

EvalFlag = Annotated[bool, typer.Option("--eval", help="Afterwards, run `quantkit verify` on the result (PPL, KLD, top-1 agreement against the source).")]
EvalText = Annotated[Optional[str], typer.Option("--eval-text", help="Evaluation text file or dataset [default: built-in text].")]
EvalTokens = Annotated[int, typer.Option("--eval-tokens", help="Tokens of evaluation text to use.", min=1024)]

Layout = Annotated[str, typer.Option("--format", help="compressed-tensors (vLLM, transformers) | gptq (AutoGPTQ layout) | awq (AutoAWQ GEMM layout)")]
GroupSize = Annotated[int, typer.Option("--group-size", min=32, help="Input columns per scale; falls back to the largest of 64, 32 that divides every layer.")]
Samples = Annotated[int, typer.Option("--samples", min=1, help="Calibration samples.")]
SeqLen = Annotated[int, typer.Option("--seq-len", min=16, help="Tokens per calibration sample.")]



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
        eval_: EvalFlag = False,
        eval_text: EvalText = None,
        eval_tokens: EvalTokens = 8192,
        json_: Json = False,
    ) -> None:
        """FP8-dynamic: FP8 per-channel weights, per-token dynamic activations, compressed-tensors format (vLLM, transformers).

        lm_head and embeddings stay in the source dtype. Streams tensor by tensor:
        memory holds one weight matrix, whatever the shard size.
        """
        from quantkit.pipeline import convert

        check_eval_text(eval_, eval_text)

        folder, manifest = convert("fp8", model, output, force, allow_pickle, show_progress=not json_, notice=notice, provenance=invocation())
        finish(folder, manifest, json_, eval_, eval_text, eval_tokens)

    def run_int4(name, model, output, force, allow_pickle, json_, eval_, eval_text, eval_tokens, options):
        from quantkit.pipeline import convert

        check_eval_text(eval_, eval_text)

        folder, manifest = convert(name, model, output, force, allow_pickle, show_progress=not json_, notice=notice, options=options, provenance=invocation())
        finish(folder, manifest, json_, eval_, eval_text, eval_tokens)

    @app.command("gptq", epilog="Examples:  quantkit gptq builtin:smollm2 --samples 32 --eval   |   quantkit gptq ./Llama-3.1-8B-Instruct --format gptq")
    def gptq(
        model: Model, output: Output = None, force: Force = False, allow_pickle: AllowPickle = False,
        format_: Layout = "compressed-tensors", group_size: GroupSize = 128, samples: Samples = 128, seq_len: SeqLen = 512,
        calibration: Calibration = None,
        damping: Annotated[float, typer.Option("--damping", min=0.0, max=1.0, help="Hessian dampening, as a fraction of its mean diagonal.")] = 0.01,
        act_order: Annotated[str, typer.Option("--act-order", help="static (columns by activation size, groups kept contiguous; no runtime cost) | none")] = "static",
        eval_: EvalFlag = False, eval_text: EvalText = None, eval_tokens: EvalTokens = 8192, json_: Json = False,
    ) -> None:
        """INT4 GPTQ (W4A16 symmetric, group size 128), calibrated layer by layer with llm-compressor."""
        run_int4("gptq", model, output, force, allow_pickle, json_, eval_, eval_text, eval_tokens,
                 dict(layout=format_, group_size=group_size, samples=samples, seq_len=seq_len, calibration=calibration,
                      damping=damping, act_order=act_order))

    @app.command("awq", epilog="Examples:  quantkit awq builtin:smollm2 --samples 32 --eval   |   quantkit awq ./Llama-3.1-8B-Instruct --format awq")
    def awq(
        model: Model, output: Output = None, force: Force = False, allow_pickle: AllowPickle = False,
        format_: Layout = "compressed-tensors", group_size: GroupSize = 128, samples: Samples = 128, seq_len: SeqLen = 512,
        calibration: Calibration = None,
        n_grid: Annotated[int, typer.Option("--grid", min=3, help="Points in AWQ's search for each layer's scales (at least 3: the identity plus two ratios).")] = 20,
        eval_: EvalFlag = False, eval_text: EvalText = None, eval_tokens: EvalTokens = 8192, json_: Json = False,
    ) -> None:
        """INT4 AWQ (W4A16 asymmetric with zero points, group size 128): activation-aware scales, then round-to-nearest."""
        run_int4("awq", model, output, force, allow_pickle, json_, eval_, eval_text, eval_tokens,
                 dict(layout=format_, group_size=group_size, samples=samples, seq_len=seq_len, calibration=calibration,
                      n_grid=n_grid))

    @app.command(
        "gguf",
        epilog="Examples:  quantkit gguf builtin:smollm2 --type Q4_K_M,Q8_0   |   "
        "quantkit gguf ./Llama-3.1-8B-Instruct --type Q4_K_M,Q5_K_M,Q6_K --imatrix   |   "
        "quantkit gguf ./model --type IQ4_XS --engine llamacpp --imatrix",
    )
    def gguf(
        model: Model, output: Output = None, force: Force = False, allow_pickle: AllowPickle = False,
        type_: Annotated[str, typer.Option("--type", "-t", help="Comma-separated GGUF file types: F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K (IQ* with --engine llamacpp). One pass writes them all.")] = "Q4_K_M",
        imatrix: Annotated[bool, typer.Option("--imatrix", help="Compute an importance matrix from the calibration text (llama.cpp's semantics) and quantize with it; saved as imatrix.gguf.")] = False,
        imatrix_file: Annotated[Optional[str], typer.Option("--imatrix-file", help="Quantize with this imatrix (GGUF imatrix from quantkit or llama-imatrix).")] = None,
        imatrix_chunks: Annotated[int, typer.Option("--imatrix-chunks", min=1, help="512-token chunks of calibration text for --imatrix.")] = 64,
        calibration: Calibration = None,
        engine: Annotated[str, typer.Option("--engine", help="quantkit (our encoders) | llamacpp (llama.cpp's quantizer for the types we do not encode, e.g. IQ4_XS; needs quantkit[llamacpp]).")] = "quantkit",
        eval_: EvalFlag = False, eval_text: EvalText = None, eval_tokens: EvalTokens = 8192, json_: Json = False,
    ) -> None:
        """GGUF as llama.cpp and Ollama load it: quantkit's own converter and K-quant encoders, one pass for several types.

        Writes <model>-<TYPE>.gguf and an Ollama <model>-<TYPE>.Modelfile for each type into one folder.
        Tensors stream from the safetensors shards; memory holds one tensor at a time.
        """
        from quantkit.pipeline import convert

        check_eval_text(eval_, eval_text)

        options = dict(types=type_, engine=engine, imatrix=imatrix, imatrix_file=imatrix_file,
                       calibration=calibration, imatrix_chunks=imatrix_chunks)
        folder, manifest = convert("gguf", model, output, force, allow_pickle, show_progress=not json_, notice=notice, options=options, provenance=invocation())
        finish(folder, manifest, json_, eval_, eval_text, eval_tokens, targets=sorted(folder.glob("*.gguf")))

    @app.command(
        "exl2",
        epilog="Examples:  quantkit exl2 builtin:smollm2 --bpw 8 --head-bits 8 --eval   |   "
        "quantkit exl2 ./Llama-3.2-1B --bpw 4.0 --measurement Llama-3.2-1B-exl2-8bpw-h8/measurement.json",
    )
    def exl2(
        model: Model, output: Output = None, force: Force = False, allow_pickle: AllowPickle = False,
        bpw: Annotated[float, typer.Option("--bpw", "-b", help="Target bits per weight of the decoder Linears, counted as exllamav2 counts them (scales and indices included).")] = 4.125,
        head_bits: Annotated[int, typer.Option("--head-bits", help="Bits of the output head: 2, 3, 4, 5, 6 or 8.")] = 6,
        measurement: Annotated[Optional[str], typer.Option("--measurement", "-m", help="Reuse a measurement.json from an earlier run (quantkit's or exllamav2's) and skip measuring.")] = None,
        calibration: Calibration = None,
        rows: Annotated[int, typer.Option("--rows", min=1, help="Calibration rows for the quantization pass.")] = 100,
        length: Annotated[int, typer.Option("--length", min=16, help="Tokens per calibration row.")] = 2048,
        measurement_rows: Annotated[int, typer.Option("--measurement-rows", min=1, help="Calibration rows for measuring.")] = 16,
        measurement_length: Annotated[int, typer.Option("--measurement-length", min=16, help="Tokens per measurement row.")] = 2048,
        shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Largest output shard in MiB.")] = 8192,
        objective: Annotated[str, typer.Option("--objective", help="What the bit-mix optimiser minimises per block: delta (error relative to what the block adds to the residual stream; quantkit's default) | output (exllamav2's error relative to the block output). See docs/formats.md.")] = "delta",
        eval_: EvalFlag = False, eval_text: EvalText = None, eval_tokens: EvalTokens = 8192, json_: Json = False,
    ) -> None:
        """EXL2 as exllamav2 0.3.2 loads it: measurement, bit-mix optimisation and GPTQ by quantkit's own encoder (CPU or CUDA).

        Defaults follow exllamav2's convert.py (head 6 bits, 100 x 2048 tokens to quantize, 16 x 2048 to
        measure); on CPU, fewer rows and shorter rows keep small models to minutes. Works one decoder layer
        at a time. Writes output.safetensors, config.json and measurement.json, which --measurement reuses
        for another --bpw without measuring again.
        """
        from quantkit.pipeline import convert

        check_eval_text(eval_, eval_text)

        options = dict(bpw=bpw, head_bits=head_bits, measurement=measurement, calibration=calibration, rows=rows,
                       length=length, measurement_rows=measurement_rows, measurement_length=measurement_length,
                       shard_mb=shard_size, objective=objective)
        folder, manifest = convert("exl2", model, output, force, allow_pickle, show_progress=not json_, notice=notice, options=options, provenance=invocation())
        finish(folder, manifest, json_, eval_, eval_text, eval_tokens)


def check_eval_text(eval_: bool, eval_text) -> None:
    """With --eval, the evaluation text is read before any conversion: a bad one fails at once."""
    if eval_:
        from quantkit.errors import InputError
        from quantkit.text import load_text

        text, described = load_text(eval_text, "evaluation")
        if not text.strip():
            raise InputError(f"--eval-text: {described} is empty; pass a text of at least a few thousand words")


def finish(folder, manifest: dict, json_: bool, eval_: bool, eval_text, eval_tokens: int, targets=None) -> None:
    """After a conversion: verify it when asked (the folder, or `targets` in it; results go into
    quantkit.json), then show it."""
    if eval_:
        from quantkit import verify

        verify.record(verify.verify(targets or [folder], None, eval_text, 512, eval_tokens, show_progress=not json_))
        manifest = read_manifest(folder)
    show_artifact(folder, manifest, json_)


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
    for name, ev in sorted((manifest.get("verify_files") or {}).items()):
        rows.append((name, f"PPL ratio {ev['ppl_ratio']:.4f}, KLD {ev['kld_mean']:.5f}, top-1 {100 * ev['top1_agreement']:.2f}%"))
    stdout.print(kv_table("quantkit artifact", rows))
