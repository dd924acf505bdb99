"""Shared fixtures: built-in models (built locally, cached), and the CLI run in-process."""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from quantkit.fixtures import builtin


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `quantkit ARGS` in this process, as the console script does."""
    from quantkit.cli import main

    def run(*args, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["quantkit", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    return run


@pytest.fixture(scope="session")
def tiny() -> Path:
    return builtin("tiny-llama")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return builtin("smollm2")


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    """A private copy of the tiny model that a test may damage."""
    dst = tmp_path / "src"
    shutil.copytree(tiny, dst)
    return dst


def assert_one_line_error(r: Result, *needles: str) -> None:
    assert r.code != 0, r
    lines = [l for l in r.err.splitlines() if l.strip()]
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err
    for n in needles:
        assert n in lines[0], lines[0]
