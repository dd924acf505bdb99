"""The card's Hub metadata (huggingface_hub's ModelCardData), and what of it comes from the source's card."""
from __future__ import annotations

import re
from pathlib import Path

from quantkit import output
from quantkit.backends.base import CardFacts
from quantkit.card.facts import card_facts

PIPELINE_TAG = "text-generation"
SOURCE_CARD_MAX_BYTES = 4 * 1024**2  # a source card larger than this is not read
SOURCE_KEYS = ("license", "license_name", "license_link", "language")


def source_metadata(source_path: Path) -> dict:
    """license, license_name, license_link and language from the source's README.md front matter.

    The source card is untrusted: it is parsed with huggingface_hub (YAML safe_load, so nothing
    in it runs), only those four keys are kept, each only as a one-line string (language: a
    string or a list of strings, returned as a list), and any problem gives {}.
    """
    try:
        path = Path(source_path) / output.CARD
        if not path.is_file() or path.stat().st_size > SOURCE_CARD_MAX_BYTES:
            return {}
        path.read_bytes().decode("utf-8")  # not UTF-8: not a card
        from huggingface_hub import metadata_load

        data = metadata_load(path)  # the front matter as a dict, through yaml.safe_load; None if none
        if not isinstance(data, dict):
            return {}
        lang = data.get("language")
        return _checked_metadata({**data, "language": [lang] if isinstance(lang, str) else lang})
    except Exception:  # a malformed card must never fail a conversion
        return {}


def card_data(manifest: dict, facts: CardFacts | None = None):
    """The card's Hub metadata as huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    facts = facts or card_facts(manifest)
    src = manifest.get("source") or {}
    inherited = _checked_metadata(src.get("card_metadata"))
    base = src.get("upstream_id") or None
    link = inherited.get("license_link")
    if link and base and not re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):
        # a link relative to the source repository (e.g. LICENSE) would point into this one
        inherited["license_link"] = f"https://huggingface.co/{base}/blob/main/{link.lstrip('./')}"
    extra = {"base_model_relation": "quantized"} if base else {}
    return ModelCardData(
        base_model=base,
        language=inherited.get("language"),
        license=inherited.get("license"),
        license_name=inherited.get("license_name"),
        license_link=inherited.get("license_link"),
        library_name=facts.library_name,
        pipeline_tag=PIPELINE_TAG,
        tags=list(facts.tags),
        **extra,
    )


def _checked_metadata(meta) -> dict:
    """The manifest's card_metadata, held to what source_metadata would have returned (the
    manifest is a file on disk too)."""
    if not isinstance(meta, dict):
        return {}
    out = {}
    for key in ("license", "license_name", "license_link"):
        value = _clean(meta.get(key), 2000 if key == "license_link" else 200)
        if value:
            out[key] = value
    lang = meta.get("language")
    if isinstance(lang, list) and lang and all(isinstance(x, str) and _clean(x, 50) for x in lang):
        out["language"] = list(dict.fromkeys(_clean(x, 50) for x in lang))
    return out


def _clean(value, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > limit or any(c in value for c in "\r\n\t\x00"):
        return None
    return value
