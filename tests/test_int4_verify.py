"""verify scores INT4 folders in the legacy layouts (AutoGPTQ, AutoAWQ GEMM): quantkit's readers invert
its writers, the weights they read equal other people's readers and the compressed-tensors twin of
the same run, and verify's figures equal the twin's."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import assert_one_line_error
from helpers import autoawq_to_ct, autoround_gptq_dense, load_tensors
from quantkit.backends.int4 import layouts

FAST = ["--samples", "4", "--seq-len", "64"]
GROUP = 128
# (method, --format) -> extra options; each legacy folder has a compressed-tensors twin from an identical run
RUNS = {
    ("gptq", "gptq"): [],
    ("gptq", "compressed-tensors"): [],
    ("awq", "awq"): ["--grid", "3"],  # the smallest grid quantkit takes
    ("awq", "compressed-tensors"): ["--grid", "3"],
}


def _quantkit(*args) -> tuple[int, str]:
    """`quantkit ARGS` in this process (the `cli` fixture is per test; these folders are shared)."""
    from quantkit.cli import main

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(sys, "argv", ["quantkit", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("int4-verify")
    out = {}
    for (method, layout), extra in RUNS.items():
        folder = root / f"{method}-{layout}"
        code, err = _quantkit(method, tiny, "-o", folder, "--format", layout, "--json", *FAST, *extra)
        assert code == 0, err
        out[method, layout] = folder
    return out


def _ours(folder: Path, method: str) -> dict[str, torch.Tensor]:
    """quantkit's reader: prefix -> dequantized float32 weight."""
    t = load_tensors(folder)
    read = layouts.LEGACY_READERS[method].read
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    return {p: layouts.dequantize(read(t, p, qc)) for p in sorted(k[: -len("qweight")] for k in t if k.endswith(".qweight"))}


def _ct(folder: Path) -> dict[str, torch.Tensor]:
    t = load_tensors(folder)
    return {p: layouts.dequantize(layouts.read_ct(t, p, GROUP)) for p in layouts.quantized_prefixes(t)}


def _autoround_gptq(folder: Path) -> dict[str, torch.Tensor]:
    return autoround_gptq_dense(folder, GROUP)


def _autoawq_converter(folder: Path) -> dict[str, torch.Tensor]:
    """compressed-tensors' AutoAWQConverter back to pack-quantized, unpacked by quantkit's compressed-tensors reader."""
    back = autoawq_to_ct(folder)
    return {p: layouts.dequantize(layouts.read_ct(back, p, GROUP)) for p in layouts.quantized_prefixes(back)}


