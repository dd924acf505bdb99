"""The `exl2` backend: EXL2 as exllamav2 0.3.2 loads it, written by quantkit's own encoder (torch; CPU or CUDA).

exllamav2 imports only with CUDA and is archived, so its converter cannot run here; this package
does the same job in the same steps (exllamav2's conversion/measure.py, optimize.py, quantize.py,
compile.py):

1. calibration rows from the calibration text (`measurement_rows` x `measurement_length` tokens
   for measuring, `rows` x `length` for quantizing), in `check`;
2. measurement (measure.py; skipped with `measurement`): every candidate bit mix (qparams.py) of
   every attention and MLP block quantized with GPTQ and scored; written as measurement.json
   (measurement_file.py);
3. optimisation (strategy.py, optimize.py): one candidate per block, achieved bpw at most the
   target, counted as exllamav2 counts it (all storage bits of the decoder Linears over their
   weights; head excluded);
4. quantization (quantize_pass.py): the same GPTQ with the chosen mixes while hidden states now
   flow through the already quantized layers; the head gets `head_bits`;
5. packing (pack.py, layout.py) into output.safetensors or shards (shards.py) in exllamav2's
   order, config.json with the exl2 quantization_config (config.py).

Memory holds one decoder layer, its candidate weights and the calibration states.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from quantkit.backends.base import Backend, BackendResult, Options, Plan, Progress, calibration_field
from quantkit.backends.exl2.describe import EXL2Description
from quantkit.backends.exl2.measurement_file import has_delta_errors, read_measurement
from quantkit.backends.exl2.qparams import HEAD_OPTIONS
from quantkit.backends.exl2.shapes import ModelShapes
from quantkit.errors import InputError, OptionError

if TYPE_CHECKING:
    import torch

    from quantkit.source import Source


class EXL2Options(Options):
    bpw: float = Field(4.125, gt=0, json_schema_extra={"short": "-b"},
                       description="Target bits per weight of the decoder Linears, counted as exllamav2 counts them (scales and indices included).")
    head_bits: int = Field(6, description="Bits of the output head: 2, 3, 4, 5, 6 or 8.")
    measurement: str | None = Field(None, json_schema_extra={"short": "-m", "path": True},
                                    description="Reuse a measurement.json from an earlier run (quantkit's or exllamav2's) and skip measuring.")
    calibration: str | None = calibration_field()
    rows: int = Field(100, ge=1, description="Calibration rows for the quantization pass.")
    length: int = Field(2048, ge=16, description="Tokens per calibration row.")
    measurement_rows: int = Field(16, ge=1, description="Calibration rows for measuring.")
    measurement_length: int = Field(2048, ge=16, description="Tokens per measurement row.")
    shard_size: int = Field(8192, ge=1, description="Largest output shard in MiB.")  # exllamav2's default --shard_size
    objective: Literal["delta", "output"] = Field(
        "delta", description="What the bit-mix optimiser minimises per block: delta (error relative to what the block adds "
                             "to the residual stream; quantkit's default) | output (exllamav2's error relative to the "
                             "block output). See docs/formats.md.")

    @field_validator("head_bits")
    @classmethod
    def _head_option(cls, v: int) -> int:
        if v not in HEAD_OPTIONS:
            raise ValueError(f"choose one of {', '.join(map(str, HEAD_OPTIONS))} (exllamav2's head options)")
        return v


@dataclass(kw_only=True)
class EXL2Plan(Plan):
    shapes: ModelShapes  # every decoder Linear
    measurement: dict | None  # the reused measurement table, None to measure
    measurement_file: Path | None  # where the reused one came from
    length: int  # tokens per quantization row, shortened to the model's context
    measurement_length: int  # tokens per measurement row, likewise
    calibration_desc: str  # what the calibration text is, for config.json and the manifest
    ids: torch.Tensor  # quantization rows x length token ids
    measurement_ids: torch.Tensor | None  # measurement rows, None when the measurement is reused
    objective: Literal["delta", "output"]  # the one used: output when a reused measurement has no delta errors
    device: str  # "cuda" or "cpu"


class EXL2(EXL2Description, Backend):
    """EXL2 as exllamav2 0.3.2 loads it: measurement, bit-mix optimisation and GPTQ by quantkit's own encoder (CPU or CUDA).

    Defaults follow exllamav2's convert.py (head 6 bits, 100 x 2048 tokens to quantize, 16 x 2048 to
    measure); on CPU, fewer rows and shorter rows keep small models to minutes. Works one decoder layer
    at a time. Writes output.safetensors, config.json and measurement.json, which --measurement reuses
    for another --bpw without measuring again.
    """

    name = "exl2"
    Options = EXL2Options
    methods = ("exl2",)
    examples = ("quantkit exl2 builtin:smollm2 --bpw 8 --head-bits 8 --eval",
                "quantkit exl2 ./Llama-3.2-1B --bpw 4.0 --measurement Llama-3.2-1B-exl2-8bpw-h8/measurement.json")
    options: EXL2Options

    def suffix(self) -> str:
        return f"exl2-{self.options.bpw:g}bpw-h{self.options.head_bits}"

    def check(self, source: Source) -> EXL2Plan:
        """Linear sizes, the bpw target and a reused measurement against this model; the calibration rows."""
        import torch

        from quantkit.streaming import device
        from quantkit.text import load_text, token_rows

        o = self.options
        shapes = ModelShapes.of(source)
        bad = shapes.not_multiple_of_32()
        if bad:
            raise InputError(f"EXL2 needs Linear sizes that are multiples of 32; this model has {', '.join(bad)}")
        lo, hi = shapes.bpw_range()
        if not lo <= o.bpw <= hi:
            raise OptionError("bpw", o.bpw, f"this model's EXL2 mixes span {lo:.2f} to {hi:.2f} bits per weight; "
                                            "choose a target in that range")
        measurement_file = Path(o.measurement).expanduser() if o.measurement else None
        measurement = read_measurement(measurement_file, shapes) if measurement_file else None
        notices = []
        length, m_length = o.length, o.measurement_length
        maxpos = source.config.get("max_position_embeddings")
        if maxpos and max(length, m_length) > maxpos:  # as exllamav2's convert.py limits them
            length, m_length = min(length, maxpos), min(m_length, maxpos)
            notices.append(f"calibration rows shortened to the model's context, {maxpos} tokens")
        text, desc = load_text(o.calibration, "calibration")
        tok = _tokenizer(source)

        def rows(n: int, tokens: int) -> torch.Tensor:
            return torch.tensor(token_rows(tok, text, n, tokens, "fewer {rows} / a shorter {length}"), dtype=torch.long)

        ids = rows(o.rows, length)
        m_ids = None if measurement else rows(o.measurement_rows, m_length)
        objective = o.objective
        if measurement:
            notices.append(f"reusing measurement {measurement_file}: skipping the measurement pass")
            if o.objective == "delta" and not has_delta_errors(measurement):
                notices.append("that measurement has no delta errors (written by exllamav2?): optimising on its output errors")
                objective = "output"
        dev = device()
        if dev.type == "cpu":
            notices.append("no CUDA: quantizing on CPU (float32); expect minutes per layer on large models")
        return EXL2Plan(source=source, notices=notices,
                        output_bytes=int(source.weight_bytes * max(o.bpw, o.head_bits) / 16) + (64 << 20),
                        shapes=shapes, measurement=measurement, measurement_file=measurement_file, length=length,
                        measurement_length=m_length, calibration_desc=desc, ids=ids, measurement_ids=m_ids,
                        objective=objective, device=str(dev))

    def run(self, plan: EXL2Plan, staging: Path, progress: Progress) -> BackendResult:
        from quantkit.backends.exl2.convert import convert

        return convert(plan, self.options, staging, progress)


def _tokenizer(source: Source):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.path)
