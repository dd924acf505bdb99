"""Weights of any model quantkit reads, one tensor at a time, as float32 under Hugging Face names.

Each reader knows where a tensor lives and turns it back into the dense weight its runtime
multiplies by, only when asked:
- a Hugging Face checkpoint (BF16/FP16/FP32 safetensors);
- compressed-tensors (FP8, INT4 pack-quantized, ...): each module decompressed by
  compressed-tensors' own compressor, and its dynamic input quantization applied with
  compressed-tensors' own functions, as vLLM and transformers apply it;
- the AutoGPTQ and AutoAWQ INT4 layouts (read back by backends/int4/layouts.py);
- EXL2, decoded as exllamav2's reconstruct kernel does (backends/exl2/decode.py);
- GGUF, dequantized by gguf-py with llama.cpp's q/k row permutation undone by transformers'
  own tensor processor (the same steps transformers' GGUF loader takes for the whole file).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch

from quantkit.errors import InputError
from quantkit.libs import quiet_gguf
from quantkit.stio import read_header, read_tensor

Hook = Callable[[torch.nn.Module, tuple], tuple]


class Weights:
    """Dense float32 tensors by Hugging Face name; the base reads plain safetensors headers."""
    format = "Hugging Face checkpoint"
    activations = "unquantized (float32 compute)"

    path: Path

    def __init__(self, headers: dict):
        self.path = next(iter(headers.values())).path.parent if headers else Path(".")
        self._where = {name: h for h in headers.values() for name in h.tensors}
        self.size_bytes = sum(h.path.stat().st_size for h in headers.values())

    @property
    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].tensors[name].shape)

    def tensor(self, name: str) -> torch.Tensor:
        return read_tensor(self._where[name], name).float()

    def raw(self, name: str) -> torch.Tensor:
        """As stored (for writers that keep the stored dtype)."""
        return read_tensor(self._where[name], name)

    def input_hook(self, module_name: str) -> Hook | None:
        """A forward pre-hook that treats the Linear's input as the runtime does, or None."""
        return None


def headers_of(folder: Path) -> dict:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder} holds no .safetensors files; pass a folder quantkit wrote")
    return {f.name: read_header(f) for f in files}


