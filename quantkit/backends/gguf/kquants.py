"""numpy encoders for ggml's Q4_K, Q5_K, Q2_K (with and without an importance matrix)
and the importance-matrix variants of Q4_1 and Q5_1, block for block identical to
llama.cpp's `ggml_quantize_chunk` (ggml/src/ggml-quants.c).

What llama.cpp does, and what is mirrored here:

- `quantize_q4_K` / `quantize_q5_K` / `quantize_q2_K` take the reference path
  (`quantize_row_*_K_ref`: per sub-block `make_qkx2_quants`, then the sub-block
  scales and mins rounded linearly to 6 or 4 bits against the super-block maximum)
  when no importance matrix is given, and `quantize_row_*_K_impl` otherwise
  (per sub-block `make_qkx3_quants` with weights ``imatrix * sqrt(sigma2 + x^2)``,
  sub-block scales and mins searched by `make_qp_quants`). With an imatrix,
  sigma2 comes from the 256 values of the super-block (``2*sum(x^2)/256`` for
  Q4_K/Q5_K, ``sum(x^2)/256`` for Q2_K).
- `quantize_q4_1` / `quantize_q5_1` with an imatrix run `make_qkx3_quants` on each
  32-value block with weights ``imatrix * sqrt(sigma2 + x^2)``, where sigma2 is
  ``sum(x^2)/n_per_row`` over the *whole row*; the levels of the search are stored
  as they are (no requantization against the fp16 scale).
- Everything is float32 with no fused multiply-add (ggml-quants.c sits in
  ggml-base, which is built without -march=native). Sums that C accumulates in a
  loop are accumulated here in the same order (`seqsum`), products keep C's
  left-to-right association, and divisions stay divisions.
- In `make_qkx2_quants` / `make_qkx3_quants` a better candidate also replaces the
  *min* the following candidates are computed from (C updates ``min`` inside the
  search loop); this is reproduced.

Arrays inside the searches are position-major ([values per block, blocks]) so that
every C loop over a block's positions becomes a loop, or an axis-0 reduction, over
contiguous rows of blocks.
"""
from __future__ import annotations

import functools

import numpy as np

from quantkit.backends.gguf.qmath import GROUP_MAX_EPS, fp16, fp16_bytes, nearest_int, seqsum

F32 = np.float32
QK_K = 256

# Values processed per internal step: keeps the search's temporaries in cache.
CHUNK_VALUES = 1 << 18


# ---------------------------------------------------------------- primitives


def _quiet(fn):
    """Run an encoder with numpy's float warnings off: inf and nan arise exactly where C
    computes them too (a scale of 0, an fp16 overflow) and are resolved the same way."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


def _first_extreme(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Where the extreme r (over axis 0) is zero, the zero C's running ``<`` or ``>``
    keeps: the first one, with its sign (np.min / np.max may return either)."""
    z = np.flatnonzero(r == 0)
    if z.size:
        sub = x[:, z]
        first = np.argmax(sub == 0, axis=0)
        r[z] = sub[first, np.arange(z.size)]
    return r


def first_min(x: np.ndarray) -> np.ndarray:
    """Min over axis 0 as C's ``if (x[i] < min) min = x[i]`` finds it (sign of a zero included)."""
    return _first_extreme(x, x.min(axis=0))


def first_max(x: np.ndarray) -> np.ndarray:
    """Max over axis 0 as C's ``if (x[i] > max) max = x[i]`` finds it (sign of a zero included)."""
    return _first_extreme(x, x.max(axis=0))


def _levels(x, mn, iscale, fn, out):
    """out = clamp(nearest_int(iscale * (x - mn)), 0, nmax) as float32. rint is C's nearest_int
    here: |iscale * (x - mn)| stays far below 2^22 (it is about nmax at the block's max, and a
    searched min moves only a few steps below the smallest weighted value)."""
    np.subtract(x, mn, out=out)
    out *= iscale
    np.rint(out, out=out)
    np.clip(out, F32(0), fn, out=out)
    return out


