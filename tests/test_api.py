"""The Python API: docs/api.md's example runs as written, and gives the files the CLI gives."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import quantkit
from quantkit import output
from quantkit import manifest as manifests

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return blocks[0]


def test_doc_example_runs_and_matches_the_cli(tmp_path, monkeypatch, cli, tiny):
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example(), str(DOC), "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines[0] == str(["tiny-llama-Q8_0.gguf", "tiny-llama-Q4_K_M.gguf"]), lines
    scored = [line.split() for line in lines[1:4]]
    assert [Path(s[0]).name for s in scored] == ["tiny-llama-Q8_0.gguf", "tiny-llama-Q4_K_M.gguf", "tiny-fp8"]
    for _, ratio, kld in scored:
        assert 0.9 < float(ratio) < 1.5 and 0 <= float(kld) < 1.0
    weights, total = map(int, lines[4].split())
    assert 0 < weights < total

    manifest = manifests.read_dict(tmp_path / "out" / "tiny-fp8")
    assert manifest["produced_by"] == {"api": "quantkit.convert"} and "verify" in manifest  # recorded

    r = cli("gguf", tiny, "--type", "Q8_0,Q4_K_M", "-o", tmp_path / "cli-gguf", "--json")
    assert r.code == 0, r.err
    for name in ("Q8_0", "Q4_K_M"):
        api_file = tmp_path / "out" / "tiny-gguf" / f"tiny-llama-{name}.gguf"
        cli_file = tmp_path / "cli-gguf" / f"tiny-llama-{name}.gguf"
        assert output.sha256_file(api_file) == output.sha256_file(cli_file), name


def test_options_models_check_their_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="head_bits"):
        quantkit.EXL2Options(head_bits=7)
    with pytest.raises(ValidationError, match="grid"):
        quantkit.AWQOptions(grid=2)
    assert quantkit.GGUFOptions(type=["Q8_0", "Q4_K_M"]).type == "Q8_0,Q4_K_M"


def test_convert_refuses_what_is_not_an_options_model(tmp_path):
    with pytest.raises(quantkit.QuantkitError, match="unknown format"):
        quantkit.convert("builtin:tiny-llama", "fp9", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_run_recipe_check_is_the_cli_check(tmp_path, cli, tiny):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"recipe: 1\nname: rel\nsource: {tiny}\nartifacts:\n  - format: gguf\n    options: {{type: [Q8_0]}}\n")
    plan = quantkit.run_recipe(recipe, check=True)
    assert plan == cli("run", recipe, "--check", "--json").json
    assert plan["artifacts"][0]["options"]["type"] == "Q8_0" and not (tmp_path / "rel").exists()