class CompressedWeights(Weights):
    """A compressed-tensors checkpoint: every quantized module decompressed on demand."""

    def __init__(self, folder: Path, config: dict):
        from compressed_tensors.quantization import QuantizationConfig

        super().__init__(headers_of(folder))
        qc = config.get("quantization_config") or {}
        self.qconfig = QuantizationConfig.model_validate(qc)
        stored = set(self._where)
        self._quantized = sorted({n[: -len("weight_scale")] for n in stored if n.endswith("weight_scale")})
        self._stored = stored
        from quantkit import formats

        self.format = formats.config_format(config) or "compressed-tensors"
        self.activations = "unquantized (float32 compute)"
        for group in self.qconfig.config_groups.values():
            ia = group.input_activations
            if ia is not None and ia.dynamic:
                group = f" of {ia.group_size} columns" if ia.group_size else ""
                under = " under a calibrated global scale" if ia.dynamic == "local" else ""
                how = ("with vLLM's rule (scale absmax / 127)" if ia.type == "int" and ia.strategy == "token"
                       else "with compressed-tensors' own functions")
                self.activations = (f"{ia.type}{ia.num_bits} per-{ia.strategy}{group} dynamic{under} on Linear inputs, "
                                    f"applied {how}, as vLLM does")

    @property
    def names(self) -> set[str]:
        own = {p + s for p in self._quantized for s in ("weight_packed", "weight_scale", "weight_zero_point",
                                                        "weight_shape", "weight_g_idx", "weight", "input_scale",
                                                        "weight_global_scale", "input_global_scale")}
        return {n for n in self._stored if n not in own} | {p + "weight" for p in self._quantized}

    def scheme(self, prefix: str):
        name = prefix.rstrip(".")
        for group in self.qconfig.config_groups.values():
            for t in group.targets:
                if t == "Linear" or (t.startswith("re:") and re.match(t[3:], name)) or name.endswith(t):
                    return group
        raise InputError(f"{name} is quantized but no config_group of its quantization_config targets it; "
                         "the folder is damaged")

    def shape(self, name: str) -> tuple[int, ...]:
        prefix = name[: -len("weight")]
        if name.endswith("weight") and prefix in self._quantized:
            if prefix + "weight_shape" in self._stored:
                return tuple(int(v) for v in super().tensor(prefix + "weight_shape").long().tolist())
            return super().shape(name)
        return super().shape(name)

    def tensor(self, name: str) -> torch.Tensor:
        from compressed_tensors.compressors import BaseCompressor

        prefix = name[: -len("weight")]
        if not (name.endswith("weight") and prefix in self._quantized):
            return super().tensor(name)
        scheme = self.scheme(prefix)
        local = {n[len(prefix):]: read_tensor(self._where[n], n) for n in self._stored
                 if n.startswith(prefix) and "." not in n[len(prefix):]}
        local = {k: (v.float() if v.is_floating_point() and k != "weight" else v) for k, v in local.items()}
        fmt = scheme.format or self.qconfig.format
        if fmt == "nvfp4-pack-quantized":
            return _nvfp4_weight(local, scheme)
        compressor = BaseCompressor.get_value_from_registry(fmt)
        return compressor.decompress(local, scheme)["weight"].float()

    def input_hook(self, module_name: str) -> Hook | None:
        from compressed_tensors.quantization.lifecycle.forward import fake_quantize
        from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp

        prefix = module_name + "."
        if prefix not in self._quantized:
            return None
        args = self.scheme(prefix).input_activations
        if args is None:
            return None
        if args.dynamic is False:
            raise InputError(f"{module_name}: static input activations are not scored by quantkit yet; "
                             "verify a dynamic-activation or weight-only artifact")
        # NVFP4's activations are "local": per-16 scales at run time under a global scale calibrated once
        name = prefix + "input_global_scale"
        global_scale = read_tensor(self._where[name], name).float() if name in self._stored else None

        if args.type == "int" and args.strategy == "token" and args.symmetric:
            return _int8_per_token

        def hook(module, inputs):
            x = inputs[0]
            scale, zp = compute_dynamic_scales_and_zp(value=x, args=args, module=module, global_scale=global_scale)
            return (fake_quantize(x=x, scale=scale, zero_point=zp, args=args, global_scale=global_scale), *inputs[1:])

        return hook


def _int8_per_token(module, inputs):
    """INT8 per-token dynamic input quantization as vLLM's kernel does it (dynamic_scaled_int8_quant: scale
    absmax / 127, codes round-to-nearest-even of x * 127 / absmax, saturated). compressed-tensors' own fake
    quantization divides by absmax / 127.5 instead, which vLLM does not do."""
    x = inputs[0]
    absmax = x.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(absmax == 0, torch.zeros_like(absmax), 127.0 / absmax)
    q = torch.round(x * inv).clamp_(-128, 127)
    return (q * (absmax / 127.0), *inputs[1:])


