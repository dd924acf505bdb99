"""`quantkit publish` against a fake Hub (tests/hubserver.py): create, upload, resume, refuse."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import FakeHub, hub  # noqa: F401  (hub is a fixture)

import quantkit
from quantkit import output, upload as pub
from quantkit import manifest as manifests
from quantkit.errors import InputError
from quantkit.upload import PublishError, publish

REPO = "quantkit-test/tiny-FP8"
ROOT = Path(__file__).resolve().parents[1]
QUANTKIT = ROOT / ".venv" / "bin" / "quantkit"
BIG = "model-00001-of-00003.safetensors"


@pytest.fixture
def card():
    from quantkit import card
    return card


# --- a hand-made artifact: shards (one 12 MB, so LFS by size), small files, a subfolder ---------
def make_artifact(folder: Path, card) -> Path:
    rnd = random.Random(7)
    folder.mkdir(parents=True)
    files = {
        BIG: rnd.randbytes(12 * 2**20),
        "model-00002-of-00003.safetensors": rnd.randbytes(300_000),
        "model-00003-of-00003.safetensors": rnd.randbytes(40_000),
        "model.safetensors.index.json": json.dumps({"weight_map": {"a": BIG}}).encode(),
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "quantization_config": {}}).encode(),
        "generation_config.json": b'{"do_sample": false}\n',
        "extras/measurement.json": b'{"layers": 2}\n',
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    manifest = {
        "quantkit_version": quantkit.__version__, "format": "fp8", "method": "fp8-dynamic", "parameters": {},
        "options": {}, "produced_by": {"command": "quantkit fp8 builtin:tiny-llama"},
        "source": {"spec": "builtin:tiny-llama", "path": "/nowhere", "hub_id": None, "upstream_id": None,
                   "card_metadata": {}, "architecture": "LlamaForCausalLM", "weight_files": {}},
        "files": output.file_table(folder, {}), "created": output.now_iso(),
        "host": {"python": "3.11", "machine": "x86_64"},
    }
    output.write_json(folder / output.MANIFEST, manifest)
    card.write_card(folder, manifest)
    # leftovers quantkit never publishes: a staging folder and a huggingface_hub cache
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "upload.lock").write_text("x")
    (folder / ".tiny-FP8.partial-99999").mkdir()
    (folder / ".tiny-FP8.partial-99999" / "junk.bin").write_bytes(b"junk")
    return folder


@pytest.fixture
def art(tmp_path, card) -> Path:
    return make_artifact(tmp_path / "tiny-FP8", card)


def published(folder: Path) -> dict[str, bytes]:
    """What a publish of `folder` must put on the Hub: every file but hidden ones."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)}


def one_line(e: BaseException, *needles: str) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def assert_no_token(token: str, folder: Path, *texts) -> None:
    for t in texts:
        assert token not in (t if isinstance(t, str) else json.dumps(t, default=str))
    for p in folder.rglob("*"):
        if p.is_file():
            assert token.encode() not in p.read_bytes(), p


# --- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("private", [True, False])
def test_first_publish_creates_repo_and_uploads_every_file(hub, art, private):
    r = publish(art, REPO, private=private, token=hub.token)
    assert hub.repos[REPO].private is private and r["private"] is private
    want = published(art)
    got = hub.files(REPO)
    assert got.pop(".gitattributes")  # the Hub's own, left alone
    assert got == want  # byte for byte, hidden leftovers excluded
    assert sorted(r["uploaded"]) == sorted(want) and r["unchanged"] == []
    assert BIG in hub.lfs_paths(REPO) and "config.json" not in hub.lfs_paths(REPO)
    assert hub.count("PUT", r"^/_lfs/") == 3  # the three shards (LFS by size or by *.safetensors)
    assert len(r["commits"]) == 1 and r["commits"][0].startswith(f"{hub.url}/{REPO}/commit/")
    assert r["url"] == f"{hub.url}/{REPO}" and r["revision"] == "main" and r["dry_run"] is False


def test_rerun_uploads_nothing_and_resumes_a_lost_file(hub, art):
    publish(art, REPO, token=hub.token)
    commits, before = len(hub.repos[REPO].commits), len(hub.requests)
    r = publish(art, REPO, token=hub.token)
    assert r["uploaded"] == [] and r["commits"] == [] and sorted(r["unchanged"]) == sorted(published(art))
    assert len(hub.repos[REPO].commits) == commits
    later = hub.requests[before:]
    assert not [q for q in later if q[0] == "PUT" or "/commit/" in q[1] or "/preupload/" in q[1]], later

    for lost in ("model-00002-of-00003.safetensors", "extras/measurement.json"):
        del hub.repos[REPO].branches["main"]["files"][lost]
    r = publish(art, REPO, token=hub.token)
    assert r["uploaded"] == ["extras/measurement.json", "model-00002-of-00003.safetensors"]
    assert hub.repos[REPO].commits[-1]["paths"] == r["uploaded"]
    assert hub.files(REPO)["model-00002-of-00003.safetensors"] == (art / "model-00002-of-00003.safetensors").read_bytes()


