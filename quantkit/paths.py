"""Where quantkit keeps its cache (built-in models, converted pickles)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("QUANTKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "quantkit")
    p = root.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
