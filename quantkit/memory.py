"""Memory a model needs, from config.json alone: weights as a format stores them, KV cache, overhead."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from quantkit import arch
from quantkit.arch import Dims, TensorSpec, tensors
from quantkit.errors import InputError, SourceError

GIB = 1024**3

# KV cache element sizes in bytes.
KV_DTYPES = {"fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
RUNTIME_BASE = 512 * 1024**2  # CUDA context, allocator slack
PREFILL_CHUNK = 512
OVERHEAD_ASSUMPTION = (
    "0.5 GiB for the CUDA context and allocator, plus activations of one 512-token prefill "
    "chunk per sequence (hidden x 4 + intermediate x 2 + vocab logits, 2 bytes each)"
)


FORMAT_CHOICES = ("use bf16, fp16, fp8, int4-g128[:asym|gptq|awq], exl2:BPW[:HEAD_BITS] or gguf:TYPE "
                  "(or a compressed-tensors scheme: fp8-block, nvfp4a16, mxfp4, mxfp4a16, w8a8, w8a16)")
PLAIN_KINDS = ("bf16", "fp16")  # every tensor 2 bytes; the quantized kinds are answered by their backends


@dataclass(frozen=True)
class Model:
    """vram's view of a checkpoint, handed to a backend's weight_bytes."""

    config: dict  # config.json (its text_config for a multimodal one)
    tensors: list[TensorSpec]  # arch.tensors(config)
    folder: Path | None = None  # the folder it was read from, if any
    spec: str = ""  # the format as the user wrote it (vram's --format), for OptionError("format", spec, ...)


def split_format(fmt: str) -> tuple[str, str]:
    """`KIND[:ARGS]` -> (kind, args), lower-cased. A kind whose first argument follows a dash keeps
    the dash in its name: int4-g128:awq is kind "int4-" with args "g128:awq"."""
    head, _, args = fmt.lower().partition(":")
    kind, dash, first = head.partition("-")
    if dash:
        return kind + dash, f"{first}:{args}" if args else first
    return kind, args


def weight_bytes(cfg: dict, fmt: str, folder: Path | None = None) -> tuple[int, str]:
    """(bytes, how they are counted) for a format spec: bf16 | fp16 | fp8 | int4-gG[:LAYOUT] | exl2[:BPW[:HEAD]] | gguf:TYPE.

    The quantized kinds are answered by the backend that claims them (its vram_kinds)."""
    from quantkit.backends.registry import for_vram_kind

    specs = tensors(cfg)
    kind, args = split_format(fmt)
    if kind in PLAIN_KINDS:
        return sum(math.prod(t.shape) * 2 for t in specs), "every tensor 2 bytes"
    backend = for_vram_kind(kind)
    if backend is None:
        raise InputError(f"--format {fmt}: {FORMAT_CHOICES}")
    return backend.weight_bytes(kind, args, Model(cfg, specs, folder, fmt))


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
        from quantkit.hub_ids import looks_like_repo_id

        if not looks_like_repo_id(spec):
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