def test_changed_remote_content_is_replaced(hub, art):
    publish(art, REPO, token=hub.token)
    files = hub.repos[REPO].branches["main"]["files"]
    files["config.json"] = (b'{"stale": true}', False)  # same path, other content (a git blob)
    files[BIG] = (b"x" * (12 * 2**20), True)  # same size, other sha256 (an LFS file)
    r = publish(art, REPO, token=hub.token)
    assert r["uploaded"] == ["config.json", BIG]
    assert hub.files(REPO)["config.json"] == (art / "config.json").read_bytes()
    assert hub.files(REPO)[BIG] == (art / BIG).read_bytes()


def test_crash_between_commits_resumes_where_it_stopped(hub, art, monkeypatch):
    monkeypatch.setattr(pub, "BATCH_FILES", 3)
    hub.fail_commits = {2}  # the second commit POST answers 500 once
    with pytest.raises(PublishError) as e:
        publish(art, REPO, token=hub.token)
    one_line(e.value, "500", "run the same command again")
    first = ["config.json", "extras/measurement.json", "generation_config.json"]
    assert sorted(hub.files(REPO)) == sorted([".gitattributes", *first])  # the card and manifest come last
    puts = hub.count("PUT", r"^/_lfs/")
    r = publish(art, REPO, token=hub.token)
    assert sorted(r["unchanged"]) == first
    assert sorted(r["uploaded"]) == sorted(set(published(art)) - set(first))
    assert r["uploaded"][-2:] == [output.MANIFEST, output.CARD] and len(r["commits"]) == 2
    assert hub.count("PUT", r"^/_lfs/") == puts  # the crashed batch's LFS objects were already stored
    got = hub.files(REPO)
    got.pop(".gitattributes")
    assert got == published(art)


def test_revision_creates_the_branch_and_uploads_there(hub, art):
    r = publish(art, REPO, revision="fp8-v2", token=hub.token)
    branches = hub.repos[REPO].branches
    assert set(branches) == {"main", "fp8-v2"}
    assert sorted(branches["main"]["files"]) == [".gitattributes"]
    got = hub.files(REPO, "fp8-v2")
    got.pop(".gitattributes")
    assert got == published(art)
    assert r["revision"] == "fp8-v2" and r["url"].endswith(f"/{REPO}/tree/fp8-v2")
    assert hub.repos[REPO].commits[-1]["branch"] == "fp8-v2"
    again = publish(art, REPO, revision="fp8-v2", token=hub.token)
    assert again["uploaded"] == [] and again["commits"] == []


def test_file_changed_after_conversion_is_refused_before_any_request(hub, art):
    with open(art / "model-00003-of-00003.safetensors", "r+b") as f:
        f.write(b"\xff\xfe")
    with pytest.raises(InputError) as e:
        publish(art, REPO, token=hub.token)
    one_line(e.value, "model-00003-of-00003.safetensors", "rebuild")
    (art / "config.json").unlink()
    with pytest.raises(InputError) as e:
        publish(art, REPO, token=hub.token, dry_run=True)
    one_line(e.value, "config.json is missing")
    assert hub.requests == [] and hub.repos == {}


def test_not_an_artifact_and_bad_repo_ids_are_refused(hub, art, tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError) as e:
        publish(tmp_path / "plain", REPO, token=hub.token)
    one_line(e.value, "not a quantkit artifact")
    for bad in ("tiny-FP8", "a/b/c", "org/na me", "org/../x", "-org/x", "org/x.git"):
        with pytest.raises(InputError) as e:
            publish(art, bad, token=hub.token)
        one_line(e.value, "ORG/NAME")
    with pytest.raises(InputError) as e:
        publish(art, REPO, revision="bad branch", token=hub.token)
    one_line(e.value, "--revision")
    assert hub.requests == []


def test_no_token_is_one_line_and_touches_nothing(hub, art, capsys):
    with pytest.raises(PublishError) as e:
        publish(art, REPO)
    one_line(e.value, "HF_TOKEN", "hf auth login")
    assert hub.requests == []


def test_wrong_token_is_one_line_and_no_token_leaks(hub, art, monkeypatch, capsys):
    wrong = "hf_wrong_" + "z" * 30
    notes = []
    with pytest.raises(PublishError) as e:
        publish(art, REPO, token=wrong, notice=notes.append)
    msg = one_line(e.value, "401", "HF_TOKEN")
    assert hub.repos == {} and hub.lfs == {}
    cap = capsys.readouterr()
    assert_no_token(wrong, art, msg, cap.out, cap.err, notes)

    monkeypatch.setenv("HF_TOKEN", hub.token)  # the right one, found the way huggingface_hub finds it
    r = publish(art, REPO, notice=notes.append)
    assert r["uploaded"]
    cap = capsys.readouterr()
    assert_no_token(hub.token, art, r, cap.out, cap.err, notes)


