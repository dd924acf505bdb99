"""The card's quality section: the verify figures from the manifest, or how to get them."""
from __future__ import annotations

from quantkit import figures
from quantkit.card.facts import card_facts, verify_files
from quantkit.card.markdown import block, cell, oneline


def _verify_section(manifest: dict, name: str) -> list[str]:
    try:
        return _verify_lines(manifest, name)
    except (KeyError, TypeError, ValueError, AttributeError):  # figures of another quantkit version
        return ["## Quality (quantkit verify)", "", "The verify figures in quantkit.json are not in a form this "
                f"quantkit reads; run `quantkit verify {name}` again.", ""]


def _verify_lines(manifest: dict, name: str) -> list[str]:
    lines = ["## Quality (quantkit verify)", ""]
    single = manifest.get("verify")
    per_file = manifest.get("verify_files") or {}
    several = verify_files(manifest, name)
    if not single and not per_file:
        targets = " ".join(f"{name}/{f}" for f in several) if several else name
        return lines + ["Not verified yet. `quantkit verify` scores the artifact against its source (perplexity, "
                        "KL divergence, top-1 agreement on the same token windows) and writes the figures into "
                        "quantkit.json and this card:", "", block(f"quantkit verify {targets}", "bash"), ""]
    if single:
        ev, c = single, figures.cells(single)
        lines += ["| | |", "|---|---|",
                  *(f"| {label} | {c[label]} |" for label in ("PPL source", "PPL quantized", "PPL ratio",
                                                             "KLD mean / p99", "top-1 agreement")),
                  f"| tokens scored | {c['tokens scored']} ({_windows(ev)}) |", ""]
        rows = [ev]
    else:
        lines += ["| file | PPL source | PPL quantized | PPL ratio | KLD mean / p99 | top-1 agreement | tokens scored |",
                  "|---|---|---|---|---|---|---|"]
        rows = []
        for fname, ev in sorted(per_file.items()):
            rows.append(ev)
            c = figures.cells(ev)
            lines.append(f"| {cell(fname)} | " + " | ".join(c[label] for label in (
                "PPL source", "PPL quantized", "PPL ratio", "KLD mean / p99", "top-1 agreement", "tokens scored")) + " |")
        lines.append("")
        missing = [f for f in several if f not in per_file]
        if missing:
            lines += ["Not verified yet: " + ", ".join(f"`{m}`" for m in missing) + " (`quantkit verify "
                      + " ".join(f"{name}/{m}" for m in missing) + "`).", ""]
    texts = sorted({oneline(r.get("text", "?")) for r in rows})
    methods = sorted({oneline(r.get("method", "?")) for r in rows})
    lines += [f"Evaluation text: {'; '.join(texts)}. Scoring: {'; '.join(methods)}. "
              "PPL ratio is quantized over source perplexity on the same windows (1.0 is no loss); "
              "KLD is the KL divergence from the source's next-token distribution to the quantized one; "
              "top-1 agreement is how often both pick the same next token.", ""]
    note = card_facts(manifest).verify_note
    if note:
        lines += [note, ""]
    return lines


def _windows(ev: dict) -> str:
    if ev.get("windows") and ev.get("ctx"):
        return f"{ev['windows']} windows of {ev['ctx']} tokens, second half of each scored"
    return "second half of each window scored"
