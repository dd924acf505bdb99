"""What a folder or file is: format, architecture, parameters, bytes per dtype, manifest."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from quantkit import formats
from quantkit.errors import InputError
from quantkit.manifest import read_dict
from quantkit.stio import read_header

# Tensors that carry quantization parameters rather than model parameters.
AUX_SUFFIXES = ("_scale", "_zero_point", ".qzeros", ".scales", ".g_idx", "_global_scale", ".q_scale", ".q_scale_max", ".q_groups", ".q_invperm", ".q_perm", ".weight_shape", "_g_idx")
# Packed integer weights: parameters per stored element (4-bit values in int32).
PACKED = {".weight_packed": 8, ".qweight": 8}


def inspect_path(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".gguf":
        return _gguf(path)
    if path.is_file() and path.suffix == ".safetensors":
        return {"path": str(path), "kind": "safetensors file", **_tensor_stats([path])}
    if path.is_file():
        raise InputError(f"{path}: quantkit reads checkpoint folders, .safetensors and .gguf files")
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file() and ggufs:
        return {"path": str(path), "kind": "folder of GGUF files", "files": [_gguf(g) for g in ggufs], "manifest": read_dict(path)}
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json and no .gguf file; pass a checkpoint or artifact folder")
    config = json.loads((path / "config.json").read_text())
    shards = sorted(path.glob("*.safetensors"))
    stats = _tensor_stats(shards)
    fmt = formats.config_format(config)
    if fmt is None:
        floats = [d for d in ("BF16", "F16", "F32") if stats["bytes_per_dtype"].get(d)]
        fmt = f"{'/'.join(floats) or 'unknown'} Hugging Face checkpoint"
    return {
        "path": str(path),
        "kind": "checkpoint folder",
        "format": fmt,
        "architecture": (config.get("architectures") or ["unknown"])[0],
        "quantization_config": config.get("quantization_config"),
        **stats,
        "manifest": read_dict(path),
    }


def _tensor_stats(files: list[Path]) -> dict:
    by_dtype: Counter = Counter()
    params = 0
    n = 0
    for f in files:
        for t in read_header(f).tensors.values():
            by_dtype[t.dtype] += t.nbytes
            n += 1
            if not t.name.endswith(AUX_SUFFIXES):
                params += t.numel * next((k for suf, k in PACKED.items() if t.name.endswith(suf) and t.dtype == "I32"), 1)
    return {"tensors": n, "parameters": params, "bytes_per_dtype": dict(by_dtype), "weight_bytes": sum(by_dtype.values())}


def _gguf(path: Path) -> dict:
    from gguf import GGUFReader

    try:
        r = GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/struct errors on bad files
        raise InputError(f"{path.name} is not a readable GGUF file ({e.__class__.__name__}); re-create it") from None
    arch_field = r.fields.get("general.architecture")
    arch = bytes(arch_field.parts[-1]).decode() if arch_field else "unknown"
    by_type: Counter = Counter()
    params = 0
    for t in r.tensors:
        by_type[t.tensor_type.name] += int(t.n_bytes)
        params += int(t.n_elements)
    return {"path": str(path), "kind": "gguf file", "format": "gguf", "architecture": arch, "tensors": len(r.tensors),
            "parameters": params, "bytes_per_dtype": dict(by_type), "weight_bytes": sum(by_type.values())}
