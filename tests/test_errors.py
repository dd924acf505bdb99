"""Bad input: one line on stderr, non-zero exit, no traceback, nothing created."""
from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from conftest import assert_one_line_error
from safetensors.torch import load_file, save_file


def nothing_created(parent, name="out"):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((name, f".{name}"))) == []


def run_bad(cli, src, tmp_path, *needles, extra=()):
    out = tmp_path / "out"
    r = cli("fp8", src, "-o", out, *extra)
    assert_one_line_error(r, *needles)
    assert nothing_created(tmp_path), list(tmp_path.iterdir())
    return r


def test_missing_folder(cli, tmp_path):
    run_bad(cli, tmp_path / "nope", tmp_path, "no such folder")


def test_file_not_folder(cli, tiny, tmp_path):
    run_bad(cli, tiny / "config.json", tmp_path, "is a file")


def test_no_config(cli, tiny_copy, tmp_path):
    (tiny_copy / "config.json").unlink()
    run_bad(cli, tiny_copy, tmp_path, "no config.json")


def test_config_not_json(cli, tiny_copy, tmp_path):
    (tiny_copy / "config.json").write_text("{not json")
    run_bad(cli, tiny_copy, tmp_path, "config.json is not valid JSON")


def test_unsupported_architecture(cli, tiny_copy, tmp_path):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    run_bad(cli, tiny_copy, tmp_path, "GPT2LMHeadModel is not supported", "LlamaForCausalLM")


def test_pickle_only_refused_then_allowed(cli, tiny_copy, tmp_path):
    state = load_file(tiny_copy / "model.safetensors")
    (tiny_copy / "model.safetensors").unlink()
    torch.save(state, tiny_copy / "pytorch_model.bin")
    run_bad(cli, tiny_copy, tmp_path, "pytorch_model.bin", "--allow-pickle")
    r = cli("fp8", tiny_copy, "-o", tmp_path / "out", "--allow-pickle")
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_index_names_missing_shard(cli, tiny_copy, tmp_path):
    names = list(load_file(tiny_copy / "model.safetensors"))
    wm = {n: "model.safetensors" for n in names}
    wm[names[-1]] = "model-00002-of-00002.safetensors"
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    run_bad(cli, tiny_copy, tmp_path, "model-00002-of-00002.safetensors", "missing")


def test_index_inconsistent_with_shard(cli, tiny_copy, tmp_path):
    names = list(load_file(tiny_copy / "model.safetensors"))
    wm = {n: "model.safetensors" for n in names}
    wm["model.layers.99.mlp.up_proj.weight"] = "model.safetensors"
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    run_bad(cli, tiny_copy, tmp_path, "model.layers.99.mlp.up_proj.weight", "model.safetensors")


def test_truncated_safetensors(cli, tiny_copy, tmp_path):
    f = tiny_copy / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    run_bad(cli, tiny_copy, tmp_path, "model.safetensors", "truncated")


def test_corrupt_header(cli, tiny_copy, tmp_path):
    f = tiny_copy / "model.safetensors"
    data = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n // 2] = ord("\x01")
    f.write_bytes(bytes(data))
    run_bad(cli, tiny_copy, tmp_path, "model.safetensors", "not a complete safetensors file")


def test_already_quantized_by_config(cli, tiny_copy, tmp_path):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    run_bad(cli, tiny_copy, tmp_path, "already quantized", "gptq")


def test_already_quantized_by_tensors(cli, tiny, tmp_path):
    assert cli("fp8", tiny, "-o", tmp_path / "fp8").code == 0
    cfg = json.loads((tmp_path / "fp8" / "config.json").read_text())
    del cfg["quantization_config"]  # a quantized checkpoint whose config lost its block
    (tmp_path / "fp8" / "config.json").write_text(json.dumps(cfg))
    run_bad(cli, tmp_path / "fp8", tmp_path, "already quantized", "fp8")


def test_fp16_accepted_with_notice(cli, tiny_copy, tmp_path):
    state = load_file(tiny_copy / "model.safetensors")
    save_file({k: v.to(torch.float16) for k, v in state.items()}, tiny_copy / "model.safetensors")
    r = cli("fp8", tiny_copy, "-o", tmp_path / "out")
    assert r.code == 0, r.err
    assert "notice" in r.err and "F16" in r.err


def test_not_enough_disk(cli, tiny, tmp_path, monkeypatch):
    import quantkit.output

    real = shutil.disk_usage
    monkeypatch.setattr(quantkit.output.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    run_bad(cli, tiny, tmp_path, "not enough free disk", "GiB")


def test_existing_output_needs_force(cli, tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("fp8", tiny, "-o", out)
    assert_one_line_error(r, "already exists", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --force replaces only an earlier quantkit artifact, never a folder of the user's
    assert_one_line_error(cli("fp8", tiny, "-o", out, "--force"), "not a quantkit artifact")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    out.rmdir()
    assert cli("fp8", tiny, "-o", out).code == 0
    (out / "extra.txt").write_text("left by the earlier artifact")
    r = cli("fp8", tiny, "-o", out, "--force")
    assert r.code == 0, r.err
    assert not (out / "extra.txt").exists() and (out / "quantkit.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_hub_id_offline(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    r = cli("fp8", "someorg/some-model-that-is-not-cached", "-o", tmp_path / "out")
    assert_one_line_error(r, "someorg/some-model-that-is-not-cached", "Hub cannot be reached")
    assert nothing_created(tmp_path)


def test_unknown_builtin(cli, tmp_path):
    run_bad(cli, "builtin:gpt5", tmp_path, "no built-in model named gpt5", "builtin:smollm2")


def test_help_lists_every_command(cli):
    r = cli("--help")
    assert r.code == 0
    for command in ["fp8", "gptq", "awq", "exl2", "gguf", "verify", "vram", "inspect", "publish", "run"]:
        assert f" {command} " in r.out, command


@pytest.mark.parametrize("args, needles", [
    (["fp8", "--bogus"], ["No such option: --bogus", "quantkit fp8 --help"]),
    (["fp8"], ["Missing argument", "quantkit fp8 --help"]),
    (["gptq", "x", "--samples", "0"], ["--samples", "greater than or equal to 1"]),
    (["vram", "x", "--context"], ["--context", "requires an argument"]),
])
def test_bad_command_lines_are_one_line_usage_errors(cli, args, needles):
    """typer >= 0.29 raises its own copy of click's exceptions; they still end as one line and exit 2."""
    r = cli(*args)
    assert r.code == 2
    assert_one_line_error(r, *needles)


def test_no_command_shows_help(cli):
    r = cli()
    assert r.code == 2 and "Traceback" not in r.err
    assert " fp8 " in r.out + r.err
