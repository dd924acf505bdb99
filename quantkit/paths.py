"""Where quantkit keeps its cache (built-in models, converted pickles)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("QUANTKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "quantkit")
    p = root.joinpath(*parts)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from quantkit.errors import OutputError

        raise OutputError(f"cannot use the cache folder {p} ({e.strerror}); set QUANTKIT_CACHE to a folder you can write to") from None
    return p
