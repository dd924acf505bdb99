"""EXL2 tensor layout (exllamav2 0.3.2): packing, unpacking, invariants and a CPU `reconstruct`.

One quantized Linear (HF weight [out, in]) is stored as the tensors below, named
`<key>.<name>`. exllamav2 works on W_T = weight.T, [in, out]: "rows" are input
features, "columns" output features. Stored row k holds input feature perm[k],
perm = argsort(q_invperm) (module.py load_weight rebuilds q_perm that way).

| name          | dtype   | shape                              | meaning                                    |
|---------------|---------|------------------------------------|--------------------------------------------|
| `q_weight`    | int32   | [sum_g rows_g*bits_g/32, out_pad]  | packed integers q in [0, 2^b-1], act-order |
| `q_scale`     | int32   | [groups, out_pad/8]                | 4-bit scale codes, stored nibble = code-1  |
| `q_scale_max` | float16 | [groups]                           | per-group max scale                        |
| `q_groups`    | int16   | [2*groups]                         | pairs (bits, first packed row of group)    |
| `q_invperm`   | int32   | [in]                               | argsort(perm)                              |
| `bias`        | float16 | [out]                              | only if the layer has one                  |

out_pad = out rounded up to a multiple of 32 (adaptivegptq.pack pads columns with
q = 2^(b-1)); Llama-shaped layers need no padding.

Widths (pack_tensor.cu pack_columns_kernel): inside one group and one column the
values form a little-endian bit stream of uint32 words, value i at bit offset
i*bits (it may straddle two words); consecutive words go to consecutive rows.

| bits | values per chunk | words per chunk | zero point |
|------|------------------|-----------------|------------|
| 8    | 4                | 1               | 128        |
| 6    | 16               | 3               | 32         |
| 5    | 32               | 5               | 16         |
| 4    | 8                | 1               | 8          |
| 3    | 32               | 3               | 4          |
| 2    | 16               | 1               | 2          |

Groups are laid out in descending width, and the reconstruct/GEMM kernels
(q_matrix.cu) walk each width's region in 32-row steps (16 for 2-bit), so each
region must be a multiple of 32 rows and every group boundary must fall on a step.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

WIDTHS = (8, 6, 5, 4, 3, 2)
REQUIRED = ("q_weight", "q_scale", "q_scale_max", "q_groups", "q_invperm")
DTYPES = {
    "q_weight": torch.int32,
    "q_scale": torch.int32,
    "q_scale_max": torch.float16,
    "q_groups": torch.int16,
    "q_invperm": torch.int32,
    "bias": torch.float16,
}
# Safetensors dtypes exllamav2's loader reads (stloader.py convert_dtype); anything else raises there.
LOADER_DTYPES = ("I32", "I16", "F16", "BF16", "F32")


def _chunk(bits: int) -> tuple[int, int]:
    """(values, words) of the smallest whole-word chunk of `bits`-bit values."""
    values = 32 // math.gcd(32, bits)
    return values, values * bits // 32


def padded_columns(out_features: int) -> int:
    """Columns as stored: out rounded up to a multiple of 32 (adaptivegptq.pack)."""
    return out_features + (-out_features % 32)


def pack_columns(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack (rows, cols) integers in [0, 2^bits) column-wise into int32 (rows*bits//32, cols).

    Mirrors pack_tensor.cu pack_columns_kernel: a little-endian bit stream per column.
    """
    if bits not in WIDTHS:
        raise ValueError(f"{bits}-bit: EXL2 widths are {WIDTHS}")
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"pack_columns wants a 2-D array, got shape {q.shape}")
    rows, cols = q.shape
    if rows * bits % 32:
        raise ValueError(f"{rows} rows of {bits}-bit values do not fill whole 32-bit words")
    if q.size and (q.min() < 0 or q.max() >= 1 << bits):
        raise ValueError(f"values outside [0, {(1 << bits) - 1}] for {bits}-bit packing")
    values, words = _chunk(bits)
    v = q.astype(np.uint64).reshape(rows // values, values, cols)
    out = np.zeros((rows // values, words, cols), dtype=np.uint64)
    for i in range(values):
        word, shift = divmod(i * bits, 32)
        out[:, word] |= v[:, i] << np.uint64(shift)
        if shift + bits > 32:  # straddles into the next word
            out[:, word + 1] |= v[:, i] >> np.uint64(32 - shift)
    out &= np.uint64(0xFFFFFFFF)
    return out.astype(np.uint32).view(np.int32).reshape(rows * bits // 32, cols)


def unpack_columns(packed: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """Inverse of pack_columns: int32 (rows*bits//32, cols) -> int32 (rows, cols) in [0, 2^bits)."""
    if bits not in WIDTHS:
        raise ValueError(f"{bits}-bit: EXL2 widths are {WIDTHS}")
    packed = np.asarray(packed)
    if rows * bits % 32 or packed.shape[0] != rows * bits // 32:
        raise ValueError(f"{packed.shape[0]} packed rows do not hold {rows} {bits}-bit values")
    cols = packed.shape[1]
    values, words = _chunk(bits)
    w = packed.astype(np.int32).view(np.uint32).astype(np.uint64).reshape(rows // values, words, cols)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((rows // values, values, cols), dtype=np.uint64)
    for i in range(values):
        word, shift = divmod(i * bits, 32)
        x = w[:, word] >> np.uint64(shift)
        if shift + bits > 32:
            x = x | (w[:, word + 1] << np.uint64(32 - shift))
        out[:, i] = x & mask
    return out.reshape(rows, cols).astype(np.int32)


def pack_scales(codes: np.ndarray) -> np.ndarray:
    """Scale codes (groups, cols) in 1..16 -> int32 (groups, cols//8); nibble i of word j = column 8j+i,
    stored as code-1 (pack_tensor.cu pack_rows_4_kernel)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] % 8:
        raise ValueError(f"scale codes must be (groups, cols) with cols a multiple of 8, got {codes.shape}")
    if codes.size and (codes.min() < 1 or codes.max() > 16):
        raise ValueError("scale codes outside 1..16")
    nib = (codes.astype(np.uint32) - 1).reshape(codes.shape[0], -1, 8)
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    return np.bitwise_or.reduce(nib << shifts, axis=2).astype(np.uint32).view(np.int32)


def unpack_scales(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_scales: int32 (groups, cols//8) -> codes (groups, cols) in 1..16
    (matrix_view.cuh MatrixView_q4_row.item gives the nibble, dq_scale adds 1)."""
    w = np.asarray(packed).astype(np.int32).view(np.uint32)
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    nib = (w[:, :, None] >> shifts) & np.uint32(0xF)
    return nib.reshape(w.shape[0], -1).astype(np.int32) + 1


def pack_linear(
    q: np.ndarray,
    groups: Sequence[tuple[int, int]],
    codes: np.ndarray,
    scale_max: np.ndarray,
    invperm: np.ndarray,
    bias: np.ndarray | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One Linear's EXL2 tensors (names without the key prefix), as adaptivegptq.AdaptiveGPTQ.pack writes them.

    q: (in, out) stored integers, rows in act-order (row k = input feature perm[k]);
    groups: (bits, rows) per group in storage order; codes: (groups, out) in 1..16;
    scale_max: (groups,) float, rounded once to float16; invperm: (in,) = argsort(perm).
    Columns are padded to a multiple of 32 with q = 2^(b-1) and code 1 when out needs it.
    """
    q = np.asarray(q)
    codes = np.asarray(codes)
    rows_in, out = q.shape
    if sum(r for _, r in groups) != rows_in:
        raise ValueError(f"group rows sum to {sum(r for _, r in groups)}, q has {rows_in} rows")
    if codes.shape != (len(groups), out):
        raise ValueError(f"codes shape {codes.shape}, expected {(len(groups), out)}")
    pad = padded_columns(out) - out
    packed, qgroups, row, qrow = [], [], 0, 0
    for bits, rows in groups:
        g = q[row:row + rows]
        if pad:
            g = np.concatenate([g, np.full((rows, pad), 1 << (bits - 1), dtype=g.dtype)], axis=1)
        p = pack_columns(g, bits)
        packed.append(p)
        qgroups += [bits, qrow]
        row += rows
        qrow += p.shape[0]
    if pad:
        codes = np.concatenate([codes, np.ones((codes.shape[0], pad), dtype=codes.dtype)], axis=1)
    t = {
        "q_weight": torch.from_numpy(np.concatenate(packed, axis=0)),
        "q_scale": torch.from_numpy(pack_scales(codes)),
        "q_scale_max": torch.as_tensor(np.asarray(scale_max)).reshape(-1).to(torch.float16),
        "q_groups": torch.tensor(qgroups, dtype=torch.int16),
        "q_invperm": torch.as_tensor(np.asarray(invperm)).to(torch.int32),
    }
    if bias is not None:
        t["bias"] = torch.as_tensor(bias).to(torch.float16)
    return t


def group_rows(q_groups: torch.Tensor | np.ndarray, q_weight_rows: int) -> list[tuple[int, int, int]]:
    """(bits, first packed row, rows) per group, as QMatrix's constructor and make_group_map derive them:
    rows = (next offset - offset) * 32 / bits; the last group runs to the end of q_weight."""
    g = np.asarray(q_groups).astype(np.int64).reshape(-1, 2)
    out = []
    for i, (bits, off) in enumerate(g):
        end = g[i + 1, 1] if i + 1 < len(g) else q_weight_rows
        out.append((int(bits), int(off), int((end - off) * 32 // bits) if bits > 0 else 0))
    return out


def invariants(t: Mapping[str, torch.Tensor], in_features: int, out_features: int) -> list[str]:
    """Everything exllamav2's loader and kernels assume of one Linear's tensors; [] when all hold."""
    bad: list[str] = []
    missing = [n for n in REQUIRED if n not in t]
    if missing:
        return [f"missing tensors: {', '.join(missing)}"]
    extra = sorted(set(t) - set(DTYPES))
    if extra:
        bad.append(f"unexpected tensors: {', '.join(extra)}")
    for name, dtype in DTYPES.items():
        if name in t and t[name].dtype != dtype:
            bad.append(f"{name} dtype {t[name].dtype}, expected {dtype}")
    if bad:
        return bad

    qw, qs, qsm, qg, inv = (t[n] for n in REQUIRED)
    cols = padded_columns(out_features)
    if qg.ndim != 1 or qg.numel() == 0 or qg.numel() % 2:
        return bad + [f"q_groups shape {tuple(qg.shape)}: expected [2*groups] with groups >= 1"]
    n_groups = qg.numel() // 2
    if qw.ndim != 2 or qw.shape[1] != cols:
        bad.append(f"q_weight shape {tuple(qw.shape)}: expected [packed rows, {cols}]")
    if tuple(qs.shape) != (n_groups, cols // 8):
        bad.append(f"q_scale shape {tuple(qs.shape)}, expected {(n_groups, cols // 8)}")
    if tuple(qsm.shape) != (n_groups,):
        bad.append(f"q_scale_max shape {tuple(qsm.shape)}, expected ({n_groups},)")
    elif not torch.isfinite(qsm).all():
        bad.append("q_scale_max holds NaN or inf")
    if "bias" in t and tuple(t["bias"].shape) != (out_features,):
        bad.append(f"bias shape {tuple(t['bias'].shape)}, expected ({out_features},)")
    if tuple(inv.shape) != (in_features,):
        bad.append(f"q_invperm shape {tuple(inv.shape)}, expected ({in_features},)")
    elif not torch.equal(torch.sort(inv.long()).values, torch.arange(in_features)):
        bad.append("q_invperm is not a permutation of range(in_features)")
    if in_features > 65536:
        bad.append(f"{in_features} input features: the kernels index rows with uint16 (at most 65536)")

    pairs = qg.long().reshape(-1, 2)
    widths = pairs[:, 0].tolist()
    offsets = pairs[:, 1].tolist()
    if any(b not in WIDTHS for b in widths):
        return bad + [f"q_groups widths {sorted(set(widths) - set(WIDTHS))} not among {WIDTHS}"]
    if any(a < b for a, b in zip(widths, widths[1:])):
        bad.append(f"q_groups widths not in descending order: {widths}")
    if offsets[0] != 0:
        bad.append(f"first q_groups offset is {offsets[0]}, expected 0")
    if any(o < 0 or o > 32767 for o in offsets):
        bad.append("q_groups offsets outside int16 range")
    if any(a >= b for a, b in zip(offsets, offsets[1:])):
        bad.append(f"q_groups offsets not strictly increasing: {offsets}")
    if bad:
        return bad

    # Rows per group as QMatrix's constructor derives them: from offset differences, the last
    # group taking the rest of the input features (height - row).
    region: dict[int, int] = {}
    row = 0
    for i, (bits, off) in enumerate(zip(widths, offsets)):
        if i + 1 < n_groups:
            if (offsets[i + 1] - off) * 32 % bits:
                bad.append(f"group {i}: {offsets[i + 1] - off} packed rows are not a whole number of {bits}-bit rows")
            rows = (offsets[i + 1] - off) * 32 // bits
        else:
            rows = in_features - row
            if rows <= 0 or rows * bits % 32:
                bad.append(f"last group: {rows} rows left of {in_features} input features")
            elif off + rows * bits // 32 != qw.shape[0]:
                bad.append(f"q_weight has {qw.shape[0]} packed rows, the groups need {off + rows * bits // 32}")
        step = 16 if bits == 2 else 32
        if rows % step:
            bad.append(f"group {i}: {rows} rows, not a multiple of {step} (the kernels step {step} rows)")
        region[bits] = region.get(bits, 0) + rows
        row += rows
    for bits, rows in region.items():
        if rows % 32:
            bad.append(f"{bits}-bit region holds {rows} rows, not a multiple of 32")
    return bad


def _hmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp16 x fp16 -> fp16 as CUDA's __hmul: the product is exact in fp32, then rounded once."""
    return (a.float() * b.float()).half()


def scales(t: Mapping[str, torch.Tensor], prescale: float = 1.0) -> torch.Tensor:
    """float16 [groups, out_pad] scales: make_q_matrix (ext.py) does q_scale_max *= prescale/256 on
    the fp16 tensor, then dq_scale (qdq_util.cuh) gives fp16((nibble+1)^2) * that, in fp16."""
    qsm = (t["q_scale_max"].float() * (prescale / 256)).half()
    codes = torch.from_numpy(unpack_scales(t["q_scale"].numpy()))
    return _hmul((codes * codes).half(), qsm[:, None])


def reconstruct(t: Mapping[str, torch.Tensor], in_features: int, out_features: int,
                prescale: float = 1.0) -> torch.Tensor:
    """HF-layout float16 weight [out, in], bit for bit what q_matrix.cu reconstruct_kernel writes
    (transposed back; bias stays separate). Each dequant_Xbit kernel gives q - 2^(b-1) exactly in
    fp16, then __hmul2 by the group's scale. prescale is the head's logit_scale (1 for Llama)."""
    bad = invariants(t, in_features, out_features)
    if bad:
        raise ValueError("; ".join(bad))
    qw = t["q_weight"].numpy()
    s = scales(t, prescale)
    stored = torch.empty((in_features, qw.shape[1]), dtype=torch.float16)
    row = 0
    for g, (bits, off, rows) in enumerate(group_rows(t["q_groups"], qw.shape[0])):
        q = unpack_columns(qw[off:off + rows * bits // 32], bits, rows)
        dq = torch.from_numpy(q - (1 << (bits - 1))).half()
        stored[row:row + rows] = _hmul(dq, s[g][None, :])
        row += rows
    w_t = stored[t["q_invperm"].long()]  # feature f sits at stored row invperm[f]
    return w_t[:, :out_features].T.contiguous()
