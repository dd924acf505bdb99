"""quantkit's numpy Q4_K / Q5_K / Q2_K / Q4_1 / Q5_1 encoders against llama.cpp's own
`ggml_quantize_chunk`, block for block, with and without an importance matrix."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from ggml_ref import block_agreement, quantize_chunk

from quantkit.backends.gguf import kquants

TYPES = ["Q4_K", "Q5_K", "Q2_K", "Q4_1", "Q5_1"]
N = 1024  # values per row: 4 super-blocks
FLOOR = 0.999


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 values (nearest even), as the checkpoints we convert hold them."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    u = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return u.view(np.float32)


def _gauss(rng):
    x = rng.standard_normal((24, N)) * 0.02
    x.flat[rng.choice(x.size, 40, replace=False)] *= rng.choice([-40.0, 25.0, 60.0], 40)
    return _bf16(x)


def _special(rng):
    x = rng.standard_normal((12, N)).astype(np.float32)
    x[0, 256:512] = 0.0                      # an all-zero super-block
    x[1, 512:768] = -0.0                     # all negative zeros
    x[2, 0:32] = 0.75                        # a constant block
    x[3, 32:64] = -1.25                      # a constant negative block
    x[4, 256:512] = 0.0
    x[4, 300] = 1.0                          # a single value in zeros
    x[5, :256] = np.abs(x[5, :256]) + 2.0    # positive, away from zero (min clamps to 0)
    x[6, :256] = -np.abs(x[6, :256]) - 2.0   # all negative
    x[7, 64:96] = np.where(np.arange(32) > 20, 0.5, np.where(np.arange(32) % 2, 0.0, -0.0))
    x[7, 96:128] = np.where(np.arange(32) % 3, 0.0, -0.0)  # only zeros, both signs
    x[7, 128:160] = np.where(np.arange(32) % 3, -0.0, 0.0)
    x[8] = rng.integers(-2, 3, N) * 0.25     # few distinct values: many exact rounding ties
    x[9] *= 1e7                              # fp16 scales overflow to inf
    return x


def _tiny(rng):
    x = rng.standard_normal((12, N)).astype(np.float32)
    x[:4] *= 1e-4    # fp16 scales become subnormal
    x[4:8] *= 1e-7   # scales underflow fp16 to zero
    x[8:] *= 1e-30
    return x


DATA = {"gauss_outliers": _gauss, "zero_const_blocks": _special, "tiny": _tiny}


def _imatrix(kind, n, rng):
    if kind == "none":
        return None
    w = (rng.exponential(size=n) + 1e-3).astype(np.float32)
    if kind == "zeros":
        w[rng.choice(n, n // 10, replace=False)] = 0.0
        w[64:96] = 0.0  # a whole block without weight
    return w


def _check(typ, x, imatrix, label):
    ours = kquants.ENCODERS[typ](x, imatrix)
    ref = quantize_chunk(typ, x, imatrix)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape, (ours.shape, ref.shape)
    share = block_agreement(ours, ref, typ)
    print(f"{typ} {label}: {share:.6f} of blocks identical")
    assert share >= FLOOR, f"{typ} {label}: only {share:.6f} of blocks identical to llama.cpp"
    return share


@pytest.mark.parametrize("imat", ["none", "positive", "zeros"])
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("typ", TYPES)
def test_blocks_match_llamacpp(typ, data, imat, record_property):
    rng = np.random.default_rng(zlib.crc32(f"{typ}/{data}/{imat}".encode()))
    x = DATA[data](rng)
    share = _check(typ, x, _imatrix(imat, N, rng), f"{data}/{imat}")
    record_property("agreement", share)


def test_encoder_table_and_shapes():
    assert set(kquants.ENCODERS) == set(TYPES)
    x = np.zeros((3, 512), np.float32)
    sizes = {"Q4_K": 144 * 2, "Q5_K": 176 * 2, "Q2_K": 84 * 2, "Q4_1": 20 * 16, "Q5_1": 24 * 16}
    for typ, size in sizes.items():
        assert kquants.ENCODERS[typ](x).shape == (3, size)
    with pytest.raises(ValueError):
        kquants.quantize_q4_k(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError):
        kquants.quantize_q4_1(np.zeros((2, 64), np.float32), np.ones(32, np.float32))


def test_single_row_and_odd_chunking(monkeypatch):
    """One row (sequential sums over a single column) and internal chunks that split rows."""
    rng = np.random.default_rng(3)
    monkeypatch.setattr(kquants, "CHUNK_VALUES", 768)
    x = _bf16(rng.standard_normal((5, 1280)) * 0.05)
    w = (rng.random(1280) + 0.1).astype(np.float32)
    for typ in TYPES:
        for im in (None, w):
            assert np.array_equal(kquants.ENCODERS[typ](x[:1], im), quantize_chunk(typ, x[:1], im)), typ
            assert np.array_equal(kquants.ENCODERS[typ](x, im), quantize_chunk(typ, x, im)), typ


def test_smollm2_down_proj_matches_llamacpp(smollm2):
    """64 rows of a trained weight (BF16 SmolLM2-135M, layer 0 down_proj, 1536 wide), with a
    positive imatrix shaped like real activations (few large columns) and without."""
    from safetensors import safe_open

    with safe_open(str(smollm2 / "model.safetensors"), "pt") as f:
        t = f.get_slice("model.layers.0.mlp.down_proj.weight")[:64]
    x = t.float().numpy()
    assert x.shape == (64, 1536)
    rng = np.random.default_rng(11)
    act = (rng.lognormal(0.0, 1.5, x.shape[1]) ** 2).astype(np.float32)
    for typ in TYPES:
        for label, im in (("none", None), ("imatrix", act)):
            _check(typ, x, im, f"smollm2/{label}")
