"""Calibration and evaluation text: the offline defaults, a local file, or a Hub dataset."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from quantkit.errors import InputError, OptionsError

# kind -> (packaged file, what it is); see calibration/README.md
DEFAULTS = {
    "calibration": ("calibration.txt", "five Shakespeare plays (Gutenberg, public domain) and CPython pydoc topics (PSF licence)"),
    "evaluation": ("eval.txt", "Encyclopaedia Britannica 11th ed., 'Shakespeare' (public domain)"),
}
TEXT_SUFFIXES = {".txt", ".md", ".text", ".json", ".jsonl"}
DEFAULT_DATASETS = {"wikitext-2-raw-v1": ("wikitext", "wikitext-2-raw-v1", "test", "text")}


def default_text(kind: str) -> str:
    fname, _ = DEFAULTS[kind]
    return resources.files("quantkit.data").joinpath(fname).read_text(encoding="utf-8")


def load_text(spec: str | None, kind: str) -> tuple[str, str]:
    """(text, description). spec: None (offline default), a text file, or a dataset
    as `name` or `path:config:split[:column]` loaded with `datasets`."""
    if spec is None:
        return default_text(kind), f"default {kind} text: {DEFAULTS[kind][1]}"
    p = Path(spec).expanduser()
    if p.is_file():
        try:
            return p.read_text(encoding="utf-8"), f"file {p}"
        except UnicodeDecodeError:
            raise InputError(f"{p} is not UTF-8 text; pass a plain text file") from None
    if p.suffix in TEXT_SUFFIXES:
        raise InputError(f"{spec}: no such text file; pass an existing file, or a dataset like wikitext-2-raw-v1")
    if spec in DEFAULT_DATASETS:
        path, config, split, column = DEFAULT_DATASETS[spec]
    else:
        parts = (spec.split(":") + [""] * 4)[:4]
        path, config, split, column = (x or None for x in parts)
    try:
        import datasets

        ds = datasets.load_dataset(path, config, split=split or "train")
    except Exception as e:  # datasets raises many types when offline or misnamed
        raise InputError(
            f"could not load dataset {spec} ({e.__class__.__name__}); pass a local text file, "
            "or use path:config:split[:column] while online"
        ) from None
    column = column or ("text" if "text" in ds.column_names else ds.column_names[0])
    return "\n\n".join(str(x) for x in ds[column]), f"dataset {spec} ({split or 'train'}, column {column})"


def token_rows(tokenizer, text: str, rows: int, length: int, fix: str) -> list[list[int]]:
    """`rows` calibration rows of BOS + length-1 consecutive tokens, evenly spaced over the whole
    text (so a text made of several parts contributes all of them). `fix` names the options to change, as {field} (quantkit/errors.py OptionsError)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = length - len(bos)
    available = len(ids) // step
    if available < rows:
        raise OptionsError(f"the calibration text gives {available} rows of {length} tokens, {rows} asked; "
                           f"pass a longer {{calibration}}, or {fix}")
    starts = [(i * available // rows) * step for i in range(rows)]
    return [bos + ids[s : s + step] for s in starts]
