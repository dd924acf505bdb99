"""The `fp8` backend: FP8 in compressed-tensors format. FP8_DYNAMIC is quantkit's own streamed writer
(stream.py, the fastest path); FP8_BLOCK goes through the scheme family's streamed writer
(backends/schemes/stream.py, llm-compressor's arithmetic)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from quantkit.backends.base import BackendResult, CardFacts, Options, Plan, Progress
from quantkit.backends.fp8.describe import FP8Description
from quantkit.backends.schemes.backend import SchemeBackend, scheme_field

if TYPE_CHECKING:
    from quantkit.source import Source


class FP8Options(Options):
    """The FP8 scheme."""

    scheme: Literal["FP8_DYNAMIC", "FP8_BLOCK"] = scheme_field(("FP8_DYNAMIC", "FP8_BLOCK"), "FP8_DYNAMIC")


class FP8Dynamic(SchemeBackend):
    """FP8: FP8 weights with per-channel (FP8_DYNAMIC) or 128x128 block (FP8_BLOCK) scales, FP8 activations
    quantized at run time, compressed-tensors format (vLLM, transformers).

    lm_head and embeddings stay in the source dtype. Streams tensor by tensor:
    memory holds one weight matrix, whatever the shard size.
    """

    name = "fp8"
    Options = FP8Options
    methods = ("fp8-dynamic", "fp8-block")
    examples = ("quantkit fp8 builtin:smollm2 --eval", "quantkit fp8 ./Llama-3.1-8B-Instruct -o out/ --json",
                "quantkit fp8 MODEL --scheme FP8_BLOCK")
    vram_kinds = ("fp8", "fp8-")  # fp8 (dynamic), fp8-block

    def check(self, source: Source) -> Plan:
        if self.options.scheme == "FP8_DYNAMIC":
            return Plan(source=source, output_bytes=source.weight_bytes + (1 << 20))
        return super().check(source)

    def run(self, plan: Plan, staging: Path, progress: Progress) -> BackendResult:
        if self.options.scheme == "FP8_DYNAMIC":
            from quantkit.backends.fp8.stream import write

            return write(plan.source, staging, progress)
        return super().run(plan, staging, progress)

    @classmethod
    def card(cls, manifest: dict) -> CardFacts:
        if manifest.get("method") == "fp8-block":
            return super().card(manifest)
        return FP8Description.card(manifest)

    @classmethod
    def vram_variants(cls, folder: Path, manifest: dict) -> tuple[str, list[tuple[str, str]]]:
        if manifest.get("method") == "fp8-block":
            return super().vram_variants(folder, manifest)[0], [("", "fp8-block")]
        return FP8Description.vram_variants(folder, manifest)

    @classmethod
    def weight_bytes(cls, kind: str, args: str, model) -> tuple[int, str]:
        if kind == "fp8-":
            if args != "block":
                from quantkit.errors import InputError
                from quantkit.memory import FORMAT_CHOICES

                raise InputError(f"--format {model.spec}: {FORMAT_CHOICES}")
            return SchemeBackend.weight_bytes("fp8_block", "", model)
        return FP8Description.weight_bytes(kind, args, model)

