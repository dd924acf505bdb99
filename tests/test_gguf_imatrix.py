"""GGUF importance matrix: llama-imatrix's statistics from the Hugging Face model, its file format.

(a) the sums against a hand-written Llama forward over the same token windows;
(b) our file read back by gguf-py and by ggml's own GGUF parser (libggml-base, ctypes) as
    llama.cpp's common_imatrix_load reads it; legacy .dat files; one-line errors;
(c) slow: the same statistics collected inside llama.cpp (eval callback on the scheduler, as
    llama-imatrix does) on the original SmolLM2 Q4_1 GGUF, against ours on builtin smollm2.
"""
from __future__ import annotations

import ctypes
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from quantkit.backends.gguf import imatrix, llamacpp, vocab
from quantkit.errors import InputError
from quantkit.text import default_text

CTX = 64
CHUNKS = 3
ROLES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("imx-text") / "calib.txt"
    p.write_text(default_text("calibration")[:40000], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def tiny_imx(tiny, text_file):
    done = []
    imx = imatrix.compute(tiny, imatrix.Calibration.load(str(text_file)), CHUNKS, ctx=CTX, progress=done.append,
                          process_output=True)
    assert sum(done) == json.loads((tiny / "config.json").read_text())["num_hidden_layers"]  # one step a layer
    return imx


# -- the schedule: which tokens llama-imatrix evaluates -------------------------------------


def test_windows_replace_first_token_with_bos():
    toks = list(range(100, 100 + 10 * 16 + 5))
    w = imatrix.windows([1] + toks, 4, 16, True, 1)
    assert w.shape == (4, 16)
    assert (w[:, 0] == 1).all()
    assert w[1, 1:].tolist() == toks[16:31]  # chunk i is tokens [16 i, 16 i + 16), first replaced
    assert imatrix.windows(toks, None, 16, False, None).shape == (10, 16)  # all the text gives
    assert imatrix.windows(toks, 99, 16, False, None).shape == (10, 16)
    with pytest.raises(InputError, match="at least 2 x 100"):
        imatrix.windows(toks, 2, 100, True, 1)


def test_collected_positions_skip_physical_batches_under_16_tokens():
    assert imatrix.collected_positions(8, 512).all()  # 4 chunks per batch, 128 tokens of each per ubatch
    m = imatrix.collected_positions(7, 512)  # then 3 chunks: 3 x 170 tokens three times, 3 x 2 = 6 tokens
    assert m[:4].all() and m[4:, :510].all() and not m[4:, 510:].any()
    assert imatrix.collected_positions(9, 128).all()  # 9 x 56 | 9 x 56 | 9 x 16
    m = imatrix.collected_positions(3, 1030)  # one chunk per batch: ubatches 512 + 512 + 6
    assert m[:, :1024].all() and not m[:, 1024:].any()
    m = imatrix.collected_positions(2, 4100)  # n_batch 2048 < ctx: 2048 + 2048 + 4 tokens
    assert m[:, :4096].all() and not m[:, 4096:].any()
    assert imatrix.collected_positions(5, 520).all()  # 3 x 170 | 3 x 10 = 30 tokens | 2 x 256 | 2 x 8 = 16


# -- (a) the sums against an independent forward --------------------------------------------


def _manual_llama(model_dir: Path, ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A Llama forward written from the weights: per GGUF weight name the sum over tokens of
    its squared input, and the logits."""
    from safetensors.torch import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    w = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        w.update({k: v.to(torch.float32) for k, v in load_file(f).items()})
    eps = cfg.get("rms_norm_eps", 1e-6)
    n_h, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // n_h
    theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    b, t = ids.shape
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(torch.float32)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(torch.float32)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    def rope(q):
        return q * cos + torch.cat([-q[..., d // 2:], q[..., : d // 2]], -1) * sin

    stats: dict[str, torch.Tensor] = {}

    def acc(name, x):
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        stats[name] = (x * x).sum(0)

    x = w["model.embed_tokens.weight"][ids]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        h = rms(x, w[p + "input_layernorm.weight"])
        for role in ("attn_q", "attn_k", "attn_v"):
            acc(f"blk.{n}.{role}.weight", h)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(b, t, n_h, d).transpose(1, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(b, t, n_kv, d).transpose(1, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(b, t, n_kv, d).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(n_h // n_kv, 1), v.repeat_interleave(n_h // n_kv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, -1) @ v
        att = att.transpose(1, 2).reshape(b, t, n_h * d)
        acc(f"blk.{n}.attn_output.weight", att)
        x = x + att @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        acc(f"blk.{n}.ffn_gate.weight", h)
        acc(f"blk.{n}.ffn_up.weight", h)
        a = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
        acc(f"blk.{n}.ffn_down.weight", a)
        x = x + a @ w[p + "mlp.down_proj.weight"].T
    h = rms(x, w["model.norm.weight"])
    acc("output.weight", h)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return stats, h @ head.T


def test_sums_match_an_independent_forward(tiny, text_file, tiny_imx):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    add_bos, bos = vocab.add_bos(tiny, json.loads((tiny / "config.json").read_text())["vocab_size"])
    assert add_bos and bos == tok.bos_token_id  # sentencepiece Llama: BOS per chunk
    ids = tok(text_file.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    wins = torch.tensor([bos] + ids[: CHUNKS * CTX - 1]).view(CHUNKS, CTX)
    wins[:, 0] = bos
    stats, logits = _manual_llama(tiny, wins)
    hf = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    with torch.inference_mode():
        torch.testing.assert_close(hf(input_ids=wins).logits, logits, rtol=1e-3, atol=1e-3)  # the forward is right

    n_layer = json.loads((tiny / "config.json").read_text())["num_hidden_layers"]
    expected = {f"blk.{n}.{r}.weight" for n in range(n_layer) for r in ROLES} | {"output.weight"}
    assert set(tiny_imx.entries) == expected
    for name, e in tiny_imx.entries.items():
        assert e.counts.tolist() == [CHUNKS * CTX], name
        assert e.sums.dtype == np.float32 and e.sums.shape == (1, stats[name].numel()), name
        np.testing.assert_allclose(e.sums[0], stats[name].numpy(), rtol=2e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(tiny_imx.weights(name), stats[name].numpy() / (CHUNKS * CTX), rtol=2e-4,
                                   atol=1e-8, err_msg=name)
    assert tiny_imx.chunk_count == CHUNKS and tiny_imx.chunk_size == CTX
    assert tiny_imx.datasets == [str(text_file)]


def test_output_weight_only_when_asked(tiny, text_file):
    imx = imatrix.compute(tiny, imatrix.Calibration.load(str(text_file)), 2, ctx=32)
    assert "output.weight" not in imx and "blk.0.attn_q.weight" in imx
    assert imx.weights("token_embd.weight") is None and imx.weights("output.weight") is None
    assert imx.entries["blk.3.ffn_down.weight"].counts.tolist() == [64]


# -- (b) the file ---------------------------------------------------------------------------


def test_file_as_gguf_py_reads_it(tiny_imx, tmp_path):
    import gguf

    path = imatrix.save(tiny_imx, tmp_path / "imatrix.gguf")
    r = gguf.GGUFReader(path)
    keys = {k for k in r.fields if not k.startswith("GGUF.")}
    assert keys == {"general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"}
    T = gguf.GGUFValueType
    f = r.fields
    assert f["general.type"].types == [T.STRING] and f["general.type"].contents() == "imatrix"
    assert f["imatrix.datasets"].types == [T.ARRAY, T.STRING]
    assert f["imatrix.datasets"].contents() == tiny_imx.datasets
    assert f["imatrix.chunk_count"].types == [T.UINT32] and f["imatrix.chunk_count"].contents() == CHUNKS
    assert f["imatrix.chunk_size"].types == [T.UINT32] and f["imatrix.chunk_size"].contents() == CTX
    names = [t.name for t in r.tensors]
    assert names == [n + s for n in sorted(tiny_imx.entries) for s in (".in_sum2", ".counts")]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        base, kind = t.name.rsplit(".", 1)
        e = tiny_imx.entries[base]
        if kind == "in_sum2":
            assert t.shape.tolist() == [e.sums.shape[1], 1]  # ggml ne: [n_cols, n_mat]
            np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), e.sums[0])
        else:
            assert t.shape.tolist() == [1, 1]
            assert np.asarray(t.data).reshape(-1).tolist() == [float(CHUNKS * CTX)]
    back = imatrix.load(path)
    assert back.path == path and back.chunks == CHUNKS and back.datasets == tiny_imx.datasets and not back.legacy
    for name, e in tiny_imx.entries.items():
        np.testing.assert_array_equal(back.entries[name].sums, e.sums)
        assert back.entries[name].counts.tolist() == e.counts.tolist()
        np.testing.assert_array_equal(back.weights(name), tiny_imx.weights(name))


def _libggml_base():
    llama_cpp = pytest.importorskip("llama_cpp")
    libdir = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(libdir.glob("libggml-base.*")) or sorted(libdir.glob("ggml-base.*"))
    if not libs:
        pytest.skip(f"no libggml-base in {libdir}")
    return ctypes.CDLL(str(libs[0]))


class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def _read_with_ggml(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The file as llama.cpp's common_imatrix_load sees it, through ggml's C GGUF parser."""
    lib = _libggml_base()
    vp, cp, i64 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64
    for name, res, args in [
        ("gguf_init_from_file", vp, [cp, _GgufInitParams]), ("gguf_free", None, [vp]),
        ("gguf_find_key", i64, [vp, cp]), ("gguf_get_kv_type", ctypes.c_int, [vp, i64]),
        ("gguf_get_arr_type", ctypes.c_int, [vp, i64]), ("gguf_get_arr_n", ctypes.c_size_t, [vp, i64]),
        ("gguf_get_arr_str", cp, [vp, i64, ctypes.c_size_t]), ("gguf_get_val_u32", ctypes.c_uint32, [vp, i64]),
        ("gguf_get_val_str", cp, [vp, i64]), ("gguf_get_n_kv", i64, [vp]), ("gguf_get_key", cp, [vp, i64]),
        ("gguf_get_n_tensors", i64, [vp]), ("ggml_get_first_tensor", vp, [vp]),
        ("ggml_get_next_tensor", vp, [vp, vp]), ("ggml_nelements", i64, [vp]), ("ggml_get_name", cp, [vp]),
        ("ggml_get_data_f32", ctypes.POINTER(ctypes.c_float), [vp]), ("ggml_free", None, [vp]),
    ]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    ctx = ctypes.c_void_p()
    g = lib.gguf_init_from_file(str(path).encode(), _GgufInitParams(False, ctypes.pointer(ctx)))
    assert g, "ggml's gguf_init_from_file refused the file"
    try:
        kv = {}
        for i in range(lib.gguf_get_n_kv(g)):
            key = lib.gguf_get_key(g, i).decode()
            typ = lib.gguf_get_kv_type(g, i)
            if typ == 8:  # GGUF_TYPE_STRING
                kv[key] = lib.gguf_get_val_str(g, i).decode()
            elif typ == 4:  # GGUF_TYPE_UINT32
                kv[key] = lib.gguf_get_val_u32(g, i)
            elif typ == 9 and lib.gguf_get_arr_type(g, i) == 8:
                kv[key] = [lib.gguf_get_arr_str(g, i, j).decode() for j in range(lib.gguf_get_arr_n(g, i))]
            else:
                kv[key] = ("type", typ)
        tensors = {}
        t = lib.ggml_get_first_tensor(ctx)
        while t:
            name = lib.ggml_get_name(t).decode()
            if name.endswith((".in_sum2", ".counts")):  # as common_imatrix_load: the rest (the data blob) is not read
                n = lib.ggml_nelements(t)
                tensors[name] = np.ctypeslib.as_array(lib.ggml_get_data_f32(t), (n,)).copy()
            t = lib.ggml_get_next_tensor(ctx, t)
        assert lib.gguf_get_n_tensors(g) == len(tensors)
        return kv, tensors
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ctx)


def test_file_as_ggml_reads_it(tiny_imx, tmp_path):
    path = imatrix.save(tiny_imx, tmp_path / "imatrix.gguf")
    kv, tensors = _read_with_ggml(path)
    assert kv == {"general.type": "imatrix", "imatrix.datasets": tiny_imx.datasets,
                  "imatrix.chunk_count": CHUNKS, "imatrix.chunk_size": CTX}
    assert set(tensors) == {n + s for n in tiny_imx.entries for s in (".in_sum2", ".counts")}
    for name, e in tiny_imx.entries.items():
        sums, counts = tensors[name + ".in_sum2"], tensors[name + ".counts"]
        np.testing.assert_array_equal(sums, e.sums[0])
        assert counts.tolist() == [float(CHUNKS * CTX)]
        # quantize.cpp load_imatrix: in_sum2 / count, per matrix
        np.testing.assert_array_equal(tiny_imx.weights(name), (sums / counts[0]).astype(np.float32))


def test_counts_zero_and_experts(tmp_path):
    import gguf

    e = imatrix.Entry(np.arange(6, dtype=np.float32).reshape(2, 3) + 1, np.array([2, 0]))
    imx = imatrix.Imatrix({"blk.0.ffn_up_exps.weight": e}, [], 1, 4)
    assert imx.weights("blk.0.ffn_up_exps.weight").tolist() == [0.5, 1.0, 1.5, 1.0, 1.0, 1.0]  # count 0: 1.0
    path = imatrix.save(imx, tmp_path / "experts.gguf")
    shapes = {t.name: t.shape.tolist() for t in gguf.GGUFReader(path).tensors}
    assert shapes == {"blk.0.ffn_up_exps.weight.in_sum2": [3, 2], "blk.0.ffn_up_exps.weight.counts": [1, 2]}
    back = imatrix.load(path)
    assert back.entries["blk.0.ffn_up_exps.weight"].counts.tolist() == [2, 0] and back.datasets == ["unknown"]
    assert back.weights("blk.0.ffn_up_exps.weight").tolist() == [0.5, 1.0, 1.5, 1.0, 1.0, 1.0]


def _legacy_bytes(entries: dict[str, tuple[int, list[float]]], chunks: int = 7, dataset: str = "wiki.txt") -> bytes:
    out = struct.pack("<i", len(entries))
    for name, (ncall, vals) in entries.items():
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, len(vals))
        out += np.asarray(vals, dtype="<f4").tobytes()
    return out + struct.pack("<ii", chunks, len(dataset)) + dataset.encode()


