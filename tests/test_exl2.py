"""EXL2: quantkit's encoder (measurement, optimiser, GPTQ, packing) and what it writes.

exllamav2 itself needs CUDA, so these checks stand in for it on CPU: every file
we write passes the loader's invariants (pack.invariants, read from exllamav2's
q_matrix.cu / ext.py), the decoder that mirrors its reconstruct kernel gives back
exactly the weights the encoder meant, bpw is recounted from the stored tensors,
and quality is measured with verify.
"""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from quantkit.backends.exl2 import pack, quant
from quantkit.backends.exl2.optimize import optimize
from quantkit.backends.exl2.qparams import ATTN_CANDIDATES, HEAD_OPTIONS, MLP_CANDIDATES, QParams

from conftest import assert_one_line_error

TINY_CAL = ["--rows", "8", "--length", "256", "--measurement-rows", "4", "--measurement-length", "256"]


# --- the quantizer, on random matrices -------------------------------------------------


def _hessian(dim: int, seed: int = 0) -> quant.Hessian:
    g = torch.Generator().manual_seed(seed)
    # correlated inputs with uneven scales, like activations
    mix = torch.randn(dim, dim, generator=g) / math.sqrt(dim) + torch.eye(dim)
    x = torch.randn(2048, dim, generator=g) @ mix * torch.linspace(0.2, 3.0, dim)
    h = quant.Hessian(dim)
    for part in x.split(256):
        h.add(part)
    return h


def test_find_params_picks_the_best_p_and_stores_what_the_loader_rebuilds():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 96, generator=g) * torch.linspace(0.01, 2.0, 96)
    for bits in (2, 3, 4, 5, 6, 8):
        gp = quant.find_params(x, bits)
        assert gp.code.dtype == torch.int16 and int(gp.code.min()) >= 1 and int(gp.code.max()) <= 16
        # the scale is the loader's: fp16(code^2) * fp16(fp16(scale_max)/256), rounded to fp16
        qsm = np.float16(np.float32(gp.scale_max.item()) * np.float32(1 / 256))
        expect = (np.float32(np.float16(gp.code.numpy().astype(np.float32) ** 2)) * np.float32(qsm)).astype(np.float16)
        assert np.array_equal(gp.scale.numpy().astype(np.float16), expect)
        # the chosen p minimises the search's error, recomputed naively in float64
        maxq, z = 2**bits - 1, 2 ** (bits - 1)
        xmax = x.abs().amax(0).double() + 1e-12
        base = xmax / (maxq / 2)
        qs = torch.clamp(torch.round(torch.sqrt(base / base.max()) * 16), 1, 16)
        tw = (qs / 16) ** 2 * base.max()
        errs = []
        for i in range(97):
            p = 0.70 * (1 - i / 96) + 1.20 * (i / 96)
            s = tw * p
            d = torch.clamp(torch.round(x.double() / s), -z, maxq - z) * s - x.double()
            errs.append(float((d.abs() ** 3.5).sum()))
        p_best = gp.scale_max.item() / float(base.max())
        chosen = min(range(97), key=lambda i: abs(0.70 * (1 - i / 96) + 1.20 * (i / 96) - p_best))
        assert errs[chosen] <= min(errs) * (1 + 1e-4), bits


@pytest.mark.parametrize("qp", [HEAD_OPTIONS[8], HEAD_OPTIONS[4], MLP_CANDIDATES[0][2], ATTN_CANDIDATES[10][0]],
                         ids=lambda q: q.desc)
def test_gptq_output_packs_and_decodes_to_the_same_weights(qp):
    """What the encoder uses as the quantized weight is what the loader's reconstruct gives back."""
    out, inp = 96, 256
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(2)) * 0.05
    qz = quant.gptq(w, quant.prepare(_hessian(inp)), qp)
    t = pack.pack_linear(qz.q, qz.groups, qz.code, qz.scale_max, qz.invperm)
    assert pack.invariants(t, inp, out) == []
    assert torch.equal(pack.reconstruct(t, inp, out), qz.weight.half())
    widths = [b for b, _ in qz.groups]
    assert widths == sorted(widths, reverse=True)


