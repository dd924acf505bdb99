"""Memory a model needs, from config.json alone: weights as a format stores them, KV cache, overhead."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from quantkit import arch
from quantkit.arch import Dims, tensors
from quantkit.errors import InputError, SourceError
from quantkit.formats import group_size_for

GIB = 1024**3

# KV cache element sizes in bytes.
KV_DTYPES = {"fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
RUNTIME_BASE = 512 * 1024**2  # CUDA context, allocator slack
PREFILL_CHUNK = 512
OVERHEAD_ASSUMPTION = (
    "0.5 GiB for the CUDA context and allocator, plus activations of one 512-token prefill "
    "chunk per sequence (hidden x 4 + intermediate x 2 + vocab logits, 2 bytes each)"
)


INT4_LAYOUTS = {  # layout -> bytes of one quantized Linear [out, in] at group size g, besides the 4-bit weights
    "sym": lambda o, i, g: o * (i // g) * 2 + 16,  # compressed-tensors: BF16 scales, weight_shape
    "asym": lambda o, i, g: o * (i // g) * 2 + o * (i // g) // 2 + 16,  # + 4-bit zero points
    "gptq": lambda o, i, g: (i // g) * o * 2 + (i // g) * o // 2 + i * 4,  # FP16 scales, qzeros, g_idx
    "awq": lambda o, i, g: (i // g) * o * 2 + (i // g) * o // 2,  # FP16 scales, qzeros
}


def _int4_bytes(specs, kind: str, layout: str, fmt: str) -> tuple[int, str]:
    layout = layout or "sym"
    try:
        requested = int(kind[len("int4-g"):])
        extra = INT4_LAYOUTS[layout]
    except (ValueError, KeyError):
        raise InputError(f"--format {fmt}: write int4-gGROUP[:sym|asym|gptq|awq], e.g. int4-g128 or int4-g128:awq") from None
    linears = [t for t in specs if t.role == "linear"]
    g = group_size_for([t.shape[1] for t in linears], requested)
    total = sum(math.prod(t.shape) * 2 for t in specs if t.role != "linear")
    total += sum(math.prod(t.shape) // 2 + extra(t.shape[0], t.shape[1], g) for t in linears)
    return total, (f"decoder Linear weights 4 bits, group size {g}"
                   + (f" (the largest that divides every layer; {requested} asked)" if g != requested else "")
                   + f", {layout} layout's scales/zeros/indices; embeddings, head, norms BF16")


def _exl2_bytes(specs, arg: str, fmt: str, folder: Path | None) -> tuple[int, str]:
    """exl2 alone: the stored tensors of an EXL2 artifact (exllamav2 keeps them packed on the GPU);
    exl2:BPW[:HEAD]: a prediction for converting this model."""
    from quantkit.backends.exl2.qparams import HEAD_OPTIONS

    if not arg:
        from quantkit.backends.exl2.decode import is_exl2, tensor_files
        from quantkit.stio import read_header

        if folder is None or not is_exl2(folder):
            raise InputError(f"--format {fmt}: name a bit rate (exl2:4.0 or exl2:4.0:6), or pass an EXL2 folder as MODEL")
        files = sorted(set(tensor_files(folder).values()))
        total = sum(t.nbytes for f in files for t in read_header(f).tensors.values())
        qc = json.loads((folder / "config.json").read_text())["quantization_config"]
        return total, (f"the EXL2 artifact's stored tensors ({len(files)} file(s); {qc.get('bits')} bpw target, "
                       f"head {qc.get('head_bits')} bits), kept packed on the GPU by exllamav2")
    try:
        parts = arg.split(":")
        bpw, head = float(parts[0]), int(parts[1]) if len(parts) > 1 else 6
        head_qp = HEAD_OPTIONS[head]
        if len(parts) > 2 or not 1.0 <= bpw <= 16.0:  # exllamav2's range is 2 to 8; nan and inf fail here too
            raise ValueError
    except (ValueError, IndexError, KeyError):
        raise InputError(f"--format {fmt}: write exl2:BPW or exl2:BPW:HEAD_BITS with head bits 2, 3, 4, 5, 6 or 8, e.g. exl2:4.0:6") from None
    total = 0
    for t in specs:
        n = math.prod(t.shape)
        if t.role == "linear":
            total += math.ceil(n * bpw / 8)
        elif t.role == "head" or (t.role == "embedding" and not any(x.role == "head" for x in specs)):
            total += head_qp.total_bits(t.shape[1], t.shape[0]) // 8 + (n * 2 if t.role == "embedding" else 0)
        else:
            total += n * 2
    return total, (f"decoder Linears at most {bpw:g} bits per weight as exllamav2 counts them (scales, groups and "
                   f"permutation included); head with exllamav2's {head}-bit mix ({head_qp.desc}); embeddings and norms FP16")


def weight_bytes(cfg: dict, fmt: str, folder: Path | None = None) -> tuple[int, str]:
    """(bytes, how they are counted) for a format spec: bf16 | fp16 | fp8 | int4-gG[:LAYOUT] | exl2[:BPW[:HEAD]] | gguf:TYPE."""
    specs = tensors(cfg)
    kind, _, arg = fmt.lower().partition(":")
    if kind in ("bf16", "fp16"):
        return sum(math.prod(t.shape) * 2 for t in specs), "every tensor 2 bytes"
    if kind == "fp8":
        total = 0
        for t in specs:
            n = math.prod(t.shape)
            total += n + t.shape[0] * 2 if t.role == "linear" else n * 2
        return total, "decoder Linear weights 1 byte + one BF16 scale per row; embeddings, head, norms BF16"
    if kind.startswith("int4-g"):
        return _int4_bytes(specs, kind, arg, fmt)
    if kind == "exl2":
        return _exl2_bytes(specs, arg, fmt, folder)
    if kind == "gguf":
        from quantkit.backends.gguf import mix, predicted_bytes

        typ = arg.upper()
        if typ not in mix.FILE_TYPES:
            raise InputError(f"--format {fmt}: unknown GGUF type; use one of {', '.join(mix.FILE_TYPES)}")
        return predicted_bytes(cfg, typ), (f"GGUF {typ}: each tensor in the type llama.cpp's {typ} mix gives it "
                                            "(quantkit's GGUF writer uses the same rules), norms F32")
    raise InputError(f"--format {fmt}: use bf16, fp16, fp8, int4-g128[:asym|gptq|awq], exl2:BPW[:HEAD_BITS] or gguf:TYPE")


def kv_bytes_per_token(cfg: dict, kv_dtype: str) -> float:
    d = Dims.from_config(cfg)
    if kv_dtype not in KV_DTYPES:
        raise InputError(f"--kv-dtype {kv_dtype}: use one of {', '.join(KV_DTYPES)}")
    return 2 * d.layers * d.kv_heads * d.head_dim * KV_DTYPES[kv_dtype]


def overhead_bytes(cfg: dict, batch: int) -> int:
    d = Dims.from_config(cfg)
    return RUNTIME_BASE + batch * PREFILL_CHUNK * (4 * d.hidden + 2 * d.intermediate + d.vocab) * 2


def parse_tokens(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    n = int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2).lower()]) if m else 0
    if n < 1:
        raise InputError(f"--context {text!r}: write a token count of at least 1, like 4096, 16k or 128k")
    return n


def parse_contexts(text: str) -> list[int]:
    """--context as typed: comma-separated token counts, at least one."""
    contexts = [parse_tokens(c) for c in text.split(",") if c.strip()]
    if not contexts:
        raise InputError(f"--context {text!r}: give at least one context length, like 4096 or 8k,32k,128k")
    return contexts


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(GiB|GB|MiB|MB|TiB|TB)?\s*", text, re.I)
    if not m:
        raise InputError(f"--gpu {text!r}: write a size like 24GiB or 80GB")
    unit = (m.group(2) or "GiB").lower()
    return int(float(m.group(1)) * {"gib": GIB, "gb": 1e9, "mib": 1024**2, "mb": 1e6, "tib": 1024**4, "tb": 1e12}[unit])


def load_config(spec: str) -> tuple[dict, str]:
    """config.json from a folder, a config file, a built-in model, or a Hub id (only that file is downloaded)."""
    if spec.startswith("builtin:"):
        from quantkit.fixtures import builtin

        spec = str(builtin(spec.split(":", 1)[1]))
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "config.json"
        if not p.is_file():
            raise InputError(f"{spec} has no config.json; pass a model folder, a config file or a Hub id")
    elif not p.exists():
        from quantkit.source import HUB_ID

        if not HUB_ID.match(spec):
            raise InputError(f"{spec}: no such folder or file; pass a model folder, a config.json or a Hub id")
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        try:
            p = Path(huggingface_hub.hf_hub_download(spec, "config.json"))
        except (OfflineModeIsEnabled, LocalEntryNotFoundError):
            raise InputError(f"{spec} is not local and the Hugging Face Hub cannot be reached; pass its config.json") from None
        except (HfHubHTTPError, OSError) as e:
            raise InputError(f"could not fetch config.json of {spec} ({e.__class__.__name__}); check the id or pass the file") from None
    try:
        cfg = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{p} is not valid JSON; pass a model's config.json") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{p} is not a JSON object; pass a model's config.json")
    cfg = cfg.get("text_config", cfg)
    missing = [k for k in arch.POSITIVE_INTS if k not in cfg]
    if missing:
        raise InputError(f"{p} lacks {', '.join(missing)}; pass a Llama-family config.json")
    try:
        arch.check_config(cfg)
    except SourceError as e:
        raise InputError(f"{p}: {e}") from None
    return cfg, str(p)


@dataclass
class Estimate:
    model: str
    format: str
    weights_bytes: int
    weights_method: str
    kv_dtype: str
    batch: int
    kv_bytes_per_token: float
    overhead_bytes: int
    contexts: list[dict]
    max_positions: int
    gpu_bytes: int | None = None
    max_context_fitting: int | None = None

    def as_dict(self) -> dict:
        return {**self.__dict__, "overhead_assumption": OVERHEAD_ASSUMPTION}


def estimate(spec: str, fmt: str | None = None, contexts: list[int] = (1024,), batch: int = 1,
             kv_dtype: str = "fp16", gpu: int | None = None) -> Estimate:
    """fmt None: the artifact's own format for an EXL2 folder, else bf16."""
    cfg, where = load_config(spec)
    folder = Path(where).parent
    if fmt is None:
        from quantkit.backends.exl2.decode import is_exl2

        fmt = "exl2" if is_exl2(folder) else "bf16"
    w, how = weight_bytes(cfg, fmt, folder)
    per_tok = kv_bytes_per_token(cfg, kv_dtype)
    ovh = overhead_bytes(cfg, batch)
    rows = []
    for c in contexts:
        kv = int(per_tok * c * batch)
        rows.append({"context": c, "weights_bytes": w, "kv_cache_bytes": kv, "overhead_bytes": ovh,
                     "total_bytes": w + kv + ovh, "fits": None if gpu is None else w + kv + ovh <= gpu})
    est = Estimate(spec, fmt, w, how, kv_dtype, batch, per_tok, ovh, rows,
                   Dims.from_config(cfg).max_positions, gpu)
    if gpu is not None:
        room = gpu - w - ovh
        est.max_context_fitting = max(0, min(int(room // (per_tok * batch)), est.max_positions or 1 << 40)) if room > 0 else 0
    return est
