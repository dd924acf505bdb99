"""quantkit's numpy Q3_K, Q6_K, Q4_0, Q5_0 and Q8_0 encoders against llama.cpp's own quantizer.

Every case compares our blocks with `ggml_quantize_chunk` (through llama-cpp-python's libggml,
tests/ggml_ref.py) byte for byte, with no imatrix (ggml's `quantize_row_*_ref`) and with one
(`quantize_row_*_impl`: random positive, and positive with zeros), on synthetic rows and on
SmolLM2-135M's trained weights. The floor is 99.9% identical blocks; the share is printed
(run with -s to see it).
"""
from __future__ import annotations

import numpy as np
import pytest

from ggml_ref import block_agreement, quantize_chunk
from quantkit.backends.gguf.kquants_qx import ENCODERS, make_q3_quants, make_qx_quants

TYPES = ["Q3_K", "Q6_K", "Q4_0", "Q5_0", "Q8_0"]
N = 1024  # values per row: 4 super-blocks, 32 blocks of 32
FLOOR = 0.999


def _gauss_outliers() -> np.ndarray:
    """Gaussian rows, weight-like scale, with ~0.3% of the values 20-60x larger."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((32, N)).astype(np.float32) * np.float32(0.02)
    idx = rng.choice(x.size, size=x.size // 300, replace=False)
    x.flat[idx] *= rng.uniform(20, 60, idx.size).astype(np.float32)
    return x


def _bf16_weights() -> np.ndarray:
    """BF16 values, as every tensor of a BF16 checkpoint holds: their short mantissas put x/d on
    rounding ties far more often than float32 data does (this is the set that tells x/d from
    x*(1/d)). 128 x 4096, so 2048 super-blocks."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((128, 4096)).astype(np.float32) * np.float32(0.02)
    idx = rng.choice(x.size, size=x.size // 500, replace=False)
    x.flat[idx] *= np.float32(25)
    return (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def _special_blocks() -> np.ndarray:
    """Gaussian rows holding all-zero, constant, -0.0, single-value and single-outlier blocks
    (at both the 256 and the 32 granularity), and BF16-rounded values (many ties)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((16, N)).astype(np.float32) * np.float32(0.02)
    x[0, :256] = 0                      # an all-zero super-block
    x[0, 512:544] = 0                   # an all-zero 32-block
    x[1, :256] = np.float32(0.0125)     # a constant super-block
    x[1, 256:288] = np.float32(-0.3)    # a constant negative 32-block
    x[2, :256] = np.float32(-0.0)       # all negative zeros: the sign of ggml's zero scale
    x[2, 256:288] = np.float32(-0.0)
    x[3, :256] = 0
    x[3, 77] = np.float32(-0.5)         # one nonzero value in a super-block
    x[3, 300] = np.float32(25.0)        # one outlier
    x[4, 16:32] = 0                     # an all-zero 16-value sub-block inside live data
    x[5] = np.repeat(rng.standard_normal(N // 16).astype(np.float32), 16)  # constant sub-blocks
    bf = (rng.standard_normal((10, N)).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    x[6:] = bf * np.float32(0.03)       # BF16 values
    x[6:, :64] = np.round(x[6:, :64] * 100) / 100  # few levels: many ties
    return x


def _tiny() -> np.ndarray:
    """Rows of tiny magnitude: fp16-subnormal scales, scales that round to 0 in fp16, squares
    that underflow float32, values near float32's smallest normals."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((12, N)).astype(np.float32)
    mags = np.array([1e-3, 1e-5, 1e-6, 1e-7, 1e-9, 1e-12, 1e-16, 1e-20, 1e-25, 1e-30, 1e-36, 1e-38],
                    dtype=np.float32)
    return x * mags[:, None]


DATA = {"gauss_outliers": _gauss_outliers, "bf16_weights": _bf16_weights, "special_blocks": _special_blocks,
        "tiny": _tiny}


def _imatrix(kind: str, n: int) -> np.ndarray | None:
    rng = np.random.default_rng(21)
    if kind == "none":
        return None
    # squared activations: positive, a few channels much larger (as real imatrices are)
    qw = (rng.random(n) ** 2 * 4 + 1e-3).astype(np.float32)
    qw[rng.choice(n, n // 64, replace=False)] *= 50
    if kind == "with_zeros":
        qw[rng.random(n) < 0.25] = 0
        qw[:32] = 0  # a whole block without weight
    return qw


IMATRICES = ["none", "positive", "with_zeros"]


def _compare(typ: str, rows: np.ndarray, qw: np.ndarray | None, label: str) -> float:
    ours = ENCODERS[typ](rows, qw)
    ref = quantize_chunk(typ, rows, qw)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape, (ours.dtype, ours.shape, ref.shape)
    share = block_agreement(ours, ref, typ)
    print(f"\n{typ:5s} {label:40s} identical blocks {share:.4%}")
    assert share >= FLOOR, f"{typ} {label}: only {share:.4%} of blocks identical to llama.cpp's"
    return share


@pytest.mark.parametrize("imat", IMATRICES)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("typ", TYPES)
def test_blocks_match_llama_cpp(typ, data, imat):
    rows = DATA[data]()
    _compare(typ, rows, _imatrix(imat, rows.shape[1]), f"{data}, imatrix {imat}")


@pytest.mark.parametrize("typ", TYPES)
def test_row_lengths_and_chunking(typ, monkeypatch):
    """Odd row counts, one-block rows, and rows split across encoder passes."""
    import quantkit.backends.gguf.kquants_qx as kq

    block = 256 if typ.endswith("_K") else 32
    rng = np.random.default_rng(31)
    for nrows, n in [(1, block), (7, 3 * block), (3, 14 * block)]:
        rows = rng.standard_normal((nrows, n)).astype(np.float32)
        qw = rng.random(n).astype(np.float32)
        monkeypatch.setattr(kq, "_PASS_VALUES", 2 * n)  # several passes per call
        for w in (None, qw):
            ours, ref = ENCODERS[typ](rows, w), quantize_chunk(typ, rows, w)
            assert block_agreement(ours, ref, typ) == 1.0, (typ, nrows, n, w is None)


def test_imatrix_use_follows_ggml():
    """ggml uses the imatrix for Q3_K, Q6_K, Q4_0 and Q5_0 and ignores it for Q8_0: so do we."""
    rows = _gauss_outliers()
    qw = _imatrix("with_zeros", rows.shape[1])
    for typ in TYPES:
        ref_plain, ref_w = quantize_chunk(typ, rows, None), quantize_chunk(typ, rows, qw)
        ours_plain, ours_w = ENCODERS[typ](rows, None), ENCODERS[typ](rows, qw)
        uses = not np.array_equal(ref_plain, ref_w)
        assert uses == (typ != "Q8_0"), typ
        assert np.array_equal(ours_plain, ours_w) == (not uses), typ


def test_bad_shapes_are_refused():
    enc = ENCODERS["Q6_K"]
    with pytest.raises(ValueError):
        enc(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError):
        enc(np.zeros((2, 256), np.float32), np.ones(128, np.float32))


def test_search_primitives_shapes():
    """make_qx_quants / make_q3_quants return one scale per group and levels in range."""
    rng = np.random.default_rng(41)
    x = rng.standard_normal((16, 50)).astype(np.float32)
    x[:, 3] = 0
    s, L = make_qx_quants(x, 32, x * x)
    assert s.dtype == np.float32 and s.shape == (50,) and L.shape == (16, 50)
    assert L.min() >= 0 and L.max() <= 63 and s[3] == 0 and np.all(L[:, 3] == 0)
    s3, L3 = make_q3_quants(x, 4)
    assert s3.shape == (50,) and L3.min() >= 0 and L3.max() <= 7


@pytest.fixture(scope="module")
def smollm2_rows(smollm2):
    from safetensors import safe_open

    names = {"down": "model.layers.0.mlp.down_proj.weight", "q": "model.layers.0.self_attn.q_proj.weight"}
    with safe_open(str(smollm2 / "model.safetensors"), "pt") as st:
        return {k: st.get_tensor(v)[:64].float().numpy() for k, v in names.items()}


@pytest.mark.parametrize("imat", ["none", "positive", "with_zeros"])
def test_trained_weights_match_llama_cpp(smollm2_rows, imat):
    """SmolLM2-135M layer 0: down_proj rows (1536 wide) in every type; q_proj rows (576 wide,
    not a multiple of 256) in the 32-value types."""
    down, q = smollm2_rows["down"], smollm2_rows["q"]
    assert down.shape == (64, 1536) and q.shape == (64, 576)
    for typ in TYPES:
        _compare(typ, down, _imatrix(imat, down.shape[1]), f"smollm2 down_proj[:64], imatrix {imat}")
    for typ in ["Q4_0", "Q5_0", "Q8_0"]:
        _compare(typ, q, _imatrix(imat, q.shape[1]), f"smollm2 q_proj[:64], imatrix {imat}")
