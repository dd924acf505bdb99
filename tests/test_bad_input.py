"""The bad-input suite: what a user can get wrong, and what the machine can do to a run.

Each case: one line on stderr, a non-zero exit, no traceback, and nothing the user owns lost
or half-written. docs/reliability.md lists the promises and the test that holds each.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from quantkit import output
from quantkit import manifest as manifests
from quantkit.stio import StreamWriter


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what must survive a refused command."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Hidden things quantkit leaves beside outputs: partials, locks, moved-aside artifacts, probes."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and
                  any(k in p.name for k in (".partial-", ".lock", ".replaced-", ".quantkit-probe", ".tmp-")))


@pytest.fixture
def user_folder(tmp_path) -> Path:
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("a user's own file")
    (d / "sub" / "data.bin").write_bytes(os.urandom(1000))
    return d


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory, tiny) -> Path:
    """An fp8 artifact of the tiny model, made once; tests copy it before changing it."""
    from quantkit.pipeline import convert

    folder, _ = convert("fp8", str(tiny), tmp_path_factory.mktemp("art") / "tiny-fp8", show_progress=False)
    return folder


# --force replaces only an earlier quantkit artifact; the source, the current folder and their parents never


def test_force_refuses_current_folder(cli, tiny, user_folder):
    before = tree(user_folder)
    r = cli("fp8", tiny, "-o", ".", "--force", cwd=user_folder)
    assert_one_line_error(r, "current folder")
    assert tree(user_folder) == before


def test_force_refuses_a_users_folder(cli, tiny, user_folder):
    before = tree(user_folder)
    r = cli("fp8", tiny, "-o", user_folder, "--force")
    assert_one_line_error(r, "not a quantkit artifact", "--force")
    assert tree(user_folder) == before
    assert leftovers(user_folder.parent) == []


def test_force_refuses_folder_with_foreign_quantkit_json(cli, tiny, user_folder):
    (user_folder / "quantkit.json").write_text('{"name": "not ours"}')
    before = tree(user_folder)
    assert_one_line_error(cli("fp8", tiny, "-o", user_folder, "--force"), "not a quantkit artifact")
    assert tree(user_folder) == before


def test_force_refuses_the_source_and_its_parents(cli, tiny_copy, tmp_path):
    before = tree(tiny_copy)
    assert_one_line_error(cli("fp8", tiny_copy, "-o", tiny_copy, "--force"), "is the source checkpoint")
    # even when the parent looks like a quantkit artifact, it holds the source
    (tmp_path / "quantkit.json").write_text(json.dumps({"quantkit_version": "0.1.0", "files": {}}))
    assert_one_line_error(cli("fp8", tiny_copy, "-o", tmp_path, "--force"), "holds the source checkpoint")
    assert tree(tiny_copy) == before


def test_force_replaces_an_earlier_artifact(cli, tiny, tiny_artifact, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_artifact, out)
    (out / "stale.txt").write_text("from the earlier artifact")
    r = cli("fp8", tiny, "-o", out, "--force", "--json")
    assert r.code == 0, r.err
    assert not (out / "stale.txt").exists()
    assert output.changed_files(out, manifests.read_dict(out)) == []
    assert leftovers(tmp_path) == []


# Two runs into one output: the second is refused


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A checkpoint big enough (~250 MB) that a conversion can be caught half way."""
    d = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=1024)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
    return d


def quantkit_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "quantkit", *map(str, args)]


def wait_for_partial(folder: Path, name: str, proc, min_bytes: int = 1) -> Path | None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        for q in folder.glob(f".{name}.partial-*"):
            f = q / "model.safetensors"
            if f.exists() and f.stat().st_size >= min_bytes:
                return q
        time.sleep(0.01)
    return None