def _weighted_error(diff, w, use_mad):
    """sum_i w[i] * (|diff| or diff^2), in C's order; overwrites diff."""
    if use_mad:
        np.abs(diff, out=diff)
    else:
        diff *= diff
    diff *= w
    return seqsum(diff)


def make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool = False):
    """`make_qkx2_quants` / `make_qkx3_quants` (identical when weights are given) on many blocks.

    x, w: float32 [n, nblocks], one column per block. Returns (L float32 [n, nblocks] with
    levels 0..nmax, scale [nblocks], the_min [nblocks]), the_min being C's ``*the_min``
    (minus the min: the block decodes as scale*L - the_min).
    """
    n, m = x.shape
    fn = F32(nmax)
    mn = first_min(x)
    mx = x.max(axis=0)
    mn[mn > 0] = F32(0)
    mn0 = mn.copy()
    sum_w = seqsum(w, zero_start=False)
    t = np.multiply(w, x)
    sum_x = seqsum(t, zero_start=False)
    degen = mx == mn
    u = np.empty_like(x)
    v = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fn / (mx - mn)
        scale = F32(1) / iscale
        _levels(x, mn, iscale, fn, t)
        np.multiply(t, scale, out=u)
        u += mn
        u -= x
        best = _weighted_error(u, w, use_mad)
        # L is rebuilt at the end from the (iscale, min) pair that produced the best levels.
        best_iscale = iscale.copy()
        best_mn = mn.copy()
        for step in range(nstep + 1 if nstep >= 1 else 0):
            f = F32(F32(rmin) + F32(rdelta) * F32(step)) + fn
            iscale = f / (mx - mn)
            _levels(x, mn, iscale, fn, t)           # Laux
            np.multiply(w, t, out=u)                # w*l
            sum_l = seqsum(u)
            np.multiply(u, t, out=v)
            sum_l2 = seqsum(v)
            np.multiply(u, x, out=v)
            sum_xl = seqsum(v)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min[pos] = F32(0)
                this_scale[pos] = sum_xl[pos] / sum_l2[pos]
            np.multiply(t, this_scale, out=u)
            u += this_min
            u -= x
            cur = _weighted_error(u, w, use_mad)
            upd = (D > 0) & (cur < best)
            if upd.any():
                best[upd] = cur[upd]
                best_iscale[upd] = iscale[upd]
                best_mn[upd] = mn[upd]
                scale[upd] = this_scale[upd]
                mn[upd] = this_min[upd]
        L = _levels(x, best_mn, best_iscale, fn, t)
    if degen.any():
        scale[degen] = 0
        L[:, degen] = 0
        mn[degen] = mn0[degen]
    return L, scale, -mn


