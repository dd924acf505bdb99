"""The `gptq` and `awq` backends: INT4 weight-only (W4A16) through llm-compressor (calibrate.py),
written as compressed-tensors or repacked into the AutoGPTQ / AutoAWQ layouts (layouts.py).

Group size: every quantized Linear must have in-features divisible by the group size. When the
requested size (128) does not divide them all (SmolLM2-135M's hidden size is 576), quantkit uses
the largest power of two below it, down to 32, that divides every such layer: one size for the
whole model, so that all three layouts can express it. The manifest records requested and used
sizes, and the CLI says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from quantkit.backends.base import Backend, BackendResult, Options, Plan, Progress, calibration_field
from quantkit.backends.int4.describe import INT4Description
from quantkit.errors import OptionError
from quantkit.formats import group_size_for

if TYPE_CHECKING:
    from quantkit.source import Source

# layout name (--format) -> what `inspect` and the manifest call it
LAYOUTS = {
    "compressed-tensors": "compressed-tensors INT4 (pack-quantized)",
    "gptq": "gptq (AutoGPTQ layout)",
    "awq": "awq (AutoAWQ GEMM layout)",
}
Layout = Literal[tuple(LAYOUTS)]  # type: ignore[valid-type]


class INT4Options(Options):
    format: Layout = Field("compressed-tensors", description="compressed-tensors (vLLM, transformers) | gptq (AutoGPTQ layout) | awq (AutoAWQ GEMM layout)")
    group_size: int = Field(128, ge=32, description="Input columns per scale; falls back to the largest of 64, 32 that divides every layer.")
    samples: int = Field(128, ge=1, description="Calibration samples.")
    seq_len: int = Field(512, ge=16, description="Tokens per calibration sample.")
    calibration: str | None = calibration_field()


class GPTQOptions(INT4Options):
    damping: float = Field(0.01, ge=0.0, le=1.0, description="Hessian dampening, as a fraction of its mean diagonal.")
    act_order: Literal["static", "none"] = Field("static", description="static (columns by activation size, groups kept contiguous; no runtime cost) | none")

    @field_validator("act_order", mode="before")
    @classmethod
    def _no_group_order(cls, v):
        if v == "group":  # llm-compressor 0.14 has no group (g_idx) ordering
            raise ValueError("group ordering (g_idx) is not supported by llm-compressor 0.14, which orders only "
                             "statically; use static (the default) or none")
        return v


class AWQOptions(INT4Options):
    grid: int = Field(20, ge=3, description="Points in AWQ's search for each layer's scales (at least 3: the identity plus two ratios).")  # llm-compressor divides by grid - 2


@dataclass(kw_only=True)
class INT4Plan(Plan):
    group_size: int  # the one used: the requested one or the largest that divides every layer


def linear_in_features(source: Source) -> list[int]:
    """In-features of every Linear weight llm-compressor will quantize (2-D, not embeddings/lm_head/norms)."""
    out = []
    for h in source.headers.values():
        for t in h.tensors.values():
            module, _, param = t.name.rpartition(".")
            if param == "weight" and len(t.shape) == 2 and not module.endswith(("embed_tokens", "lm_head", "norm")):
                out.append(t.shape[1])
    return out


class _Int4(INT4Description, Backend):
    symmetric = True
    suffix_name = ""

    @property
    def format(self) -> str:
        return LAYOUTS[self.options.format]

    def suffix(self) -> str:
        return self.suffix_name

    def check(self, source: Source) -> INT4Plan:
        """Options against the source before any work; choose the group size."""
        if self.options.format == "gptq" and not self.symmetric:
            raise OptionError("format", "gptq", "holds symmetric weights only (AutoGPTQ stores zero points minus 1, "
                              "so 0 cannot be stored); for AWQ's zero points use {format=awq} or compressed-tensors")
        in_features = linear_in_features(source)
        wanted = self.options.group_size
        group = group_size_for(in_features, wanted)
        notices = []
        if group != wanted:
            notices.append(f"group size {wanted} does not divide every layer's input size "
                           f"({', '.join(map(str, sorted(set(in_features))))}); using {group}, "
                           "the largest power of two that does (recorded in quantkit.json)")
        from quantkit.backends.int4 import calibrate

        return INT4Plan(source=source, notices=notices, output_bytes=source.weight_bytes // 2 + (1 << 20),
                        scratch_bytes=calibrate.offload_bytes(source), group_size=group)

    def run(self, plan: INT4Plan, staging: Path, progress: Progress) -> BackendResult:
        from quantkit.backends.int4 import calibrate

        return calibrate.run(self, plan, staging, progress)

    def extra_parameters(self) -> dict:
        return {}


class GPTQ(_Int4):
    """INT4 GPTQ (W4A16 symmetric, group size 128), calibrated layer by layer with llm-compressor."""

    name = "gptq"
    Options = GPTQOptions
    methods = ("gptq",)
    examples = ("quantkit gptq builtin:smollm2 --samples 32 --eval", "quantkit gptq ./Llama-3.1-8B-Instruct --format gptq")
    suffix_name = "GPTQ-INT4"
    symmetric = True

    def extra_parameters(self) -> dict:
        return {"damping": self.options.damping, "act_order": self.options.act_order}


class AWQ(_Int4):
    """INT4 AWQ (W4A16 asymmetric with zero points, group size 128): activation-aware scales, then round-to-nearest."""

    name = "awq"
    Options = AWQOptions
    methods = ("awq",)
    examples = ("quantkit awq builtin:smollm2 --samples 32 --eval", "quantkit awq ./Llama-3.1-8B-Instruct --format awq")
    suffix_name = "AWQ-INT4"
    symmetric = False

    def extra_parameters(self) -> dict:
        return {"n_grid": self.options.grid}


class RTNOptions(INT4Options):
    samples: int = Field(1, ge=1)
    seq_len: int = Field(64, ge=16)
    symmetric: bool = True


class RTN(_Int4):
    """Plain round-to-nearest of the same scheme, no calibration: the baseline GPTQ and AWQ must beat
    (bench/int4.py, tests). Not in the registry: no command."""

    name = "rtn"
    Options = RTNOptions
    methods = ("rtn",)
    suffix_name = "RTN-INT4"

    @property
    def symmetric(self) -> bool:  # type: ignore[override]
        return self.options.symmetric
