"""`quantkit run RECIPE.yaml`: schema, gates, resume, the release report, and the SmolLM2 release end to end."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from hubserver import hub  # noqa: F401  (a fixture: the local Hub endpoint)
from quantkit import output, recipe as recipes
from quantkit import manifest as manifests

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY_RECIPE = """\
recipe: 1
name: tiny-release
source: {source}
verify:
  tokens: 2048
  ctx: 256
  gates: {{max_ppl_ratio: 3.0}}
artifacts:
  - format: fp8
  - format: gguf
    options: {{type: [Q8_0, Q4_0]}}
  - format: gptq
    name: tiny-gptq
    options: {{samples: 4, seq_len: 64, format: gptq}}
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --- the schema ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    spec, _ = recipes.load(path)
    assert spec.artifacts


def test_reference_recipes_cover_the_releases():
    by_source = {recipes.load(p)[0].source: recipes.load(p)[0] for p in (ROOT / "recipes").glob("*.yaml")}
    formats = lambda s: sorted(a.format for a in by_source[s].artifacts)
    assert formats("meta-llama/Llama-3.1-8B-Instruct") == ["awq", "fp8", "gguf", "gptq"]
    assert formats("nvidia/Llama-3.1-Nemotron-70B-Instruct-HF") == ["fp8"]
    exl2 = by_source["meta-llama/Llama-3.2-1B"].artifacts[0]
    assert (exl2.format, exl2.options.bpw, exl2.options.head_bits) == ("exl2", 8.0, 8)
    smol = by_source["builtin:smollm2"]
    assert sorted(a.format for a in smol.artifacts) == ["awq", "exl2", "fp8", "gguf", "gptq"]
    assert all(a.publish is None for a in smol.artifacts)


@pytest.mark.parametrize("fmt", list(recipes.OPTION_MODELS))
def test_help_and_recipe_schema_list_the_same_options(cli, fmt, monkeypatch):
    """The command's --help and the recipe's JSON schema both come from the backend's options model:
    every recipe field is a flag in the help, with its default, and the help has no other option."""
    schema = recipes.Recipe.model_json_schema()
    art = schema["$defs"][f"{fmt.upper()}Artifact"]
    opts_ref = art["properties"]["options"]["$ref"].rsplit("/", 1)[-1]
    fields = schema["$defs"][opts_ref].get("properties", {})
    monkeypatch.setenv("COLUMNS", "250")
    help_text = cli(fmt, "--help").out
    listed = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))
    common = {"--output", "--force", "--allow-pickle", "--eval", "--eval-text", "--eval-tokens", "--json", "--help"}
    assert listed - common == {"--" + f.replace("_", "-") for f in fields}, fmt
    for f, spec in fields.items():
        if spec.get("default") not in (None, False):
            assert str(spec["default"]) in help_text, (fmt, f, spec["default"])