def make_qp_quants(x: np.ndarray, w: np.ndarray, nmax: int):
    """`make_qp_quants` on many groups: x, w float32 [n, ngroups] (x >= 0: the sub-block
    scales or mins of a super-block, w their weight sums). Returns (scale [ngroups],
    L uint8 [n, ngroups])."""
    n, m = x.shape
    fn = F32(nmax)
    mx = np.zeros(m, F32)
    for i in range(n):  # MAX(max, x[i]) as C evaluates it
        mx = np.where(mx > x[i], mx, x[i])
    zero = mx < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fn / mx
        L0 = (nearest_int(iscale * x) & 0xFF).astype(F32)
        scale = F32(1) / iscale
        d = x - scale * L0
        best = seqsum(w * d * d)
        for k in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_k = (F32(0.1) * F32(k) + fn) / mx
            scale_k = F32(1) / iscale_k
            lk = np.minimum(nearest_int(iscale_k * x), nmax).astype(F32)
            d = x - scale_k * lk
            mse = seqsum(w * d * d)
            upd = mse < best
            best = np.where(upd, mse, best)
            iscale = np.where(upd, iscale_k, iscale)
        li = np.minimum(nearest_int(iscale * x), nmax)
        lf = li.astype(F32)
        L = (li & 0xFF).astype(F32)
        sumlx = seqsum(w * x * lf)
        suml2 = seqsum(w * lf * lf)
        # A pass that changes nothing leaves the state as it was, so running all five
        # passes on every group equals C's early exit.
        for _ in range(5):
            for i in range(n):
                wi, xi, Li = w[i], x[i], L[i]
                wx = wi * xi
                slx = sumlx - wx * Li
                sl2 = suml2 - wi * Li * Li
                ok = (slx > 0) & (sl2 > 0)
                if not ok.any():
                    continue
                nl = np.minimum(nearest_int(xi * sl2 / slx), nmax)
                nlf = nl.astype(F32)
                ok &= nlf != Li
                slx = slx + wx * nlf
                sl2 = sl2 + wi * nlf * nlf
                ok &= slx * slx * suml2 > sumlx * sumlx * sl2
                if ok.any():
                    L[i] = np.where(ok, (nl & 0xFF).astype(F32), Li)
                    sumlx = np.where(ok, slx, sumlx)
                    suml2 = np.where(ok, sl2, suml2)
        out = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    out[zero] = 0
    L[:, zero] = 0
    return out, L.astype(np.uint8)


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of a Q4_K/Q5_K block from 6-bit scales and mins [nb, 8]
    (values as C holds them in uint8 before packing)."""
    ls = ls.astype(np.int32)
    lm = lm.astype(np.int32)
    q = np.zeros((ls.shape[0], 12), np.int32)
    q[:, 0:4] = ls[:, 0:4]
    q[:, 4:8] = lm[:, 0:4]
    q[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    q[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    q[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return (q & 0xFF).astype(np.uint8)


def unpack_scale_min_k4(q: np.ndarray):
    """`get_scale_min_k4` for all 8 sub-blocks: (scale, min) uint8 [nb, 8]."""
    q = q.astype(np.int32)
    sc = np.empty((q.shape[0], 8), np.int32)
    mn = np.empty((q.shape[0], 8), np.int32)
    sc[:, 0:4] = q[:, 0:4] & 63
    mn[:, 0:4] = q[:, 4:8] & 63
    sc[:, 4:8] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    mn[:, 4:8] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return sc.astype(np.uint8), mn.astype(np.uint8)


def _requantize(xt, L, d, dm, nmax):
    """Levels against the stored scales: where d != 0, L = clamp(nearest_int((x + dm) / d)).
    xt, L: [n, nblocks]; d, dm: float32 [nblocks]."""
    nz = d != 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = xt + dm
        t /= d
    li = np.clip(nearest_int(t), 0, nmax).astype(F32)
    np.copyto(L, li, where=nz)
    return L


# ---------------------------------------------------------------- shared structure


def _rows(rows, block):
    rows = np.ascontiguousarray(rows, dtype=F32)
    if rows.ndim != 2 or rows.shape[1] % block:
        raise ValueError(f"rows must be [nrows, n_per_row] with n_per_row a multiple of {block}; got {rows.shape}")
    return rows


def _imatrix(imatrix, n):
    if imatrix is None:
        return None
    qw = np.ascontiguousarray(imatrix, dtype=F32).reshape(-1)
    if qw.shape[0] != n:
        raise ValueError(f"imatrix has {qw.shape[0]} values for rows of {n}")
    return qw


def _superblocks(rows, imatrix, block_bytes, fn):
    """Run fn(xs [b, 256], qw [b, 256] or None) -> uint8 [b, block_bytes] over all
    super-blocks, a chunk at a time."""
    rows = _rows(rows, QK_K)
    nrows, n = rows.shape
    qw = _imatrix(imatrix, n)
    nsb = n // QK_K
    xs = rows.reshape(-1, QK_K)
    out = np.empty((xs.shape[0], block_bytes), np.uint8)
    step = max(1, CHUNK_VALUES // QK_K)
    qsb = None if qw is None else qw.reshape(nsb, QK_K)
    for a in range(0, xs.shape[0], step):
        b = min(a + step, xs.shape[0])
        w = None if qsb is None else qsb[np.arange(a, b) % nsb]
        out[a:b] = fn(xs[a:b], w)
    return out.reshape(nrows, nsb * block_bytes)


def _sub_t(xs, sub):
    """[b, 256] -> position-major [sub, b*256/sub] (column = (super-block, sub-block))."""
    return np.ascontiguousarray(xs.reshape(-1, sub).T)


def _imatrix_weights(xs, xt, qw, sigma2, sub):
    """Per-value weights qw[col] * sqrt(sigma2 + x^2) (sub-block major, as _sub_t lays them out)
    and their sum per sub-block, transposed to [sub-blocks per super-block, super-blocks]."""
    per = QK_K // sub
    w = xt * xt
    w += np.repeat(sigma2, per)
    np.sqrt(w, out=w)
    w *= _sub_t(qw, sub)
    return w, seqsum(w).reshape(xs.shape[0], per).T.copy()


def _sb_sum_x2(xs):
    """Per super-block ``for l in 0..255: s += x[l]*x[l]`` -> [b]."""
    return seqsum(np.ascontiguousarray((xs * xs).T))


def _scales_6bit(max_v, v):
    """Q4_K/Q5_K reference: MIN(63, (uint8) nearest_int(63/max * v)), 0 when max <= 0."""
    with np.errstate(divide="ignore"):
        inv = np.where(max_v > 0, F32(63) / max_v, F32(0)).astype(F32)
    return np.minimum(nearest_int(inv[:, None] * v) & 0xFF, 63)


def _pos_max(v):
    """C's running ``if (v > m) m = v`` from m = 0 over axis 1."""
    m = v.max(axis=1)
    return np.where(m > 0, m, F32(0)).astype(F32)