def test_hub_refusals_and_network_errors_are_one_line(hub, art, monkeypatch):
    with pytest.raises(PublishError) as e:  # a namespace the token may not write to
        publish(art, "someone-else/tiny-FP8", token=hub.token)
    one_line(e.value, "403", "write access")

    publish(art, REPO, token=hub.token)  # public
    with pytest.raises(PublishError) as e:
        publish(art, REPO, private=True, token=hub.token)
    one_line(e.value, "is public", "--private")

    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(PublishError) as e:
        publish(art, REPO, token=hub.token)
    one_line(e.value, "cannot reach the Hub", "127.0.0.1:9")
    r = publish(art, REPO, token=hub.token, dry_run=True)  # a dry run still shows the plan
    assert sorted(r["uploaded"]) == sorted(published(art))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError) as e:
        publish(art, REPO, token=hub.token)
    one_line(e.value, "HF_HUB_OFFLINE")


def test_dry_run_writes_nothing_and_needs_no_token(hub, art):
    before = {p: b for p, b in published(art).items()}
    r = publish(art, REPO, dry_run=True)
    assert r["dry_run"] is True and sorted(r["uploaded"]) == sorted(before) and r["commits"] == []
    assert hub.requests == [] and hub.repos == {}
    assert published(art) == before  # not even the card was re-rendered

    publish(art, REPO, token=hub.token)
    del hub.repos[REPO].branches["main"]["files"]["generation_config.json"]
    n = len(hub.requests)
    r = publish(art, REPO, dry_run=True, token=hub.token)
    assert r["uploaded"] == ["generation_config.json"] and r["commits"] == []
    assert all(m == "GET" for m, _ in hub.requests[n:]), hub.requests[n:]  # reads only


def test_generated_card_is_rendered_for_the_repo(hub, art, card):
    manifest = manifests.read_dict(art)
    assert card.is_generated(art, manifest) and REPO not in (art / output.CARD).read_text()
    r = publish(art, REPO, token=hub.token)
    assert r["card"] == "rendered"
    readme = (art / output.CARD).read_bytes()
    assert REPO.encode() in readme and hub.files(REPO)[output.CARD] == readme
    assert hub.files(REPO)[output.MANIFEST] == (art / output.MANIFEST).read_bytes()
    assert card.is_generated(art, manifests.read_dict(art))
    assert publish(art, REPO, token=hub.token)["uploaded"] == []  # rendering again changes nothing


def test_hand_edited_card_is_kept(hub, art):
    mine = b"# My own card\n\nWritten by hand.\n"
    (art / output.CARD).write_bytes(mine)
    notes = []
    r = publish(art, REPO, token=hub.token, notice=notes.append)
    assert r["card"] == "kept" and (art / output.CARD).read_bytes() == mine
    assert hub.files(REPO)[output.CARD] == mine
    assert len(notes) == 1 and output.CARD in notes[0] and "by hand" in notes[0], notes  # no library noise


def _env(hub: FakeHub) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": os.environ["HF_HOME"], "NO_PROXY": "127.0.0.1,localhost"}


def test_hf_endpoint_env_var_in_a_fresh_process(hub, art):
    """HF_ENDPOINT is read when huggingface_hub is imported: a new process proves that path."""
    code = ("import json, sys\nfrom pathlib import Path\nfrom quantkit.upload import publish\n"
            "print(json.dumps(publish(Path(sys.argv[1]), sys.argv[2])))\n")
    p = subprocess.run([sys.executable, "-c", code, str(art), REPO], env=_env(hub), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert sorted(r["uploaded"]) == sorted(published(art)) and r["url"] == f"{hub.url}/{REPO}"
    assert_no_token(hub.token, art, p.stdout, p.stderr)


def test_cli_publish_in_a_subprocess(hub, art):
    env = _env(hub)
    run = lambda *a, **kw: subprocess.run([str(QUANTKIT), *map(str, a)], capture_output=True, text=True,  # noqa: E731
                                          timeout=120, **kw)
    p = run("publish", art, "--repo", REPO, "--dry-run", "--json", env={**env, "HF_TOKEN": ""})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["dry_run"] is True and hub.repos == {}
    p = run("publish", art, "--repo", REPO, "--private", "--json", env=env)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["private"] is True and hub.repos[REPO].private
    assert sorted(r["uploaded"]) == sorted(published(art))
    assert_no_token(hub.token, art, p.stdout, p.stderr)
    p = run("publish", art, "--repo", REPO, "--json", env={**env, "HF_TOKEN": "hf_wrong_token_value"})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "401" in lines[0], p.stderr
    assert "hf_wrong_token_value" not in p.stdout + p.stderr
    (art / "config.json").write_text("{}")
    p = run("publish", art, "--repo", REPO, env=env)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "config.json" in lines[0], p.stderr


def test_real_fp8_artifact_publishes(hub, cli, tiny, tmp_path):
    r = cli("fp8", tiny, "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    res = publish(tmp_path / "out", REPO, token=hub.token)
    got = hub.files(REPO)
    got.pop(".gitattributes")
    assert got == published(tmp_path / "out")
    assert any(p.endswith(".safetensors") for p in hub.lfs_paths(REPO))
    assert publish(tmp_path / "out", REPO, token=hub.token)["uploaded"] == [] and res["commits"]