def _nvfp4_weight(local: dict[str, torch.Tensor], scheme) -> torch.Tensor:
    """NVFP4 weights dequantized in float32 with compressed-tensors' own unpacking and dequantize: its
    compressor decompresses to BF16 (FP4 value x FP8 scale / global scale rounded to BF16, 0.2 % off),
    while vLLM's FP4 kernels apply the global scale in float32."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    packed = local["weight_packed"]
    m, n = packed.shape
    unpacked = unpack_fp4_from_uint8(packed, m, n * 2, dtype=torch.float32)
    return dequantize(x_q=unpacked, scale=local["weight_scale"].float(), args=scheme.weights,
                      global_scale=local["weight_global_scale"].float(), dtype=torch.float32)


class LegacyInt4Weights(Weights):
    """The AutoGPTQ or AutoAWQ GEMM layout: each module read back and dequantized (float32)."""

    def __init__(self, folder: Path, config: dict):
        from quantkit.backends.int4 import layouts

        super().__init__(headers_of(folder))
        self.qc = config.get("quantization_config") or {}
        self.reader = layouts.LEGACY_READERS[self.qc.get("quant_method")]
        self.reader.check(self.qc)
        self._prefixes = sorted({n[: n.rindex(".") + 1] for n in self._where
                                 if n.rsplit(".", 1)[-1] in self.reader.suffixes})
        if not self._prefixes:
            raise InputError(f"{folder}: config.json declares {self.reader.describe} but no tensor is quantized "
                             f"(no {', '.join(self.reader.suffixes)}); the folder is damaged")
        for p in self._prefixes:
            if p + "weight" in self._where:
                raise InputError(f"{p}weight is stored both quantized and unquantized in {folder}; the folder is damaged")
        self.format = self.reader.describe
        self.activations = f"unquantized (float32 compute, weights dequantized from the {self.reader.library} layout)"

    @property
    def names(self) -> set[str]:
        own = {p + s for p in self._prefixes for s in self.reader.suffixes}
        return {n for n in self._where if n not in own} | {p + "weight" for p in self._prefixes}

    def tensor(self, name: str) -> torch.Tensor:
        from quantkit.backends.int4 import layouts

        prefix = name[: -len("weight")]
        if name.endswith("weight") and prefix in self._prefixes:
            local = {prefix + s: read_tensor(self._where[prefix + s], prefix + s)
                     for s in self.reader.suffixes if prefix + s in self._where}
            return layouts.dequantize(self.reader.read(local, prefix, self.qc))
        return super().tensor(name)


class EXL2Weights(Weights):
    """An EXL2 folder: each quantized module decoded as exllamav2's reconstruct kernel does."""
    format = "exl2"
    activations = "unquantized (float32 compute, weights dequantized as exllamav2's reconstruct does)"

    def __init__(self, folder: Path, out_features: dict[str, int]):
        from quantkit.backends.exl2 import decode

        super().__init__(headers_of(folder))
        self._keys = set(decode.quantized_keys(self._where))
        self._out = out_features

    @property
    def names(self) -> set[str]:
        from quantkit.backends.exl2.decode import Q_NAMES

        own = {f"{k}.{n}" for k in self._keys for n in Q_NAMES}
        return {n for n in self._where if n not in own} | {f"{k}.weight" for k in self._keys}

    def tensor(self, name: str) -> torch.Tensor:
        from quantkit.backends.exl2 import decode

        key = name[: -len(".weight")]
        if name.endswith(".weight") and key in self._keys:
            return decode.module_weight(lambda n: read_tensor(self._where[n], n), set(self._where), key,
                                        self._out.get(key)).float()
        return super().tensor(name)


class GGUFWeights(Weights):
    """One .gguf file: each tensor dequantized by gguf-py, q/k rows un-permuted as transformers does."""
    format = "gguf"
    activations = "unquantized (float32 compute, weights dequantized)"

    def __init__(self, path: Path, hf_names: list[str], config: dict, num_layers: int):
        import gguf
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        from quantkit.arch import ARCHITECTURES

        with quiet_gguf():
            self._reader = gguf.GGUFReader(str(path))
        self.path = path
        self.size_bytes = path.stat().st_size
        self._tensors = {t.name: t for t in self._reader.tensors}
        a = ARCHITECTURES.get((config.get("architectures") or [""])[0])
        by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
        arch = by_name[a.gguf_arch] if a else gguf.MODEL_ARCH.LLAMA
        name_map = gguf.get_tensor_name_map(arch, num_layers)
        self._gguf_of = {}
        for hf in hf_names:
            g = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
            if g in self._tensors:
                self._gguf_of[hf] = g
        self._processor = TENSOR_PROCESSORS.get(gguf.MODEL_ARCH_NAMES[arch], TensorProcessor)(config=config)

    @property
    def names(self) -> set[str]:
        return set(self._gguf_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in reversed(self._tensors[self._gguf_of[name]].shape.tolist()))

    def tensor(self, name: str) -> torch.Tensor:
        import gguf

        g = self._gguf_of[name]
        t = self._tensors[g]
        w = gguf.dequantize(t.data, t.tensor_type)
        w = self._processor.process(weights=w, name=g).weights
        return torch.from_numpy(w.copy()).float()

    def raw(self, name: str) -> torch.Tensor:
        return self.tensor(name)
