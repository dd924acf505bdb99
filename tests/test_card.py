"""Model cards: every artifact folder gets a README.md with Hub metadata, run snippets, verify and
vram tables and provenance, written from its quantkit.json and read back here with huggingface_hub."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from quantkit import card, fixtures, output
from quantkit.memory import estimate

SOURCE_CARD = """---
license: mit
language:
- fr
tags:
- not-inherited
base_model: someone/else
---

# A source model
"""


def manifest(folder: Path) -> dict:
    return json.loads((folder / output.MANIFEST).read_text())


def load(folder: Path):
    """The written card, parsed as the Hub parses it."""
    return ModelCard.load(folder / output.CARD)


def verify_cells(ev: dict) -> list[str]:
    """The verify figures as the card must show them."""
    return [f"{ev['ppl_source']:.3f} ± {ev['ppl_source_err']:.3f}", f"{ev['ppl_quant']:.3f} ± {ev['ppl_quant_err']:.3f}",
            f"{ev['ppl_ratio']:.4f}", f"{ev['kld_mean']:.5f} / {ev['kld_p99']:.4f}",
            f"{100 * ev['top1_agreement']:.2f}%", f"{ev['tokens_scored']:,}"]


def test_fp8_card_metadata_verify_vram_and_provenance(cli, tiny, tmp_path):
    out = tmp_path / "tiny-FP8"
    r = cli("fp8", tiny, "-o", out, "--eval", "--eval-tokens", "2048")
    assert r.code == 0, r.err
    m = manifest(out)
    mc = load(out)
    assert mc.data.library_name == "transformers" and mc.data.pipeline_tag == "text-generation"
    assert {"quantkit", "fp8", "compressed-tensors", "vllm"} <= set(mc.data.tags)
    meta = mc.data.to_dict()
    assert "base_model" not in meta and "base_model_relation" not in meta  # tiny-llama has no Hub id
    assert "license" not in meta and "language" not in meta  # and no source card
    text = (out / output.CARD).read_text()
    assert m["card_sha256"] == output.sha256_file(out / output.CARD) and card.is_generated(out, m)
    # verify table: the manifest's figures, formatted
    for cell in verify_cells(m["verify"]):
        assert f"| {cell}" in text, cell
    assert m["verify"]["text"] in text
    # vram table: quantkit.memory's figures for this folder at the model's only context (2048)
    est = estimate(str(out), "fp8", [2048])
    row = est.contexts[0]
    assert (f"| 2,048 | {output.human_bytes(row['weights_bytes'])} | {output.human_bytes(row['kv_cache_bytes'])} "
            f"| {output.human_bytes(row['overhead_bytes'])} | {output.human_bytes(row['total_bytes'])} |") in text
    # provenance: the exact command, the version, the date, the source's weight hash
    assert f"```bash\n{m['produced_by']['command']}\n```" in text
    assert m["produced_by"]["command"].startswith("quantkit fp8 ") and "--eval-tokens 2048" in m["produced_by"]["command"]
    assert f"quantkit {m['quantkit_version']}" in text and m["created"] in text
    assert m["source"]["weight_files"]["model.safetensors"]["sha256"] in text
    assert "| model.safetensors |" in text
    # without a repo id the snippets name a placeholder and say so; with one they name it
    assert "vllm serve YOUR_USER/tiny-FP8" in text and "Not on the Hub yet" in text
    card.write_card(out, m, repo_id="acme/tiny-FP8")
    text = (out / output.CARD).read_text()
    assert "vllm serve acme/tiny-FP8" in text and 'model_id = "acme/tiny-FP8"' in text
    assert '"model": "acme/tiny-FP8"' in text
    assert "YOUR_USER" not in text and "Not on the Hub yet" not in text
    assert "--quantization" not in text.split("### vLLM")[1].split("###")[0].split("```")[1]  # no flag needed
    assert card.is_generated(out, manifest(out))


def test_license_and_language_inherited_from_source_card(cli, tiny_copy, tmp_path):
    (tiny_copy / "README.md").write_text(SOURCE_CARD)
    out = tmp_path / "x"
    assert cli("fp8", tiny_copy, "-o", out).code == 0
    m = manifest(out)
    assert m["source"]["card_metadata"] == {"license": "mit", "language": ["fr"]}
    data = load(out).data
    assert data.license == "mit" and data.language == ["fr"]
    assert "not-inherited" not in data.tags
    assert data.base_model is None  # a local folder's card does not make it a Hub model


def test_base_model_is_the_sources_hub_id(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(fixtures.UPSTREAM_IDS, "tiny-llama", "acme/tiny-llama-base")
    out = tmp_path / "x"
    assert cli("fp8", "builtin:tiny-llama", "-o", out).code == 0
    data = load(out).data
    assert data.base_model == "acme/tiny-llama-base"
    assert data.to_dict()["base_model_relation"] == "quantized"
    assert "[acme/tiny-llama-base](https://huggingface.co/acme/tiny-llama-base)" in (out / output.CARD).read_text()


def test_card_rewritten_after_verify_and_hand_edits_kept(cli, tiny, tmp_path):
    out = tmp_path / "x"
    assert cli("fp8", tiny, "-o", out).code == 0
    before = (out / output.CARD).read_text()
    assert "Not verified yet" in before and "```bash\nquantkit verify x\n```" in before
    assert "| PPL ratio |" not in before
    r = cli("verify", out, "--tokens", "2048", "--json")
    assert r.code == 0, r.err
    m = manifest(out)
    after = (out / output.CARD).read_text()
    assert "Not verified yet" not in after
    for cell in verify_cells(m["verify"]):
        assert f"| {cell}" in after, cell
    assert card.is_generated(out, m)
    # a hand edit is seen, and survives the next write (a later verify), unless forced
    (out / output.CARD).write_text(after + "\nMy own notes.\n")
    assert not card.is_generated(out, m)
    card.write_card(out, m)
    assert (out / output.CARD).read_text().endswith("My own notes.\n")
    assert not card.is_generated(out, manifest(out))
    card.write_card(out, m, force=True)
    assert (out / output.CARD).read_text() == after and card.is_generated(out, manifest(out))


def test_gguf_card_names_files_runtimes_and_per_file_figures(cli, tiny_copy, tmp_path):
    out = tmp_path / "tiny-GGUF"
    r = cli("gguf", tiny_copy, "--type", "Q4_0,Q8_0", "-o", out, "--eval", "--eval-tokens", "2048")
    assert r.code == 0, r.err
    m = manifest(out)
    files = m["parameters"]["files"]
    assert len(files) == 2 and set(m["verify_files"]) == set(files)
    card.write_card(out, m, repo_id="acme/tiny-GGUF")
    mc = load(out)
    assert mc.data.library_name == "gguf" and {"gguf", "llama.cpp", "ollama"} <= set(mc.data.tags)
    text = (out / output.CARD).read_text()
    for fname, info in files.items():
        t = info["file_type"]
        assert fname in text and f"llama-cli -hf acme/tiny-GGUF:{t}" in text and f"ollama run hf.co/acme/tiny-GGUF:{t}" in text
        row = next(line for line in text.splitlines() if line.startswith(f"| {fname} | {m['verify_files'][fname]['ppl_source']:.3f}"))
        for cell in verify_cells(m["verify_files"][fname]):
            assert cell in row, (cell, row)
        w = estimate(str(tiny_copy), f"gguf:{t}", [2048]).weights_bytes
        assert f"| {fname} | 2,048 | {output.human_bytes(w)} |" in text
    first = next(iter(files))
    modelfile = first[: -len(".gguf")] + ".Modelfile"
    assert (out / modelfile).is_file()
    assert f"hf download acme/tiny-GGUF {first} {modelfile} --local-dir tiny-GGUF" in text
    assert f"-f {modelfile}\n" in text and f"llama-server -hf acme/tiny-GGUF:{files[first]['file_type']}" in text
    # the source gone: the card still renders, the memory table gives way to one line
    shutil.rmtree(tiny_copy)
    gone = card.render(out, m, "acme/tiny-GGUF")
    assert "No memory table" in gone and "| 2,048 |" not in gone
    assert gone.split("## Memory")[0] == text.split("## Memory")[0]


def test_gguf_card_without_verify_says_how(cli, tiny, tmp_path):
    out = tmp_path / "g"
    assert cli("gguf", tiny, "--type", "Q8_0", "-o", out).code == 0
    text = (out / output.CARD).read_text()
    name = next(iter(manifest(out)["parameters"]["files"]))
    assert f"quantkit verify g/{name}" in text and "Not verified yet" in text


@pytest.mark.parametrize("text", [
    "---\nlicense: [unclosed\n---\n",                                   # not YAML
    "---\n- a list\n- not a mapping\n---\n",                            # not a mapping
    "---\nlicense: !!python/object/apply:os.system ['touch PWNED']\n---\n",  # a tag that would run code
    "---\nlicense: {a: 1}\nlanguage: [1, 2]\n---\n",                    # wrong types
    "---\nlicense: \"mit\\nextra: line\"\n---\n",                       # a value spanning lines
    "# no front matter\nlicense: mit\n",
    "",
    "---\nlicense: " + "[" * 1200 + "]" * 1200 + "\n---\n",             # nested too deep
])
def test_malformed_source_card_gives_nothing(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text(text)
    assert card.source_metadata(tmp_path) == {}
    assert not (tmp_path / "PWNED").exists()


def test_source_metadata_keeps_only_license_and_language(tmp_path):
    assert card.source_metadata(tmp_path) == {}  # no card
    (tmp_path / "README.md").write_bytes(b"---\nlicense: mit\n\xff\n---\n")  # not UTF-8
    assert card.source_metadata(tmp_path) == {}
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: acme-license\nlicense_link: LICENSE\n"
                                        "language: en\npipeline_tag: text-classification\ntags: [x]\n---\n")
    assert card.source_metadata(tmp_path) == {"license": "other", "license_name": "acme-license",
                                              "license_link": "LICENSE", "language": ["en"]}


def test_relative_license_link_points_at_the_base_model():
    m = {"method": "fp8-dynamic", "source": {"upstream_id": "acme/base", "card_metadata": {
        "license": "other", "license_name": "acme", "license_link": "LICENSE", "language": ["en", 3]}}}
    meta = card.card_data(m).to_dict()
    assert meta["license_link"] == "https://huggingface.co/acme/base/blob/main/LICENSE"
    assert meta["base_model"] == "acme/base" and meta["base_model_relation"] == "quantized"
    assert "language" not in meta  # a manifest is held to what source_metadata returns


def test_render_deterministic_recipe_and_other_formats(cli, tiny, tmp_path):
    out = tmp_path / "x"
    assert cli("fp8", tiny, "-o", out).code == 0
    m = manifest(out)
    assert card.render(out, m) == card.render(out, json.loads(json.dumps(m))) == (out / output.CARD).read_text()
    # a recipe is shown as YAML; a command holding a fence cannot close the block
    recipe = {**m, "produced_by": {"recipe": "tiny.yaml", "recipe_text": "model: builtin:tiny-llama\nformats: [fp8]\n"}}
    assert "```yaml\nmodel: builtin:tiny-llama\nformats: [fp8]\n```" in card.render(out, recipe)
    odd = {**m, "produced_by": {"command": "quantkit fp8 'a```b'"}}
    assert "````bash\nquantkit fp8 'a```b'\n````" in card.render(out, odd)
    # the AutoGPTQ layout: vLLM without --quantization gptq, transformers through gptqmodel, int4 memory
    legacy = {**m, "backend": "gptq", "method": "gptq", "format": "gptq (AutoGPTQ layout)",
              "parameters": {"bits": 4, "group_size": 128, "symmetric": True, "layout": "gptq"}}
    text = card.render(out, legacy, "acme/x")
    assert "vllm serve acme/x\n" in text and "forces" in text and "pip install transformers accelerate optimum gptqmodel" in text
    w = estimate(str(out), "int4-g128:gptq", [2048]).weights_bytes
    assert f"| 2,048 | {output.human_bytes(w)} |" in text
    assert ModelCard(text).data.library_name == "transformers" and "compressed-tensors" not in ModelCard(text).data.tags
    # EXL2: exllamav2's own classes on the repo's folder, and plainly not checked in exllamav2
    exl2 = {**m, "backend": "exl2", "method": "exl2", "format": "exl2 (exllamav2 0.3.2 layout)",
            "parameters": {"bits": 4.0, "head_bits": 6, "bpw_achieved": 3.99}}
    text = card.render(out, exl2, "acme/x-exl2")
    for name in ("ExLlamaV2Config(\"x\")", "ExLlamaV2Cache(model, max_seq_len=2048", "ExLlamaV2Tokenizer(config)",
                 "ExLlamaV2DynamicGenerator(",
                 "hf download acme/x-exl2 --local-dir x"):
        assert name in text, name
    assert "not been loaded in exllamav2 itself" in text and "No memory table" in text  # not an EXL2 folder
    assert ModelCard(text).data.library_name == "exllamav2"
    # figures of an unknown shape do not break the card
    broken = {**m, "verify": {"ppl_source": "n/a"}}
    assert "not in a form this quantkit reads" in card.render(out, broken)


def test_card_asks_the_backend_and_names_no_format(tmp_path):
    """Format facts live in each backend's describe.py; the card only asks for them."""
    card_dir = Path(card.__file__).parent
    for path in card_dir.glob("*.py"):
        src = path.read_text()
        for method in ('"gguf"', '"exl2"', '"fp8-dynamic"', '"gptq"', '"awq"'):
            assert method not in src, (path.name, method)
    # a manifest no backend wrote: the manifest's own format name, no runtimes, no memory model
    (tmp_path / "config.json").write_text("{}")
    text = card.render(tmp_path, {"method": "mystery", "format": "mystery format", "parameters": {}})
    assert "mystery format quantization of" in text and "quantkit has no run instructions for this format." in text
    assert "no memory model for mystery" in text
    assert ModelCard(text).data.tags == ["quantkit"] and ModelCard(text).data.library_name is None


