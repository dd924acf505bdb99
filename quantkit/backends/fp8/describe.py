"""What an FP8-dynamic artifact is, read from its manifest: card facts, vram weight bytes.

Imports nothing heavy: the card, vram and `run --check` read it.
"""
from __future__ import annotations

import math
from pathlib import Path

from quantkit.backends.base import CardFacts
from quantkit.errors import InputError

# What vLLM and transformers need for compressed-tensors checkpoints (checked against their code:
# vLLM reads `quantization_config` from config.json; transformers 5 loads it through the
# `compressed-tensors` package). The INT4 description shares the last three.
VLLM_NOTE = ("vLLM reads the compressed-tensors `quantization_config` in config.json; no flag is needed. "
             "FP8 matmuls need compute capability 8.9 or newer (Ada, Hopper, Blackwell); on Turing and "
             "Ampere vLLM runs the FP8 weights weight-only (W8A16) through its FP8 Marlin kernel.")
CT_TRANSFORMERS_NOTE = ("transformers reads the compressed-tensors `quantization_config` through the "
                        "`compressed-tensors` package (on CPU too: quantkit's own checks load the folder this way).")
VLLM_MEMORY_NOTE = ("vLLM reserves `--gpu-memory-utilization` of the GPU (0.9 by default) at start and fills what the "
                    "weights leave with KV cache, whatever the table says; `--max-model-len` bounds the context.")
HF_LOCAL_NOTE = "vLLM and transformers also take the local folder's path in its place."


class FP8Description:
    """The description hooks of base.Backend for FP8-dynamic artifacts."""

    vram_kinds = ("fp8",)

    @classmethod
    def card(cls, manifest: dict) -> CardFacts:
        return CardFacts(
            title="FP8-dynamic (compressed-tensors)",
            what="FP8 (E4M3) weights with one scale per output channel and FP8 activations quantized per token "
                 "at run time; embeddings, lm_head and norms stay in the source dtype",
            tags=("quantkit", "fp8", "8-bit", "compressed-tensors", "vllm"),
            library_name="transformers",
            runtimes=(("vllm", VLLM_NOTE), ("transformers", CT_TRANSFORMERS_NOTE)),
            memory_note=VLLM_MEMORY_NOTE,
            local_note=HF_LOCAL_NOTE,
            summary=_summary(manifest.get("parameters") or {}),
        )

    @classmethod
    def vram_variants(cls, folder: Path, manifest: dict) -> tuple[str, list[tuple[str, str]]]:
        if not (folder / "config.json").is_file():
            raise InputError("the folder has no config.json")
        return str(folder), [("", "fp8")]

    @classmethod
    def weight_bytes(cls, kind: str, args: str, model) -> tuple[int, str]:
        """Decoder Linears 1 byte a weight plus a BF16 scale per row; the rest BF16 (args are ignored)."""
        total = 0
        for t in model.tensors:
            n = math.prod(t.shape)
            total += n + t.shape[0] * 2 if t.role == "linear" else n * 2
        return total, "decoder Linear weights 1 byte + one BF16 scale per row; embeddings, head, norms BF16"


def _summary(p: dict) -> str:
    """The card's settings line."""
    parts = []
    if p.get("quantized_tensors") is not None:
        parts.append(f"{p['quantized_tensors']} Linear weights in FP8")
    if p.get("ignore"):
        parts.append("kept as they were: " + ", ".join(f"`{x}`" for x in p["ignore"]))
    return "; ".join(str(x) for x in parts if x)
