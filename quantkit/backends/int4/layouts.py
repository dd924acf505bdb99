"""INT4 checkpoint layouts: compressed-tensors pack-quantized, AutoGPTQ, AutoAWQ GEMM.

All three hold the same integers q (0..15 unsigned), zero points z and scales s
per group of `g` input columns; the dequantized weight is W[o, i] = s[o, G(i)] *
(q[o, i] - z[o, G(i)]) in every layout. They differ only in how those numbers are
laid out (table in docs/formats.md; `WRITERS` below). The repacking reads
compressed-tensors' tensors (unpacked with compressed-tensors' own helper) and
writes the legacy layout from the same numbers; `read_gptq` / `read_awq` invert
the writers exactly (`LEGACY_READERS`, used by verify's loader). Why written here: neither
AutoGPTQ nor AutoAWQ runs with transformers 5, and llm-compressor writes only
compressed-tensors. Readers used as checks in tests: auto-round's CPU
QuantLinear for the AutoGPTQ layout, compressed-tensors' AutoAWQConverter for
the AutoAWQ layout.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from quantkit import output
from quantkit.errors import InputError, OptionsError

BITS = 4
PER_INT32 = 32 // BITS
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ GEMM: nibble k of a word holds column 8j + AWQ_ORDER[k]
GPTQ_ZERO_OFFSET = 1  # AutoGPTQ (checkpoint_format "gptq") stores each zero point minus 1

def _pack_rows(x: torch.Tensor, order: list[int] | None = None) -> torch.Tensor:
    """Pack unsigned 4-bit values along the last dim, 8 per int32, element k at bits 4k
    (or element order[k] at bits 4k)."""
    n, m = x.shape
    x = x.to(torch.int64).reshape(n, m // PER_INT32, PER_INT32)
    if order is not None:
        x = x[:, :, order]
    shifts = torch.arange(0, 32, BITS, dtype=torch.int64)
    words = (x << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_rows(words: torch.Tensor, order: list[int] | None = None) -> torch.Tensor:
    """Inverse of `_pack_rows`: int32 words [n, m/8] -> [n, m] values 0..15."""
    n, w = words.shape
    shifts = torch.arange(0, 32, BITS, dtype=torch.int64)
    x = ((words.to(torch.int64) & 0xFFFFFFFF)[:, :, None] >> shifts) & (2**BITS - 1)  # [n, w, k]: nibble k
    if order is not None:
        x = x[:, :, [order.index(j) for j in range(PER_INT32)]]  # nibble k holds element order[k]
    return x.reshape(n, w * PER_INT32).to(torch.int32)


@dataclass
class Module:
    """One quantized Linear as plain numbers."""
    q: torch.Tensor  # [out, in] int, 0..15
    z: torch.Tensor  # [out, groups] int, 0..15
    s: torch.Tensor  # [out, groups]
    g_idx: torch.Tensor  # [in] int: group of each input column


def read_ct(tensors: dict[str, torch.Tensor], prefix: str, group_size: int) -> Module:
    """Unpack one compressed-tensors pack-quantized module."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    shape = torch.Size(tensors[prefix + "weight_shape"].tolist())
    q = unpack_from_int32(tensors[prefix + "weight_packed"], BITS, shape).to(torch.int32) + 8
    s = tensors[prefix + "weight_scale"]
    if prefix + "weight_zero_point" in tensors:
        z = unpack_from_int32(tensors[prefix + "weight_zero_point"], BITS, s.shape, packed_dim=0).to(torch.int32) + 8
    else:
        z = torch.full(s.shape, 8, dtype=torch.int32)
    g_idx = tensors.get(prefix + "weight_g_idx")
    if g_idx is None:
        g_idx = torch.arange(shape[1], dtype=torch.int32) // group_size
    return Module(q, z, s, g_idx.to(torch.int32))


def dequantize(m: Module) -> torch.Tensor:
    g = m.g_idx.long()
    return (m.q - m.z[:, g]).float() * m.s[:, g].float()


def _fp16(s: torch.Tensor, name: str) -> torch.Tensor:
    h = s.to(torch.float16)
    if not torch.equal(h.to(s.dtype), s):
        raise OptionsError(f"{name}: a scale does not fit float16 exactly, which the legacy layouts store; "
                           "use {format=compressed-tensors}")
    return h