def test_gguf_description_verify_targets_and_snippet_rows(tmp_path):
    from quantkit.backends.registry import for_manifest

    m = {"method": "gguf", "files": {"m-Q4_0.gguf": {"bytes": 2048}, "m-Q4_0.Modelfile": {"bytes": 10},
                                     "m-Q8_0.gguf": {"bytes": 4096}},
         "parameters": {"files": {"m-Q4_0.gguf": {"file_type": "Q4_0"}, "m-Q8_0.gguf": {"file_type": "Q8_0"}},
                        "imatrix": {"chunks": 4}}}
    gguf = for_manifest(m)
    assert gguf.verify_targets(tmp_path, m) == [tmp_path / "m-Q4_0.gguf", tmp_path / "m-Q8_0.gguf"]
    rows = gguf.snippet_rows(m)
    assert [(r["file"], r["tag"], r["modelfile"]) for r in rows] == [("m-Q4_0.gguf", "Q4_0", "m-Q4_0.Modelfile"),
                                                                   ("m-Q8_0.gguf", "Q8_0", "")]
    facts = gguf.card(m)
    assert "imatrix" in facts.tags and "importance matrix from 4 chunks" in facts.summary
    steps = gguf.snippet_values(tmp_path, m, "acme/m", "m")["modelfile_steps"]
    assert "ollama create m-q4_0 -f m-Q4_0.Modelfile" in steps
    # every other format scores the folder itself
    assert for_manifest({"method": "fp8-dynamic"}).verify_targets(tmp_path, {}) == [tmp_path]


def test_description_modules_import_no_torch():
    import subprocess
    import sys

    code = ("import sys\n"
            "from quantkit.backends.registry import REGISTRY\n"
            "import quantkit.card, quantkit.memory\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
