"""EXL2's quantizer: exllamav2's scale search and its GPTQ, in torch (CPU or CUDA).

Mirrors exllamav2 0.3.2's conversion/adaptivegptq.py and the CUDA kernels it
calls (cuda/quantize.cu: quantize_err, fused_quantize_adjust, vv_mul_sub):

- find_params: per group, per output column, a 4-bit scale code
  c = clamp(round(sqrt(base/max) * 16), 1, 16) with scale (c/16)^2 * max, then
  one factor p over 97 points in [0.70, 1.20] for the whole group, minimising
  sum |w - dequant(quant(w))|^3.5. The final scale is what the loader rebuilds
  in fp16: fp16(c^2) * fp16(fp16(max * p) / 256).
- quantize: act-order GPTQ, group by group in storage order, each group's
  scales found on the already error-corrected rows; every dequantised value is
  computed in fp16 as the kernels do, so `quant` equals what exllamav2's
  reconstruct gives for the packed integers.

The arithmetic runs in float32 as on the GPU; sums are ordered differently
(the GPU adds with atomics), so a near tie in the p search can resolve
differently: the stored format and the dequantisation rule are the same.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources

import torch

from quantkit.backends.exl2.qparams import QParams

NORM = 3.5
MIN_P, MAX_P, P_GRID = 0.70, 1.20, 96
PERCDAMP = 0.12
PRESCALE = 1 / 256


@dataclass
class GroupParams:
    code: torch.Tensor  # [cols] int16, 1..16
    scale_max: torch.Tensor  # [] float16, as stored
    scale: torch.Tensor  # [cols] float32, exactly representable in fp16


def dequant_scale(code: torch.Tensor, scale_max_fp16: torch.Tensor) -> torch.Tensor:
    """fp16(code^2) * fp16(scale_max * 1/256), rounded to fp16 once: the loader's dq_scale."""
    qsm = (scale_max_fp16.float() * PRESCALE).half()
    return ((code.float() * code.float()).half().float() * qsm.float()).half().float()