def write_gptq(prefix: str, m: Module) -> dict[str, torch.Tensor]:
    if bool((m.z == 0).any()):  # z - 1 would wrap to 15; only symmetric weights (z = 8) are written
        raise OptionsError(f"{prefix}: zero point 0 cannot be stored in the AutoGPTQ layout; "
                           "use {format=awq} or compressed-tensors")
    return {
        prefix + "qweight": _pack_rows(m.q).T.contiguous(),  # packed along in: [in/8, out]
        prefix + "qzeros": _pack_rows((m.z - GPTQ_ZERO_OFFSET).T.contiguous()),  # AutoGPTQ stores z - 1
        prefix + "scales": _fp16(m.s.T.contiguous(), prefix + "scales"),
        prefix + "g_idx": m.g_idx.clone(),
    }


def write_awq(prefix: str, m: Module) -> dict[str, torch.Tensor]:
    return {
        prefix + "qweight": _pack_rows(m.q.T.contiguous(), AWQ_ORDER),
        prefix + "qzeros": _pack_rows(m.z.T.contiguous(), AWQ_ORDER),
        prefix + "scales": _fp16(m.s.T.contiguous(), prefix + "scales"),
    }


def _tensor(tensors: dict[str, torch.Tensor], name: str, dtypes: tuple, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    t = tensors.get(name)
    if t is None:
        raise InputError(f"{name} is missing; the folder is damaged or was not written in this layout")
    if t.dtype not in dtypes or t.dim() != (len(shape) if shape else 2) or (shape and tuple(t.shape) != shape):
        want = "x".join(map(str, shape)) if shape else "2-d"
        raise InputError(f"{name} is {str(t.dtype).removeprefix('torch.')} {'x'.join(map(str, t.shape))}, the layout needs "
                         f"{'/'.join(str(d).removeprefix('torch.') for d in dtypes)} {want}; the folder is damaged")
    return t


INTS = (torch.int32,)
SCALES = (torch.float16, torch.bfloat16, torch.float32)


def _check_groups(prefix: str, g_idx: torch.Tensor, groups: int) -> None:
    if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups):
        raise InputError(f"{prefix}g_idx names groups outside 0..{groups - 1}; the folder is damaged")


