"""The compressed-tensors scheme backends: `nvfp4`, `mxfp4`, `int8` (and `fp8 --scheme FP8_BLOCK`, which the
fp8 backend hands here). One class per command, their schemes from table.py; the data-free ones stream
(stream.py), tensor by tensor."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from quantkit.backends.base import Backend, BackendResult, CardFacts, Options, Plan, Progress
from quantkit.backends.fp8.describe import CT_TRANSFORMERS_NOTE, HF_LOCAL_NOTE, VLLM_MEMORY_NOTE
from quantkit.backends.schemes.table import FP4_TRANSFORMERS_NOTE, SCHEMES, Scheme, for_command, for_method
from quantkit.errors import InputError, OptionError

if TYPE_CHECKING:
    from quantkit.source import Source

VLLM_READS = "vLLM reads the compressed-tensors `quantization_config` in config.json; no flag is needed. "


def scheme_field(names: tuple[str, ...], default: str):
    choices = " | ".join(f"{n} ({SCHEMES[n].weights.split(',')[0]}; activations: {SCHEMES[n].activations.split(',')[0]})"
                         for n in names)
    return Field(default, description=f"compressed-tensors preset: {choices}")


class SchemeBackend(Backend):
    """Base of the compressed-tensors scheme commands; subclasses name their command and Options."""

    scheme_names: ClassVar[tuple[str, ...]] = ()

    @property
    def scheme(self) -> Scheme:
        return SCHEMES[self.options.scheme]

    def suffix(self) -> str:
        return self.scheme.suffix

    def check(self, source: Source) -> Plan:
        from quantkit.backends.schemes import stream

        try:
            stream.check(source, self.scheme.name)
        except ValueError as e:
            raise OptionError("scheme", self.scheme.name, f"cannot quantize this model: {e}; choose another "
                              "{scheme}") from None
        return Plan(source=source, output_bytes=source.weight_bytes + (1 << 20))

    def run(self, plan: Plan, staging: Path, progress: Progress) -> BackendResult:
        from quantkit.backends.schemes import stream

        s = self.scheme
        hashes = stream.write(plan.source, staging, progress, s.name)
        return stream.result(s.method, s.name, hashes, {"weights": s.weights, "activations": s.activations})

    # what it made ----------------------------------------------------------------------

    @classmethod
    def card(cls, manifest: dict) -> CardFacts:
        s = for_method(str(manifest.get("method")))
        if s is None:
            return CardFacts.unknown(manifest)
        p = manifest.get("parameters") or {}
        summary = "; ".join(x for x in (
            f"{p['quantized_tensors']} Linear weights in {s.name}" if p.get("quantized_tensors") is not None else "",
            "kept as they were: " + ", ".join(f"`{x}`" for x in p["ignore"]) if p.get("ignore") else "") if x)
        return CardFacts(
            title=s.title,
            what=f"{s.weights}; activations: {s.activations}; embeddings, lm_head and norms stay in the source dtype",
            tags=("quantkit", s.name.lower(), "compressed-tensors", "vllm"),
            library_name="transformers",
            runtimes=(("vllm", VLLM_READS + s.native),
                      ("transformers", FP4_TRANSFORMERS_NOTE if s.fp4 else CT_TRANSFORMERS_NOTE)),
            memory_note=VLLM_MEMORY_NOTE, local_note=HF_LOCAL_NOTE, summary=summary)

    @classmethod
    def vram_variants(cls, folder: Path, manifest: dict) -> tuple[str, list[tuple[str, str]]]:
        if not (folder / "config.json").is_file():
            raise InputError("the folder has no config.json")
        s = for_method(str(manifest.get("method")))
        return str(folder), [("", s.name.lower() if s else "bf16")]

    @classmethod
    def weight_bytes(cls, kind: str, args: str, model) -> tuple[int, str]:
        s = SCHEMES[kind.upper()]
        total = sum(s.linear_bytes(*t.shape) if t.role == "linear" else math.prod(t.shape) * 2 for t in model.tensors)
        every = "one per row" if s.scale_every is None else f"one per {s.scale_every} weights"
        return total, (f"decoder Linear weights {s.weight_bits} bits + {s.scale_bytes}-byte scales ({every}); "
                       "embeddings, head, norms BF16")


class NVFP4Options(Options):
    """NVFP4 schemes of compressed-tensors."""

    scheme: Literal["NVFP4A16"] = scheme_field(("NVFP4A16",), "NVFP4A16")


class MXFP4Options(Options):
    """MXFP4 schemes of compressed-tensors."""

    scheme: Literal["MXFP4", "MXFP4A16"] = scheme_field(("MXFP4", "MXFP4A16"), "MXFP4")


class INT8Options(Options):
    """INT8 schemes of compressed-tensors (round-to-nearest)."""

    scheme: Literal["W8A8", "W8A16"] = scheme_field(("W8A8", "W8A16"), "W8A8")


class NVFP4(SchemeBackend):
    """NVFP4A16: FP4 weights in 16-weight groups with FP8 scales and a global scale, compressed-tensors format.

    Data-free: streams tensor by tensor (memory holds one fused set: q/k/v or gate/up, which share a
    global scale). vLLM runs it on Blackwell's FP4 tensor cores and weight-only elsewhere.
    """

    name = "nvfp4"
    Options = NVFP4Options
    methods = tuple(s.method for s in for_command("nvfp4"))
    examples = ("quantkit nvfp4 builtin:smollm2 --eval",)
    vram_kinds = tuple(s.name.lower() for s in for_command("nvfp4"))


class MXFP4(SchemeBackend):
    """MXFP4 (OCP microscaling): FP4 weights with a power-of-two scale per 32, compressed-tensors format.

    MXFP4 also quantizes activations to FP4 per 32 columns at run time; MXFP4A16 is weight-only.
    Data-free: streams tensor by tensor.
    """

    name = "mxfp4"
    Options = MXFP4Options
    methods = tuple(s.method for s in for_command("mxfp4"))
    examples = ("quantkit mxfp4 builtin:smollm2 --eval", "quantkit mxfp4 MODEL --scheme MXFP4A16")
    vram_kinds = tuple(s.name.lower() for s in for_command("mxfp4"))


class INT8(SchemeBackend):
    """INT8: W8A8 (per-channel weights, per-token dynamic activations) or weight-only W8A16, compressed-tensors format.

    Round-to-nearest and data-free: streams tensor by tensor. vLLM runs W8A8 on INT8 tensor cores
    from Turing on.
    """

    name = "int8"
    Options = INT8Options
    methods = tuple(s.method for s in for_command("int8"))
    examples = ("quantkit int8 builtin:smollm2 --eval", "quantkit int8 MODEL --scheme W8A16")
    vram_kinds = tuple(s.name.lower() for s in for_command("int8"))
