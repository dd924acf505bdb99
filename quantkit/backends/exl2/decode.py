"""Read an EXL2 folder back into a float16 HF state dict, on CPU.

Every safetensors file in the folder is read, as exllamav2's config does (it globs
*.safetensors; the converter writes `output.safetensors` or
`output-0000i-of-0000N.safetensors`). A module whose `<key>.q_weight` exists is
quantized (module.py load_weight checks exactly that); its `<key>.q_*` tensors
are decoded with pack.reconstruct into `<key>.weight` and its `<key>.bias`
passes through. Every other tensor (embeddings, norms) passes through as stored.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from quantkit.backends.exl2 import pack
from quantkit.errors import InputError

Q_NAMES = ("q_weight", "q_scale", "q_scale_max", "q_groups", "q_invperm", "q_perm")
# torch dtypes of the safetensors dtypes exllamav2's loader reads (pack.LOADER_DTYPES).
LOADER_DTYPES = (torch.int32, torch.int16, torch.float16, torch.bfloat16, torch.float32)


def is_exl2(folder: Path) -> bool:
    """config.json declares quantization_config.quant_method == "exl2"."""
    cfg = Path(folder) / "config.json"
    if not (Path(folder).is_dir() and cfg.is_file()):
        return False
    try:
        qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    except (ValueError, OSError, AttributeError):
        return False
    return isinstance(qc, dict) and qc.get("quant_method") == "exl2"


def tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder} holds no .safetensors files; pass an EXL2 output folder")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                if name in where:
                    raise InputError(f"{name} is stored twice ({where[name].name}, {f.name}); the folder is damaged")
                where[name] = f
    return where


def quantized_keys(names: Mapping[str, Path] | list[str]) -> list[str]:
    """Module keys that carry `<key>.q_weight`."""
    return sorted(n[: -len(".q_weight")] for n in names if n.endswith(".q_weight"))


def read_exl2(folder: Path, out_features: Mapping[str, int] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of the HF state dict: quantized modules as float16 `<key>.weight`.

    out_features: per module key, when columns were padded to 32 (bias length, else q_weight columns, by default).
    """
    where = tensor_files(folder)
    keys = set(quantized_keys(where))
    owned = {f"{k}.{n}" for k in keys for n in (*Q_NAMES, "bias")}
    handles = {}

    def get(name: str) -> torch.Tensor:
        f = where[name]
        if f not in handles:
            handles[f] = safe_open(f, framework="pt")
        x = handles[f].get_tensor(name)
        if x.dtype not in LOADER_DTYPES:
            raise InputError(f"{name} is {x.dtype}; exllamav2 reads only I32, I16, F16, BF16 and F32 tensors")
        return x

    for name in sorted(where):
        if name not in owned:
            yield name, get(name)
    for key in sorted(keys):
        yield f"{key}.weight", module_weight(get, where, key, (out_features or {}).get(key))
        if f"{key}.bias" in where:
            yield f"{key}.bias", get(f"{key}.bias")


def module_weight(get, names, key: str, out_f: int | None = None) -> torch.Tensor:
    """One quantized module's float16 weight, from its `<key>.q_*` tensors (get(name) reads one).
    out_f: its output features when columns were padded to 32 (bias length, else q_weight columns, by default)."""
    t = {n: get(f"{key}.{n}") for n in (*Q_NAMES, "bias") if f"{key}.{n}" in names and n != "q_perm"}
    for n, x in t.items():
        if x.dtype not in LOADER_DTYPES:
            raise InputError(f"{key}.{n} is {x.dtype}; exllamav2 reads only I32, I16, F16, BF16 and F32 tensors")
    in_f = t["q_invperm"].numel() if "q_invperm" in t else 0
    if out_f is None:
        out_f = t["bias"].numel() if "bias" in t else t["q_weight"].shape[1]
    bad = pack.invariants(t, in_f, out_f)
    if bad:
        raise InputError(f"{key}: not a valid EXL2 layer ({'; '.join(bad)})")
    return pack.reconstruct(t, in_f, out_f)


def dequantized_state_dict(folder: Path, out_features: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """read_exl2 collected into a dict."""
    return dict(read_exl2(folder, out_features))