BAD = [
    ("recipe: 1\nname: x\nsource: s\nartifacts:\n  - format: gptq\n    options:\n      samples: 0\n",
     ":7:", "artifacts[0].options.samples"),
    ("recipe: 1\nname: x\nsource: s\nartifacts:\n  - format: awq\n    options: {grid: 2}\n",
     ":6:", "artifacts[0].options.grid", "greater than or equal to 3"),
    ("recipe: 1\nname: x\nsource: s\nartifacts:\n  - format: gguf\n    options: {types: Q4_K_M}\n",
     ":6:", "artifacts[0].options.types", "unknown field"),
    ("recipe: 1\nname: x\nsource: s\nartifacts:\n  - format: exl2\n    options:\n      bpw: 4\n      head_bits: 7\n",
     ":8:", "artifacts[0].options.head_bits", "choose one of"),
    ("recipe: 1\nname: x\nsource: s\nartifacts:\n  - format: fp9\n", ":5:", "unknown format"),
    ("recipe: 1\nname: x\nartifacts:\n  - format: fp8\n", ":1:", "source", "missing"),
    ("recipe: 1\nname: x\nsource: s\nartifacts:\n  - format: fp8\n    name: ../outside\n", ":6:", "artifacts[0].name"),
    ("recipe: 1\nname: /etc\nsource: s\nartifacts: [{format: fp8}]\n", ":2:", "name"),
    ("recipe: 1\nname: x\nsource: s\nartifacts:\n  - format: fp8\n    publish: {repo: no-org}\n", ":6:", "publish.repo", "ORG/NAME"),
    ("recipe: 1\nname: x\nsource: s\nx: &a [1]\ny: *a\nartifacts: [{format: fp8}]\n", ":4:", "anchors"),
    ("recipe: 1\nname: x\nname: y\nsource: s\nartifacts: [{format: fp8}]\n", ":3:", "name is given twice"),
    ("recipe: 1\nname: x\nsource: s\nartifacts: [\n", ":5:", "not valid YAML"),
    ("recipe: 2\nname: x\nsource: s\nartifacts: [{format: fp8}]\n", ":1:", "recipe"),
    ("- just\n- a list\n", "a YAML mapping"),
    ("recipe: 1\nname: x\nsource: s\ntoken: hf_abc\nartifacts: [{format: fp8}]\n", ":4:", "token", "unknown field"),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[-1])
def test_bad_recipes_name_line_and_field(cli, tmp_path, case):
    text, *needles = case
    r = cli("run", write(tmp_path, text), "-o", tmp_path / "rel", cwd=tmp_path)
    assert r.code == 1
    assert_one_line_error(r, "r.yaml", *needles)
    assert not (tmp_path / "rel").exists()