def test_readers_invert_writers():
    """Random modules, zero points 1..15 (15 sets the sign bit of a word), a permuted g_idx (act-order group)."""
    gen = torch.Generator().manual_seed(0)
    out_f, in_f, groups = 48, 64, 4
    q = torch.randint(0, 16, (out_f, in_f), generator=gen, dtype=torch.int32)
    q[0, :8] = 15
    z = torch.randint(1, 16, (out_f, groups), generator=gen, dtype=torch.int32)
    s = torch.rand(out_f, groups, generator=gen).to(torch.float16).to(torch.bfloat16)
    g_idx = (torch.arange(in_f, dtype=torch.int32) // (in_f // groups))[torch.randperm(in_f, generator=gen)]
    m = layouts.Module(q, z, s, g_idx)
    back = layouts.read_gptq(layouts.write_gptq("x.", m), "x.")
    for a, b in ((back.q, q), (back.z, z), (back.s.float(), s.float()), (back.g_idx, g_idx)):
        assert torch.equal(a, b)
    contiguous = layouts.Module(q, z, s, torch.arange(in_f, dtype=torch.int32) // (in_f // groups))
    back = layouts.read_awq(layouts.write_awq("x.", contiguous), "x.", in_f // groups)
    for a, b in ((back.q, q), (back.z, z), (back.s.float(), s.float()), (back.g_idx, contiguous.g_idx)):
        assert torch.equal(a, b)
    assert torch.equal(layouts.dequantize(back), layouts.dequantize(contiguous))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_legacy_weights_equal_other_readers_and_the_twin(made, method):
    ours = _ours(made[method, method], method)
    theirs = (_autoround_gptq if method == "gptq" else _autoawq_converter)(made[method, method])
    twin = _ct(made[method, "compressed-tensors"])  # the same run in compressed-tensors (runs are deterministic)
    assert sorted(ours) == sorted(theirs) == sorted(twin) and len(ours) == 4 * 7
    for prefix, w in ours.items():
        assert w.dtype == torch.float32
        assert torch.equal(w, theirs[prefix]), prefix
        assert torch.equal(w, twin[prefix]), prefix


def test_verify_scores_legacy_layouts_as_their_twins(made, tiny, cli):
    order = [("gptq", "gptq"), ("gptq", "compressed-tensors"), ("awq", "awq"), ("awq", "compressed-tensors")]
    r = cli("verify", *(made[k] for k in order), "--source", tiny, "--tokens", "2048", "--ctx", "256", "--json")
    assert r.code == 0, r.err
    res = dict(zip(order, r.json))
    assert res["gptq", "gptq"]["format"] == "gptq (AutoGPTQ layout)"
    assert res["awq", "awq"]["format"] == "awq (AutoAWQ GEMM layout)"
    assert res["gptq", "gptq"]["activations"] == \
        "unquantized (float32 compute, weights dequantized from the AutoGPTQ layout)"
    assert res["awq", "awq"]["activations"] == \
        "unquantized (float32 compute, weights dequantized from the AutoAWQ layout)"
    for method in ("gptq", "awq"):
        legacy, twin = res[method, method], res[method, "compressed-tensors"]
        assert legacy["tokens_scored"] == twin["tokens_scored"] > 0
        for key in ("ppl_quant", "kld_mean", "top1_agreement"):
            assert legacy[key] == pytest.approx(twin[key], rel=1e-5), (method, key)
        assert 1.0 < legacy["ppl_ratio"] < 1.05
        recorded = json.loads((made[method, method] / "quantkit.json").read_text())["verify"]
        assert recorded["format"] == legacy["format"]


def _damaged(made, tmp_path, method, name) -> Path:
    bad = tmp_path / f"{method}-{name}"
    shutil.copytree(made[method, method], bad)
    return bad


def test_damaged_legacy_folders_are_one_line_errors(made, tiny, cli, tmp_path):
    def verify(folder):
        return cli("verify", folder, "--source", tiny, "--tokens", "512", "--ctx", "256", "--json", "--no-record")

    for method in ("gptq", "awq"):  # a module's qweight missing
        bad = _damaged(made, tmp_path, method, "no-qweight")
        t = load_file(bad / "model.safetensors")
        del t["model.layers.1.mlp.up_proj.qweight"]
        save_file(t, bad / "model.safetensors", metadata={"format": "pt"})
        assert_one_line_error(verify(bad), "model.layers.1.mlp.up_proj.qweight is missing")

    bad = _damaged(made, tmp_path, "gptq", "short-scales")  # scales of the wrong shape
    t = load_file(bad / "model.safetensors")
    t["model.layers.0.self_attn.q_proj.scales"] = t["model.layers.0.self_attn.q_proj.scales"][:, :128].contiguous()
    save_file(t, bad / "model.safetensors", metadata={"format": "pt"})
    assert_one_line_error(verify(bad), "model.layers.0.self_attn.q_proj.scales", "damaged")

    for method, key, value in (("gptq", "checkpoint_format", "gptq_v2"), ("gptq", "bits", 8), ("awq", "version", "gemv")):
        bad = _damaged(made, tmp_path, method, key)
        cfg = json.loads((bad / "config.json").read_text())
        cfg["quantization_config"][key] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        assert_one_line_error(verify(bad), f"quantization_config {key}={value!r}")
