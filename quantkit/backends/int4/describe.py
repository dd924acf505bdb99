"""What an INT4 artifact (GPTQ or AWQ) is, read from its manifest: card facts, vram weight bytes.
One description serves both methods; the layout (compressed-tensors, or AutoGPTQ's or AutoAWQ's)
is a manifest parameter.

Imports nothing heavy: the card, vram and `run --check` read it.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from quantkit.backends.base import CardFacts
from quantkit.backends.fp8.describe import CT_TRANSFORMERS_NOTE, HF_LOCAL_NOTE, VLLM_MEMORY_NOTE
from quantkit.errors import InputError, OptionError

# vLLM picks its Marlin kernels for gptq/awq by itself, while `--quantization gptq|awq` forces its
# older, slower kernels (vLLM's gptq_marlin.py / awq_marlin.py override_quantization_method);
# transformers 5 loads the AutoGPTQ/AutoAWQ layouts only through `gptqmodel` (quantizer_gptq.py
# needs `optimum` too).
CT_VLLM_NOTE = ("vLLM reads the compressed-tensors `quantization_config` (W4A16) in config.json; no flag is "
                "needed. Its INT4 kernels need an NVIDIA GPU of compute capability 8.0 or newer.")
_LEGACY_VLLM = ("vLLM reads `quant_method: {qm}` from config.json and, on GPUs of compute capability 8.0 or "
                "newer, runs it with its `{qm}_marlin` kernel. Do not pass `--quantization {qm}`: that forces "
                "vLLM's older, slower {QM} kernel (`--quantization {qm}_marlin` is the explicit form of the default).")
_LEGACY_TRANSFORMERS = ("transformers 5 loads the {desc} layout only through GPT-QModel (`gptqmodel`); {desc} itself "
                        "no longer runs with it. quantkit checked the tensors with {reader}, not with gptqmodel.")

# (method, layout) -> title, what, tags, runtimes
CARD_FACTS: dict[tuple[str, str], dict] = {
    ("gptq", "compressed-tensors"): {
        "title": "INT4 GPTQ (compressed-tensors, pack-quantized)",
        "what": "4-bit symmetric weights (W4A16) with one scale per group of input columns, fitted by GPTQ; "
                "embeddings, lm_head and norms stay in the source dtype",
        "tags": ("quantkit", "gptq", "int4", "4-bit", "w4a16", "compressed-tensors", "vllm"),
        "runtimes": (("vllm", CT_VLLM_NOTE), ("transformers", CT_TRANSFORMERS_NOTE)),
    },
    ("awq", "compressed-tensors"): {
        "title": "INT4 AWQ (compressed-tensors, pack-quantized)",
        "what": "4-bit asymmetric weights (W4A16) with a scale and zero point per group of input columns, after "
                "AWQ's activation-aware scaling; embeddings, lm_head and norms stay in the source dtype",
        "tags": ("quantkit", "awq", "int4", "4-bit", "w4a16", "compressed-tensors", "vllm"),
        "runtimes": (("vllm", CT_VLLM_NOTE), ("transformers", CT_TRANSFORMERS_NOTE)),
    },
    ("gptq", "gptq"): {
        "title": "INT4 GPTQ (AutoGPTQ layout)",
        "what": "4-bit symmetric weights (W4A16) fitted by GPTQ, stored as AutoGPTQ stores them (qweight, qzeros, "
                "FP16 scales, g_idx); embeddings, lm_head and norms stay in the source dtype",
        "tags": ("quantkit", "gptq", "int4", "4-bit", "w4a16", "vllm"),
        "runtimes": (("vllm", _LEGACY_VLLM.replace("{qm}", "gptq").replace("{QM}", "GPTQ")),
                     ("transformers-gptq", _LEGACY_TRANSFORMERS.replace("{desc}", "AutoGPTQ")
                      .replace("{reader}", "auto-round's CPU QuantLinear"))),
    },
    ("awq", "awq"): {
        "title": "INT4 AWQ (AutoAWQ GEMM layout)",
        "what": "4-bit asymmetric weights (W4A16) after AWQ's activation-aware scaling, stored as AutoAWQ's GEMM "
                "version stores them (qweight, qzeros, FP16 scales); embeddings, lm_head and norms stay in the "
                "source dtype",
        "tags": ("quantkit", "awq", "int4", "4-bit", "w4a16", "vllm"),
        "runtimes": (("vllm", _LEGACY_VLLM.replace("{qm}", "awq").replace("{QM}", "AWQ")),
                     ("transformers-awq", _LEGACY_TRANSFORMERS.replace("{desc}", "AutoAWQ")
                      .replace("{reader}", "compressed-tensors' AutoAWQ converter"))),
    },
}

# vram's int4 layouts -> bytes of one quantized Linear [out, in] at group size g, besides the 4-bit weights
VRAM_LAYOUTS = {
    "sym": lambda o, i, g: o * (i // g) * 2 + 16,  # compressed-tensors: BF16 scales, weight_shape
    "asym": lambda o, i, g: o * (i // g) * 2 + o * (i // g) // 2 + 16,  # + 4-bit zero points
    "gptq": lambda o, i, g: (i // g) * o * 2 + (i // g) * o // 2 + i * 4,  # FP16 scales, qzeros, g_idx
    "awq": lambda o, i, g: (i // g) * o * 2 + (i // g) * o // 2,  # FP16 scales, qzeros
}


class INT4Description:
    """The description hooks of base.Backend for INT4 artifacts (GPTQ and AWQ).

    `quantkit vram --format int4-gGROUP[:LAYOUT]` is kind "int4-" with args "gGROUP[:LAYOUT]".
    """

    vram_kinds = ("int4-",)

    @classmethod
    def card(cls, manifest: dict) -> CardFacts:
        method = manifest.get("method")
        p = manifest.get("parameters") or {}
        facts = CARD_FACTS.get((method, p.get("layout")))
        summary = _summary(method, p)
        if facts is None:  # a layout this quantkit does not know
            return CardFacts.unknown(manifest, summary)
        return CardFacts(**facts, library_name="transformers", memory_note=VLLM_MEMORY_NOTE,
                         local_note=HF_LOCAL_NOTE, summary=summary)

    @classmethod
    def vram_variants(cls, folder: Path, manifest: dict) -> tuple[str, list[tuple[str, str]]]:
        if not (folder / "config.json").is_file():
            raise InputError("the folder has no config.json")
        p = manifest.get("parameters") or {}
        layout = p.get("layout", "compressed-tensors")
        kind = layout if layout in ("gptq", "awq") else ("sym" if p.get("symmetric") else "asym")
        return str(folder), [("", f"int4-g{p.get('group_size', 128)}:{kind}")]

    @classmethod
    def weight_bytes(cls, kind: str, args: str, model) -> tuple[int, str]:
        """args `gGROUP[:LAYOUT]`; the layout sym (the default), asym, gptq or awq."""
        from quantkit.formats import group_size_for

        m = re.fullmatch(r"g(.*?)(?::(.*))?", args)
        try:
            requested = int(m.group(1))
            layout = m.group(2) or "sym"
            extra = VRAM_LAYOUTS[layout]
        except (AttributeError, ValueError, KeyError):
            raise OptionError("format", model.spec,
                              "write int4-gGROUP[:sym|asym|gptq|awq], e.g. int4-g128 or int4-g128:awq") from None
        linears = [t for t in model.tensors if t.role == "linear"]
        g = group_size_for([t.shape[1] for t in linears], requested)
        total = sum(math.prod(t.shape) * 2 for t in model.tensors if t.role != "linear")
        total += sum(math.prod(t.shape) // 2 + extra(t.shape[0], t.shape[1], g) for t in linears)
        return total, (f"decoder Linear weights 4 bits, group size {g}"
                       + (f" (the largest that divides every layer; {requested} asked)" if g != requested else "")
                       + f", {layout} layout's scales/zeros/indices; embeddings, head, norms BF16")


def _summary(method: str | None, p: dict) -> str:
    """The card's settings line."""
    g = p.get("group_size")
    parts = [f"{p.get('bits', 4)} bits, group size {g}"
             + (f" ({p['group_size_requested']} asked; the largest that divides every layer)"
                if p.get("group_size_requested") not in (None, g) else ""),
             "symmetric" if p.get("symmetric") else "asymmetric with zero points"]
    if method == "gptq":
        parts.append(f"damping {p.get('damping')}, act-order {p.get('act_order')}")
    elif p.get("n_grid") is not None:
        parts.append(f"AWQ grid {p['n_grid']}")
    if p.get("samples"):
        parts.append(f"calibrated on {p['samples']} x {p.get('seq_len')} tokens of the {p.get('calibration', '?')}")
    return "; ".join(str(x) for x in parts if x)