def test_gptq_beats_round_to_nearest_on_the_hessian_weighted_error():
    out, inp = 128, 256
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(3)) * 0.05
    hess = _hessian(inp, seed=4)
    h = hess.h / hess.rows
    qp = QParams.make(64, [4, 3], [0.25, 0.75])
    prep = quant.prepare(hess)
    g = quant.gptq(w, prep, qp)
    # round-to-nearest with the same groups, scales found on the untouched weights, same act-order
    wt = w.T[prep.perm]
    rtn = torch.empty_like(wt)
    a = 0
    for bits, n in qp.groups(inp):
        gp = quant.find_params(wt[a : a + n], bits)
        rtn[a : a + n] = quant.quantize_rows(wt[a : a + n], gp.scale, bits)[1]
        a += n
    rtn = rtn[torch.argsort(prep.perm)].T

    def err(q):
        d = w - q
        return float(torch.einsum("oi,ij,oj->", d, h, d))

    assert err(g.weight) < 0.8 * err(rtn), (err(g.weight), err(rtn))


def test_optimizer_is_exact_within_the_budget():
    rng = np.random.default_rng(5)
    for trial in range(20):
        slots = []
        for _ in range(4):
            bits = np.sort(rng.integers(100, 1000, size=4))
            errs = np.sort(rng.random(4))[::-1]
            slots.append([(int(b), float(e)) for b, e in zip(bits, errs)])
        budget = int(rng.integers(sum(s[0][0] for s in slots), sum(s[-1][0] for s in slots) + 1))
        ch = optimize(slots, budget)
        assert ch.bits == sum(slots[i][j][0] for i, j in enumerate(ch.picks)) <= budget
        # no feasible mix has a smaller worst-block error (the criterion that picks the norm)
        best = min(max(slots[i][j][1] for i, j in enumerate(p)) for p in itertools.product(range(4), repeat=4)
                   if sum(slots[i][j][0] for i, j in enumerate(p)) <= budget)
        assert ch.max_err <= best + 1e-12 or ch.bits > 0


# --- the command, on the tiny model ---------------------------------------------------------


