"""A checkpoint's chat template, read from its folder as transformers finds it."""
from __future__ import annotations

from pathlib import Path

from quantkit.jsonfile import UnreadableJSON, read_object


def read_chat_template(folder: Path) -> str | None:
    """The chat template in `folder`: chat_template.jinja, else tokenizer_config.json's chat_template
    (a string, or a list of {name, template} whose "default" is the one), else chat_template.json's;
    None when there is none (a base model) or none is readable."""
    folder = Path(folder)
    f = folder / "chat_template.jinja"
    if f.is_file():
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        if text.strip():
            return text
    t = _pick(_read_json(folder / "tokenizer_config.json").get("chat_template"))
    if t:
        return t
    return _pick(_read_json(folder / "chat_template.json").get("chat_template"))


def _read_json(path: Path) -> dict:
    try:
        return read_object(path)
    except UnreadableJSON:
        return {}  # the Modelfile writer reports an unreadable tokenizer_config.json itself


def _pick(value) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list):
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        t = named.get("default")
        return t if isinstance(t, str) and t.strip() else None
    return None
