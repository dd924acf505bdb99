"""Default texts, text files and datasets for calibration and evaluation."""
from __future__ import annotations

import pytest

from quantkit.errors import InputError
from quantkit.text import default_text, load_text


def test_defaults_are_real_and_disjoint():
    cal, ev = default_text("calibration"), default_text("evaluation")
    assert len(cal) > 400_000 and len(ev) > 250_000
    assert "Shakespeare" in ev and "assert" in cal
    long_lines = lambda t: {l.strip() for l in t.splitlines() if len(l.strip()) > 40}
    assert not (long_lines(cal) & long_lines(ev))


def test_file_and_errors(tmp_path, monkeypatch):
    f = tmp_path / "t.txt"
    f.write_text("hello there")
    assert load_text(str(f), "calibration") == ("hello there", f"file {f}")
    with pytest.raises(InputError, match="no such text file"):
        load_text(str(tmp_path / "missing.txt"), "evaluation")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="not UTF-8"):
        load_text(str(tmp_path / "bin.txt"), "evaluation")


def test_dataset_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError, match="could not load dataset wikitext-2-raw-v1"):
        load_text("wikitext-2-raw-v1", "evaluation")


def test_eval_text_option(cli, tiny, tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text(default_text("evaluation")[:20_000])
    r = cli("fp8", tiny, "-o", tmp_path / "q", "--eval", "--eval-text", text, "--eval-tokens", "1100", "--json")
    assert r.code == 0, r.err
    ev = r.json["verify"]
    assert ev["text"] == f"file {text}" and ev["tokens_scored"] == 2 * 255
