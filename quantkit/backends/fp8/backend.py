"""The `fp8` backend: FP8-dynamic in compressed-tensors format (the work is in stream.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from quantkit.backends.base import Backend, BackendResult, Options, Plan, Progress
from quantkit.backends.fp8.describe import FP8Description

if TYPE_CHECKING:
    from quantkit.source import Source


class FP8Options(Options):
    """FP8-dynamic has no options: the scheme is fixed (FP8_DYNAMIC)."""


class FP8Dynamic(FP8Description, Backend):
    """FP8-dynamic: FP8 per-channel weights, per-token dynamic activations, compressed-tensors format (vLLM, transformers).

    lm_head and embeddings stay in the source dtype. Streams tensor by tensor:
    memory holds one weight matrix, whatever the shard size.
    """

    name = "fp8"
    Options = FP8Options
    methods = ("fp8-dynamic",)
    examples = ("quantkit fp8 builtin:smollm2 --eval", "quantkit fp8 ./Llama-3.1-8B-Instruct -o out/ --json")

    def suffix(self) -> str:
        return "FP8-Dynamic"

    def check(self, source: Source) -> Plan:
        return Plan(source=source, output_bytes=source.weight_bytes + (1 << 20))

    def run(self, plan: Plan, staging: Path, progress: Progress) -> BackendResult:
        from quantkit.backends.fp8.stream import write

        return write(plan.source, staging, progress)