def test_second_run_into_same_output_is_refused(cli, wide_model, tiny, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(quantkit_cmd("fp8", wide_model, "-o", out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for_partial(tmp_path, "out", first) is not None, "the first run finished too soon"
    r = cli("gguf", tiny, "-o", out, "--type", "Q8_0")
    assert_one_line_error(r, "another quantkit run", str(first.pid))
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    m = manifests.read_dict(out)
    assert m["backend"] == "fp8" and output.changed_files(out, m) == []
    assert leftovers(tmp_path) == []


def test_output_that_appears_meanwhile_is_not_replaced(cli, tiny, tmp_path, monkeypatch):
    """Something outside quantkit writes the output folder while the run works: the final rename refuses it."""
    import quantkit.backends.fp8.stream as fp8

    out = tmp_path / "out"
    real = fp8.quantize_rows

    def meanwhile(w):
        if not out.exists():
            out.mkdir()
            (out / "theirs.txt").write_text("written meanwhile")
        return real(w)

    monkeypatch.setattr(fp8, "quantize_rows", meanwhile)
    assert_one_line_error(cli("fp8", tiny, "-o", out), "already exists")
    assert tree(out) == {"theirs.txt": b"written meanwhile"}
    assert leftovers(tmp_path) == []


def test_stale_lock_of_a_dead_run_is_cleaned(cli, tiny, tmp_path):
    lock = tmp_path / ".out.lock"
    lock.write_text("999999")  # a run that died: the kernel released its flock
    r = cli("fp8", tiny, "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    assert leftovers(tmp_path) == []


# The machine: full disk, read-only or impossible places


def test_disk_full_while_writing_weights(cli, tiny, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = StreamWriter._write_and_hash

    def full(self, data):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(StreamWriter, "_write_and_hash", full)
    r = cli("fp8", tiny, "-o", tmp_path / "out")
    assert_one_line_error(r, "disk holding", str(tmp_path), "is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_disk_full_while_verify_records(cli, tiny, tiny_artifact, tmp_path, monkeypatch):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    before = (art / "quantkit.json").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output.os, "fsync", full)
    r = cli("verify", art, "--source", tiny, "--tokens", "2048", "--ctx", "128", "--json")
    assert_one_line_error(r, "is full")
    assert json.loads(r.out)["tokens_scored"] > 0  # the figures were shown before the record failed
    assert (art / "quantkit.json").read_bytes() == before  # never left empty or half-written
    assert leftovers(art) == []


def test_output_under_proc(cli, tiny):
    r = cli("fp8", tiny, "-o", "/proc/quantkit-test/out")
    assert_one_line_error(r, "cannot write in /proc")
    assert "free" not in r.err


def test_output_below_a_file(cli, tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(cli("fp8", tiny, "-o", tmp_path / "afile" / "sub"), "is a file")
    assert (tmp_path / "afile").read_text() == "x"


def test_failed_run_removes_parents_it_created(cli, tiny, tmp_path, monkeypatch):
    import quantkit.backends.fp8.stream as fp8

    def boom(w):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fp8, "quantize_rows", boom)
    assert_one_line_error(cli("fp8", tiny, "-o", tmp_path / "a" / "b" / "out"), "cannot write")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing", "proc", "folder"])
def test_verify_chart_into_bad_place_refused_before_work(cli, tiny, tiny_artifact, tmp_path, where):
    chart = {"missing": tmp_path / "no" / "such" / "c.png", "proc": Path("/proc/quantkit-test.png"), "folder": tmp_path}[where]
    r = cli("verify", tiny_artifact, "--source", tiny, "--chart", chart, "--no-record")
    assert_one_line_error(r, "--chart")
    assert r.out == ""  # nothing was scored


def test_verify_record_into_unwritable_artifact(cli, tiny, tiny_artifact, tmp_path, monkeypatch):
    """Tests run as root, which chmod does not stop: the refusal the kernel gives is simulated at the rename."""
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    before = tree(art)
    real = os.replace

    def refuse(src, dst):
        if Path(dst).parent == art:
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(output.os, "replace", refuse)
    r = cli("verify", art, "--source", tiny, "--tokens", "2048", "--ctx", "128")
    assert_one_line_error(r, "cannot write", "quantkit.json")
    assert tree(art) == before


# verify reads only what a conversion would read


def test_verify_random_gguf(cli, tiny, tmp_path):
    f = tmp_path / "random.gguf"
    f.write_bytes(os.urandom(4096))
    assert_one_line_error(cli("verify", f, "--source", tiny), "not a complete GGUF file")


def test_verify_truncated_gguf(cli, tiny, tmp_path):
    r = cli("gguf", tiny, "-o", tmp_path / "g", "--type", "Q8_0", "--json")
    assert r.code == 0, r.err
    f = next((tmp_path / "g").glob("*.gguf"))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_one_line_error(cli("verify", cut, "--source", tiny), "not a complete GGUF file", "cut.gguf")


def test_verify_config_only_folder(cli, tiny, tmp_path):
    d = tmp_path / "cfg"
    d.mkdir()
    shutil.copy(tiny / "config.json", d)
    assert_one_line_error(cli("verify", d, "--source", tiny), "no weights")


def test_verify_truncated_safetensors_artifact(cli, tiny, tiny_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    f = art / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert_one_line_error(cli("verify", art, "--source", tiny), "model.safetensors", "not a complete safetensors file")


def test_verify_pickle_needs_allow_pickle(cli, tiny, tmp_path):
    art = tmp_path / "pickled"
    art.mkdir()
    shutil.copy(tiny / "config.json", art)
    torch.save(load_file(tiny / "model.safetensors"), art / "pytorch_model.bin")
    assert_one_line_error(cli("verify", art, "--source", tiny), "pytorch_model.bin", "--allow-pickle")
    src = tmp_path / "picklesrc"
    shutil.copytree(art, src)
    for n in ("tokenizer.json", "tokenizer_config.json"):
        if (tiny / n).exists():
            shutil.copy(tiny / n, src)
    assert_one_line_error(cli("verify", tiny, "--source", src, "--no-record"), "--allow-pickle")


def test_verify_against_another_model_gives_notice(cli, tiny, tiny_artifact, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    state = load_file(other / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"] * 2
    save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    r = cli("verify", tiny_artifact, "--source", other, "--tokens", "2048", "--ctx", "128", "--no-record", "--json")
    assert r.code == 0, r.err
    assert "notice:" in r.err and "was made from" in r.err
    r = cli("verify", tiny_artifact, "--source", tiny, "--tokens", "2048", "--ctx", "128", "--no-record", "--json")
    assert r.code == 0 and "was made from" not in r.err


# A source whose tensors disagree with its config.json


@pytest.mark.parametrize("change, needle", [
    ({"num_hidden_layers": +1}, "has no tensor model.layers."),
    ({"intermediate_size": +16}, "has shape"),
    ({"vocab_size": +8}, "model.embed_tokens.weight has shape"),
])
def test_source_tensors_checked_against_config(cli, tiny_copy, tmp_path, change, needle):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    for k, d in change.items():
        cfg[k] += d
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    r = cli("fp8", tiny_copy, "-o", tmp_path / "out")
    assert_one_line_error(r, needle, "config.json")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_source_missing_tensor(cli, tiny_copy, tmp_path):
    state = load_file(tiny_copy / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, tiny_copy / "model.safetensors", metadata={"format": "pt"})
    assert_one_line_error(cli("fp8", tiny_copy, "-o", tmp_path / "out"), "model.layers.1.mlp.down_proj.weight")


# Kills: the old artifact is never lost, and a rerun completes


def test_force_run_killed_between_renames_restores_old_artifact(cli, tiny, tiny_artifact, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_artifact, out)
    before = tree(out)
    # what a --force run killed between its two renames leaves: the old artifact moved aside, the new one partial
    out.rename(tmp_path / ".out.replaced-999999")
    (tmp_path / ".out.partial-999999").mkdir()
    r = cli("fp8", tiny, "-o", out)  # without --force: the restored artifact is not replaced
    assert_one_line_error(r, "already exists")
    assert tree(out) == before
    assert leftovers(tmp_path) == []


def test_moved_aside_artifact_removed_once_new_one_is_in_place(cli, tiny, tiny_artifact, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_artifact, out)
    shutil.copytree(tiny_artifact, tmp_path / ".out.replaced-999999")
    r = cli("fp8", tiny, "-o", out, "--force", "--json")
    assert r.code == 0, r.err
    assert leftovers(tmp_path) == []


def _complete(folder: Path) -> bool:
    m = manifests.read_dict(folder)
    return m is not None and output.changed_files(folder, m) == []


@pytest.mark.parametrize("force", [False, True])
def test_sigkill_at_random_moments(wide_model, tmp_path, force):
    """Kill a conversion at seeded random moments (over a full run's duration, the renames at its end
    included); each time the output is absent or complete, and the next run leaves a complete artifact
    whose files match its manifest and nothing else."""
    out = tmp_path / "out"
    cmd = quantkit_cmd("fp8", wide_model, "-o", out, *(["--force"] if force else []))
    t0 = time.time()
    subprocess.run(cmd + ["--force"], check=True, capture_output=True)
    full = time.time() - t0
    assert _complete(out)
    if not force:
        shutil.rmtree(out)
    rng = random.Random(1234 + force)
    for _ in range(3):
        if not force:
            shutil.rmtree(out, ignore_errors=True)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, full * 1.1))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        # at every moment: the artifact is in place and complete, or (a first run, or between the renames
        # of a --force run) not in place, and then the next run puts one there
        assert not out.exists() or _complete(out)
        if force or not out.exists():
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        assert _complete(out)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


DIE_BETWEEN_RENAMES = """
import os, pathlib, sys
real = pathlib.Path.rename

def rename(self, target):
    moved = real(self, target)
    if ".replaced-" in str(target):
        os._exit(9)  # killed with the old artifact moved aside and the new one not yet in place
    return moved

pathlib.Path.rename = rename
from quantkit.cli import main
sys.argv = ["quantkit", *sys.argv[1:]]
main()
"""


def test_process_killed_between_the_two_renames(cli, tiny, tiny_artifact, tmp_path):
    """A real process dies at the one moment the old artifact is hidden; the next command puts it back."""
    out = tmp_path / "out"
    shutil.copytree(tiny_artifact, out)
    before = tree(out)
    r = subprocess.run([sys.executable, "-c", DIE_BETWEEN_RENAMES, "fp8", str(tiny), "-o", str(out), "--force"],
                       capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert not out.exists() and [p.name.split("-")[0] for p in tmp_path.glob(".out.replaced-*")] == [".out.replaced"]
    assert_one_line_error(cli("fp8", tiny, "-o", out), "already exists")
    assert tree(out) == before
    assert leftovers(tmp_path) == []


def test_symlink_at_the_lock_is_refused_not_followed(cli, tiny, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".out.lock").symlink_to(victim)
    assert_one_line_error(cli("fp8", tiny, "-o", tmp_path / "out"), ".out.lock")
    assert victim.read_text() == "precious"


def test_dotdot_in_output_never_removes_an_existing_folder(cli, tiny, tmp_path, monkeypatch):
    import quantkit.backends.fp8.stream as fp8

    (tmp_path / "b").mkdir()  # the user's empty folder
    monkeypatch.setattr(fp8, "quantize_rows", lambda w: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    assert_one_line_error(cli("fp8", tiny, "-o", f"{tmp_path}/x/../b/out"), "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_verify_does_not_record_into_an_artifact_rebuilt_meanwhile(tiny, tiny_artifact, tmp_path):
    from quantkit import scoring as v

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    results = v.verify([art], tiny, None, 128, 2048)
    m = manifests.read_dict(art)
    m["created"] = "2099-01-01T00:00:00Z"  # what a --force rebuild during scoring would leave
    output.write_json(art / "quantkit.json", m)
    before = tree(art)
    with pytest.raises(output.OutputError, match="rebuilt while verify scored it"):
        v.record(results)
    assert tree(art) == before


def test_gptq_group_act_order_is_one_line(cli, tiny, tmp_path):
    """llm-compressor 0.14 dropped group activation ordering: refused before any work, not its traceback."""
    assert_one_line_error(cli("gptq", tiny, "-o", tmp_path / "out", "--act-order", "group"), "--act-order group", "static")
    assert list(tmp_path.iterdir()) == []


# Found by trying bad inputs the way a user would (helper hunt, issue 14)


@pytest.mark.parametrize("key, value", [("num_hidden_layers", -1), ("hidden_size", "64"), ("vocab_size", 0),
                                        ("num_attention_heads", True), ("head_dim", 0.5)])
def test_config_dimensions_must_be_positive_whole_numbers(cli, tiny_copy, tmp_path, key, value):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg[key] = value
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(cli("fp8", tiny_copy, "-o", tmp_path / "out"), key, "whole number")
    assert_one_line_error(cli("vram", tiny_copy), key, "whole number")
    assert not (tmp_path / "out").exists()


def test_layers_beyond_the_config_are_refused(cli, tiny_copy, tmp_path):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["num_hidden_layers"] -= 1
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(cli("fp8", tiny_copy, "-o", tmp_path / "out"), "num_hidden_layers")


def test_architectures_must_be_a_list(cli, tiny_copy, tmp_path):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["architectures"] = "LlamaForCausalLM"
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(cli("fp8", tiny_copy, "-o", tmp_path / "out"), "architectures", "list")


@pytest.mark.parametrize("damage", ["broken-symlink", "directory"])
def test_unreadable_weight_file(cli, tiny_copy, tmp_path, damage):
    f = tiny_copy / "model.safetensors"
    f.unlink()
    if damage == "broken-symlink":
        f.symlink_to(tmp_path / "gone.safetensors")
    else:
        f.mkdir()
    assert_one_line_error(cli("fp8", tiny_copy, "-o", tmp_path / "out"), "cannot read model.safetensors")
    assert_one_line_error(cli("inspect", tiny_copy), "model.safetensors")


def test_manifest_that_is_not_an_object(cli, tiny, tiny_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    (art / "quantkit.json").write_text("[1]")
    r = cli("inspect", art)
    assert r.code == 0 and "Traceback" not in r.err
    assert_one_line_error(cli("verify", art, "--source", tiny, "--tokens", "2048", "--ctx", "128"), "quantkit.json is damaged")


@pytest.mark.parametrize("fmt", ["exl2:nan", "exl2:inf", "exl2:-3", "exl2:1e308", "exl2:4.0:6:9"])
def test_vram_exl2_bit_rates(cli, tiny, fmt):
    assert_one_line_error(cli("vram", tiny, "--format", fmt), "--format")


def test_vram_config_not_an_object(cli, tmp_path):
    (tmp_path / "config.json").write_text("[1]")
    assert_one_line_error(cli("vram", tmp_path / "config.json"), "not a JSON object")


def test_exl2_measurement_that_is_a_folder(cli, tiny, tmp_path):
    (tmp_path / "m").mkdir()
    assert_one_line_error(cli("exl2", tiny, "-o", tmp_path / "out", "--measurement", tmp_path / "m"), "--measurement")
    assert not (tmp_path / "out").exists()


def test_cache_that_is_a_file(cli, tmp_path, monkeypatch):
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cachefile"))
    assert_one_line_error(cli("fp8", "builtin:tiny-llama", "-o", tmp_path / "out"), "QUANTKIT_CACHE")


@pytest.mark.parametrize("flag", ["--max-ppl-ratio", "--max-kld"])
def test_verify_gates_must_be_finite(cli, tiny, tiny_artifact, flag):
    r = cli("verify", tiny_artifact, "--source", tiny, flag, "nan", "--no-record")
    assert_one_line_error(r, flag)
    assert r.out == ""


def test_empty_eval_text_refused_before_converting(cli, tiny, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(cli("fp8", tiny, "-o", tmp_path / "out", "--eval", "--eval-text", tmp_path / "empty.txt"), "empty")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad, needle", [("verify: {ctx: 513}", "even"), ("publish: {repo: me/x, revision: 'a..b'}", "branch")])
def test_run_check_refuses_what_the_run_would(cli, tmp_path, bad, needle):
    recipe = tmp_path / "r.yaml"
    if bad.startswith("verify"):
        recipe.write_text(f"recipe: 1\nname: r\nsource: builtin:tiny-llama\n{bad}\nartifacts:\n  - format: fp8\n")
    else:
        recipe.write_text(f"recipe: 1\nname: r\nsource: builtin:tiny-llama\nartifacts:\n  - format: fp8\n    {bad}\n")
    assert_one_line_error(cli("run", recipe, "--check"), needle)
