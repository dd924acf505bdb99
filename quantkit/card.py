"""Model cards: the README.md of every artifact folder, written from its quantkit.json.

The card holds the Hub metadata (built with huggingface_hub's ModelCardData), how to
run the artifact in the runtimes that load its format, the verify and vram tables,
and the command or recipe that made it. It is rendered from the manifest (and a few
files of the folder) alone, so the same manifest gives the same card; the only date
in it is the manifest's `created`.

`write_card` records the card's sha256 in the manifest (`card_sha256`), so
`is_generated` can tell a card quantkit wrote from one somebody edited; an edited
card is left alone unless `force` is given.

What each format needs to run was checked against the runtimes' own code and docs:
vLLM reads `quantization_config` from config.json (compressed-tensors, gptq, awq) and
picks its Marlin kernels for gptq/awq by itself, while `--quantization gptq|awq`
forces its older, slower kernels (vLLM's gptq_marlin.py / awq_marlin.py
override_quantization_method); transformers 5 loads compressed-tensors checkpoints
with the `compressed-tensors` package and the AutoGPTQ/AutoAWQ layouts only through
`gptqmodel` (quantizer_gptq.py needs `optimum` too); llama.cpp's `-hf REPO:TAG` and
Ollama's `hf.co/REPO:TAG` pick a GGUF file of the repository by its quantization
tag; exllamav2 is CUDA-only.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from quantkit import output

PIPELINE_TAG = "text-generation"
PLACEHOLDER_OWNER = "YOUR_USER"  # stands for the Hub account while no repo id is known
SOURCE_CARD_MAX_BYTES = 4 * 1024**2  # a source card larger than this is not read
SOURCE_KEYS = ("license", "license_name", "license_link", "language")
VRAM_CONTEXTS = (4096, 16384)  # plus the model's own maximum when it is larger
FILES_SHOWN = 20  # rows of the file table before "and N more"
SOURCE_FILES_SHOWN = 8

# ----------------------------------------------------------------------------------------------
# Format facts: what each artifact kind is tagged with, which Hub library it declares, and the
# runtimes that load it (snippet key, note). Keyed by manifest method, or method/layout for INT4.
#
# library_name: "transformers" where transformers loads the folder (compressed-tensors, and the
# AutoGPTQ/AutoAWQ layouts through gptqmodel), "gguf" for GGUF files. EXL2: "exllamav2". It is not
# in the Hub's list of model libraries (huggingface.js model-libraries.ts), so the Hub shows no code
# button for it; but left out, the Hub would infer "transformers" from config.json and offer a
# transformers snippet that cannot load EXL2 tensors. exllamav2 is the only library that loads
# them, and the name is what EXL2 uploads use.
# ----------------------------------------------------------------------------------------------

_FP8_VLLM = ("vLLM reads the compressed-tensors `quantization_config` in config.json; no flag is needed. "
             "FP8 matmuls need compute capability 8.9 or newer (Ada, Hopper, Blackwell); on Turing and "
             "Ampere vLLM runs the FP8 weights weight-only (W8A16) through its FP8 Marlin kernel.")
_INT4_CT_VLLM = ("vLLM reads the compressed-tensors `quantization_config` (W4A16) in config.json; no flag is "
                 "needed. Its INT4 kernels need an NVIDIA GPU of compute capability 8.0 or newer.")
_LEGACY_VLLM = ("vLLM reads `quant_method: {qm}` from config.json and, on GPUs of compute capability 8.0 or "
                "newer, runs it with its `{qm}_marlin` kernel. Do not pass `--quantization {qm}`: that forces "
                "vLLM's older, slower {QM} kernel (`--quantization {qm}_marlin` is the explicit form of the default).")
_CT_TRANSFORMERS = ("transformers reads the compressed-tensors `quantization_config` through the "
                    "`compressed-tensors` package (on CPU too: quantkit's own checks load the folder this way).")
_LEGACY_TRANSFORMERS = ("transformers 5 loads the {desc} layout only through GPT-QModel (`gptqmodel`); {desc} itself "
                        "no longer runs with it. quantkit checked the tensors with {reader}, not with gptqmodel.")
_VLLM_MEMORY = ("vLLM reserves `--gpu-memory-utilization` of the GPU (0.9 by default) at start and fills what the "
                "weights leave with KV cache, whatever the table says; `--max-model-len` bounds the context.")
_HF_LOCAL = "vLLM and transformers also take the local folder's path in its place."


FORMATS: dict[str, dict] = {
    "fp8-dynamic": {
        "title": "FP8-dynamic (compressed-tensors)",
        "what": "FP8 (E4M3) weights with one scale per output channel and FP8 activations quantized per token "
                "at run time; embeddings, lm_head and norms stay in the source dtype",
        "tags": ["quantkit", "fp8", "8-bit", "compressed-tensors", "vllm"],
        "library_name": "transformers",
        "memory_note": _VLLM_MEMORY,
        "local_note": _HF_LOCAL,
        "runtimes": [("vllm", _FP8_VLLM), ("transformers", _CT_TRANSFORMERS)],
    },
    "gptq/compressed-tensors": {
        "title": "INT4 GPTQ (compressed-tensors, pack-quantized)",
        "what": "4-bit symmetric weights (W4A16) with one scale per group of input columns, fitted by GPTQ; "
                "embeddings, lm_head and norms stay in the source dtype",
        "tags": ["quantkit", "gptq", "int4", "4-bit", "w4a16", "compressed-tensors", "vllm"],
        "library_name": "transformers",
        "memory_note": _VLLM_MEMORY,
        "local_note": _HF_LOCAL,
        "runtimes": [("vllm", _INT4_CT_VLLM), ("transformers", _CT_TRANSFORMERS)],
    },
    "awq/compressed-tensors": {
        "title": "INT4 AWQ (compressed-tensors, pack-quantized)",
        "what": "4-bit asymmetric weights (W4A16) with a scale and zero point per group of input columns, after "
                "AWQ's activation-aware scaling; embeddings, lm_head and norms stay in the source dtype",
        "tags": ["quantkit", "awq", "int4", "4-bit", "w4a16", "compressed-tensors", "vllm"],
        "library_name": "transformers",
        "memory_note": _VLLM_MEMORY,
        "local_note": _HF_LOCAL,
        "runtimes": [("vllm", _INT4_CT_VLLM), ("transformers", _CT_TRANSFORMERS)],
    },
    "gptq/gptq": {
        "title": "INT4 GPTQ (AutoGPTQ layout)",
        "what": "4-bit symmetric weights (W4A16) fitted by GPTQ, stored as AutoGPTQ stores them (qweight, qzeros, "
                "FP16 scales, g_idx); embeddings, lm_head and norms stay in the source dtype",
        "tags": ["quantkit", "gptq", "int4", "4-bit", "w4a16", "vllm"],
        "library_name": "transformers",
        "memory_note": _VLLM_MEMORY,
        "local_note": _HF_LOCAL,
        "runtimes": [("vllm", _LEGACY_VLLM.replace("{qm}", "gptq").replace("{QM}", "GPTQ")),
                     ("transformers-gptq", _LEGACY_TRANSFORMERS.replace("{desc}", "AutoGPTQ")
                      .replace("{reader}", "auto-round's CPU QuantLinear"))],
    },
    "awq/awq": {
        "title": "INT4 AWQ (AutoAWQ GEMM layout)",
        "what": "4-bit asymmetric weights (W4A16) after AWQ's activation-aware scaling, stored as AutoAWQ's GEMM "
                "version stores them (qweight, qzeros, FP16 scales); embeddings, lm_head and norms stay in the "
                "source dtype",
        "tags": ["quantkit", "awq", "int4", "4-bit", "w4a16", "vllm"],
        "library_name": "transformers",
        "memory_note": _VLLM_MEMORY,
        "local_note": _HF_LOCAL,
        "runtimes": [("vllm", _LEGACY_VLLM.replace("{qm}", "awq").replace("{QM}", "AWQ")),
                     ("transformers-awq", _LEGACY_TRANSFORMERS.replace("{desc}", "AutoAWQ")
                      .replace("{reader}", "compressed-tensors' AutoAWQ converter"))],
    },
    "gguf": {
        "title": "GGUF",
        "what": "GGUF files for llama.cpp and Ollama, one per quantization type, each with an Ollama Modelfile "
                "beside it; tensor types follow llama.cpp's mix for each file type",
        "tags": ["quantkit", "gguf", "llama.cpp", "ollama"],
        "library_name": "gguf",
        "memory_note": ("llama.cpp and Ollama allocate the KV cache for the context they are given (`-c` in llama.cpp, "
                        "`num_ctx` in Ollama)."),
        "local_note": "`llama-cli -m` and `ollama create` also run from a local copy of the folder.",
        "runtimes": [("llama.cpp", "llama.cpp picks the file of this repository whose name carries the tag "
                                   "after the colon, downloads it once and caches it."),
                     ("ollama", "`ollama run hf.co/…` takes the chat template the Hub derives from the GGUF's own "
                                "`tokenizer.chat_template`; the Modelfile beside each file is quantkit's: FROM the file, "
                                "with the TEMPLATE, stop strings and parameters quantkit could derive from the "
                                "source.")],
    },
    "exl2": {
        "title": "EXL2",
        "what": "EXL2 weights as exllamav2 loads them: each attention and MLP block gets its own mix of 2 to 8 "
                "bits, chosen to meet the bits-per-weight target; embeddings and norms FP16",
        "tags": ["quantkit", "exl2", "exllamav2"],
        "library_name": "exllamav2",
        "memory_note": "exllamav2 allocates the cache for `max_seq_len` when it loads the model.",
        "local_note": "The exllamav2 code reads a local copy; point `ExLlamaV2Config` at this folder to run it here.",
        "runtimes": [("exllamav2", "exllamav2 needs an NVIDIA GPU with CUDA. TabbyAPI, an OpenAI-compatible "
                                   "server built on exllamav2, loads the same folder from its models directory.")],
    },
}

# Snippets, filled by _fill: {repo} the Hub id (or placeholder), {name} the folder name, and
# per-format extras. "each" (GGUF) is repeated for every file and put where {each} stands.
SNIPPETS: dict[str, dict] = {
    "vllm": {
        "title": "vLLM",
        "lang": "bash",
        "code": "pip install vllm\n"
                "vllm serve {repo}\n"
                "# an OpenAI-compatible API on http://localhost:8000; from another shell:\n"
                "{request}",
    },
    "transformers": {
        "title": "transformers",
        "lang": "python",
        "code": "# pip install transformers accelerate compressed-tensors\n" + "{transformers}",
    },
    "transformers-gptq": {
        "title": "transformers",
        "lang": "python",
        "code": "# pip install transformers accelerate optimum gptqmodel\n" + "{transformers}",
    },
    "transformers-awq": {
        "title": "transformers",
        "lang": "python",
        "code": "# pip install transformers accelerate gptqmodel\n" + "{transformers}",
    },
    "llama.cpp": {
        "title": "llama.cpp",
        "lang": "bash",
        "code": "# chat in the terminal; llama.cpp downloads the file from the Hub\n"
                "{each}"
                "# the same as an OpenAI-compatible server on http://localhost:8080\n"
                "llama-server -hf {repo}:{tag}\n"
                "# or a file you have downloaded\n"
                "hf download {repo} {file} --local-dir .\n"
                "llama-cli -m {file}\n",
        "each": "llama-cli -hf {repo}:{tag}    # {file}, {size}\n",
    },
    "ollama": {
        "title": "Ollama",
        "lang": "bash",
        "code": "{each}"
                "{modelfile_steps}",
        "each": "ollama run hf.co/{repo}:{tag}\n",
    },
    "exllamav2": {
        "title": "exllamav2",
        "lang": "python",
        "code": "# pip install exllamav2   (CUDA only)\n"
                "# hf download {repo} --local-dir {name}\n"
                "from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config, ExLlamaV2Tokenizer\n"
                "from exllamav2.generator import ExLlamaV2DynamicGenerator\n"
                "\n"
                "config = ExLlamaV2Config(\"{name}\")\n"
                "model = ExLlamaV2(config)\n"
                "cache = ExLlamaV2Cache(model, max_seq_len={ctx}, lazy=True)\n"
                "model.load_autosplit(cache, progress=True)\n"
                "tokenizer = ExLlamaV2Tokenizer(config)\n"
                "generator = ExLlamaV2DynamicGenerator(model=model, cache=cache, tokenizer=tokenizer)\n"
                "print(generator.generate(prompt=\"{prompt}\", max_new_tokens=100, add_bos=True))\n",
    },
}

_TRANSFORMERS_BODY = (
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    "\n"
    "model_id = \"{repo}\"\n"
    "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
    "model = AutoModelForCausalLM.from_pretrained(model_id, dtype=\"auto\", device_map=\"auto\")\n"
    "\n"
    "{inputs}"
    "output = model.generate(**inputs, max_new_tokens=64)\n"
    "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n"
)
_CHAT_INPUTS = (
    "messages = [{\"role\": \"user\", \"content\": \"Write a haiku about quantization.\"}]\n"
    "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,\n"
    "                                       return_tensors=\"pt\").to(model.device)\n"
)
_PLAIN_INPUTS = "inputs = tokenizer(\"The capital of France is\", return_tensors=\"pt\").to(model.device)\n"
_CHAT_REQUEST = ("curl http://localhost:8000/v1/chat/completions -H \"Content-Type: application/json\" \\\n"
                 "  -d '{\"model\": \"{repo}\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'\n")
_PLAIN_REQUEST = ("curl http://localhost:8000/v1/completions -H \"Content-Type: application/json\" \\\n"
                  "  -d '{\"model\": \"{repo}\", \"prompt\": \"The capital of France is\", \"max_tokens\": 32}'\n")


# ---------------------------------------------------------------------------------------------- API


def source_metadata(source_path: Path) -> dict:
    """license, license_name, license_link and language from the source's README.md front matter.

    The source card is untrusted: it is parsed with huggingface_hub (YAML safe_load, so nothing
    in it runs), only those four keys are kept, each only as a one-line string (language: a
    string or a list of strings, returned as a list), and any problem gives {}.
    """
    try:
        path = Path(source_path) / output.CARD
        if not path.is_file() or path.stat().st_size > SOURCE_CARD_MAX_BYTES:
            return {}
        path.read_bytes().decode("utf-8")  # not UTF-8: not a card
        from huggingface_hub import metadata_load

        data = metadata_load(path)  # the front matter as a dict, through yaml.safe_load; None if none
        if not isinstance(data, dict):
            return {}
        lang = data.get("language")
        return _checked_metadata({**data, "language": [lang] if isinstance(lang, str) else lang})
    except Exception:  # a malformed card must never fail a conversion
        return {}


def render(folder: Path, manifest: dict, repo_id: str | None = None) -> str:
    """The README.md text for the artifact in `folder` described by `manifest`."""
    folder = Path(folder)
    name = display_name(folder)
    repo = repo_id or f"{PLACEHOLDER_OWNER}/{name}"
    fmt = format_facts(manifest)
    body = [
        *_intro(manifest, fmt, name, repo, repo_id is None),
        *_run_section(folder, manifest, fmt, name, repo),
        *_verify_section(manifest, name),
        *_vram_section(folder, manifest, fmt),
        *_provenance_section(manifest),
        *_files_section(manifest),
        "---",
        "",
        f"This card was written by quantkit {manifest.get('quantkit_version', '?')} from the folder's "
        "quantkit.json. quantkit writes it again when the manifest changes (after `quantkit verify`, for "
        "instance) as long as nobody has edited it; an edited card is left as it is.",
        "",
    ]
    meta = card_data(manifest, fmt).to_yaml(original_order=["base_model", "base_model_relation"])
    return "---\n" + meta + "\n---\n\n" + "\n".join(body)


def write_card(folder: Path, manifest: dict, repo_id: str | None = None, force: bool = False) -> Path:
    """Write README.md into `folder`, record its sha256 in the manifest as card_sha256 and
    rewrite quantkit.json; return the card's path.

    A README.md that is there but is not the one quantkit last wrote (edited by hand, or put
    there by someone else) is left alone, and so is the manifest, unless `force`.
    """
    folder = Path(folder)
    path = folder / output.CARD
    if path.exists() and not force and not is_generated(folder, manifest):
        return path
    data = render(folder, manifest, repo_id).encode("utf-8")
    output.write_bytes_atomic(path, data)
    manifest["card_sha256"] = hashlib.sha256(data).hexdigest()
    output.write_json(folder / output.MANIFEST, manifest)
    return path


def is_generated(folder: Path, manifest: dict) -> bool:
    """README.md exists and is byte for byte the card quantkit last wrote (nobody edited it)."""
    path = Path(folder) / output.CARD
    want = manifest.get("card_sha256")
    return bool(want) and path.is_file() and output.sha256_file(path) == want


# ---------------------------------------------------------------------------------------------- facts


def display_name(folder: Path) -> str:
    """The artifact's name: its folder's, also while it is still the hidden staging folder."""
    name = Path(folder).name
    if name.startswith(".") and output.PARTIAL in name:
        name = name[1:].rsplit(output.PARTIAL, 1)[0]
    return name


def format_key(manifest: dict) -> str:
    method = manifest.get("method", "")
    layout = (manifest.get("parameters") or {}).get("layout")
    return f"{method}/{layout}" if method in ("gptq", "awq") else method


def format_facts(manifest: dict) -> dict:
    return FORMATS.get(format_key(manifest)) or {
        "title": manifest.get("format", "unknown format"), "what": manifest.get("format", ""),
        "tags": ["quantkit"], "library_name": None, "runtimes": [],
    }


def card_data(manifest: dict, fmt: dict | None = None):
    """The card's Hub metadata as huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    fmt = fmt or format_facts(manifest)
    src = manifest.get("source") or {}
    inherited = _checked_metadata(src.get("card_metadata"))
    base = src.get("upstream_id") or None
    tags = list(fmt["tags"])
    params = manifest.get("parameters") or {}
    if manifest.get("method") == "gguf" and params.get("imatrix"):
        tags.append("imatrix")
    link = inherited.get("license_link")
    if link and base and not re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):
        # a link relative to the source repository (e.g. LICENSE) would point into this one
        inherited["license_link"] = f"https://huggingface.co/{base}/blob/main/{link.lstrip('./')}"
    extra = {"base_model_relation": "quantized"} if base else {}
    return ModelCardData(
        base_model=base,
        language=inherited.get("language"),
        license=inherited.get("license"),
        license_name=inherited.get("license_name"),
        license_link=inherited.get("license_link"),
        library_name=fmt.get("library_name"),
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
        **extra,
    )


