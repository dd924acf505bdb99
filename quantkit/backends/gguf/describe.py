"""What a GGUF artifact is, read from its manifest: card facts, the files verify scores, vram
weight bytes. A GGUF folder holds one file per quantization type, each a model of its own.

Imports nothing heavy: the card, vram and `run --check` read it (the type mix is imported
only to count bytes).
"""
from __future__ import annotations

import re
from pathlib import Path

from quantkit import output
from quantkit.backends.base import CardFacts
from quantkit.errors import InputError, OptionError

# llama.cpp's `-hf REPO:TAG` and Ollama's `hf.co/REPO:TAG` pick a GGUF file of the repository by
# its quantization tag.
LLAMACPP_NOTE = ("llama.cpp picks the file of this repository whose name carries the tag "
                 "after the colon, downloads it once and caches it.")
OLLAMA_NOTE = ("`ollama run hf.co/…` takes the chat template the Hub derives from the GGUF's own "
               "`tokenizer.chat_template`; the Modelfile beside each file is quantkit's: FROM the file, "
               "with the TEMPLATE, stop strings and parameters quantkit could derive from the "
               "source.")


class GGUFDescription:
    """The description hooks of base.Backend for GGUF artifacts."""

    vram_kinds = ("gguf",)

    @classmethod
    def card(cls, manifest: dict) -> CardFacts:
        p = manifest.get("parameters") or {}
        return CardFacts(
            title="GGUF",
            what="GGUF files for llama.cpp and Ollama, one per quantization type, each with an Ollama Modelfile "
                 "beside it; tensor types follow llama.cpp's mix for each file type",
            tags=("quantkit", "gguf", "llama.cpp", "ollama") + (("imatrix",) if p.get("imatrix") else ()),
            library_name="gguf",
            runtimes=(("llama.cpp", LLAMACPP_NOTE), ("ollama", OLLAMA_NOTE)),
            memory_note=("llama.cpp and Ollama allocate the KV cache for the context they are given (`-c` in "
                         "llama.cpp, `num_ctx` in Ollama)."),
            local_note="`llama-cli -m` and `ollama create` also run from a local copy of the folder.",
            summary=_summary(p),
        )

    @classmethod
    def snippet_rows(cls, manifest: dict) -> list[dict[str, str]]:
        """One row per GGUF file for the snippets repeated per file: file, tag, size, modelfile, ollama_name."""
        files = manifest.get("files") or {}
        out = []
        for fname, info in ((manifest.get("parameters") or {}).get("files") or {}).items():
            stem = fname[: -len(".gguf")] if fname.endswith(".gguf") else fname
            modelfile = f"{stem}.Modelfile"
            out.append({"file": fname, "tag": str(info.get("file_type", "")),
                        "size": output.human_bytes(files.get(fname, {}).get("bytes", 0)),
                        "modelfile": modelfile if modelfile in files else "",
                        "ollama_name": re.sub(r"[^a-z0-9._-]", "-", stem.lower())})
        return out

    @classmethod
    def snippet_values(cls, folder: Path, manifest: dict, repo: str, name: str) -> dict[str, str]:
        """modelfile_steps: `ollama create` from the first file that has a Modelfile beside it."""
        f = next((x for x in cls.snippet_rows(manifest) if x["modelfile"]), None)
        if f is None:
            return {"modelfile_steps": ""}
        return {"modelfile_steps": "# or with the Modelfile quantkit wrote beside the file\n"
                                   f"hf download {repo} {f['file']} {f['modelfile']} --local-dir {name}\n"
                                   f"cd {name}\n"
                                   f"ollama create {f['ollama_name']} -f {f['modelfile']}\n"
                                   f"ollama run {f['ollama_name']}\n"}

    @classmethod
    def verify_targets(cls, folder: Path, manifest: dict) -> list[Path]:
        """Each .gguf file on its own: a GGUF folder holds several models."""
        return [folder / fname for fname in ((manifest.get("parameters") or {}).get("files") or {})]

    @classmethod
    def vram_variants(cls, folder: Path, manifest: dict) -> tuple[str, list[tuple[str, str]]]:
        """The source's config.json (a GGUF folder has none), one row per file."""
        src = Path((manifest.get("source") or {}).get("path") or "")
        if not (src.is_dir() and (src / "config.json").is_file()):
            raise InputError(f"the source checkpoint {src.name or '?'} whose config.json it needs is not on this machine")
        return str(src), [(f["file"], f"gguf:{f['tag']}") for f in cls.snippet_rows(manifest)]

    @classmethod
    def weight_bytes(cls, kind: str, args: str, model) -> tuple[int, str]:
        """args: the file type (Q4_K_M, any case)."""
        from quantkit.backends.gguf import mix
        from quantkit.backends.gguf.tensors import predicted_bytes

        typ = args.upper()
        if typ not in mix.FILE_TYPES:
            raise OptionError("format", model.spec, f"unknown GGUF type; use one of {', '.join(mix.FILE_TYPES)}")
        return predicted_bytes(model.config, typ), (f"GGUF {typ}: each tensor in the type llama.cpp's {typ} mix gives "
                                                    "it (quantkit's GGUF writer uses the same rules), norms F32")


def _summary(p: dict) -> str:
    """The card's settings line."""
    files = p.get("files") or {}
    parts = ["file types " + ", ".join(v.get("file_type", "?") for v in files.values())]
    engines = p.get("engine") or {}
    if engines and any(e != "quantkit" for e in engines.values()):
        parts.append("encoded by " + ", ".join(f"{t}: {e}" for t, e in engines.items()))
    imx = p.get("imatrix")
    if imx:
        parts.append(f"importance matrix from {imx.get('chunks')} chunks" if imx.get("chunks") else "importance matrix")
    return "; ".join(str(x) for x in parts if x)