def read_gptq(tensors: dict[str, torch.Tensor], prefix: str) -> Module:
    """One AutoGPTQ-layout module (inverse of `write_gptq`): qweight [in/8, out] packed along in,
    qzeros [groups, out/8] holding z - 1, scales [groups, out], g_idx [in]."""
    qweight = _tensor(tensors, prefix + "qweight", INTS)
    in_f, out_f = qweight.shape[0] * PER_INT32, qweight.shape[1]
    g_idx = _tensor(tensors, prefix + "g_idx", INTS, (in_f,))
    groups = _tensor(tensors, prefix + "scales", SCALES).shape[0]
    scales = _tensor(tensors, prefix + "scales", SCALES, (groups, out_f))
    if out_f % PER_INT32:
        raise InputError(f"{prefix}qweight has {out_f} output columns, not a multiple of {PER_INT32}; the folder is damaged")
    qzeros = _tensor(tensors, prefix + "qzeros", INTS, (groups, out_f // PER_INT32))
    _check_groups(prefix, g_idx, groups)
    q = _unpack_rows(qweight.T.contiguous())
    z = _unpack_rows(qzeros).T.contiguous() + GPTQ_ZERO_OFFSET
    return Module(q, z, scales.T.contiguous(), g_idx.to(torch.int32))


def read_awq(tensors: dict[str, torch.Tensor], prefix: str, group_size: int) -> Module:
    """One AutoAWQ GEMM module (inverse of `write_awq`): qweight [in, out/8], qzeros [groups, out/8],
    both packed along out in AWQ_ORDER; scales [groups, out]; groups are contiguous runs of group_size."""
    qweight = _tensor(tensors, prefix + "qweight", INTS)
    in_f, out_f = qweight.shape[0], qweight.shape[1] * PER_INT32
    if group_size <= 0 or in_f % group_size:
        raise InputError(f"{prefix}qweight has {in_f} input columns, which group_size {group_size} does not divide; "
                         "config.json does not match the tensors")
    groups = in_f // group_size
    scales = _tensor(tensors, prefix + "scales", SCALES, (groups, out_f))
    qzeros = _tensor(tensors, prefix + "qzeros", INTS, (groups, out_f // PER_INT32))
    q = _unpack_rows(qweight, AWQ_ORDER).T.contiguous()
    z = _unpack_rows(qzeros, AWQ_ORDER).T.contiguous()
    g_idx = torch.arange(in_f, dtype=torch.int32) // group_size
    return Module(q, z, scales.T.contiguous(), g_idx)


@dataclass(frozen=True)
class LegacyReader:
    """How to read one legacy layout back: the tensors of a module, the reader, and the
    quantization_config values it reads (key -> accepted values; first key present wins)."""
    layout: str  # key in backend.LAYOUTS
    library: str  # whose layout it is
    suffixes: tuple[str, ...]  # tensor names of one module, after its prefix
    read: Callable[[dict, str, dict], Module]  # (tensors, prefix, quantization_config)
    requires: tuple[tuple[tuple[str, ...], object, tuple], ...]  # ((config keys), default, accepted values)

    @property
    def describe(self) -> str:
        from quantkit.backends.int4.backend import LAYOUTS as NAMES

        return NAMES[self.layout]

    def check(self, qc: dict) -> None:
        """Refuse, in one line, a quantization_config this reader does not read."""
        for keys, default, accepted in self.requires:
            value = next((qc[k] for k in keys if qc.get(k) is not None), default)
            norm = value.lower() if isinstance(value, str) else value
            if norm not in accepted:
                raise InputError(f"quantization_config {keys[0]}={value!r}: quantkit reads the {self.library} layout with "
                                 f"{keys[0]} {' or '.join(map(repr, accepted))} only")


LEGACY_READERS = {  # keyed by config.json quantization_config.quant_method
    "gptq": LegacyReader("gptq", "AutoGPTQ", ("qweight", "qzeros", "scales", "g_idx"),
                         lambda t, p, qc: read_gptq(t, p),
                         ((("bits",), None, (BITS,)),
                          (("checkpoint_format", "format"), "gptq", ("gptq",)))),  # gptq_v2 stores z, not z - 1
    "awq": LegacyReader("awq", "AutoAWQ", ("qweight", "qzeros", "scales"),
                        lambda t, p, qc: read_awq(t, p, qc.get("group_size", 0)),
                        ((("bits",), None, (BITS,)),
                         (("version", "format"), "gemm", ("gemm",)),  # GEMV packs differently
                         (("zero_point",), True, (True,)))),
}


def gptq_config(params: dict) -> dict:
    return {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": BITS, "group_size": params["group_size"],
            "sym": params["symmetric"], "desc_act": False,
            "damp_percent": params.get("damping", 0.01), "true_sequential": True, "static_groups": False,
            "lm_head": False}


def awq_config(params: dict) -> dict:
    return {"quant_method": "awq", "version": "gemm", "bits": BITS, "group_size": params["group_size"],
            "zero_point": True, "modules_to_not_convert": None}


@dataclass
class Writer:
    write_module: Callable[[str, Module], dict] | None
    config: Callable[[dict], dict] | None


WRITERS = {  # layout (backend.LAYOUTS) -> how it is written from compressed-tensors' tensors
    "compressed-tensors": Writer(None, None),
    "gptq": Writer(write_gptq, gptq_config),
    "awq": Writer(write_awq, awq_config),
}


def quantized_prefixes(tensors: dict) -> list[str]:
    return [k[: -len("weight_packed")] for k in tensors if k.endswith(".weight_packed")]


def repack(folder: Path, layout: str, params: dict) -> None:
    """Rewrite a compressed-tensors pack-quantized folder in place into `layout`."""
    lay = WRITERS[layout]
    if lay.write_module is None:
        return
    weight_map = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors = load_file(f)
        out = {}
        for prefix in quantized_prefixes(tensors):
            m = read_ct(tensors, prefix, params["group_size"])
            for k in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx"):
                tensors.pop(prefix + k, None)
            out.update(lay.write_module(prefix, m))
        out.update(tensors)
        tmp = f.with_name(f.name + ".tmp")
        save_file(out, tmp, metadata={"format": "pt"})
        tmp.replace(f)
        weight_map.update({k: f.name for k in out})
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(weight_map.items()))
        output.write_text_atomic(index, json.dumps(data, indent=2) + "\n")
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = lay.config(params)
    output.write_text_atomic(cfg_path, json.dumps(cfg, indent=2) + "\n")