def _p_errors_eager(x: torch.Tensor, scale: torch.Tensor, ps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """sum |clamp(rint(x/(s p)), lo, hi) * s p - x|^3.5 for each p in ps (exllamav2's quantize_err;
    lo = -zero, hi = maxq - zero, as tensors so one compiled kernel serves every bit width)."""
    sp = scale[None, None, :] * ps[:, None, None]
    d = (torch.minimum(torch.maximum(torch.round(x[None] / sp), lo), hi) * sp - x[None]).abs()
    return (d * d * d * d.sqrt()).sum(dim=(1, 2))  # |d|^3.5 without pow


_compiled = None


def _p_errors(x: torch.Tensor, scale: torch.Tensor, qzero: float, maxq: float) -> torch.Tensor:
    """The 97-point search's errors. torch.compile fuses the eight elementwise steps into one
    pass (docs/performance.md, EXL2); without a working compiler it runs eagerly."""
    global _compiled
    ps = torch.arange(P_GRID + 1, dtype=torch.float32, device=x.device) / P_GRID
    ps = MIN_P * (1 - ps) + MAX_P * ps
    lo = torch.tensor(-qzero, dtype=torch.float32, device=x.device)
    hi = torch.tensor(maxq - qzero, dtype=torch.float32, device=x.device)
    if _compiled is None:
        try:
            fn = torch.compile(_p_errors_eager, dynamic=True)
            fn(x[:2], scale, ps, lo, hi)
            _compiled = fn
        except Exception:  # no C++ compiler, unsupported platform: same numbers, slower
            _compiled = _p_errors_eager
    # column slabs keep the [97, rows, cols] intermediate (which the kernel may materialise) near 50 MiB
    cols = max(8, (1 << 17) // max(x.shape[0], 1))
    if _compiled is _p_errors_eager:
        cols = max(1, cols // 8)
    total = torch.zeros(P_GRID + 1, dtype=torch.float32, device=x.device)
    for c in range(0, x.shape[1], cols):
        total += _compiled(x[:, c : c + cols], scale[c : c + cols], ps, lo, hi)
    return total


def find_params(x: torch.Tensor, bits: int) -> GroupParams:
    """Scales for one group x [rows, cols] (float32)."""
    maxq = 2**bits - 1
    qzero = (maxq + 1) / 2
    xmax = x.abs().amax(dim=0) + 1e-12
    base = xmax / (maxq / 2)
    qsm = base.max()
    code = torch.clamp(torch.round(torch.sqrt(base / qsm) * 16), 1, 16)
    scale_tw = (code / 16) ** 2 * qsm
    err = _p_errors(x, scale_tw, qzero, maxq)
    best = int(torch.argmin(err))
    pif = best / P_GRID
    p = MAX_P * pif + MIN_P * (1 - pif)
    scale_max = (qsm * p).half()
    code16 = code.to(torch.int16)
    return GroupParams(code16, scale_max, dequant_scale(code16, scale_max))


def quantize_rows(x: torch.Tensor, scale: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers 0..2^b-1, their fp16 dequantisation as float32) for rows x with per-column scale."""
    maxq = 2**bits - 1
    qzero = (maxq + 1) // 2
    q = torch.clamp(torch.round(x / scale) + qzero, 0, maxq)
    deq = ((q - qzero) * scale).half().float()  # (q - z) and scale are fp16-exact: one rounding, as __hmul
    return q, deq


class Hessian:
    """sum X^T X over calibration rows, divided by the number of rows (exllamav2's add_batch)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.h = torch.zeros((dim, dim), dtype=torch.float32, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.h.device, torch.float32)
        self.h.addmm_(x.T, x)
        self.rows += 1


@dataclass
class Prepared:
    """Act-order permutation and the upper Cholesky factor of the damped inverse Hessian
    (shared by the Linears that read the same input: q/k/v, gate/up)."""
    perm: torch.Tensor  # [in] int64
    hinv: torch.Tensor  # [in, in] float32, upper triangular


def prepare(hess: Hessian) -> Prepared:
    h = hess.h / hess.rows if hess.rows else torch.eye(hess.h.shape[0], device=hess.h.device)
    perm = torch.argsort(torch.diag(h), descending=True, stable=True)
    h = h[perm][:, perm]
    damp = torch.clamp(PERCDAMP * torch.mean(torch.diag(h)), min=1e-5)
    idx = torch.arange(h.shape[0], device=h.device)
    for _ in range(10):
        h[idx, idx] += damp
        try:
            l = torch.linalg.cholesky(h)
            hinv = torch.cholesky_inverse(l)
            if torch.isnan(hinv).any():
                raise RuntimeError("NaN in inverse")
            hinv = torch.linalg.cholesky(hinv, upper=True)
            return Prepared(perm, hinv.contiguous())
        except (RuntimeError, torch.linalg.LinAlgError):
            continue  # more damping, as exllamav2 does
    raise ValueError("Hessian is not invertible even after damping")


@dataclass
class Quantized:
    """One Linear in EXL2 terms (rows in act-order)."""
    qp: QParams
    q: torch.Tensor  # [in, out] int16, stored integers
    groups: list[tuple[int, int]]  # (bits, rows)
    code: torch.Tensor  # [groups, out] int16
    scale_max: torch.Tensor  # [groups] float16
    invperm: torch.Tensor  # [in] int64
    weight: torch.Tensor  # [out, in] float32: the dequantised weight in HF layout


_C_LIB: ctypes.CDLL | None | bool = None


def _c_rows():
    """The C inner loop (gptq_rows.c), compiled once into quantkit's cache; None without a C compiler.
    QUANTKIT_EXL2_C=0 forces the torch loop."""
    global _C_LIB
    if _C_LIB is None:
        _C_LIB = False
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if cc and os.environ.get("QUANTKIT_EXL2_C", "1") != "0":
            from quantkit.paths import cache_dir

            src = resources.files("quantkit.backends.exl2").joinpath("gptq_rows.c").read_bytes()
            lib = cache_dir("kernels") / f"gptq_rows-{hashlib.sha256(src).hexdigest()[:16]}-{os.uname().machine}.so"
            try:
                if not lib.exists():
                    c_file = lib.with_suffix(".c")
                    c_file.write_bytes(src)
                    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
                    subprocess.run([cc, "-O3", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-o", str(tmp),
                                    str(c_file), "-lm"], check=True, capture_output=True, timeout=120)
                    os.replace(tmp, lib)
                f = ctypes.CDLL(str(lib)).gptq_group
                f.restype = None
                f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_float, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_void_p]
                _C_LIB = f
            except (OSError, subprocess.SubprocessError):
                _C_LIB = False
    return _C_LIB or None


def _group_rows_torch(w, hinv, a, b, scale, bits, qint, quant, err) -> None:
    for c in range(a, b):
        if c > a:  # this group's earlier errors, applied to row c just before it is quantized
            w[c].sub_(hinv[a:c, c] @ err[a:c])
        q, deq = quantize_rows(w[c], scale, bits)
        qint[c] = q.to(torch.int16)
        quant[c] = deq
        err[c] = (w[c] - deq) / hinv[c, c]


def _group_rows(w, hinv, a, b, scale, bits, qint, quant, err) -> None:
    fn = _c_rows() if w.device.type == "cpu" else None
    if fn is None:
        _group_rows_torch(w, hinv, a, b, scale, bits, qint, quant, err)
        return
    maxq = 2**bits - 1
    scale = scale.contiguous()
    fn(w.data_ptr(), hinv.data_ptr(), w.shape[0], w.shape[1], a, b, scale.data_ptr(), float((maxq + 1) // 2),
       float(maxq), qint.data_ptr(), quant.data_ptr(), err.data_ptr())


def gptq(weight: torch.Tensor, prep: Prepared, qp: QParams, c_loop: bool = True) -> Quantized:
    """Quantize weight [out, in] with act-order GPTQ and the bit mix qp."""
    w = weight.to(prep.hinv.device, torch.float32).T[prep.perm].contiguous()  # [in, out], act-order rows
    hinv = prep.hinv.contiguous()
    rows, cols = w.shape
    qint = torch.empty((rows, cols), dtype=torch.int16, device=w.device)
    quant = torch.empty_like(w)
    err = torch.empty_like(w)
    groups = qp.groups(rows)
    codes, smax = [], []
    rows_fn = _group_rows if c_loop else _group_rows_torch
    a = 0
    for bits, n in groups:
        b = a + n
        gp = find_params(w[a:b], bits)
        codes.append(gp.code)
        smax.append(gp.scale_max)
        rows_fn(w, hinv, a, b, gp.scale, bits, qint, quant, err)
        if b < rows:
            w[b:].sub_(hinv[a:b, b:].T @ err[a:b])
        a = b
    invperm = torch.argsort(prep.perm)
    return Quantized(qp, qint, groups, torch.stack(codes), torch.stack(smax), invperm, quant[invperm].T.contiguous())
