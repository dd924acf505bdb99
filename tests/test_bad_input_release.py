"""Bad input to run, publish and vram: one line, nothing left behind, no credentials shown."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from hubserver import hub  # noqa: F401  (a fixture: the local Hub endpoint)
from test_publish import QUANTKIT, REPO, _env, art, card  # noqa: F401  (art and card are fixtures)

DATA = Path(__file__).parent / "data"
CONFIG_8B = DATA / "llama-3.1-8b-config.json"  # max_position_embeddings 131072


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --- 1. YAML tags in a recipe ----------------------------------------------------------------------
TAGGED = [
    ("recipe: 1\nname: !foo x\nsource: s\nartifacts: [{format: fp8}]\n", ":2:"),
    ('recipe: 1\nname: x\nsource: !!python/object/apply:os.system ["touch {marker}"]\nartifacts: [{format: fp8}]\n', ":3:"),
    ('recipe: 1\nname: !!str "x"\nsource: s\nartifacts: [{format: fp8}]\n', ":2:"),
    ("recipe: 1\nname: ! x\nsource: s\nartifacts: [{format: fp8}]\n", ":2:"),
    ("recipe: 1\nname: x\nsource: s\nverify: !!map {tokens: 64}\nartifacts: [{format: fp8}]\n", ":4:"),
    ("recipe: 1\nname: x\nsource: s\nartifacts: !!seq\n  - format: fp8\n", ":4:"),
]


@pytest.mark.parametrize("text,line", TAGGED, ids=["local", "python", "str", "non-specific", "map", "seq"])
def test_recipe_with_a_yaml_tag_is_refused(cli, tmp_path, text, line):
    marker = tmp_path / "ran"
    recipe = write(tmp_path, text.replace("{marker}", str(marker)))
    for args in ((), ("--check",)):
        r = cli("run", recipe, "-o", tmp_path / "rel", *args, cwd=tmp_path)
        assert_one_line_error(r, "r.yaml" + line, "tags", "not allowed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]  # nothing ran, nothing was created


# --- 2. a run refused before any work leaves no folder; unusable -o is one line ----------------------
def test_run_refused_before_work_leaves_no_release_folder(cli, tmp_path, tiny):
    missing = f"recipe: 1\nname: rel\nsource: {tmp_path / 'no-such-model'}\nartifacts: [{{format: fp8}}]\n"
    recipe = write(tmp_path, missing)
    r = cli("run", recipe, "-o", tmp_path / "a" / "b" / "rel", cwd=tmp_path)
    assert_one_line_error(r, "no-such-model", "no such folder")
    r = cli("run", recipe, cwd=tmp_path)  # the default folder, ./rel
    assert_one_line_error(r, "no-such-model")
    twice = f"recipe: 1\nname: rel\nsource: {tiny}\nartifacts: [{{format: fp8, name: a}}, {{format: gguf, name: a}}]\n"
    r = cli("run", write(tmp_path, twice, "twice.yaml"), "-o", tmp_path / "new", cwd=tmp_path)
    assert_one_line_error(r, "both write a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "twice.yaml"]

    (tmp_path / "mine").mkdir()  # a folder that was there before is left as it was
    r = cli("run", recipe, "-o", tmp_path / "mine", cwd=tmp_path)
    assert_one_line_error(r, "no-such-model")
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_run_output_that_cannot_be_created_is_one_line(cli, tmp_path, tiny):
    recipe = write(tmp_path, f"recipe: 1\nname: rel\nsource: {tiny}\nartifacts: [{{format: fp8}}]\n")
    (tmp_path / "afile").write_text("x")
    r = cli("run", recipe, "-o", tmp_path / "afile" / "sub", cwd=tmp_path)
    assert_one_line_error(r, str(tmp_path / "afile"), "is a file", "-o")
    assert (tmp_path / "afile").read_text() == "x"
    r = cli("run", recipe, "-o", "/proc/quantkit-test/rel", cwd=tmp_path)  # not even root can create it
    assert_one_line_error(r, "/proc/quantkit-test/rel", "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "r.yaml"]


def test_option_wrong_for_the_source_names_the_recipe_field_and_line(cli, tmp_path, tiny):
    """A backend's OptionError (bpw outside the tiny model's 2.48..8.14) is named as the recipe field, at its line."""
    text = (f"recipe: 1\nname: rel\nsource: {tiny}\nartifacts:\n  - format: exl2\n    verify: false\n"
            "    options:\n      bpw: 2.2\n")
    r = cli("run", write(tmp_path, text), "-o", tmp_path / "rel", "--json", cwd=tmp_path)  # --json: no progress lines
    assert_one_line_error(r, "r.yaml:8: artifacts[0].options.bpw: 2.2: ", "bits per weight")
    assert "--bpw" not in r.err
    assert not (tmp_path / "rel" / "tiny-llama-exl2-2.2bpw-h6").exists()


# --- 3. credentials in HF_ENDPOINT are never shown ---------------------------------------------------
CREDENTIALED = "http://user:secret@127.0.0.1:9"  # nothing listens there


@pytest.fixture
def cred_endpoint(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", CREDENTIALED)
    monkeypatch.setattr(constants, "ENDPOINT", CREDENTIALED)  # read when huggingface_hub was imported
    return hub


def assert_no_secret(folder: Path, *texts: str) -> None:
    for t in texts:
        assert "secret" not in t and "user:" not in t, t
    for p in folder.rglob("*"):
        if p.is_file():
            assert b"secret" not in p.read_bytes(), p


@pytest.mark.parametrize("with_token", [False, True])
def test_publish_dry_run_hides_endpoint_credentials(cli, cred_endpoint, art, monkeypatch, with_token):
    if with_token:  # the Hub is asked (and cannot be reached): the notice names the endpoint
        monkeypatch.setenv("HF_TOKEN", cred_endpoint.token)
    r = cli("publish", art, "--repo", REPO, "--dry-run")
    assert r.code == 0, r.err
    assert "http://***@127.0.0.1:9" in r.out
    if with_token:
        assert "cannot reach the Hub at http://***@127.0.0.1:9" in " ".join(r.err.split())
    assert_no_secret(art, r.out, r.err)
    r = cli("publish", art, "--repo", REPO, "--dry-run", "--json")
    assert r.code == 0, r.err
    assert r.json["url"] == f"http://***@127.0.0.1:9/{REPO}"
    assert_no_secret(art, r.out, r.err)


def test_publish_error_hides_endpoint_credentials(cli, cred_endpoint, art, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", cred_endpoint.token)
    r = cli("publish", art, "--repo", REPO)
    assert_one_line_error(r, "cannot reach the Hub at http://***@127.0.0.1:9")
    assert_no_secret(art, r.out, r.err)


def test_publish_dry_run_hides_hf_endpoint_credentials_in_a_fresh_process(hub, art):
    env = {**_env(hub), "HF_ENDPOINT": CREDENTIALED}
    p = subprocess.run([str(QUANTKIT), "publish", str(art), "--repo", REPO, "--dry-run", "--json"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["url"] == f"http://***@127.0.0.1:9/{REPO}"
    assert_no_secret(art, p.stdout, p.stderr)


# --- 4. vram --context -------------------------------------------------------------------------------
@pytest.mark.parametrize("context", ["0", ",", "", " , ", "1k,0", "0.0001k"])
def test_vram_context_must_name_at_least_one_positive_length(cli, context):
    assert_one_line_error(cli("vram", CONFIG_8B, "--context", context), "--context")


def test_vram_context_past_the_model_maximum_is_a_notice(cli):
    r = cli("vram", CONFIG_8B, "--context", "128k,256k,1m", "--json")
    assert r.code == 0, r.err
    assert [c["context"] for c in r.json["contexts"]] == [131072, 262144, 1048576]
    err = " ".join(r.err.split())
    assert "notice:" in err and "maximum of 131,072" in err and "262,144, 1,048,576" in err, r.err
    assert "131,072 is past" not in err  # the maximum itself is fine
    r = cli("vram", CONFIG_8B, "--context", "128k")
    assert r.code == 0 and "notice" not in r.err, r.err
    r = cli("vram", CONFIG_8B, "--context", "256k")
    assert r.code == 0 and "notice:" in r.err and "131,072" in r.err, r.err


def test_hints_name_recipe_keys_not_flags(cli, tmp_path, tiny):
    """A problem that names other options as its fix names them as the recipe's keys, at the
    artifact's options: line (and as flags on the command line)."""
    text = (f"recipe: 1\nname: rel\nsource: {tiny}\nartifacts:\n  - format: gguf\n    verify: false\n"
            "    options:\n      type: [Q8_0, IQ4_XS]\n")
    r = cli("run", write(tmp_path, text), "-o", tmp_path / "rel", "--json", cwd=tmp_path)
    assert_one_line_error(r, "r.yaml:8: artifacts[0].options.type: 'IQ4_XS': ", "add `engine: llamacpp`")
    assert "--" not in r.err.split("artifacts[0]")[1]
    r = cli("gguf", tiny, "--type", "Q8_0,IQ4_XS", "-o", tmp_path / "cli")
    assert_one_line_error(r, "--type IQ4_XS: ", "add --engine llamacpp")
    assert not (tmp_path / "rel" / "tiny-llama-GGUF").exists() and not (tmp_path / "cli").exists()
