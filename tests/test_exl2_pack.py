"""EXL2 layout: bit packing against a plain reference, reconstruct against the formula computed
independently, the invariants, and the verify loader on a hand-written EXL2 folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quantkit.backends.exl2 import decode, pack

RNG = np.random.default_rng(0)


# ---- bit packing ----

def ref_pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Per column: one Python integer holding value i at bit i*bits, cut into 32-bit words."""
    rows, cols = q.shape
    words = rows * bits // 32
    out = np.zeros((words, cols), dtype=np.int64)
    for c in range(cols):
        stream = 0
        for i in range(rows):
            stream |= int(q[i, c]) << (i * bits)
        for w in range(words):
            out[w, c] = (stream >> (32 * w)) & 0xFFFFFFFF
    return out.astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("bits", pack.WIDTHS)
def test_pack_columns_matches_reference(bits):
    q = RNG.integers(0, 1 << bits, size=(96, 7))
    q[0, 0], q[1, 0] = (1 << bits) - 1, 0  # the extremes
    got = pack.pack_columns(q, bits)
    assert got.dtype == np.int32 and got.shape == (96 * bits // 32, 7)
    np.testing.assert_array_equal(got, ref_pack(q, bits))
    np.testing.assert_array_equal(pack.unpack_columns(got, bits, 96), q)


@pytest.mark.parametrize("bits", pack.WIDTHS)
def test_pack_columns_round_trip_all_values(bits):
    rows = 256  # every value 0..2^bits-1 appears in each column
    q = (np.arange(rows * 3).reshape(rows, 3) % (1 << bits))
    np.testing.assert_array_equal(pack.unpack_columns(pack.pack_columns(q, bits), bits, rows), q)


def test_pack_columns_rejects_partial_words_and_range():
    with pytest.raises(ValueError, match="whole 32-bit words"):
        pack.pack_columns(np.zeros((10, 4), dtype=int), 3)
    with pytest.raises(ValueError, match="outside"):
        pack.pack_columns(np.full((32, 4), 16), 4)
    with pytest.raises(ValueError, match="widths"):
        pack.pack_columns(np.zeros((32, 4), dtype=int), 7)


def test_pack_scales_by_hand_and_round_trip():
    # codes 1..8 -> nibbles 0..7, nibble i at bits 4i: 0x76543210 = 1985229328.
    # codes 16 x 8 -> nibbles 0xF -> 0xFFFFFFFF = -1 as int32.
    # codes 2,1,1,1,1,1,1,16 -> 0xF0000001 = -268435455 as int32.
    codes = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [16] * 8, [2, 1, 1, 1, 1, 1, 1, 16]])
    got = pack.pack_scales(codes)
    assert got.dtype == np.int32
    assert got[:, 0].tolist() == [0x76543210, -1, -268435455]
    np.testing.assert_array_equal(pack.unpack_scales(got), codes)
    rnd = RNG.integers(1, 17, size=(5, 64))
    np.testing.assert_array_equal(pack.unpack_scales(pack.pack_scales(rnd)), rnd)


# ---- a mixed-width linear ----

MIXED = [(8, 32), (6, 64), (4, 128), (3, 32), (2, 32)]  # 288 rows


def make_linear(groups=MIXED, out=64, seed=1):
    rng = np.random.default_rng(seed)
    n_in = sum(r for _, r in groups)
    q = np.concatenate([rng.integers(0, 1 << b, size=(r, out)) for b, r in groups])
    codes = rng.integers(1, 17, size=(len(groups), out))
    # 1e-3 / 256 is subnormal in fp16: the rounding of q_scale_max/256 matters there
    scale_max = rng.uniform(1e-3, 0.2, size=len(groups)).astype(np.float32)
    perm = rng.permutation(n_in)
    invperm = np.argsort(perm)
    return dict(q=q, groups=groups, codes=codes, scale_max=scale_max, invperm=invperm), perm


def formula_weight(q, groups, codes, scale_max, perm) -> np.ndarray:
    """HF [out, in] float16 from the documented formula: each product of two fp16 values is
    exact in float64, and np.float16(...) rounds it once to nearest even, as __hmul does."""
    f16, f64 = np.float16, np.float64
    n_in, out = q.shape
    w_t = np.zeros((n_in, out), dtype=np.float16)
    k = 0
    for g, (bits, rows) in enumerate(groups):
        qsm = f16(f64(f16(scale_max[g])) / 256)
        s = (codes[g].astype(f64) ** 2 * f64(qsm)).astype(f16)
        dq = ((q[k:k + rows] - 2 ** (bits - 1)).astype(f64) * s.astype(f64)).astype(f16)
        w_t[perm[k:k + rows]] = dq
        k += rows
    return w_t.T


