"""What an EXL2 artifact is, read from its manifest: card facts, vram weight bytes.

Imports nothing heavy: the card, vram and `run --check` read it (the EXL2 reader is imported
only to count an artifact's stored bytes).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from quantkit.backends.base import CardFacts
from quantkit.errors import InputError, OptionError

CACHE_LEN = 4096  # the card's exllamav2 snippet: its cache length, or the model's maximum if shorter

# library_name "exllamav2" is not in the Hub's list of model libraries (huggingface.js
# model-libraries.ts), so the Hub shows no code button for it; but left out, the Hub would infer
# "transformers" from config.json and offer a transformers snippet that cannot load EXL2 tensors.
# exllamav2 (CUDA only) is the only library that loads them, and the name is what EXL2 uploads use.
LIBRARY_NAME = "exllamav2"


class EXL2Description:
    """The description hooks of base.Backend for EXL2 artifacts.

    `quantkit vram --format exl2` counts an EXL2 folder's stored tensors; `exl2:BPW[:HEAD_BITS]`
    predicts a conversion.
    """

    vram_kinds = ("exl2",)

    @classmethod
    def card(cls, manifest: dict) -> CardFacts:
        return CardFacts(
            title="EXL2",
            what="EXL2 weights as exllamav2 loads them: each attention and MLP block gets its own mix of 2 to 8 "
                 "bits, chosen to meet the bits-per-weight target; embeddings and norms FP16",
            tags=("quantkit", "exl2", "exllamav2"),
            library_name=LIBRARY_NAME,
            runtimes=(("exllamav2", "exllamav2 needs an NVIDIA GPU with CUDA. TabbyAPI, an OpenAI-compatible "
                                    "server built on exllamav2, loads the same folder from its models directory."),),
            memory_note="exllamav2 allocates the cache for `max_seq_len` when it loads the model.",
            local_note="The exllamav2 code reads a local copy; point `ExLlamaV2Config` at this folder to run it here.",
            summary=_summary(manifest.get("parameters") or {}),
            run_note=("quantkit checks EXL2 files on CPU, through a decoder that mirrors exllamav2's reconstruct "
                      "kernel (quantkit/backends/exl2/pack.py); `quantkit verify` scores this folder through that "
                      "decoder. These files have not been loaded in exllamav2 itself, which needs a CUDA GPU."),
            verify_note=("For EXL2 these figures come from quantkit's CPU decoder that mirrors exllamav2's kernels, "
                         "not from exllamav2."),
        )

    @classmethod
    def snippet_values(cls, folder: Path, manifest: dict, repo: str, name: str) -> dict[str, str]:
        """ctx: the snippet's cache length."""
        return {"ctx": str(_cache_len(folder))}

    @classmethod
    def vram_variants(cls, folder: Path, manifest: dict) -> tuple[str, list[tuple[str, str]]]:
        if not (folder / "config.json").is_file():
            raise InputError("the folder has no config.json")
        return str(folder), [("", "exl2")]

    @classmethod
    def weight_bytes(cls, kind: str, args: str, model) -> tuple[int, str]:
        """args "": the stored tensors of the EXL2 folder `model.folder` (exllamav2 keeps them packed on
        the GPU); BPW[:HEAD_BITS]: a prediction for converting this model."""
        from quantkit.backends.exl2.qparams import HEAD_OPTIONS

        if not args:
            return _stored_bytes(model)
        try:
            parts = args.split(":")
            bpw, head = float(parts[0]), int(parts[1]) if len(parts) > 1 else 6
            head_qp = HEAD_OPTIONS[head]
            if len(parts) > 2 or not 1.0 <= bpw <= 16.0:  # exllamav2's range is 2 to 8; nan and inf fail here too
                raise ValueError
        except (ValueError, IndexError, KeyError):
            raise OptionError("format", model.spec, "write exl2:BPW or exl2:BPW:HEAD_BITS with head bits 2, 3, 4, 5, "
                              "6 or 8, e.g. exl2:4.0:6") from None
        specs = model.tensors
        has_head = any(x.role == "head" for x in specs)
        total = 0
        for t in specs:
            n = math.prod(t.shape)
            if t.role == "linear":
                total += math.ceil(n * bpw / 8)
            elif t.role == "head" or (t.role == "embedding" and not has_head):
                total += head_qp.total_bits(t.shape[1], t.shape[0]) // 8 + (n * 2 if t.role == "embedding" else 0)
            else:
                total += n * 2
        return total, (f"decoder Linears at most {bpw:g} bits per weight as exllamav2 counts them (scales, groups "
                       f"and permutation included); head with exllamav2's {head}-bit mix ({head_qp.desc}); "
                       "embeddings and norms FP16")


def _stored_bytes(model) -> tuple[int, str]:
    from quantkit.backends.exl2.decode import is_exl2, tensor_files
    from quantkit.stio import read_header

    folder = model.folder
    if folder is None or not is_exl2(folder):
        raise OptionError("format", model.spec, "name a bit rate (exl2:4.0 or exl2:4.0:6), or pass an EXL2 folder as MODEL")
    files = sorted(set(tensor_files(folder).values()))
    total = sum(t.nbytes for f in files for t in read_header(f).tensors.values())
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    return total, (f"the EXL2 artifact's stored tensors ({len(files)} file(s); {qc.get('bits')} bpw target, "
                   f"head {qc.get('head_bits')} bits), kept packed on the GPU by exllamav2")


def _cache_len(folder: Path) -> int:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        cfg = cfg.get("text_config", cfg)
        m = int(cfg.get("max_position_embeddings") or 0)
        return min(CACHE_LEN, m) if m > 0 else CACHE_LEN
    except (OSError, ValueError, AttributeError, TypeError):
        return CACHE_LEN


def _summary(p: dict) -> str:
    """The card's settings line."""
    parts = [f"target {p.get('bits')} bits per weight, achieved {p.get('bpw_achieved')} "
             "(decoder Linears, counted as exllamav2 counts them)",
             f"head {p.get('head_bits')} bits"]
    cal = p.get("calibration") or {}
    if cal.get("rows"):
        parts.append(f"quantized with {cal['rows']} x {cal.get('length')} tokens of the {cal.get('text', '?')}")
    if p.get("objective"):
        parts.append(f"bit mix chosen by the `{p['objective']}` objective")
    return "; ".join(str(x) for x in parts if x)