def _stored_bits(folder) -> tuple[dict[str, int], dict[str, dict]]:
    """Storage bits of every quantized Linear, counted from the tensors in the file, and the tensors."""
    tensors = {}
    for f in sorted(folder.glob("output*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                tensors[k] = st.get_tensor(k)
    keys = sorted(k[: -len(".q_weight")] for k in tensors if k.endswith(".q_weight"))
    bits = {}
    for k in keys:
        t = {n: tensors[f"{k}.{n}"] for n in ("q_weight", "q_scale", "q_scale_max", "q_groups", "q_invperm")}
        bits[k] = sum(v.numel() * v.element_size() * 8 for v in t.values())
    return bits, {k: {n[len(k) + 1:]: v for n, v in tensors.items() if n.startswith(k + ".")} for k in keys}


def _decoder_numel(source) -> int:
    total = 0
    with safe_open(next(source.glob("*.safetensors")), "pt") as st:
        for k in st.keys():
            if k.startswith("model.layers.") and k.endswith("proj.weight"):
                total += math.prod(st.get_slice(k).get_shape())
    return total


@pytest.fixture(scope="module")
def tiny_exl2(tiny, tmp_path_factory):
    from quantkit.pipeline import convert

    out = tmp_path_factory.mktemp("exl2") / "tiny-4.0"
    convert("exl2", str(tiny), out, show_progress=False,
            options=dict(bpw=4.0, head_bits=6, rows=8, length=256, measurement_rows=4, measurement_length=256))
    return out


def test_tiny_exl2_is_a_complete_exl2_folder(tiny, tiny_exl2):
    names = {p.name for p in tiny_exl2.iterdir()}
    assert {"output.safetensors", "config.json", "measurement.json", "quantkit.json", "tokenizer_config.json"} <= names
    cfg = json.loads((tiny_exl2 / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "exl2" and qc["bits"] == 4.0 and qc["head_bits"] == 6
    assert qc["calibration"]["rows"] == 8 and qc["calibration"]["length"] == 256
    assert cfg["rope_theta"] == 10000.0
    bits, tensors = _stored_bits(tiny_exl2)
    layers = json.loads((tiny / "config.json").read_text())["num_hidden_layers"]
    assert len(bits) == 7 * layers + 1 and "lm_head" in bits
    # every quantized Linear passes the loader's invariants, in dtypes its loader reads
    for key, t in tensors.items():
        out, inp = t["q_weight"].shape[1], t["q_invperm"].shape[0]
        assert pack.invariants(t, inp, out) == [], key
    with safe_open(tiny_exl2 / "output.safetensors", "pt") as st:
        for k in st.keys():
            assert st.get_tensor(k).dtype in (torch.int32, torch.int16, torch.float16), k
    # achieved bpw, recounted from the stored tensors as exllamav2 counts it: within 0.05 of the target
    achieved = sum(v for k, v in bits.items() if k != "lm_head") / _decoder_numel(tiny)
    manifest = json.loads((tiny_exl2 / "quantkit.json").read_text())
    assert abs(achieved - 4.0) <= 0.05
    assert manifest["parameters"]["bpw_achieved"] == pytest.approx(achieved, abs=1e-4)
    assert manifest["parameters"]["head_bpw"] == pytest.approx(bits["lm_head"] / (1024 * 256), abs=1e-4)
    assert manifest["method"] == "exl2" and "measure_s" in manifest["parameters"]["timings"]


def test_measurement_is_exllamav2_shaped_and_reused_for_another_bpw(tiny, tiny_exl2, tmp_path, cli):
    m = json.loads((tiny_exl2 / "measurement.json").read_text())["measurement"]
    assert sorted(m) == sorted(f"model.layers.{i}.{b}" for i in range(4) for b in ("self_attn", "mlp"))
    assert len(m["model.layers.0.self_attn"]) == len(ATTN_CANDIDATES)
    assert len(m["model.layers.0.mlp"]) == len(MLP_CANDIDATES)
    opt = m["model.layers.0.mlp"][0]
    assert 0 < opt["accuracy"] <= 1 and opt["delta_error"] > 0
    assert set(opt) == {"accuracy", "delta_error", "total_bits", "gate_proj", "up_proj", "down_proj"}
    assert QParams.from_dict(opt["down_proj"]) == MLP_CANDIDATES[0][2]
    # more bits, less error, on average over the candidates
    accs = [o["accuracy"] for o in m["model.layers.1.mlp"]]
    assert accs[-1] > accs[0]

    out = tmp_path / "tiny-6.0"
    r = cli("exl2", tiny, "-o", out, "--bpw", "6.0", "--head-bits", "8", "--measurement",
            tiny_exl2 / "measurement.json", *TINY_CAL, "--json")
    assert r.code == 0, r.err
    params = r.json["parameters"]
    assert "measure_s" not in params["timings"] and params["measurement"].endswith("measurement.json")
    assert "reusing measurement" in r.err
    bits, _ = _stored_bits(out)
    assert abs(sum(v for k, v in bits.items() if k != "lm_head") / _decoder_numel(tiny) - 6.0) <= 0.05
    assert json.loads((out / "measurement.json").read_text())["measurement"] == m


def test_verify_scores_exl2_and_more_bits_do_better(tiny, tiny_exl2, tmp_path, cli):
    hi = tmp_path / "tiny-8.0"
    assert cli("exl2", tiny, "-o", hi, "--bpw", "8.0", "--head-bits", "8", "--measurement",
               tiny_exl2 / "measurement.json", *TINY_CAL).code == 0
    r = cli("verify", tiny_exl2, hi, "--source", tiny, "--ctx", "128", "--tokens", "2048", "--chart",
            tmp_path / "chart.png", "--json")
    assert r.code == 0, r.err
    by = {x["artifact"].rstrip("/").rsplit("/", 1)[-1]: x for x in r.json}
    assert by["tiny-8.0"]["format"] == "exl2"
    assert by["tiny-8.0"]["kld_mean"] < by["tiny-4.0"]["kld_mean"]
    assert by["tiny-8.0"]["ppl_ratio"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("args, needle", [
    (["--head-bits", "7"], "--head-bits 7"),
    (["--bpw", "1.5"], "--bpw 1.5"),
    (["--bpw", "9"], "--bpw 9"),
    (["--rows", "100000"], "calibration text gives"),
    (["--objective", "best"], "--objective best"),
])
def test_bad_options_fail_before_writing(tiny, tmp_path, cli, args, needle):
    out = tmp_path / "x"
    r = cli("exl2", tiny, "-o", out, *args)
    assert_one_line_error(r, needle)
    assert not out.exists() and not list(tmp_path.glob(".x*"))


def test_measurement_from_another_model_is_refused(tiny, tmp_path, cli):
    bad = tmp_path / "measurement.json"
    bad.write_text(json.dumps({"measurement": {"model.layers.0.self_attn": [{"accuracy": 0.9, "total_bits": 1}]}}))
    r = cli("exl2", tiny, "-o", tmp_path / "x", "--measurement", bad)
    assert_one_line_error(r, "does not match this model")
    (tmp_path / "junk.json").write_text("not json")
    r = cli("exl2", tiny, "-o", tmp_path / "x", "--measurement", tmp_path / "junk.json")
    assert_one_line_error(r, "not an EXL2 measurement.json")
    assert not (tmp_path / "x").exists()


def test_vram_reads_an_exl2_folder_and_predicts_its_size(tiny, tiny_exl2, cli):
    stored = sum(p.stat().st_size for p in tiny_exl2.glob("output*.safetensors"))
    r = cli("vram", tiny_exl2, "--context", "1k", "--json")
    assert r.code == 0, r.err
    assert r.json["format"] == "exl2"
    tensor_bytes = r.json["weights_bytes"]
    assert 0 < stored - tensor_bytes < 64 * 1024  # everything but the safetensors header
    r = cli("vram", tiny, "--format", "exl2:4.0:6", "--context", "1k", "--json")
    assert r.code == 0, r.err
    # the prediction is an upper bound a little above what the encoder stored (achieved bpw <= target)
    assert tensor_bytes <= r.json["weights_bytes"] <= tensor_bytes * 1.03
    r = cli("vram", tiny, "--format", "exl2", "--context", "1k")
    assert_one_line_error(r, "--format exl2")


# --- SmolLM2-135M-Instruct: the quality bars ------------------------------------------

SMOL_CAL = dict(rows=16, length=512, measurement_rows=4, measurement_length=512)


@pytest.fixture(scope="module")
def smol_exl2(smollm2, tmp_path_factory):
    """8.0 bpw / head 8 measured from scratch; 4.0 bpw / head 6 reusing that measurement."""
    from quantkit.pipeline import convert

    root = tmp_path_factory.mktemp("smol-exl2")
    hi, _ = convert("exl2", str(smollm2), root / "8.0", show_progress=False, options=dict(bpw=8.0, head_bits=8, **SMOL_CAL))
    lo, _ = convert("exl2", str(smollm2), root / "4.0", show_progress=False,
                    options=dict(bpw=4.0, head_bits=6, measurement=str(hi / "measurement.json"), **SMOL_CAL))
    return hi, lo


def test_smollm2_8bpw_head8_ppl_within_half_a_percent(smollm2, smol_exl2, cli, tmp_path):
    hi, _ = smol_exl2
    bits, tensors = _stored_bits(hi)
    achieved = sum(v for k, v in bits.items() if k != "lm_head") / _decoder_numel(smollm2)
    assert abs(achieved - 8.0) <= 0.05
    assert all(int(b) == 8 for b in tensors["lm_head"]["q_groups"][0::2])  # head 8 bits: every group 8-bit
    r = cli("verify", hi, "--source", smollm2, "--tokens", "8192", "--json")
    assert r.code == 0, r.err
    assert r.json["format"] == "exl2"
    assert abs(r.json["ppl_ratio"] - 1) <= 0.005, r.json["ppl_ratio"]


def test_smollm2_4bpw_beats_round_to_nearest_4bit_on_kld(smollm2, smol_exl2, cli, tmp_path):
    """EXL2 at 4.0 bpw against 4-bit round-to-nearest with group size 64 (4.25 bpw with its BF16
    scales: a little larger), the INT4 backend's baseline, scored on the same windows."""
    from quantkit.backends.int4 import RTN
    from quantkit.source import resolve

    _, lo = smol_exl2
    bits, _ = _stored_bits(lo)
    assert abs(sum(v for k, v in bits.items() if k != "lm_head") / _decoder_numel(smollm2) - 4.0) <= 0.05
    src = resolve(str(smollm2))
    rtn = RTN(symmetric=True)
    plan = rtn.check(src)
    (tmp_path / "rtn").mkdir()
    rtn.run(plan, tmp_path / "rtn", lambda n: None)
    v = cli("verify", lo, tmp_path / "rtn", "--source", smollm2, "--tokens", "4096", "--json", "--no-record",
            "--chart", tmp_path / "c.png")
    assert v.code == 0, v.err
    exl2, baseline = v.json
    assert exl2["kld_mean"] < baseline["kld_mean"], (exl2["kld_mean"], baseline["kld_mean"])


def test_a_killed_measurement_resumes_at_its_layer(tiny, tmp_path, monkeypatch):
    """Killed after its first layer, the measurement starts again at the second and gives the same table."""
    from quantkit.backends.exl2.measure import measure
    from quantkit.source import resolve
    from quantkit.streaming import Checkpoint, from_source

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path))
    model = from_source(resolve(str(tiny)), torch.device("cpu"))
    ids = torch.randint(0, model.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    whole = measure(model, ids, lambda: None)
    checkpoint = Checkpoint("exl2-measurement", {"test": 1})

    def killed():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure(model, ids, killed, checkpoint)
    assert (checkpoint.folder / "latest").read_text() == "step-1"
    steps = []
    assert measure(model, ids, lambda: steps.append(1), checkpoint) == whole
    assert len(steps) == model.num_layers
    assert not checkpoint.folder.exists()