def test_check_shows_plan_without_converting(cli, tmp_path, tiny):
    r = cli("run", write(tmp_path, TINY_RECIPE.format(source=tiny)), "--check", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert [a["format"] for a in r.json["artifacts"]] == ["fp8", "gguf", "gptq"]
    assert r.json["artifacts"][1]["options"]["type"] == "Q8_0,Q4_0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_same_output_name_twice_refused(cli, tmp_path, tiny):
    text = f"recipe: 1\nname: x\nsource: {tiny}\nartifacts:\n  - format: fp8\n    name: a\n  - format: gguf\n    name: a\n"
    r = cli("run", write(tmp_path, text), "-o", tmp_path / "rel", cwd=tmp_path)
    assert_one_line_error(r, "both write a")
    assert not any((tmp_path / "rel").glob("a*"))


def test_symlink_out_of_the_release_folder_refused(cli, tmp_path, tiny):
    rel = tmp_path / "rel"
    rel.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (rel / "a").symlink_to(tmp_path / "elsewhere")
    text = f"recipe: 1\nname: x\nsource: {tiny}\nartifacts:\n  - format: fp8\n    name: a\n"
    r = cli("run", write(tmp_path, text), "-o", rel, cwd=tmp_path)
    assert_one_line_error(r, "outside")
    assert list((tmp_path / "elsewhere").iterdir()) == []


# --- running ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory, tiny):
    """The tiny recipe run once through the CLI (module-scoped: several tests read it)."""
    from quantkit.cli import main

    d = tmp_path_factory.mktemp("release")
    recipe = write(d, TINY_RECIPE.format(source=tiny))
    return d, recipe, _run_main(main, ["run", str(recipe), "-o", str(d / "rel"), "--json"])


def _run_main(main, args):
    import contextlib
    import io
    import sys

    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["quantkit", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def test_recipe_runs_every_artifact_with_card_and_report(tiny_release):
    d, _, (code, out, err) = tiny_release
    assert code == 0, err
    report = json.loads(out)
    rel = d / "rel"
    assert report["status"] == "complete"
    names = [a["name"] for a in report["artifacts"]]
    assert names == ["tiny-llama-FP8-Dynamic", "tiny-llama-GGUF", "tiny-gptq"]
    for a in report["artifacts"]:
        folder = rel / a["name"]
        m = manifests.read_dict(folder)
        assert a["status"] == "built" and a["verify"] == "measured"
        assert m["produced_by"]["recipe"] == "r.yaml" and "format: gptq" in m["produced_by"]["recipe_text"]
        assert output.changed_files(folder, m) == []
        card = (folder / "README.md").read_text()
        assert "- quantkit" in card and "r.yaml" in card  # tiny-llama has no Hub id: no base_model
    gguf = report["artifacts"][1]
    assert sorted(Path(r["artifact"]).name for r in gguf["results"]) == ["tiny-llama-Q4_0.gguf", "tiny-llama-Q8_0.gguf"]
    # the report's figures are the ones recorded in each manifest
    m = manifests.read_dict(rel / "tiny-gptq")
    assert report["artifacts"][2]["results"][0]["kld_mean"] == m["verify"]["kld_mean"]
    assert m["options"]["format"] == "gptq" and m["parameters"]["layout"] == "gptq"
    assert (rel / "release.png").read_bytes()[:8] == PNG_MAGIC
    md = (rel / "release.md").read_text()
    assert md.count("| tiny-") == 4  # fp8, two GGUF files, gptq
    assert f"{m['verify']['ppl_ratio']:.4f}" in md
    assert json.loads((rel / "release.json").read_text())["status"] == "complete"


def test_rerun_reuses_complete_artifacts(tiny_release, cli):
    d, recipe, _ = tiny_release
    rel = d / "rel"
    before = {p: p.stat().st_mtime_ns for p in rel.rglob("*") if p.is_file() and not p.name.startswith("release.")}
    r = cli("run", recipe, "-o", rel, "--json", cwd=d)
    assert r.code == 0, r.err
    assert [(a["status"], a["verify"]) for a in r.json["artifacts"]] == [("reused", "reused")] * 3
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # nothing rewritten


def test_crashed_release_resumes_with_the_missing_artifact(tiny_release, cli, tmp_path):
    """A copy of the finished release with one artifact gone (as if the run had died there)."""
    import shutil

    d, recipe, _ = tiny_release
    rel = tmp_path / "rel"
    shutil.copytree(d / "rel", rel)
    shutil.rmtree(rel / "tiny-llama-GGUF")
    (rel / ".tiny-llama-GGUF.partial-999999").mkdir()  # a dead run's staging folder
    r = cli("run", recipe, "-o", rel, "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert [a["status"] for a in r.json["artifacts"]] == ["reused", "built", "reused"]
    assert not any(rel.glob(".*partial*"))
    assert output.changed_files(rel / "tiny-llama-GGUF", manifests.read_dict(rel / "tiny-llama-GGUF")) == []


def test_changed_options_need_force(tiny_release, cli, tmp_path):
    import shutil

    d, recipe, _ = tiny_release
    rel = tmp_path / "rel"
    shutil.copytree(d / "rel", rel)
    changed = write(tmp_path, recipe.read_text().replace("samples: 4,", "samples: 5,"))
    r = cli("run", changed, "-o", rel, cwd=tmp_path)
    assert_one_line_error(r, "tiny-gptq", "other options (samples)", "--force")
    assert manifests.read_dict(rel / "tiny-gptq")["options"]["samples"] == 4
    r = cli("run", changed, "-o", rel, "--force", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert manifests.read_dict(rel / "tiny-gptq")["options"]["samples"] == 5
    assert [a["status"] for a in r.json["artifacts"]] == ["reused", "reused", "built"]  # only the changed one


def test_failed_gate_stops_the_release_before_publishing(cli, tmp_path, tiny):
    """All artifacts are built, then verified in one pass; a gate that fails stops the release there."""
    text = TINY_RECIPE.format(source=tiny).replace(
        "  - format: gguf\n", "    gates: {max_kld: 0.0000001}\n  - format: gguf\n")
    r = cli("run", write(tmp_path, text), "-o", tmp_path / "rel", cwd=tmp_path)
    assert r.code == 1
    err = [l for l in r.err.splitlines() if l.startswith("quantkit: error")]
    assert len(err) == 1 and "gate failed for tiny-llama-FP8-Dynamic" in err[0] and "max_kld" in err[0]
    assert "Traceback" not in r.err
    rel = tmp_path / "rel"
    report = json.loads((rel / "release.json").read_text())
    assert report["status"] == "failed"
    assert [a["status"] for a in report["artifacts"]] == ["failed gate", "built", "built"]
    assert all(a["verify"] == "measured" for a in report["artifacts"])  # one pass scored all three
    assert "failed gate" in (rel / "release.md").read_text()


def test_recipe_paths_are_relative_to_the_recipe(cli, tmp_path, tiny):
    """A local source and a calibration file named relative to the recipe's folder, run from elsewhere."""
    import shutil

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copytree(tiny, proj / "model")
    (proj / "calib.txt").write_text((ROOT / "quantkit" / "data" / "calibration.txt").read_text()[:60_000])
    text = ("recipe: 1\nname: rel\nsource: model\nartifacts:\n  - format: gptq\n    verify: false\n"
            "    options: {samples: 2, seq_len: 64, calibration: calib.txt}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("run", write(proj, text), "--json", cwd=elsewhere)
    assert r.code == 0, r.err
    m = manifests.read_dict(elsewhere / "rel" / "model-GPTQ-INT4")
    assert m["source"]["path"] == str((proj / "model").resolve())
    assert "calib.txt" in m["parameters"]["calibration"]
    assert r.json["artifacts"][0]["verify"] == "off"


PUBLISH_RECIPE = """\
recipe: 1
name: pub
source: {source}
verify: {{tokens: 1024, ctx: 256, gates: {{max_kld: {kld}}}}}
artifacts:
  - format: fp8
    publish: {{repo: my-org/tiny-fp8, private: true}}
  - format: gguf
    options: {{type: Q8_0}}
    publish: {{repo: my-org/tiny-gguf, revision: q8}}
"""


def test_release_publishes_after_all_gates_and_rerun_uploads_nothing(cli, hub, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    recipe = write(tmp_path, PUBLISH_RECIPE.format(source=tiny, kld=1.0))
    r = cli("run", recipe, "-o", tmp_path / "rel", "--org", "quantkit-test", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    fp8, gguf = r.json["artifacts"]
    assert fp8["published"]["repo_id"] == "quantkit-test/tiny-fp8" and fp8["published"]["private"] is True
    assert gguf["published"]["revision"] == "q8"
    files = hub.files("quantkit-test/tiny-fp8")
    assert files["model.safetensors"] == (tmp_path / "rel" / fp8["name"] / "model.safetensors").read_bytes()
    assert b"quantkit-test/tiny-fp8" in files["README.md"]  # the card names the repo it was published to
    assert "tiny-llama-Q8_0.gguf" in hub.files("quantkit-test/tiny-gguf", "q8")
    assert "quantkit-test/tiny-gguf" in (tmp_path / "rel" / "release.md").read_text()
    assert hub.token not in r.out + r.err + "".join(p.read_text(errors="ignore") for p in (tmp_path / "rel").rglob("*.json"))
    commits = hub.count("POST", "/commit/")
    r = cli("run", recipe, "-o", tmp_path / "rel", "--org", "quantkit-test", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert [a["published"]["uploaded"] for a in r.json["artifacts"]] == [[], []]
    assert hub.count("POST", "/commit/") == commits


def test_failed_gate_publishes_nothing(cli, hub, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    recipe = write(tmp_path, PUBLISH_RECIPE.format(source=tiny, kld=0.0000001))
    r = cli("run", recipe, "-o", tmp_path / "rel", "--org", "quantkit-test", cwd=tmp_path)
    assert r.code == 1 and "gate failed" in r.err
    assert hub.requests == [] and not hub.repos


# --- the built-in SmolLM2 release, as CI runs it -----------------------------------------


@pytest.mark.slow
def test_smollm2_recipe_end_to_end(cli, tmp_path, smollm2):
    r = cli("run", ROOT / "recipes" / "smollm2.yaml", "-o", tmp_path / "rel", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    report = r.json
    assert report["status"] == "complete"
    assert [a["format"] for a in report["artifacts"]] == ["fp8", "gptq", "awq", "gguf", "exl2"]
    for a in report["artifacts"]:
        folder = Path(a["folder"])
        m = manifests.read_dict(folder)
        assert a["status"] == "built" and a["results"], a["name"]
        assert output.changed_files(folder, m) == []
        from huggingface_hub import ModelCard

        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert card.data.license == "apache-2.0"
        for res in a["results"]:
            assert res["ppl_ratio"] <= a["gates"]["max_ppl_ratio"] and res["kld_mean"] <= a["gates"]["max_kld"]
    by = {a["format"]: a for a in report["artifacts"]}
    assert by["fp8"]["results"][0]["ppl_ratio"] < 1.05
    assert by["exl2"]["results"][0]["kld_mean"] < by["gptq"]["results"][0]["kld_mean"]  # 8 bits beat 4
    assert (tmp_path / "rel" / "release.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "rel" / "release.md").read_text().count("| SmolLM2-135M-Instruct") == 6


def test_check_imports_no_torch(tmp_path, tiny):
    """`quantkit run RECIPE --check` validates against every backend's options model without
    importing torch (docs/performance.md: a fraction of a second)."""
    import subprocess
    import sys

    recipe = write(tmp_path, TINY_RECIPE.format(source=tiny))
    code = ("import sys, runpy\n"
            f"sys.argv = ['quantkit', 'run', {str(recipe)!r}, '--check', '--json']\n"
            "try:\n    runpy.run_module('quantkit', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["artifacts"][0]["format"] == "fp8"


def test_artifacts_recorded_with_the_old_option_names_still_match():
    """Manifests written before the options models recorded `types`, `layout`, `n_grid`, `shard_mb`:
    a recipe asking for the same options still reuses them."""
    from quantkit import release
    from quantkit.manifest import Manifest

    old = Manifest(backend="awq", options={"layout": "awq", "group_size": 128, "samples": 16, "seq_len": 256,
                                           "calibration": None, "n_grid": 5}, source={"spec": "s"})
    asked = recipes.OPTION_MODELS["awq"](format="awq", samples=16, seq_len=256, grid=5)
    assert release.matches(old, "awq", asked.model_dump(mode="json"), "s") is None
    other = recipes.OPTION_MODELS["awq"](format="awq", samples=16, seq_len=256, grid=6)
    assert "grid" in release.matches(old, "awq", other.model_dump(mode="json"), "s")


def test_gguf_with_imatrix_verifies_its_models_not_the_imatrix(cli, tmp_path, tiny):
    """imatrix.gguf sits beside the models in the folder: a recipe run scores the models the
    backend names (verify_targets), not every *.gguf."""
    text = (f"recipe: 1\nname: rel\nsource: {tiny}\nverify: {{tokens: 1024, ctx: 128}}\nartifacts:\n"
            "  - format: gguf\n    options: {type: [Q4_K_M], imatrix: true, imatrix_chunks: 2}\n")
    r = cli("run", write(tmp_path, text), "-o", tmp_path / "rel", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    (art,) = r.json["artifacts"]
    assert (tmp_path / "rel" / art["name"] / "imatrix.gguf").is_file()
    assert [Path(x["artifact"]).name for x in art["results"]] == ["tiny-llama-Q4_K_M.gguf"]
