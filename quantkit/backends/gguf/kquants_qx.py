"""numpy encoders for ggml's symmetric quant types Q3_K, Q6_K, Q4_0, Q5_0 and Q8_0,
byte-identical to llama.cpp's own quantizer (`ggml_quantize_chunk`).

Followed from ggml/src/ggml-quants.c (the llama.cpp vendored in llama-cpp-python 0.3.36):

- Q3_K: `quantize_q3_K` -> `quantize_row_q3_K_ref` (no imatrix: `make_q3_quants` with its
  coordinate-descent refinement per 16 values, 6-bit sub-scales from the largest one) or
  `quantize_row_q3_K_impl` (imatrix: `make_qx_quants` weighted by qw * sqrt(sigma2 + x^2),
  then `make_qx_quants` again over the 16 sub-scales, weighted by their weight sums).
- Q6_K: `quantize_q6_K` -> `quantize_row_q6_K_ref` / `quantize_row_q6_K_impl`
  (`make_qx_quants` per 16 values, weights x^2 or the imatrix itself; 8-bit sub-scales).
- Q4_0 / Q5_0: `quantize_q4_0` / `quantize_q5_0` -> `quantize_row_q4_0_ref` (round from the
  signed absolute maximum) or `quantize_row_q4_0_impl` (imatrix: `make_qx_quants` over 32 values,
  weights qw * sqrt(sigma2 + x^2) with sigma2 the row's mean square).
- Q8_0: `quantize_q8_0` -> `quantize_row_q8_0_ref` always: ggml ignores the imatrix.

Exactness: everything is float32, in the C's operation order (a*b*c is (a*b)*c, x/d is a
division, not a product with a reciprocal); sums the C accumulates in a loop are accumulated
position by position in the same order (`_seqsum`); `nearest_int` is emulated bit for bit
(`_nint`, the 1.5*2^23 trick, so even its out-of-range results match). ggml-quants.c lives in
libggml-base, built without -march=native, so no FMA contraction is involved.

Inputs are assumed finite (as in a sane checkpoint); NaN/inf give unspecified blocks.

Layout: blocks of values are processed "position-major" ([values per block, blocks]) so every
step is one numpy operation over all blocks of the chunk; the only Python loops run over a
block's positions or the candidate scales.
"""
from __future__ import annotations

import gguf
import numpy as np

from quantkit.backends.gguf.qmath import GROUP_MAX_EPS, MAGIC, fp16, fp16_bytes, nearest_int, seqsum

F32 = np.float32
QK_K = 256

# values per block, bytes per block
BLOCK = {"Q3_K": (256, 110), "Q6_K": (256, 210), "Q4_0": (32, 18), "Q5_0": (32, 22), "Q8_0": (32, 34)}

# Values handled per pass (whole rows, at least one): bounds the temporaries (about ten times
# this many float32s) and keeps them near the cache; 2^17..2^18 measured fastest.
_PASS_VALUES = 1 << 18


# ---------------------------------------------------------------- float helpers