def _checked_metadata(meta) -> dict:
    """The manifest's card_metadata, held to what source_metadata would have returned (the
    manifest is a file on disk too)."""
    if not isinstance(meta, dict):
        return {}
    out = {}
    for key in ("license", "license_name", "license_link"):
        value = _clean(meta.get(key), 2000 if key == "license_link" else 200)
        if value:
            out[key] = value
    lang = meta.get("language")
    if isinstance(lang, list) and lang and all(isinstance(x, str) and _clean(x, 50) for x in lang):
        out["language"] = list(dict.fromkeys(_clean(x, 50) for x in lang))
    return out


def _clean(value, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > limit or any(c in value for c in "\r\n\t\x00"):
        return None
    return value


# ---------------------------------------------------------------------------------------------- sections


def _intro(manifest: dict, fmt: dict, name: str, repo: str, placeholder: bool) -> list[str]:
    src = manifest.get("source") or {}
    lines = [f"# {name}", "", f"{fmt['title']} quantization of {_source_ref(src)}, made with "
             f"quantkit {manifest.get('quantkit_version', '?')}.", ""]
    lines += [f"- **What it holds:** {fmt['what']}."]
    detail = _parameter_summary(manifest)
    if detail:
        lines += [f"- **Settings:** {detail}."]
    files = manifest.get("files") or {}
    lines += [f"- **Size:** {output.human_bytes(sum(f.get('bytes', 0) for f in files.values()))} in {len(files)} files "
              f"(format: {manifest.get('format', '?')})."]
    if src.get("architecture"):
        lines += [f"- **Architecture:** {src['architecture']}."]
    lines += [""]
    if placeholder:
        lines += [f"> Not on the Hub yet: `{repo}` below stands for the repository this folder is uploaded to. "
                  + fmt.get("local_note", ""), ""]
    return lines


def _source_ref(src: dict) -> str:
    upstream = src.get("upstream_id")
    if upstream:
        return f"[{upstream}](https://huggingface.co/{upstream})"
    spec = str(src.get("spec") or "")
    if spec.startswith("builtin:"):
        return f"quantkit's built-in model `{spec}`"
    return f"the local checkpoint `{Path(spec).name or spec}`" if spec else "its source checkpoint"


def _parameter_summary(manifest: dict) -> str:
    p = manifest.get("parameters") or {}
    method = manifest.get("method")
    parts = []
    if method == "fp8-dynamic":
        if p.get("quantized_tensors") is not None:
            parts.append(f"{p['quantized_tensors']} Linear weights in FP8")
        if p.get("ignore"):
            parts.append("kept as they were: " + ", ".join(f"`{x}`" for x in p["ignore"]))
    elif method in ("gptq", "awq"):
        g = p.get("group_size")
        parts.append(f"{p.get('bits', 4)} bits, group size {g}"
                     + (f" ({p['group_size_requested']} asked; the largest that divides every layer)"
                        if p.get("group_size_requested") not in (None, g) else ""))
        parts.append("symmetric" if p.get("symmetric") else "asymmetric with zero points")
        if method == "gptq":
            parts.append(f"damping {p.get('damping')}, act-order {p.get('act_order')}")
        elif p.get("n_grid") is not None:
            parts.append(f"AWQ grid {p['n_grid']}")
        if p.get("samples"):
            parts.append(f"calibrated on {p['samples']} x {p.get('seq_len')} tokens of the {p.get('calibration', '?')}")
    elif method == "gguf":
        files = p.get("files") or {}
        parts.append("file types " + ", ".join(v.get("file_type", "?") for v in files.values()))
        engines = p.get("engine") or {}
        if engines and any(e != "quantkit" for e in engines.values()):
            parts.append("encoded by " + ", ".join(f"{t}: {e}" for t, e in engines.items()))
        imx = p.get("imatrix")
        if imx:
            parts.append(f"importance matrix from {imx.get('chunks')} chunks" if imx.get("chunks") else "importance matrix")
    elif method == "exl2":
        parts.append(f"target {p.get('bits')} bits per weight, achieved {p.get('bpw_achieved')} "
                     "(decoder Linears, counted as exllamav2 counts them)")
        parts.append(f"head {p.get('head_bits')} bits")
        cal = p.get("calibration") or {}
        if cal.get("rows"):
            parts.append(f"quantized with {cal['rows']} x {cal.get('length')} tokens of the {cal.get('text', '?')}")
        if p.get("objective"):
            parts.append(f"bit mix chosen by the `{p['objective']}` objective")
    return "; ".join(str(x) for x in parts if x)


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def _run_section(folder: Path, manifest: dict, fmt: dict, name: str, repo: str) -> list[str]:
    lines = ["## How to run it", ""]
    if not fmt["runtimes"]:
        return lines + ["quantkit has no run instructions for this format.", ""]
    chat = _has_chat_template(folder)
    values = {
        "repo": repo, "name": name,
        "request": _fill(_CHAT_REQUEST if chat else _PLAIN_REQUEST, repo=repo),
        "transformers": _fill(_TRANSFORMERS_BODY, repo=repo, inputs=_CHAT_INPUTS if chat else _PLAIN_INPUTS),
        "prompt": "Once upon a time,",
        "ctx": str(_exl2_cache_len(folder)),
    }
    gguf_files = _gguf_files(manifest)
    for key, note in fmt["runtimes"]:
        snip = SNIPPETS[key]
        code = snip["code"]
        if "each" in snip:
            if not gguf_files:
                continue
            first = gguf_files[0]
            each = "".join(_fill(snip["each"], repo=repo, **f) for f in gguf_files)
            code = _fill(code, each=each, modelfile_steps=_modelfile_steps(manifest, repo, name, gguf_files))
            code = _fill(code, **values, **first)
        else:
            code = _fill(code, **values)
        lines += [f"### {snip['title']}", "", _block(code, snip["lang"]), ""]
        if note:
            lines += [note, ""]
    if manifest.get("method") == "exl2":
        lines += ["quantkit checks EXL2 files on CPU, through a decoder that mirrors exllamav2's reconstruct kernel "
                  "(quantkit/backends/exl2/pack.py); `quantkit verify` scores this folder through that decoder. "
                  "These files have not been loaded in exllamav2 itself, which needs a CUDA GPU.", ""]
    return lines


def _gguf_files(manifest: dict) -> list[dict]:
    if manifest.get("method") != "gguf":
        return []
    files = manifest.get("files") or {}
    out = []
    for fname, info in ((manifest.get("parameters") or {}).get("files") or {}).items():
        tag = str(info.get("file_type", ""))
        stem = fname[: -len(".gguf")] if fname.endswith(".gguf") else fname
        modelfile = f"{stem}.Modelfile"
        out.append({"file": fname, "tag": tag,
                    "size": output.human_bytes(files.get(fname, {}).get("bytes", 0)),
                    "modelfile": modelfile if modelfile in files else "",
                    "ollama_name": re.sub(r"[^a-z0-9._-]", "-", stem.lower())})
    return out


def _modelfile_steps(manifest: dict, repo: str, name: str, gguf_files: list[dict]) -> str:
    f = next((x for x in gguf_files if x["modelfile"]), None)
    if f is None:
        return ""
    return ("# or with the Modelfile quantkit wrote beside the file\n"
            f"hf download {repo} {f['file']} {f['modelfile']} --local-dir {name}\n"
            f"cd {name}\n"
            f"ollama create {f['ollama_name']} -f {f['modelfile']}\n"
            f"ollama run {f['ollama_name']}\n")


def _exl2_cache_len(folder: Path) -> int:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        cfg = cfg.get("text_config", cfg)
        m = int(cfg.get("max_position_embeddings") or 0)
        return min(4096, m) if m > 0 else 4096
    except (OSError, ValueError, AttributeError, TypeError):
        return 4096


def _verify_section(manifest: dict, name: str) -> list[str]:
    try:
        return _verify_lines(manifest, name)
    except (KeyError, TypeError, ValueError, AttributeError):  # figures of another quantkit version
        return ["## Quality (quantkit verify)", "", "The verify figures in quantkit.json are not in a form this "
                f"quantkit reads; run `quantkit verify {name}` again.", ""]


def _verify_lines(manifest: dict, name: str) -> list[str]:
    lines = ["## Quality (quantkit verify)", ""]
    single = manifest.get("verify")
    per_file = manifest.get("verify_files") or {}
    gguf = _gguf_files(manifest)
    if not single and not per_file:
        targets = " ".join(f"{name}/{f['file']}" for f in gguf) if gguf else name
        return lines + ["Not verified yet. `quantkit verify` scores the artifact against its source (perplexity, "
                        "KL divergence, top-1 agreement on the same token windows) and writes the figures into "
                        "quantkit.json and this card:", "", _block(f"quantkit verify {targets}", "bash"), ""]
    if single:
        ev = single
        lines += ["| | |", "|---|---|",
                  f"| PPL source | {ev['ppl_source']:.3f} ± {ev['ppl_source_err']:.3f} |",
                  f"| PPL quantized | {ev['ppl_quant']:.3f} ± {ev['ppl_quant_err']:.3f} |",
                  f"| PPL ratio | {ev['ppl_ratio']:.4f} |",
                  f"| KLD mean / p99 | {ev['kld_mean']:.5f} / {ev['kld_p99']:.4f} |",
                  f"| top-1 agreement | {100 * ev['top1_agreement']:.2f}% |",
                  f"| tokens scored | {ev['tokens_scored']:,} ({_windows(ev)}) |", ""]
        rows = [ev]
    else:
        lines += ["| file | PPL source | PPL quantized | PPL ratio | KLD mean / p99 | top-1 agreement | tokens scored |",
                  "|---|---|---|---|---|---|---|"]
        rows = []
        for fname, ev in sorted(per_file.items()):
            rows.append(ev)
            lines.append(f"| {_cell(fname)} | {ev['ppl_source']:.3f} ± {ev['ppl_source_err']:.3f} "
                         f"| {ev['ppl_quant']:.3f} ± {ev['ppl_quant_err']:.3f} | {ev['ppl_ratio']:.4f} "
                         f"| {ev['kld_mean']:.5f} / {ev['kld_p99']:.4f} | {100 * ev['top1_agreement']:.2f}% "
                         f"| {ev['tokens_scored']:,} |")
        lines.append("")
        missing = [f["file"] for f in gguf if f["file"] not in per_file]
        if missing:
            lines += ["Not verified yet: " + ", ".join(f"`{m}`" for m in missing) + " (`quantkit verify "
                      + " ".join(f"{name}/{m}" for m in missing) + "`).", ""]
    texts = sorted({_oneline(r.get("text", "?")) for r in rows})
    methods = sorted({_oneline(r.get("method", "?")) for r in rows})
    lines += [f"Evaluation text: {'; '.join(texts)}. Scoring: {'; '.join(methods)}. "
              "PPL ratio is quantized over source perplexity on the same windows (1.0 is no loss); "
              "KLD is the KL divergence from the source's next-token distribution to the quantized one; "
              "top-1 agreement is how often both pick the same next token.", ""]
    if manifest.get("method") == "exl2":
        lines += ["For EXL2 these figures come from quantkit's CPU decoder that mirrors exllamav2's kernels, not "
                  "from exllamav2.", ""]
    return lines


def _windows(ev: dict) -> str:
    if ev.get("windows") and ev.get("ctx"):
        return f"{ev['windows']} windows of {ev['ctx']} tokens, second half of each scored"
    return "second half of each window scored"


def _vram_section(folder: Path, manifest: dict, fmt: dict) -> list[str]:
    lines = ["## Memory (quantkit vram)", ""]
    try:
        rows, method, per_tok, overhead, kv_note = _vram_rows(folder, manifest)
    except Exception as e:  # the card never fails for want of an estimate
        return lines + [f"No memory table: quantkit could not estimate it here ({_vram_reason(e)}).", ""]
    multi = manifest.get("method") == "gguf"
    head = ("| file " if multi else "") + "| context | weights | KV cache (FP16) | overhead | total |"
    lines += [head, "|---" * head.count(" | ") + "|---|"]
    for label, r in rows:
        lines.append(("| " + _cell(label) + " " if multi else "")
                     + f"| {r['context']:,} | {output.human_bytes(r['weights_bytes'])} | {output.human_bytes(r['kv_cache_bytes'])} "
                     f"| {output.human_bytes(r['overhead_bytes'])} | {output.human_bytes(r['total_bytes'])} |")
    from quantkit.vram import OVERHEAD_ASSUMPTION

    lines += ["", f"Batch 1. Weights: {method}. KV cache: {output.human_bytes(int(per_tok))} per token in FP16. "
              f"Overhead: {OVERHEAD_ASSUMPTION}.{kv_note} {fmt.get('memory_note', '')}".rstrip(), ""]
    return lines


def _vram_reason(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
    return _oneline(msg)[:200]


def _vram_rows(folder: Path, manifest: dict):
    """[(label, context row)], how weights are counted, KV bytes per token, overhead, a note."""
    from quantkit.arch import Dims
    from quantkit.errors import InputError
    from quantkit.vram import estimate, load_config

    method = manifest.get("method")
    p = manifest.get("parameters") or {}
    if method == "gguf":
        src = Path((manifest.get("source") or {}).get("path") or "")
        if not (src.is_dir() and (src / "config.json").is_file()):
            raise InputError(f"the source checkpoint {src.name or '?'} whose config.json it needs is not on this machine")
        spec = str(src)
        variants = [(f["file"], f"gguf:{f['tag']}") for f in _gguf_files(manifest)]
    else:
        if not (folder / "config.json").is_file():
            raise InputError("the folder has no config.json")
        spec = str(folder)
        if method == "fp8-dynamic":
            variants = [("", "fp8")]
        elif method in ("gptq", "awq"):
            layout = p.get("layout", "compressed-tensors")
            kind = {"gptq": "gptq", "awq": "awq"}.get(layout) or ("sym" if p.get("symmetric") else "asym")
            variants = [("", f"int4-g{p.get('group_size', 128)}:{kind}")]
        elif method == "exl2":
            variants = [("", "exl2")]
        else:
            raise InputError(f"no memory model for {method}")
    cfg, _ = load_config(spec)
    max_pos = Dims.from_config(cfg).max_positions
    contexts = [c for c in VRAM_CONTEXTS if not max_pos or c < max_pos] + ([max_pos] if max_pos else [])
    rows, methods, skipped = [], [], []
    est = None
    for label, f in variants:
        try:
            est = estimate(spec, f, contexts)
        except InputError:
            skipped.append(label)
            continue
        rows += [(label, r) for r in est.contexts]
        methods.append(est.weights_method)
    if est is None:
        raise InputError("quantkit vram has no model for these file types")
    note = f" Not estimated: {', '.join(skipped)}." if skipped else ""
    return rows, "; ".join(dict.fromkeys(methods)), est.kv_bytes_per_token, est.overhead_bytes, note


def _provenance_section(manifest: dict) -> list[str]:
    lines = ["## How it was made", ""]
    made = manifest.get("produced_by") or {}
    version = manifest.get("quantkit_version", "?")
    created = manifest.get("created", "?")
    if made.get("recipe_text") or made.get("recipe"):
        lines += [f"With quantkit {version}, {created}, from the recipe `{_oneline(str(made.get('recipe', '?')))}`:", ""]
        if made.get("recipe_text"):
            lines += [_block(str(made["recipe_text"]).rstrip("\n"), "yaml"), ""]
    elif made.get("command"):
        lines += [f"With quantkit {version}, {created}:", "", _block(str(made["command"]), "bash"), ""]
    else:
        lines += [f"With quantkit {version}, {created}, through its Python API (no command recorded).", ""]
    src = manifest.get("source") or {}
    lines += [f"Source: {_source_ref(src)}"
              + (f" ({src['architecture']})" if src.get("architecture") else "")
              + ". Its weight files, as read:", ""]
    weights = list((src.get("weight_files") or {}).items())
    lines += ["| file | size | sha256 |", "|---|---|---|"]
    for fname, info in weights[:SOURCE_FILES_SHOWN]:
        lines.append(f"| {_cell(fname)} | {output.human_bytes(info.get('bytes', 0))} | "
                     + (f"`{info['sha256']}` |" if info.get("sha256") else "not recorded |"))
    if len(weights) > SOURCE_FILES_SHOWN:
        lines.append(f"| … and {len(weights) - SOURCE_FILES_SHOWN} more (all in quantkit.json) | | |")
    lines += ["", "quantkit.json in this folder records every setting, the sha256 of every file, timings and "
              "peak memory.", ""]
    return lines


def _files_section(manifest: dict) -> list[str]:
    files = manifest.get("files") or {}
    lines = ["## Files", "", "| file | size |", "|---|---|"]
    names = sorted(files)
    shown = names if len(names) <= FILES_SHOWN else sorted(sorted(names, key=lambda n: -files[n].get("bytes", 0))[:FILES_SHOWN])
    for n in shown:
        lines.append(f"| {_cell(n)} | {output.human_bytes(files[n].get('bytes', 0))} |")
    if len(shown) < len(names):
        lines.append(f"| … and {len(names) - len(shown)} smaller files (all in quantkit.json) | |")
    lines += [f"| **total** | **{output.human_bytes(sum(f.get('bytes', 0) for f in files.values()))}** |", ""]
    return lines


# ---------------------------------------------------------------------------------------------- text helpers


def _fill(template: str, **values: str) -> str:
    """Replace {key} for the given keys only (snippets hold JSON and Python braces)."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", str(v))
    return template


def _block(code: str, lang: str) -> str:
    """A fenced code block whose fence no backtick run inside it can close."""
    longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{code.rstrip()}\n{fence}"


def _oneline(text: str) -> str:
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    return _oneline(text).replace("|", "\\|")