def _qp_scales_mins(scales, mins, sw, nmax):
    """`make_qp_quants` of each super-block's sub-block scales and of its mins (one call on
    both). scales, mins: [b*nsub] (super-block major); sw: [nsub, b].
    Returns (d [b], dmin [b], Ls [b, nsub], Lm [b, nsub])."""
    nsub, b = sw.shape
    x = np.concatenate([scales.reshape(b, nsub).T, mins.reshape(b, nsub).T], axis=1)
    dm, L = make_qp_quants(np.ascontiguousarray(x), np.concatenate([sw, sw], axis=1), nmax)
    return dm[:b], dm[b:], L[:, :b].T, L[:, b:].T


def _k4_blocks(xs, qw, nmax, ref_search, impl_clamp63):
    """Super-blocks of Q4_K (nmax 15) or Q5_K (nmax 31): d, dmin [b], scales [b, 12], L [b, 256]."""
    b = xs.shape[0]
    xt = _sub_t(xs, 32)
    if qw is None:
        sum_x2 = seqsum(xt * xt)
        av_x = np.sqrt(sum_x2 / F32(32))
        w = np.abs(xt)
        w += av_x
        L, scales, mins = make_qkx_quants(xt, w, nmax, *ref_search)
        scales = scales.reshape(b, 8)
        mins = mins.reshape(b, 8)
        max_scale = _pos_max(scales)
        max_min = _pos_max(mins)
        q = pack_scale_min_k4(_scales_6bit(max_scale, scales), _scales_6bit(max_min, mins))
        d = fp16(max_scale / F32(63))
        dmin = fp16(max_min / F32(63))
    else:
        w, sw = _imatrix_weights(xs, xt, qw, F32(2) * _sb_sum_x2(xs) / F32(QK_K), 32)
        L, scales, mins = make_qkx_quants(xt, w, nmax, -0.9, 0.05, 36)
        d_block, m_block, ls, lm = _qp_scales_mins(scales, mins, sw, 63)
        if impl_clamp63:
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
        q = pack_scale_min_k4(ls, lm)
        d = fp16(d_block)
        dmin = fp16(m_block)
    sc, m = unpack_scale_min_k4(q)
    dd = (d[:, None] * sc).reshape(-1)
    dm = (dmin[:, None] * m).reshape(-1)
    L = _requantize(xt, L, dd, dm, nmax)
    Lb = L.T.reshape(b, QK_K).astype(np.uint8)
    return d, dmin, q, Lb


# ---------------------------------------------------------------- Q4_K, Q5_K, Q2_K


