"""Model cards: the README.md of every artifact folder, written from its quantkit.json.

The card holds the Hub metadata (card/metadata.py), how to run the artifact in the runtimes
that load its format (card/snippets.py), the verify (card/quality.py) and vram tables, and the
command or recipe that made it. What it says about a format comes from the backend that wrote
the artifact (its describe.py: card facts, snippet values, vram variants); the card names no
format. It is rendered from the manifest (and a few files of the folder) alone, so the same
manifest gives the same card; the only date in it is the manifest's `created`.

`write_card` records the card's sha256 in the manifest (`card_sha256`), so
`is_generated` can tell a card quantkit wrote from one somebody edited; an edited
card is left alone unless `force` is given.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from quantkit import manifest as manifests, output
from quantkit.backends.base import CardFacts
from quantkit.backends.registry import for_manifest
from quantkit.card.facts import card_facts
from quantkit.card.markdown import block, cell, oneline
from quantkit.card.metadata import card_data
from quantkit.card.quality import _verify_section
from quantkit.card.snippets import SNIPPETS, common_values, fill
from quantkit.chat_template import read_chat_template

PLACEHOLDER_OWNER = "YOUR_USER"  # stands for the Hub account while no repo id is known
VRAM_CONTEXTS = (4096, 16384)  # plus the model's own maximum when it is larger
FILES_SHOWN = 20  # rows of the file table before "and N more"
SOURCE_FILES_SHOWN = 8


def render(folder: Path, manifest: dict, repo_id: str | None = None) -> str:
    """The README.md text for the artifact in `folder` described by `manifest`."""
    folder = Path(folder)
    name = display_name(folder)
    repo = repo_id or f"{PLACEHOLDER_OWNER}/{name}"
    fmt = card_facts(manifest)
    body = [
        *_intro(manifest, fmt, name, repo, repo_id is None),
        *_run_section(folder, manifest, fmt, name, repo),
        *_verify_section(manifest, name),
        *_vram_section(folder, manifest, fmt),
        *_provenance_section(manifest),
        *_files_section(manifest),
        "---",
        "",
        f"This card was written by quantkit {manifest.get('quantkit_version', '?')} from the folder's "
        "quantkit.json. quantkit writes it again when the manifest changes (after `quantkit verify`, for "
        "instance) as long as nobody has edited it; an edited card is left as it is.",
        "",
    ]
    meta = card_data(manifest, fmt).to_yaml(original_order=["base_model", "base_model_relation"])
    return "---\n" + meta + "\n---\n\n" + "\n".join(body)


def write_card(folder: Path, manifest: dict, repo_id: str | None = None, force: bool = False) -> Path:
    """Write README.md into `folder`, record its sha256 in the manifest as card_sha256 and
    rewrite quantkit.json; return the card's path.

    A README.md that is there but is not the one quantkit last wrote (edited by hand, or put
    there by someone else) is left alone, and so is the manifest, unless `force`.
    """
    folder = Path(folder)
    path = folder / output.CARD
    if path.exists() and not force and not is_generated(folder, manifest):
        return path
    data = render(folder, manifest, repo_id).encode("utf-8")
    output.write_bytes_atomic(path, data)
    manifest["card_sha256"] = hashlib.sha256(data).hexdigest()
    manifests.write(folder, manifest)
    return path


def is_generated(folder: Path, manifest: dict) -> bool:
    """README.md exists and is byte for byte the card quantkit last wrote (nobody edited it)."""
    path = Path(folder) / output.CARD
    want = manifest.get("card_sha256")
    return bool(want) and path.is_file() and output.sha256_file(path) == want


def display_name(folder: Path) -> str:
    """The artifact's name: its folder's, also while it is still the hidden staging folder."""
    name = Path(folder).name
    if name.startswith(".") and output.PARTIAL in name:
        name = name[1:].rsplit(output.PARTIAL, 1)[0]
    return name


def _intro(manifest: dict, fmt: CardFacts, name: str, repo: str, placeholder: bool) -> list[str]:
    src = manifest.get("source") or {}
    lines = [f"# {name}", "", f"{fmt.title} quantization of {_source_ref(src)}, made with "
             f"quantkit {manifest.get('quantkit_version', '?')}.", ""]
    lines += [f"- **What it holds:** {fmt.what}."]
    detail = fmt.summary
    if detail:
        lines += [f"- **Settings:** {detail}."]
    files = manifest.get("files") or {}
    lines += [f"- **Size:** {output.human_bytes(sum(f.get('bytes', 0) for f in files.values()))} in {len(files)} files "
              f"(format: {manifest.get('format', '?')})."]
    if src.get("architecture"):
        lines += [f"- **Architecture:** {src['architecture']}."]
    lines += [""]
    if placeholder:
        lines += [f"> Not on the Hub yet: `{repo}` below stands for the repository this folder is uploaded to. "
                  + fmt.local_note, ""]
    return lines


def _source_ref(src: dict) -> str:
    upstream = src.get("upstream_id")
    if upstream:
        return f"[{upstream}](https://huggingface.co/{upstream})"
    spec = str(src.get("spec") or "")
    if spec.startswith("builtin:"):
        return f"quantkit's built-in model `{spec}`"
    return f"the local checkpoint `{Path(spec).name or spec}`" if spec else "its source checkpoint"


def _run_section(folder: Path, manifest: dict, fmt: CardFacts, name: str, repo: str) -> list[str]:
    lines = ["## How to run it", ""]
    if not fmt.runtimes:
        return lines + ["quantkit has no run instructions for this format.", ""]
    backend = for_manifest(manifest)
    common = common_values(repo, name, read_chat_template(folder) is not None)
    extra = backend.snippet_values(folder, manifest, repo, name) if backend else {}
    rows = backend.snippet_rows(manifest) if backend else []
    for key, note in fmt.runtimes:
        snip = SNIPPETS[key]
        code = snip["code"]
        if "each" in snip:  # repeated per row of the backend (one per file); the first row fills the rest
            if not rows:
                continue
            each = "".join(fill(snip["each"], repo=repo, **r) for r in rows)
            code = fill(fill(code, each=each, **extra), **common, **rows[0])
        else:
            code = fill(code, **common, **extra)
        lines += [f"### {snip['title']}", "", block(code, snip["lang"]), ""]
        if note:
            lines += [note, ""]
    if fmt.run_note:
        lines += [fmt.run_note, ""]
    return lines


def _vram_section(folder: Path, manifest: dict, fmt: CardFacts) -> list[str]:
    lines = ["## Memory (quantkit vram)", ""]
    try:
        rows, method, per_tok, overhead, kv_note = _vram_rows(folder, manifest)
    except Exception as e:  # the card never fails for want of an estimate
        return lines + [f"No memory table: quantkit could not estimate it here ({_vram_reason(e)}).", ""]
    multi = any(label for label, _ in rows)  # one row per file
    head = ("| file " if multi else "") + "| context | weights | KV cache (FP16) | overhead | total |"
    lines += [head, "|---" * head.count(" | ") + "|---|"]
    for label, r in rows:
        lines.append(("| " + cell(label) + " " if multi else "")
                     + f"| {r['context']:,} | {output.human_bytes(r['weights_bytes'])} | {output.human_bytes(r['kv_cache_bytes'])} "
                     f"| {output.human_bytes(r['overhead_bytes'])} | {output.human_bytes(r['total_bytes'])} |")
    from quantkit.memory import OVERHEAD_ASSUMPTION

    lines += ["", f"Batch 1. Weights: {method}. KV cache: {output.human_bytes(int(per_tok))} per token in FP16. "
              f"Overhead: {OVERHEAD_ASSUMPTION}.{kv_note} {fmt.memory_note}".rstrip(), ""]
    return lines


def _vram_reason(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
    return oneline(msg)[:200]


def _vram_rows(folder: Path, manifest: dict):
    """[(label, context row)], how weights are counted, KV bytes per token, overhead, a note."""
    from quantkit.arch import Dims
    from quantkit.errors import InputError
    from quantkit.memory import estimate, load_config

    backend = for_manifest(manifest)
    if backend is None:
        if not (folder / "config.json").is_file():
            raise InputError("the folder has no config.json")
        raise InputError(f"no memory model for {manifest.get('method')}")
    spec, variants = backend.vram_variants(folder, manifest)
    cfg, _ = load_config(spec)
    max_pos = Dims.from_config(cfg).max_positions
    contexts = [c for c in VRAM_CONTEXTS if not max_pos or c < max_pos] + ([max_pos] if max_pos else [])
    rows, methods, skipped = [], [], []
    est = None
    for label, f in variants:
        try:
            est = estimate(spec, f, contexts)
        except InputError:
            skipped.append(label)
            continue
        rows += [(label, r) for r in est.contexts]
        methods.append(est.weights_method)
    if est is None:
        raise InputError("quantkit vram has no model for these file types")
    note = f" Not estimated: {', '.join(skipped)}." if skipped else ""
    return rows, "; ".join(dict.fromkeys(methods)), est.kv_bytes_per_token, est.overhead_bytes, note


def _provenance_section(manifest: dict) -> list[str]:
    lines = ["## How it was made", ""]
    made = manifest.get("produced_by") or {}
    version = manifest.get("quantkit_version", "?")
    created = manifest.get("created", "?")
    if made.get("recipe_text") or made.get("recipe"):
        lines += [f"With quantkit {version}, {created}, from the recipe `{oneline(str(made.get('recipe', '?')))}`:", ""]
        if made.get("recipe_text"):
            lines += [block(str(made["recipe_text"]).rstrip("\n"), "yaml"), ""]
    elif made.get("command"):
        lines += [f"With quantkit {version}, {created}:", "", block(str(made["command"]), "bash"), ""]
    else:
        lines += [f"With quantkit {version}, {created}, through its Python API (no command recorded).", ""]
    src = manifest.get("source") or {}
    lines += [f"Source: {_source_ref(src)}"
              + (f" ({src['architecture']})" if src.get("architecture") else "")
              + ". Its weight files, as read:", ""]
    weights = list((src.get("weight_files") or {}).items())
    lines += ["| file | size | sha256 |", "|---|---|---|"]
    for fname, info in weights[:SOURCE_FILES_SHOWN]:
        lines.append(f"| {cell(fname)} | {output.human_bytes(info.get('bytes', 0))} | "
                     + (f"`{info['sha256']}` |" if info.get("sha256") else "not recorded |"))
    if len(weights) > SOURCE_FILES_SHOWN:
        lines.append(f"| … and {len(weights) - SOURCE_FILES_SHOWN} more (all in quantkit.json) | | |")
    lines += ["", "quantkit.json in this folder records every setting, the sha256 of every file, timings and "
              "peak memory.", ""]
    return lines


def _files_section(manifest: dict) -> list[str]:
    files = manifest.get("files") or {}
    lines = ["## Files", "", "| file | size |", "|---|---|"]
    names = sorted(files)
    shown = names if len(names) <= FILES_SHOWN else sorted(sorted(names, key=lambda n: -files[n].get("bytes", 0))[:FILES_SHOWN])
    for n in shown:
        lines.append(f"| {cell(n)} | {output.human_bytes(files[n].get('bytes', 0))} |")
    if len(shown) < len(names):
        lines.append(f"| … and {len(names) - len(shown)} smaller files (all in quantkit.json) | |")
    lines += [f"| **total** | **{output.human_bytes(sum(f.get('bytes', 0) for f in files.values()))}** |", ""]
    return lines