def test_legacy_dat(tmp_path):
    p = tmp_path / "imatrix.dat"
    p.write_bytes(_legacy_bytes({"blk.0.attn_q.weight": (4, [8.0, 2.0]), "blk.0.attn_k.weight": (0, [3.0, 5.0])}))
    imx = imatrix.load(p)
    assert imx.legacy and imx.chunk_count == 7 and imx.datasets == ["wiki.txt"]
    assert imx.weights("blk.0.attn_q.weight").tolist() == [2.0, 0.5]  # sums / ncall
    assert imx.weights("blk.0.attn_k.weight").tolist() == [3.0, 5.0]  # ncall 0: as stored
    with pytest.raises(InputError, match="legacy"):
        imatrix.save(imx, tmp_path / "x.gguf")
    p.write_bytes(_legacy_bytes({"blk.0.attn_q.weight": (4, [8.0, 2.0])})[:-30])
    with pytest.raises(InputError, match="readable legacy imatrix"):
        imatrix.load(p)


def test_bad_files(tmp_path, tiny_imx):
    import gguf

    with pytest.raises(InputError, match="no such imatrix file"):
        imatrix.load(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(InputError, match="not a readable GGUF"):
        imatrix.load(junk)
    text = tmp_path / "text.dat"
    text.write_text("hello world, not an imatrix")
    with pytest.raises(InputError, match="readable legacy"):
        imatrix.load(text)

    def write(path, kvs, tensors):
        w = gguf.GGUFWriter(path, "llama")
        for k, v in kvs.items():
            w.add_string(k, v) if isinstance(v, str) else w.add_uint32(k, v)
        for name, arr in tensors.items():
            w.add_tensor(name, arr)
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        return path

    model = write(tmp_path / "model.gguf", {}, {"blk.0.attn_q.weight": np.ones((4, 4), np.float32)})
    with pytest.raises(InputError, match="no imatrix entries"):
        imatrix.load(model)
    nometa = write(tmp_path / "nometa.gguf", {}, {"a.in_sum2": np.ones((1, 4), np.float32),
                                                   "a.counts": np.ones((1, 1), np.float32)})
    with pytest.raises(InputError, match="missing imatrix metadata"):
        imatrix.load(nometa)
    meta = {"imatrix.chunk_count": 1, "imatrix.chunk_size": 4}
    half = write(tmp_path / "half.gguf", meta, {"a.in_sum2": np.ones((1, 4), np.float32)})
    with pytest.raises(InputError, match="missing imatrix metadata"):  # no datasets key: quantize refuses
        imatrix.load(half)
    bad = imatrix.Imatrix({"a": imatrix.Entry(np.array([[1.0, np.inf]], np.float32), np.array([3]))}, ["d"], 1, 4)
    with pytest.raises(InputError, match="non-finite"):
        imatrix.load(imatrix.save(bad, tmp_path / "inf.gguf"))
    for message in ("no such imatrix file", "not a readable GGUF", "no imatrix entries", "missing imatrix metadata"):
        assert "\n" not in message


def test_bad_requests(tiny, text_file):
    with pytest.raises(InputError, match="at least 2 x 32768"):
        imatrix.compute(tiny, imatrix.Calibration.load(str(text_file)), 2, ctx=32768)
    with pytest.raises(InputError, match="at least 16"):
        imatrix.compute(tiny, imatrix.Calibration.load(str(text_file)), 2, ctx=8)
    with pytest.raises(InputError, match="no such text file"):
        imatrix.Calibration.load(str(text_file.parent / "nope.txt"))


# -- (c) inside llama.cpp -------------------------------------------------------------------

GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64


class _GgmlTensor(ctypes.Structure):
    """struct ggml_tensor, ggml/include/ggml.h of the vendored llama.cpp."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _llamacpp_imatrix(gguf_path: Path, wins: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """collect_imatrix's sums and counts, gathered by an eval callback on the scheduler while
    llama.cpp (CPU) decodes the windows as llama-imatrix does: n_batch 2048 // ctx windows per
    batch as parallel sequences (non-unified KV cache), physical batches of 512, every token an
    output."""
    import llama_cpp as L

    base = _libggml_base()
    base.ggml_op_name.restype, base.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    mul_mat = next(i for i in range(200) if base.ggml_op_name(i) == b"MUL_MAT")
    n_chunk, ctx_len = wins.shape
    stats: dict[str, list] = {}

    def callback(t_ptr, ask, _user):
        t = ctypes.cast(t_ptr, ctypes.POINTER(_GgmlTensor)).contents
        if t.op != mul_mat:
            return not ask
        src0 = ctypes.cast(t.src[0], ctypes.POINTER(_GgmlTensor)).contents
        src1 = ctypes.cast(t.src[1], ctypes.POINTER(_GgmlTensor)).contents
        name = src0.name.decode()
        if "#" in name:
            name = name.split("#")[1]
        if ask:  # imatrix.cpp: F32 activations over at least 16 tokens, blk.* weights
            return src1.ne[1] >= 16 and src1.type == 0 and name.startswith("blk.")
        ne0, ne1 = src1.ne[0], src1.ne[1]
        assert src1.ne[2] == src1.ne[3] == 1 and src1.nb[0] == 4, name
        span = (ne1 - 1) * src1.nb[1] + ne0 * 4
        buf = (ctypes.c_char * span).from_address(src1.data)
        x = np.ndarray((ne1, ne0), np.float32, buf, strides=(src1.nb[1], 4)).astype(np.float64)
        e = stats.setdefault(name, [np.zeros(ne0), 0])
        e[0] += (x * x).sum(0)
        e[1] += ne1
        return True

    n_seq = max(1, imatrix.N_BATCH // ctx_len)  # imatrix.cpp main()
    n_batch = min(imatrix.N_BATCH, n_seq * ctx_len)
    cb = L.ggml_backend_sched_eval_callback(callback)  # kept alive until the context is freed
    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(gguf_path).encode(), llamacpp.model_params())
    assert model
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_seq * ctx_len, n_batch, imatrix.N_UBATCH, n_seq
    cp.kv_unified = False
    cp.n_threads = cp.n_threads_batch = 2
    cp.cb_eval = cb
    cp.cb_eval_user_data = None
    lctx = L.llama_init_from_model(model, cp)
    assert lctx
    batch = L.llama_batch_init(n_batch, 0, 1)
    try:
        for i in range(0, n_chunk, n_seq):  # imatrix.cpp compute_imatrix()
            L.llama_memory_clear(L.llama_get_memory(lctx), True)
            for j in range(-(-ctx_len // n_batch)):
                size = min(ctx_len - j * n_batch, n_batch)
                n = 0
                for seq in range(min(n_seq, n_chunk - i)):
                    for k in range(size):
                        batch.token[n] = int(wins[i + seq, j * n_batch + k])
                        batch.pos[n], batch.n_seq_id[n] = j * n_batch + k, 1
                        batch.seq_id[n][0], batch.logits[n] = seq, 1
                        n += 1
                batch.n_tokens = n
                assert L.llama_decode(lctx, batch) == 0
    finally:
        L.llama_batch_free(batch)
        L.llama_free(lctx)
        L.llama_model_free(model)
    return {k: (v[0], v[1]) for k, v in stats.items()}


def _llamacpp_tokens(gguf_path: Path, text: str) -> tuple[list[int], bool, int]:
    import llama_cpp as L

    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(gguf_path).encode(), llamacpp.model_params(vocab_only=True))
    try:
        vocab = L.llama_model_get_vocab(model)
        raw = text.encode("utf-8")
        buf = (L.llama_token * (len(raw) + 8))()
        n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)  # common_tokenize(.., true, false)
        assert n >= 0
        return list(buf[:n]), bool(L.llama_vocab_get_add_bos(vocab)), int(L.llama_vocab_bos(vocab))
    finally:
        L.llama_model_free(model)


@pytest.mark.slow
def test_matches_llamacpp_own_collection(smollm2):
    """Ours on the BF16 checkpoint vs llama.cpp's on the Q4_1 GGUF it was dequantized from.
    The weights are the same up to BF16 rounding, but llama.cpp also quantizes activations
    to Q8_1 for Q4_1 matmuls: a few percent apart per column, while a wrong tensor, a missing
    square or a wrong count is off by far more."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from quantkit.fixtures import smollm2_gguf

    # 3 windows of 172 tokens go in one batch of 3 sequences, which the KV cache splits into
    # physical batches of 3 x 170 and 3 x 2 tokens: llama.cpp skips the second (under 16)
    ctx, chunks = 172, 3
    collected = int(imatrix.collected_positions(chunks, ctx).sum())
    assert collected == 3 * 170
    gguf_path = smollm2_gguf()
    text = default_text("calibration")
    tok = AutoTokenizer.from_pretrained(smollm2)
    add_bos, bos = vocab.add_bos(smollm2, json.loads((smollm2 / "config.json").read_text())["vocab_size"])
    theirs_tokens, their_add_bos, their_bos = _llamacpp_tokens(gguf_path, text)
    assert add_bos == their_add_bos
    ours_tokens = imatrix.tokenize(tok, text, add_bos, bos)
    agree = sum(a == b for a, b in zip(ours_tokens[: chunks * ctx], theirs_tokens[: chunks * ctx]))
    assert agree == chunks * ctx and abs(len(ours_tokens) - len(theirs_tokens)) <= len(theirs_tokens) // 1000

    imx = imatrix.compute(smollm2, imatrix.Calibration.load(None), chunks, ctx=ctx)
    wins = imatrix.windows(theirs_tokens, chunks, ctx, their_add_bos, their_bos)
    theirs = _llamacpp_imatrix(gguf_path, wins)
    assert set(theirs) == set(imx.entries)
    err = {}
    for name, (sums, count) in theirs.items():
        e = imx.entries[name]
        assert e.counts.tolist() == [count] == [collected], name
        assert e.sums.shape[1] == sums.size, name
        ours = e.sums[0].astype(np.float64)
        err[name] = np.linalg.norm(ours - sums) / np.linalg.norm(sums)
        assert err[name] < 0.08, (name, err[name])
        # closer to its own tensor than to any other of the same width in the same layer
        layer = name.split(".")[1]
        for other, o in imx.entries.items():
            if other != name and other.split(".")[1] == layer and o.sums.shape == e.sums.shape:
                if not _same_input(name, other):
                    far = np.linalg.norm(o.sums[0] - sums) / np.linalg.norm(sums)
                    assert far > 3 * err[name], (name, other, far, err[name])
    print("relative L2 error per tensor: max %.4f, median %.4f" % (max(err.values()), float(np.median(list(err.values())))))


def _same_input(a: str, b: str) -> bool:
    groups = [{"attn_q", "attn_k", "attn_v"}, {"ffn_gate", "ffn_up"}]
    ra, rb = a.split(".")[2], b.split(".")[2]
    return any(ra in g and rb in g for g in groups)


def test_a_killed_run_resumes_at_its_layer(tiny, text_file, tiny_imx, monkeypatch, tmp_path):
    """Killed after its first layer, the pass starts again at the second and gives the same file."""
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path))
    calibration = imatrix.Calibration.load(str(text_file))

    def killed(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        imatrix.compute(tiny, calibration, CHUNKS, ctx=CTX, progress=killed, process_output=True)
    assert len(list((tmp_path / "resume" / "imatrix").iterdir())) == 1
    done = []
    imx = imatrix.compute(tiny, calibration, CHUNKS, ctx=CTX, progress=done.append, process_output=True)
    assert done[0] == 1 and sum(done) == json.loads((tiny / "config.json").read_text())["num_hidden_layers"]
    assert sorted(imx.entries) == sorted(tiny_imx.entries)
    for name, e in tiny_imx.entries.items():
        assert np.array_equal(imx.entries[name].sums, e.sums) and np.array_equal(imx.entries[name].counts, e.counts)
    assert not list((tmp_path / "resume" / "imatrix").iterdir())  # a finished pass leaves nothing


@pytest.mark.slow
def test_smollm2_streamed_equals_the_whole_model(smollm2):
    """The layer-at-a-time pass gives the sums the whole model (transformers, loaded at once, hooks on
    every Linear: how quantkit computed them before streaming) gives, on SmolLM2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    chunks, ctx = 2, 512
    calibration = imatrix.Calibration.load(None)
    streamed = imatrix.compute(smollm2, calibration, chunks, ctx=ctx)
    add_bos, bos = vocab.add_bos(smollm2, json.loads((smollm2 / "config.json").read_text())["vocab_size"])
    tok = AutoTokenizer.from_pretrained(smollm2)
    wins = imatrix.windows(imatrix.tokenize(tok, calibration.text, add_bos, bos), chunks, ctx, add_bos, bos)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    names = imatrix._name_map(model.config)
    sums: dict[str, torch.Tensor] = {}

    def hook(gname):
        def add(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[gname] = sums.get(gname, 0) + (x * x).sum(0)
        return add

    for mname, mod in model.named_modules():
        g = names.get_name(mname + ".weight", try_suffixes=(".weight",)) if isinstance(mod, torch.nn.Linear) else None
        if g is not None and g.startswith("blk."):
            mod.register_forward_pre_hook(hook(g))
    with torch.inference_mode():
        for w in wins:
            model(input_ids=torch.from_numpy(w)[None], use_cache=False)
    assert sorted(streamed.entries) == sorted(sums)
    for name, e in streamed.entries.items():
        assert e.counts.tolist() == [chunks * ctx]
        np.testing.assert_allclose(e.sums[0], sums[name].float().numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