def _q4_k(xs, qw):
    d, dmin, q, L = _k4_blocks(xs, qw, 15, (-1.0, 0.1, 20), False)
    L = L.reshape(-1, 4, 2, 32)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([fp16_bytes(d), fp16_bytes(dmin), q, qs], axis=1)


def _q5_k(xs, qw):
    d, dmin, q, L = _k4_blocks(xs, qw, 31, (-0.5, 0.1, 15), True)
    L = L.reshape(-1, 4, 2, 32)
    lo = L & 15
    hi = L >> 4
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    qh = np.zeros((L.shape[0], 32), np.uint8)
    for g in range(4):
        qh |= (hi[:, g, 0] << (2 * g)) | (hi[:, g, 1] << (2 * g + 1))
    return np.concatenate([fp16_bytes(d), fp16_bytes(dmin), q, qh, qs], axis=1)


def _q2_k(xs, qw):
    b = xs.shape[0]
    xt = _sub_t(xs, 16)
    if qw is None:
        w = np.abs(xt)
        L, scales, mins = make_qkx_quants(xt, w, 3, -0.5, 0.1, 15, use_mad=True)
        scales = scales.reshape(b, 16)
        mins = mins.reshape(b, 16)
        max_scale = _pos_max(scales)
        max_min = _pos_max(mins)
        q4 = F32(15)
        with np.errstate(divide="ignore"):
            isc = np.where(max_scale > 0, q4 / max_scale, F32(0)).astype(F32)
            imn = np.where(max_min > 0, q4 / max_min, F32(0)).astype(F32)
        lsc = np.where(max_scale[:, None] > 0, nearest_int(isc[:, None] * scales), 0)
        lmn = np.where(max_min[:, None] > 0, nearest_int(imn[:, None] * mins), 0)
        sc = ((lsc & 0xFF) | (lmn << 4)) & 0xFF
        d = fp16(np.where(max_scale > 0, max_scale / q4, F32(0)).astype(F32))
        dmin = fp16(np.where(max_min > 0, max_min / q4, F32(0)).astype(F32))
    else:
        w, sw = _imatrix_weights(xs, xt, qw, _sb_sum_x2(xs) / F32(QK_K), 16)
        L, scales, mins = make_qkx_quants(xt, w, 3, -0.9, 0.05, 36)
        dm, mm, ls, lm = _qp_scales_mins(scales, mins, sw, 15)
        sc = (ls.astype(np.int32) | (lm.astype(np.int32) << 4)) & 0xFF
        d = fp16(dm)
        dmin = fp16(mm)
    sc = sc.astype(np.uint8)
    dd = (d[:, None] * (sc & 0xF)).reshape(-1)
    dmm = (dmin[:, None] * (sc >> 4)).reshape(-1)
    L = _requantize(xt, L, dd, dmm, 3)
    L = L.T.reshape(b, 2, 4, 32).astype(np.uint8)
    qs = (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(b, 64)
    return np.concatenate([sc, qs, fp16_bytes(d), fp16_bytes(dmin)], axis=1)


@_quiet
def quantize_q4_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q4_K blocks (144 bytes per 256 values) of float32 rows [nrows, n_per_row], as
    llama.cpp's `quantize_q4_K`: `quantize_row_q4_K_ref` without imatrix,
    `quantize_row_q4_K_impl` with one (float32 [n_per_row]). -> uint8 [nrows, n_per_row/256*144]."""
    return _superblocks(rows, imatrix, 144, _q4_k)


@_quiet
def quantize_q5_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q5_K blocks (176 bytes per 256 values), as llama.cpp's `quantize_q5_K`
    (`quantize_row_q5_K_ref` / `quantize_row_q5_K_impl`)."""
    return _superblocks(rows, imatrix, 176, _q5_k)


@_quiet
def quantize_q2_k(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q2_K blocks (84 bytes per 256 values), as llama.cpp's `quantize_q2_K`
    (`quantize_row_q2_K_ref` / `quantize_row_q2_K_impl`)."""
    return _superblocks(rows, imatrix, 84, _q2_k)


# ---------------------------------------------------------------- Q4_1, Q5_1


def _q_1_ref(xt, nbits):
    """`quantize_row_q4_1_ref` / `quantize_row_q5_1_ref` on position-major blocks [32, nb]:
    (d, m, levels int32 [32, nb])."""
    mn = first_min(xt)
    mx = first_max(xt)  # d = max - min: -0 - (+0) would store -0
    d = (mx - mn) / F32((1 << nbits) - 1)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    t = xt - mn
    t *= idv
    t += F32(0.5)
    q = np.trunc(t).astype(np.int32)
    if nbits == 4:
        q = np.minimum(q, 15)
    return d, mn, q & 0xFF


def _q_1_impl(xt, qwt, sigma2, nmax):
    """`quantize_row_q4_1_impl` / `quantize_row_q5_1_impl` block part: (d, m, levels)."""
    w = xt * xt
    w += sigma2
    np.sqrt(w, out=w)
    w *= qwt
    L, scale, the_min = make_qkx_quants(xt, w, nmax, -0.9, 0.05, 36)
    return scale, -the_min, L.astype(np.int32)


def _blocks32(rows, imatrix, block_bytes, nbits):
    rows = _rows(rows, 32)
    nrows, n = rows.shape
    qw = _imatrix(imatrix, n)
    nmax = (1 << nbits) - 1
    nb = n // 32
    out = np.empty((nrows * nb, block_bytes), np.uint8)
    if qw is not None:
        # sigma2 = sum over the whole row of x*x (in column order) / n_per_row
        sigma2 = np.empty(nrows, F32)
        rstep = max(2, CHUNK_VALUES // n)
        for a in range(0, nrows, rstep):
            r = rows[a:a + rstep]
            sigma2[a:a + rstep] = seqsum(np.ascontiguousarray((r * r).T)) / F32(n)
        qwb = qw.reshape(nb, 32)
    xb = rows.reshape(-1, 32)
    step = max(1, CHUNK_VALUES // 32)
    for a in range(0, xb.shape[0], step):
        b = min(a + step, xb.shape[0])
        xt = np.ascontiguousarray(xb[a:b].T)
        if qw is None:
            d, m, L = _q_1_ref(xt, nbits)
        else:
            idx = np.arange(a, b)
            qwt = np.ascontiguousarray(qwb[idx % nb].T)
            d, m, L = _q_1_impl(xt, qwt, sigma2[idx // nb], nmax)
        L = L.T  # [blocks, 32]
        lo, hi = L[:, :16], L[:, 16:]
        qs = ((lo & 15) | ((hi & 15) << 4)).astype(np.uint8)
        parts = [fp16_bytes(d), fp16_bytes(m)]
        if nbits == 5:
            bits = ((lo >> 4) & 1).astype(np.uint32) << np.arange(16, dtype=np.uint32)
            bits |= ((hi >> 4) & 1).astype(np.uint32) << np.arange(16, 32, dtype=np.uint32)
            qh = np.bitwise_or.reduce(bits, axis=1).astype("<u4")
            parts.append(qh.view(np.uint8).reshape(-1, 4))
        parts.append(qs)
        out[a:b] = np.concatenate(parts, axis=1)
    return out.reshape(nrows, nb * block_bytes)


@_quiet
def quantize_q4_1(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q4_1 blocks (20 bytes per 32 values), as llama.cpp's `quantize_q4_1`: min/max
    rounding (`quantize_row_q4_1_ref`) without imatrix, `quantize_row_q4_1_impl` with one."""
    return _blocks32(rows, imatrix, 20, 4)


@_quiet
def quantize_q5_1(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q5_1 blocks (24 bytes per 32 values), as llama.cpp's `quantize_q5_1`."""
    return _blocks32(rows, imatrix, 24, 5)


ENCODERS = {
    "Q4_K": quantize_q4_k,
    "Q5_K": quantize_q5_k,
    "Q2_K": quantize_q2_k,
    "Q4_1": quantize_q4_1,
    "Q5_1": quantize_q5_1,
}
