"""The compressed-tensors schemes quantkit writes, as data: one row per preset (compressed-tensors'
PRESET_SCHEMES names), what it stores, how its activations run, who runs it natively, and its bytes.

Imports nothing heavy: the card, vram, inspect and `run --check` read it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scheme:
    name: str  # compressed-tensors preset
    command: str  # the quantkit command that writes it
    method: str  # manifest "method"
    suffix: str  # default output folder: <model>-<suffix>
    title: str  # card title
    weights: str  # what the weights hold
    activations: str  # what happens to a Linear's input at run time (verify does the same)
    native: str  # GPUs and runtimes that run it natively, and the fallback elsewhere
    weight_bits: int  # bits per weight
    scale_every: int | None  # weights per scale (None: one per output row)
    scale_bytes: int  # bytes per scale
    calibrated: bool = False  # needs calibration text (not data-free)

    @property
    def fp4(self) -> bool:
        return self.weight_bits == 4 and self.name.startswith(("NVFP4", "MXFP4"))

    def linear_bytes(self, rows: int, cols: int) -> int:
        """Bytes of one quantized Linear weight with its scales (and a global scale where it has one)."""
        n = rows * cols
        scales = rows if self.scale_every is None else -(-n // self.scale_every)
        return n * self.weight_bits // 8 + scales * self.scale_bytes + (4 if self.name.startswith("NVFP4") else 0)


FP8_NATIVE = ("FP8 matmuls on compute capability 8.9 and newer (Ada, Hopper, Blackwell); on Turing and Ampere "
              "it runs the weights weight-only through its FP8 Marlin kernel.")
NVFP4_NATIVE = ("FP4 tensor cores on Blackwell (B200, GB200, RTX 50xx; compute capability 10.0 and 12.0); "
                "on Hopper and Ampere it runs the weights weight-only (W4A16 through its FP4 Marlin kernel).")
MXFP4_NATIVE = ("vLLM: MXFP4 on Blackwell's FP4 tensor cores (compute capability 10.0); elsewhere weight-only "
                "through its MXFP4 Marlin path where the model's kernels support it (gpt-oss).")
INT8_NATIVE = ("INT8 tensor cores (W8A8) from Turing on (compute capability 7.5: T4, A100, L4, H100); "
               "W8A16 through its Marlin kernel from Ampere on.")

SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("FP8_DYNAMIC", "fp8", "fp8-dynamic", "FP8-Dynamic", "FP8-dynamic (compressed-tensors)",
           "FP8 (E4M3) weights with one scale per output channel",
           "FP8 (E4M3), one scale per token computed at run time", FP8_NATIVE, 8, None, 2),
    Scheme("FP8_BLOCK", "fp8", "fp8-block", "FP8-Block", "FP8-block (compressed-tensors)",
           "FP8 (E4M3) weights with one scale per 128 x 128 block (DeepSeek-V3 style)",
           "FP8 (E4M3), one scale per 128 input columns of each token, computed at run time", FP8_NATIVE, 8, 128 * 128, 2),
    Scheme("NVFP4A16", "nvfp4", "nvfp4a16", "NVFP4A16", "NVFP4A16 (compressed-tensors, weight-only)",
           "FP4 (E2M1) weights, one FP8 (E4M3) scale per 16 weights and one FP32 global scale per tensor "
           "(shared by q/k/v and by gate/up)",
           "none: inputs stay in the compute dtype (BF16)", NVFP4_NATIVE, 4, 16, 1),
    Scheme("MXFP4", "mxfp4", "mxfp4", "MXFP4", "MXFP4 (compressed-tensors, OCP microscaling)",
           "FP4 (E2M1) weights, one power-of-two (E8M0) scale per 32 weights",
           "FP4 (E2M1), one power-of-two scale per 32 input columns of each token, computed at run time",
           MXFP4_NATIVE, 4, 32, 1),
    Scheme("MXFP4A16", "mxfp4", "mxfp4a16", "MXFP4A16", "MXFP4A16 (compressed-tensors, weight-only)",
           "FP4 (E2M1) weights, one power-of-two (E8M0) scale per 32 weights",
           "none: inputs stay in the compute dtype (BF16)", MXFP4_NATIVE, 4, 32, 1),
    Scheme("W8A16", "int8", "int8-w8a16", "W8A16", "INT8 W8A16 (compressed-tensors, weight-only)",
           "INT8 weights, symmetric, one scale per 128 weights of a row (round-to-nearest)",
           "none: inputs stay in the compute dtype (BF16)", INT8_NATIVE, 8, 128, 2),
    Scheme("W8A8", "int8", "int8-w8a8", "W8A8", "INT8 W8A8 (compressed-tensors)",
           "INT8 weights, symmetric, one scale per output channel (round-to-nearest)",
           "INT8, symmetric, one scale per token computed at run time", INT8_NATIVE, 8, None, 2),
)}


FP4_TRANSFORMERS_NOTE = ("transformers reads the compressed-tensors `quantization_config` through the `compressed-tensors` "
                        "package, on CPU too, with `dtype=\"auto\"` (BF16): with transformers 5 and compressed-tensors "
                        "0.19 the FP4 weights decompress to BF16, so `dtype=torch.float32` fails at the first matmul.")


def for_command(command: str) -> list[Scheme]:
    return [s for s in SCHEMES.values() if s.command == command]


def for_method(method: str) -> Scheme | None:
    return next((s for s in SCHEMES.values() if s.method == method), None)
