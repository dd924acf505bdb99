"""Reading the small JSON files of a checkpoint (tokenizer_config.json, generation_config.json, ...)."""
from __future__ import annotations

import json
from pathlib import Path


class UnreadableJSON(Exception):
    """A JSON file that exists but cannot be read or parsed; `reason` says why, in a few words."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_json(path: Path, default=None):
    """The JSON value in `path`; `default` when there is no such file. Raises UnreadableJSON when
    the file cannot be read or is not JSON: each caller decides whether that is fatal."""
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UnreadableJSON(path, e.strerror or e.__class__.__name__) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableJSON(path, e.__class__.__name__) from None


def read_object(path: Path) -> dict:
    """The JSON object in `path`; {} when the file is absent or holds something else. Raises UnreadableJSON as read_json."""
    data = read_json(path, {})
    return data if isinstance(data, dict) else {}