def test_numpy_float16_multiply_rounds_once():
    """np.float16 * np.float16 computes in float32 (exact for a product of two fp16) and rounds to
    fp16 once: the same as rounding the exact float64 product, subnormal results included."""
    a = RNG.uniform(-70, 70, 20000).astype(np.float16)
    b = (RNG.uniform(0, 1, 20000) * 10.0 ** RNG.integers(-7, 1, 20000)).astype(np.float16)
    exact = (a.astype(np.float64) * b.astype(np.float64)).astype(np.float16)
    np.testing.assert_array_equal((a * b).view(np.uint16), exact.view(np.uint16))
    torch_way = (torch.from_numpy(a).float() * torch.from_numpy(b).float()).half().numpy()
    np.testing.assert_array_equal(torch_way.view(np.uint16), exact.view(np.uint16))
    assert (np.abs(exact[exact != 0]) < 2 ** -14).any()  # subnormals were exercised


def test_mixed_linear_reconstructs_the_formula_bit_for_bit():
    lin, perm = make_linear()
    assert (lin["scale_max"] / 256 < 2 ** -14).any()  # some q_scale_max/256 is subnormal in fp16
    t = pack.pack_linear(**lin)
    assert {k: v.dtype for k, v in t.items()} == {
        "q_weight": torch.int32, "q_scale": torch.int32, "q_scale_max": torch.float16,
        "q_groups": torch.int16, "q_invperm": torch.int32}
    assert t["q_weight"].shape == (32 * 8 // 32 + 64 * 6 // 32 + 128 * 4 // 32 + 32 * 3 // 32 + 32 * 2 // 32, 64)
    assert t["q_groups"].tolist() == [8, 0, 6, 8, 4, 20, 3, 36, 2, 39]
    assert pack.invariants(t, 288, 64) == []
    got = pack.reconstruct(t, 288, 64)
    assert got.dtype == torch.float16 and got.shape == (64, 288)
    want = formula_weight(lin["q"], lin["groups"], lin["codes"], lin["scale_max"], perm)
    np.testing.assert_array_equal(got.numpy().view(np.uint16), want.view(np.uint16))


def test_padded_columns_round_trip():
    lin, perm = make_linear(groups=[(4, 64)], out=40)
    t = pack.pack_linear(**lin, bias=np.arange(40, dtype=np.float32))
    assert t["q_weight"].shape == (8, 64) and t["q_scale"].shape == (1, 8)
    assert pack.invariants(t, 64, 40) == []
    want = formula_weight(lin["q"], lin["groups"], lin["codes"], lin["scale_max"], perm)
    np.testing.assert_array_equal(pack.reconstruct(t, 64, 40).numpy().view(np.uint16), want.view(np.uint16))


# ---- invariants ----

def _problems(t, n_in=288, out=64) -> str:
    bad = pack.invariants(t, n_in, out)
    assert bad, "expected a violation"
    return " | ".join(bad)


def test_invariants_catch_ascending_widths():
    lin, _ = make_linear(groups=[(2, 32), (4, 32), (8, 32)])
    assert "descending" in _problems(pack.pack_linear(**lin), 96)


def test_invariants_catch_region_not_multiple_of_32():
    lin, _ = make_linear(groups=[(4, 32), (2, 16)])
    assert "2-bit region holds 16 rows" in _problems(pack.pack_linear(**lin), 48)
    lin, _ = make_linear(groups=[(8, 48), (8, 16)])
    assert "group 0: 48 rows, not a multiple of 32" in _problems(pack.pack_linear(**lin), 64)


def test_invariants_catch_bad_dtype():
    lin, _ = make_linear()
    t = pack.pack_linear(**lin)
    t["q_scale_max"] = t["q_scale_max"].float()
    assert "q_scale_max dtype torch.float32" in _problems(t)


def test_invariants_catch_non_permutation():
    lin, _ = make_linear()
    t = pack.pack_linear(**lin)
    t["q_invperm"][5] = t["q_invperm"][6]
    assert "not a permutation" in _problems(t)


def test_invariants_catch_wrong_q_weight_rows():
    lin, _ = make_linear()
    t = pack.pack_linear(**lin)
    t["q_weight"] = torch.cat([t["q_weight"], t["q_weight"][:1]])
    assert "q_weight has 42 packed rows, the groups need 41" in _problems(t)


def test_invariants_catch_more():
    lin, _ = make_linear()
    t = pack.pack_linear(**lin)
    assert "missing tensors: q_groups" in _problems({k: v for k, v in t.items() if k != "q_groups"})
    bad = dict(t, q_scale_max=torch.tensor([1, float("nan"), 1, 1, 1], dtype=torch.float16))
    assert "NaN" in _problems(bad)
    g = t["q_groups"].clone()
    g[0] = 7
    assert "not among" in _problems(dict(t, q_groups=g))
    g = t["q_groups"].clone()
    g[1] = 1
    assert "first q_groups offset" in _problems(dict(t, q_groups=g))
    assert "q_invperm shape (288,), expected (320,)" in _problems(t, n_in=320)


# ---- decode and the verify loader on a hand-written folder ----

def _rtn_exl2(w: torch.Tensor, rng: np.random.Generator, bits=4, group=32):
    """Plain RTN into EXL2 tensors (random act-order perm) + what the formula says they decode to."""
    out, n_in = w.shape
    w_t = w.T.double().numpy()
    perm = rng.permutation(n_in)
    x = w_t[perm]
    zero, maxq = 1 << (bits - 1), (1 << bits) - 1
    qs, codes, qsms = [], [], []
    for a in range(0, n_in, group):
        g = x[a:a + group]
        base = (np.abs(g).max(axis=0) + 1e-12) / (maxq / 2)
        qsm = base.max()
        code = np.clip(np.round(np.sqrt(base / qsm) * 16), 1, 16)
        s = (code / 16) ** 2 * qsm
        qs.append(np.clip(np.round(g / s) + zero, 0, maxq).astype(np.int64))
        codes.append(code.astype(np.int64))
        qsms.append(qsm)
    groups = [(bits, group)] * (n_in // group)
    lin = dict(q=np.concatenate(qs), groups=groups, codes=np.stack(codes),
               scale_max=np.array(qsms, dtype=np.float32), invperm=np.argsort(perm))
    return pack.pack_linear(**lin), formula_weight(lin["q"], groups, lin["codes"], lin["scale_max"], perm)


def _tiny_config(tie: bool):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tie)


def _write_exl2(folder: Path, tie: bool):
    """A tiny Llama as exllamav2 lays it out: every Linear (lm_head too) 4-bit EXL2, the rest fp16.
    Returns the independent HF-layout weights of every quantized Linear."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = _tiny_config(tie)
    src = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    rng = np.random.default_rng(2)
    tensors, formula = {}, {}
    linears = {k for k, m in src.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, p in src.state_dict().items():
        key = name.rsplit(".", 1)[0]
        if key in linears:
            t, formula[key] = _rtn_exl2(p.detach(), rng)
            tensors.update({f"{key}.{n}": v for n, v in t.items()})
        else:
            tensors[name] = p.detach().half().contiguous()
    folder.mkdir()
    names = sorted(tensors)
    half = len(names) // 2
    for i, part in enumerate((names[:half], names[half:])):
        save_file({n: tensors[n] for n in part}, folder / f"output-{i + 1:05d}-of-00002.safetensors",
                  metadata={"format": "pt"})
    config.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "exl2", "version": "0.3.2", "bits": 4.0, "head_bits": 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    return tensors, formula


def _is_q(name: str) -> bool:
    return name.rsplit(".", 1)[1].startswith("q_")


def _hf_model(weights: dict[str, torch.Tensor]):
    """An untied tiny Llama holding these weights (lm_head always its own tensor)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_tiny_config(False), dtype=torch.float32).eval()
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_loader_scores_exl2_as_reconstruct_does(tmp_path, tie):
    from quantkit.loaders import load

    folder = tmp_path / "exl2"
    tensors, formula = _write_exl2(folder, tie)
    assert decode.is_exl2(folder) and not decode.is_exl2(tmp_path)

    sd = decode.dequantized_state_dict(folder)
    assert "lm_head.weight" in sd and not any(_is_q(k) for k in sd)
    for key, want in formula.items():
        np.testing.assert_array_equal(sd[f"{key}.weight"].numpy().view(np.uint16), want.view(np.uint16))

    scorer = load(folder)
    assert scorer.format == "exl2" and scorer.vocab_size == 128
    assert "exllamav2" in scorer.activations
    ids = [1, 5, 9, 77, 3, 100, 42, 8]
    got = scorer.logits(ids)

    plain = {k: v for k, v in tensors.items() if not _is_q(k)}
    recon = dict(plain)
    for key in formula:
        t = {n.rsplit(".", 1)[1]: v for n, v in tensors.items() if n.startswith(key + ".q_")}
        recon[f"{key}.weight"] = pack.reconstruct(t, t["q_invperm"].numel(), t["q_weight"].shape[1])
    indep = dict(plain, **{f"{k}.weight": torch.from_numpy(v.copy()) for k, v in formula.items()})
    with torch.inference_mode():
        x = torch.tensor([ids])
        want_recon = _hf_model(recon)(x).logits[0]
        want_indep = _hf_model(indep)(x).logits[0]
    torch.testing.assert_close(got, want_recon, rtol=0, atol=0)
    torch.testing.assert_close(got, want_indep, rtol=0, atol=0)
    if tie:  # the quantized head, not the embeddings, produced the logits
        emb_head = dict(indep, **{"lm_head.weight": indep["model.embed_tokens.weight"]})
        with torch.inference_mode():
            assert not torch.allclose(got, _hf_model(emb_head)(x).logits[0])


def test_decode_rejects_a_damaged_layer(tmp_path):
    from quantkit.errors import InputError

    folder = tmp_path / "exl2"
    tensors, _ = _write_exl2(folder, False)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    tensors["model.layers.0.mlp.down_proj.q_groups"] = tensors["model.layers.0.mlp.down_proj.q_groups"].flip(0)
    save_file(tensors, folder / "output.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="down_proj: not a valid EXL2 layer"):
        decode.dequantized_state_dict(folder)