def _first_absmax(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(|x| max, the signed value where |x| first reaches it) along axis 0 or 1 of a 2-D array,
    as the C's `if (ax > amax) { amax = ax; max = x[i]; }` scan starting from 0 finds them."""
    ax = np.abs(x)
    amax = ax.max(axis=axis)
    if axis == 0:  # elementwise over contiguous rows: faster than a strided argmax
        mx = np.zeros_like(amax)
        for i in range(x.shape[0] - 1, -1, -1):
            np.copyto(mx, x[i], where=ax[i] == amax)
    else:
        i = np.argmax(ax, axis=1)
        mx = x[np.arange(x.shape[0]), i]
    # the C starts from max = 0.0f and never takes a zero: an all-zero group keeps +0.0
    mx = np.where(amax > 0, mx, F32(0))
    return amax, mx


def _clamp(a: np.ndarray, lo, hi) -> np.ndarray:
    """In place: MAX(lo, MIN(hi, a)) (np.clip: one pass, faster than minimum then maximum)."""
    return np.clip(a, lo, hi, out=a)


def _div_or_zero(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """`den ? num/den : 0.0f` (den != 0)."""
    out = np.zeros(np.broadcast(num, den).shape, F32)
    np.divide(num, den, out=out, where=den != 0)
    return out


# ---------------------------------------------------------------- the scale searches

def make_qx_quants(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_qx_quants(n, nmax, x, L, rmse_type=1, qw=w)` on many groups at once.

    x, w: float32 [n, groups] (position-major); for ggml's qw=NULL pass w = x*x.
    Returns (scale float32 [groups], L int32 [n, groups] in [0, 2*nmax)).
    """
    n, g = x.shape
    amax, mx = _first_absmax(x, 0)
    zero = amax < GROUP_MAX_EPS
    mxs = np.where(zero, F32(1), mx)
    wx = w * x
    lo, hi = F32(-nmax), F32(nmax - 1)
    lf = np.empty_like(x)
    p = np.empty_like(x)

    def levels(iscale):
        # |iscale*x| <= nmax + 1 here, so nearest_int is (v + 1.5*2^23) - 1.5*2^23 in float32
        np.multiply(x, iscale, out=lf)
        np.add(lf, MAGIC, out=lf)
        np.subtract(lf, MAGIC, out=lf)
        return _clamp(lf, lo, hi)

    def trial(iscale):
        levels(iscale)
        sumlx = seqsum(np.multiply(wx, lf, out=p))
        np.multiply(w, lf, out=p)
        np.multiply(p, lf, out=p)  # (w*l)*l
        return sumlx, seqsum(p)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        best_iscale = F32(-nmax) / mxs
        sumlx, suml2 = trial(best_iscale)
        scale = _div_or_zero(sumlx, suml2)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mxs
            sumlx, suml2 = trial(iscale)
            take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if take.any():
                # the C re-derives L from this iscale; so do we, once, at the end
                best_iscale = np.where(take, iscale, best_iscale)
                scale = np.where(take, _div_or_zero(sumlx, suml2), scale)
                best = np.where(take, scale * sumlx, best)
        L = levels(best_iscale).astype(np.int32)
    L += nmax
    L[:, zero] = 0
    scale[zero] = 0
    return scale.astype(F32, copy=False), L


def make_q3_quants(x: np.ndarray, nmax: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_q3_quants(n, nmax, x, L, do_rmse=true)` on many groups at once: weights x^2,
    then up to 5 sweeps that move one value at a time to the level that most improves
    sumlx^2/suml2. x: float32 [n, groups]. Returns (scale [groups], L int32 [n, groups])."""
    n, g = x.shape
    amax, mx = _first_absmax(x, 0)
    zero = amax < GROUP_MAX_EPS
    mxs = np.where(zero, F32(1), mx)
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / mxs
        l = _clamp(nearest_int(iscale * x), -nmax, nmax - 1)  # int32 [n, g]
        lf = l.astype(F32)
        wxl = wx * lf   # w*x[i]*L[i] of the current L
        wll = w * lf * lf  # w*L[i]*L[i]
        sumlx = seqsum(wxl)
        suml2 = seqsum(wll)
        # Sweeps. A group with no change in a sweep would make none in the next either, so only
        # the groups that changed go on (compacted). Per position, the new level is computed for
        # every group; the acceptance test only for the few whose level would move.
        act = np.arange(g)
        for _ in range(5):
            if act.size == 0:
                break
            full = act.size == g
            changed = np.zeros(act.size, bool)
            sx, s2 = sumlx[act], suml2[act]
            xa, wa, wxa = (x, w, wx) if full else (x[:, act], w[:, act], wx[:, act])
            la, wxla, wlla = (l, wxl, wll) if full else (l[:, act], wxl[:, act], wll[:, act])
            for i in range(n):
                slx = sx - wxla[i]
                sl2 = s2 - wlla[i]
                new = _clamp(nearest_int(xa[i] * sl2 / slx), -nmax, nmax - 1)
                cand = np.flatnonzero((new != la[i]) & (slx > 0))
                if cand.size == 0:
                    continue
                nw = new[cand].astype(F32)
                wxc, wc = wxa[i, cand], wa[i, cand]
                dlx = wxc * nw
                dl2 = wc * nw * nw
                slx2 = slx[cand] + dlx
                sl22 = sl2[cand] + dl2
                sxc, s2c = sx[cand], s2[cand]
                ok = (sl22 > 0) & (slx2 * slx2 * s2c > sxc * sxc * sl22)
                sel = cand[ok]
                la[i, sel] = new[sel]
                wxla[i, sel] = dlx[ok]
                wlla[i, sel] = dl2[ok]
                sx[sel] = slx2[ok]
                s2[sel] = sl22[ok]
                changed[sel] = True
            if not full:
                l[:, act], wxl[:, act], wll[:, act] = la, wxla, wlla
            sumlx[act] = sx
            suml2[act] = s2
            act = act[changed]
        scale = np.zeros(g, F32)
        np.divide(sumlx, suml2, out=scale, where=suml2 > 0)
    L = l + nmax
    L[:, zero] = 0
    scale[zero] = 0
    return scale, L


def _pos_major(rows: np.ndarray, k: int) -> np.ndarray:
    """rows [..., n] float32 -> [k, n/k * rows] (value j of every k-group in row j)."""
    return np.ascontiguousarray(np.asarray(rows, F32).reshape(-1, k).T)


def _imatrix_pos_major(imatrix: np.ndarray, nrows: int, n: int, k: int) -> np.ndarray:
    """The imatrix weight of each value, laid out as `_pos_major(rows, k)`."""
    qw = np.asarray(imatrix, F32).reshape(n // k, k).T  # [k, n/k]
    return np.ascontiguousarray(np.broadcast_to(qw[:, None, :], (k, nrows, n // k)).reshape(k, -1))


def _row_sigma2(rows: np.ndarray) -> np.ndarray:
    """sum_x2/n_per_row per row, summed left to right as `quantize_row_q4_0_impl` does."""
    sq = rows * rows
    np.cumsum(sq, axis=1, out=sq)
    return sq[:, -1] / F32(rows.shape[1])


def _check(rows: np.ndarray, imatrix, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] % k:
        raise ValueError(f"rows must be [nrows, n_per_row] with n_per_row a multiple of {k}, got {rows.shape}")
    rows = np.ascontiguousarray(rows, F32)
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, F32).reshape(-1)
        if imatrix.size != rows.shape[1]:
            raise ValueError(f"imatrix has {imatrix.size} values for rows of {rows.shape[1]}")
    return rows, imatrix


def _passes(nrows: int, n: int):
    """Row ranges to handle per pass."""
    step = max(1, _PASS_VALUES // max(n, 1))
    for r in range(0, nrows, step):
        yield r, min(nrows, r + step)


def _run(enc, rows, imatrix, k, nbytes):
    rows, imatrix = _check(rows, imatrix, k)
    nrows, n = rows.shape
    out = np.empty((nrows, n // k * nbytes), np.uint8)
    # C float semantics: overflow to inf, x/0 and the like are silent there, and so here
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for a, b in _passes(nrows, n):
            out[a:b] = enc(rows[a:b], imatrix).reshape(b - a, -1)
    return out


# ---------------------------------------------------------------- Q6_K

def _q6_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    nrows, n = rows.shape
    x = _pos_major(rows, 16)  # [16, subblocks]
    w = x * x if imatrix is None else _imatrix_pos_major(imatrix, nrows, n, 16)
    scales, L = make_qx_quants(x, 32, w)
    del w
    nb = scales.size // 16
    S = scales.reshape(nb, 16)
    amax, max_scale = _first_absmax(S, 1)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-128) / np.where(zero, F32(1), max_scale)
        d = F32(1) / iscale
        sc = np.minimum(127, nearest_int(iscale[:, None] * S))  # [nb, 16]
        dd = (fp16(d)[:, None] * sc.astype(F32)).reshape(-1)  # per subblock
        nz = dd != 0
        lnew = _clamp(nearest_int(x / np.where(nz, dd, F32(1))), -32, 31) + 32
    L = np.where(nz, lnew, L)
    # L [16, subblocks] -> per superblock value order [nb, 256]
    Lb = L.T.reshape(nb, 2, 4, 32).astype(np.uint8)  # half, quarter, l
    out = np.empty((nb, 210), np.uint8)
    lo = Lb & 0xF
    out[:, :128] = (lo[:, :, 0:2] | (lo[:, :, 2:4] << 4)).reshape(nb, 128)
    hi = Lb >> 4
    out[:, 128:192] = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    out[:, 208:210] = fp16_bytes(d)
    out[zero] = 0
    return out


def quantize_q6_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q6_K blocks (210 bytes per 256 values) of float32 rows [nrows, n_per_row]; imatrix: float32
    [n_per_row] or None. As `quantize_q6_K`: `quantize_row_q6_K_ref` / `quantize_row_q6_K_impl`."""
    return _run(_q6_k, rows, imatrix, QK_K, 210)


# ---------------------------------------------------------------- Q3_K

def _q3_k(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    nrows, n = rows.shape
    x = _pos_major(rows, 16)  # [16, subblocks]
    nsub = x.shape[1]
    nb = nsub // 16
    if imatrix is None:
        scales, L = make_q3_quants(x, 4)
        S = scales.reshape(nb, 16)
        amax, max_scale = _first_absmax(S, 1)
        has = max_scale != 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            iscale = F32(-32) / np.where(has, max_scale, F32(1))
            ls = _clamp(nearest_int(iscale[:, None] * S), -32, 31) + 32
            d = np.where(has, F32(1) / iscale, F32(0))
        ls[~has] = 0
    else:
        sq = rows.reshape(-1, QK_K) * rows.reshape(-1, QK_K)
        np.cumsum(sq, axis=1, out=sq)
        sigma2 = F32(2) * sq[:, -1] / F32(QK_K)  # per superblock
        del sq
        qw = _imatrix_pos_major(imatrix, nrows, n, 16)
        w = qw * np.sqrt(np.repeat(sigma2, 16)[None, :] + x * x)
        del qw
        sw = seqsum(w)  # [subblocks]
        scales, L = make_qx_quants(x, 4, w)
        del w
        d, ls = make_qx_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 32,
                               np.ascontiguousarray(sw.reshape(nb, 16).T))
        ls = ls.T  # [nb, 16] in [0, 63]
    sc = ls.astype(np.int32) - 32
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dd = (fp16(d)[:, None] * sc.astype(F32)).reshape(-1)
        nz = dd != 0
        lnew = _clamp(nearest_int(x / np.where(nz, dd, F32(1))), -4, 3) + 4
    L = np.where(nz, lnew, L)
    Lb = L.T.reshape(nb, QK_K).astype(np.uint8)
    out = np.empty((nb, 110), np.uint8)
    high = (Lb > 3).reshape(nb, 8, 32).astype(np.uint8)  # bit b of hmask[m] <- value 32*b + m
    hm = high[:, 0]
    for b in range(1, 8):
        hm |= high[:, b] << b
    out[:, :32] = hm
    lo = (Lb & 3).reshape(nb, 2, 4, 32)
    out[:, 32:96] = (lo[:, :, 0] | (lo[:, :, 1] << 2) | (lo[:, :, 2] << 4) | (lo[:, :, 3] << 6)).reshape(nb, 64)
    ls8 = ls.astype(np.uint8)
    out[:, 96:104] = (ls8[:, :8] & 0xF) | ((ls8[:, 8:] & 0xF) << 4)
    h = (ls8 >> 4).reshape(nb, 4, 4)  # [j // 4, j % 4]
    out[:, 104:108] = h[:, 0] | (h[:, 1] << 2) | (h[:, 2] << 4) | (h[:, 3] << 6)
    out[:, 108:110] = fp16_bytes(d)
    return out


def quantize_q3_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q3_K blocks (110 bytes per 256 values) of float32 rows [nrows, n_per_row]; imatrix: float32
    [n_per_row] or None. As `quantize_q3_K`: `quantize_row_q3_K_ref` / `quantize_row_q3_K_impl`."""
    return _run(_q3_k, rows, imatrix, QK_K, 110)


# ---------------------------------------------------------------- Q4_0, Q5_0, Q8_0

def _legacy_ref(rows: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """`quantize_row_q4_0_ref` (nmax 8) / `quantize_row_q5_0_ref` (nmax 16): d = max/-nmax from
    the signed absolute maximum, q = MIN(2nmax-1, (int8_t)(x*(1/d) + nmax + 0.5)).
    Returns (d float32 [blocks], q uint8 [blocks, 32])."""
    xb = rows.reshape(-1, 32)
    _, mx = _first_absmax(xb, 1)
    d = mx / F32(-nmax)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, F32(1) / d, F32(0))
    with np.errstate(invalid="ignore", over="ignore"):
        v = xb * idv[:, None] + F32(nmax + 0.5)
    # (int8_t) of a float: truncation toward zero; x86's conversion gives 0x80000000 (low byte
    # 0) for NaN and out-of-range values
    ok = np.isfinite(v) & (np.abs(v) < F32(2 ** 31))
    q = np.where(ok, v, F32(0)).astype(np.int32).astype(np.int8)
    q = np.minimum(2 * nmax - 1, q.astype(np.int32)).astype(np.uint8)
    return d, q


def _legacy_imatrix(rows: np.ndarray, imatrix: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """`quantize_row_q4_0_impl` / `quantize_row_q5_0_impl` with quant weights: weights
    qw * sqrt(sigma2 + x^2), sigma2 = the row's sum of squares / n_per_row, then
    `make_qx_quants(32, nmax, x, L, 1, weights)`. Returns (d [blocks], q uint8 [blocks, 32])."""
    nrows, n = rows.shape
    sigma2 = _row_sigma2(rows)
    x = _pos_major(rows, 32)  # [32, blocks], blocks row by row
    qw = _imatrix_pos_major(imatrix, nrows, n, 32)
    w = qw * np.sqrt(np.repeat(sigma2, n // 32)[None, :] + x * x)
    del qw
    d, L = make_qx_quants(x, nmax, w)
    return d, np.ascontiguousarray(L.T).astype(np.uint8)


def _pack_q4_0(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], 18), np.uint8)
    out[:, :2] = fp16_bytes(d)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out


def _pack_q5_0(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], 22), np.uint8)
    out[:, :2] = fp16_bytes(d)
    out[:, 2:6] = np.packbits((q >> 4) & 1, axis=1, bitorder="little")
    out[:, 6:] = (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)
    return out


def _gguf_legacy(rows: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    # gguf's Q8_0 is byte-identical to `quantize_row_q8_0_ref`; for blocks with max |x| below
    # ~3.7e-37 both turn inf/NaN into 0 through x86's float->int conversion (silenced here)
    with np.errstate(all="ignore"):
        return gguf.quants.quantize(rows, qtype)


def _q4_0(rows, imatrix):
    if imatrix is None:
        return _pack_q4_0(*_legacy_ref(rows, 8))
    return _pack_q4_0(*_legacy_imatrix(rows, imatrix, 8))


def _q5_0(rows, imatrix):
    if imatrix is None:
        return _pack_q5_0(*_legacy_ref(rows, 16))
    return _pack_q5_0(*_legacy_imatrix(rows, imatrix, 16))


def _q8_0(rows, imatrix):
    return _gguf_legacy(rows, gguf.GGMLQuantizationType.Q8_0)


def quantize_q4_0(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q4_0 blocks (18 bytes per 32 values) of float32 rows [nrows, n_per_row]; imatrix: float32
    [n_per_row] or None. As `quantize_q4_0`."""
    return _run(_q4_0, rows, imatrix, 32, 18)


def quantize_q5_0(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q5_0 blocks (22 bytes per 32 values) of float32 rows [nrows, n_per_row]; imatrix: float32
    [n_per_row] or None. As `quantize_q5_0`."""
    return _run(_q5_0, rows, imatrix, 32, 22)


def quantize_q8_0(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q8_0 blocks (34 bytes per 32 values) of float32 rows [nrows, n_per_row]. ggml's
    `quantize_q8_0` ignores the imatrix, and so does this."""
    return _run(_q8_0, rows, None, 32, 34)


ENCODERS = {
    "Q3_K": quantize_q3_k,
    "Q6_K": quantize_q6_k,
    "Q4_0": quantize_q4_0,
    "Q5_0": quantize_q5_0,
    "Q8_0": quantize_q8_0,
}
