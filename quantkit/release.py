"""`quantkit run RECIPE.yaml`: a whole release, in order, resumable.

For each artifact of the recipe: convert (or reuse a complete artifact whose manifest says
it was made from the same source with the same options), verify (or reuse figures measured
with the same settings), check its gates. A failed gate stops the run. When every artifact
has passed, publish the ones with a target. The release report (release.json, release.md,
release.png) is written in every case, so a failed run shows how far it got.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from quantkit import figures, manifest as manifests, output, recipe as recipes
from quantkit.errors import InputError, OptionsError, OutputError, QuantkitError
from quantkit.manifest import Manifest, VerifyResult

REPORT_JSON, REPORT_MD, REPORT_PNG = "release.json", "release.md", "release.png"
# option names that manifests of quantkit before issue 15 recorded -> the options models' names
LEGACY_OPTION_NAMES = {"types": "type", "layout": "format", "n_grid": "grid", "shard_mb": "shard_size"}


@dataclass
class Step:
    spec: object  # a recipe artifact
    folder: Path
    options: dict
    reuse: bool = False  # a complete artifact made from the same source and options is already there
    status: str = "pending"  # built | reused | failed gate
    verify: str = "not run"  # measured | reused | off
    results: list[VerifyResult] = field(default_factory=list)
    gates: dict = field(default_factory=dict)
    gate_failures: list[str] = field(default_factory=list)
    published: dict | None = None
    wall_s: float = 0.0


def plan(spec: recipes.Recipe, recipe_dir: Path, out: Path, model_name: str) -> list[Step]:
    from quantkit.backends.registry import REGISTRY

    steps, seen = [], {}
    for i, art in enumerate(spec.artifacts):
        options = recipes.option_paths(art, recipe_dir)
        name = art.name or f"{model_name}-{REGISTRY[art.format](art.options).suffix()}"
        if name in seen:
            raise InputError(f"artifacts[{seen[name]}] and artifacts[{i}] both write {name}; give one a different `name:`")
        seen[name] = i
        gates = spec.verify.gates.model_dump()
        gates.update({k: v for k, v in (art.gates.model_dump() if art.gates else {}).items() if v is not None})
        steps.append(Step(art, recipes.safe_child(out, name), options, gates=gates))
    return steps


def matches(manifest: Manifest | None, fmt: str, options: dict, source_spec: str) -> str | None:
    """None when the manifest says this artifact is the one the recipe asks for; else why not."""
    if manifest is None:
        return "it has no quantkit.json (not a finished quantkit artifact)"
    if manifest.backend != fmt:
        return f"it holds {manifest.backend or manifest.format}, not {fmt}"
    made_with = {LEGACY_OPTION_NAMES.get(k, k): v for k, v in manifest.options.items()}
    if made_with != json.loads(json.dumps(options)):
        diff = sorted(k for k in set(options) | set(made_with) if made_with.get(k) != options.get(k))
        return f"it was made with other options ({', '.join(diff) or 'options'})"
    if manifest.source.spec != source_spec:
        return f"it was made from {manifest.source.spec}, not {source_spec}"
    return None


def run(recipe_path: Path, out: Path | None = None, force: bool = False, publish: bool = True,
        org: str | None = None, allow_pickle: bool = False, show_progress: bool = True,
        notice=lambda m: None, say=lambda m: None) -> dict:
    """Run a recipe; returns the release report (also written into the output folder).
    Raises GateFailed (exit 1) after writing the report when an artifact fails a gate."""
    recipe_path = Path(recipe_path)
    spec, text = recipes.load(recipe_path)  # a bad recipe fails at once, before torch is imported
    from quantkit import scoring as v
    from quantkit.pipeline import convert

    recipe_dir = recipe_path.resolve().parent
    out = Path(out or Path.cwd() / spec.name).expanduser().absolute()
    _check_release_folder(out)
    source_spec = recipes.resolve_source(spec.source, recipe_dir)
    from quantkit.source import resolve

    model_name = resolve(source_spec, allow_pickle=allow_pickle).name  # checks the source before any work
    steps = plan(spec, recipe_dir, out, model_name)
    targets = {id(s): _publish_target(s.spec.publish, org) for s in steps}
    report = {"recipe": recipe_path.name, "name": spec.name, "source": source_spec, "output": str(out),
              "started": output.now_iso(), "artifacts": [], "status": "running"}
    provenance = {"recipe": recipe_path.name, "recipe_text": text}
    for step in steps:  # before any work: which artifacts are already complete, and no folder replaced unasked
        step.reuse = _reusable(step, source_spec, force)
    _make_release_folder(out)  # only now: a run refused above leaves no folder behind
    try:
        for n, step in enumerate(steps, 1):
            t0 = time.perf_counter()
            label = f"[{n}/{len(steps)}] {step.spec.format} {step.folder.name}"
            if step.reuse:
                step.status = "reused"
                say(f"{label}: complete, reused")
            else:
                say(f"{label}: converting")
                try:
                    convert(step.spec.format, source_spec, step.folder, force=force or step.folder.exists(),
                            allow_pickle=allow_pickle, show_progress=show_progress, notice=notice,
                            options=step.options, provenance={**provenance, "artifact": step.folder.name})
                except OptionsError as e:  # named as the recipe fields, at the line of the option (or options:)
                    i = n - 1
                    line = line_of(text, ("artifacts", i, "options") + ((e.field,) if e.field else ()))
                    raise InputError(e.in_recipe(f"{recipe_path.name}:{line}: artifacts[{i}].options")) from None
                step.status = "built"
            step.wall_s = round(time.perf_counter() - t0, 3)
        _verify_all(steps, spec.verify, source_spec, recipe_dir, show_progress, say)
        for step in steps:
            if step.gate_failures:
                step.status = "failed gate"
                raise v.GateFailed(f"gate failed for {step.folder.name}: " + "; ".join(step.gate_failures)
                                   + "; nothing was published (report in " + str(out / REPORT_MD) + ")")
        if publish:
            from quantkit import upload as pub

            for step in steps:
                target = targets[id(step)]
                if target:
                    say(f"publishing {step.folder.name} to {target['repo']}")
                    step.published = pub.publish(step.folder, target["repo"], private=target["private"],
                                                 revision=target["revision"], show_progress=show_progress, notice=notice)
        report["status"] = "complete"
    except QuantkitError as e:
        report["status"] = "failed"
        report["error"] = str(e)
        e.report = report  # the CLI shows how far the release got before the one-line error
        raise
    finally:
        report["finished"] = output.now_iso()
        report["artifacts"] = [_row(s, targets[id(s)]) for s in steps]
        write_report(report, out)
    return report


def _check_release_folder(out: Path) -> None:
    """Refuse a release folder that is a file or lies below one, before any work."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; choose another -o for the release folder")
    output.creatable_folder(out, "-o for the release folder")


def _make_release_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output.write_error(out, e) from None


def _reusable(step: Step, source_spec: str, force: bool) -> bool:
    output.recover(step.folder)  # an artifact a killed --force run had moved aside is put back first
    if not step.folder.exists():
        return False
    existing = manifests.read(step.folder)
    why = matches(existing, step.spec.format, step.options, source_spec)
    if why is None:
        stale = output.changed_files(step.folder, existing.to_dict(), hashes=False)
        why = None if not stale else f"its files no longer match its quantkit.json ({stale[0]})"
    if why is None:  # complete and the same: reused, with or without --force
        return True
    if not force:
        raise OutputError(f"{step.folder} exists but {why}; pass --force to rebuild it, or remove it")
    return False


def _publish_target(p, org: str | None) -> dict | None:
    if p is None:
        return None
    repo = p.repo if org is None else f"{org}/{p.repo.split('/', 1)[1]}"
    return {"repo": repo, "private": p.private, "revision": p.revision}


def _verify_all(steps: list[Step], vs, source_spec: str, recipe_dir: Path, show_progress: bool, say) -> None:
    """Every artifact that verifies, in one streamed pass (the source is run once for all of them);
    figures already measured with the same settings are reused. Then each artifact's gates."""
    from quantkit import scoring as v
    from quantkit.backends.registry import REGISTRY

    eval_text = vs.eval_text
    if eval_text and not Path(eval_text).is_absolute() and (recipe_dir / eval_text).exists():
        eval_text = str((recipe_dir / eval_text).resolve())
    settings = {"eval_text": eval_text, "tokens": vs.tokens, "ctx": vs.ctx, "runtime": vs.runtime}
    todo: dict[int, list[Path]] = {}
    for step in steps:
        if not step.spec.verify:
            step.verify = "off"
            continue
        m = manifests.read(step.folder)
        targets = REGISTRY[step.spec.format].verify_targets(step.folder, m.to_dict())
        files = [t for t in targets if t != step.folder]  # a folder of several models (GGUF): its files
        if m.verify_settings == settings:
            per_file = m.verify_files or {}
            kept = ([per_file[f.name].model_copy(update={"artifact": str(f)}) for f in files if f.name in per_file]
                    if files else ([m.verify.model_copy(update={"artifact": str(step.folder)})] if m.verify else []))
            if kept and len(kept) == max(len(files), 1):
                step.results, step.verify = kept, "reused"
                continue
        todo[id(step)] = files or [step.folder]
    if todo:
        measured = [s for s in steps if id(s) in todo]
        say(f"verifying {', '.join(s.folder.name for s in measured)} against {source_spec}, in one pass")
        results = v.verify([p for s in measured for p in todo[id(s)]], source_spec, eval_text, vs.ctx, vs.tokens,
                           show_progress=show_progress, runtime=vs.runtime)
        for step in measured:
            step.results, results = results[:len(todo[id(step)])], results[len(todo[id(step)]):]
            v.record(step.results)
            m = manifests.read(step.folder)
            m.verify_settings = settings
            manifests.write(step.folder, m)
            step.verify = "measured"
    for step in steps:
        if step.spec.verify:
            _gate(step)


def _gate(step: Step) -> None:
    step.gate_failures += figures.gate_failures(step.results, step.gates["max_ppl_ratio"], step.gates["max_kld"],
                                                name=lambda r: Path(r["artifact"]).name, as_flags=False)


REPORT_FIGURES = ("artifact", "size_bytes", "ppl_source", "ppl_quant", "ppl_ratio", "kld_mean", "kld_p99",
                  "top1_agreement", "tokens_scored", "ctx")  # what release.json keeps of each result


def _row(step: Step, target: dict | None) -> dict:
    m = manifests.read(step.folder) if step.folder.is_dir() else None
    return {
        "name": step.folder.name, "format": step.spec.format, "folder": str(step.folder),
        "status": step.status, "verify": step.verify, "gates": step.gates, "gate_failures": step.gate_failures,
        "size_bytes": m.size_bytes() if m else None,
        "results": [{k: d[k] for k in REPORT_FIGURES if k in d} for d in (r.to_dict() for r in step.results)],
        "publish_target": target, "published": step.published, "wall_s": step.wall_s,
    }


def line_of(text: str, path: tuple) -> int:
    """The line of the deepest node on `path` (keys and list indexes) in the recipe's YAML text."""
    line, _field = recipes.locate(yaml.compose(text, Loader=yaml.SafeLoader), path)
    return line


def write_report(report: dict, out: Path) -> None:
    """release.json, release.md (one table) and release.png (size against PPL ratio and KLD)."""
    from quantkit import scoring as v

    output.write_json(out / REPORT_JSON, report)
    output.write_text_atomic(out / REPORT_MD, report_markdown(report))
    results = [r for a in report["artifacts"] for r in a["results"]]
    if results:
        v.chart(results, out / REPORT_PNG, title=f"{report['name']}: size against quality")
        report["chart"] = str(out / REPORT_PNG)
        output.write_json(out / REPORT_JSON, report)


def report_markdown(report: dict) -> str:
    lines = [f"# Release {report['name']}", "",
             f"Recipe `{report['recipe']}`, source `{report['source']}`: **{report['status']}**"
             + (f" ({report['error']})" if report.get("error") else "") + ".", "",
             "| artifact | format | size | PPL | PPL ratio | KLD mean | top-1 | gates | status | published |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    src = next((r for a in report["artifacts"] for r in a["results"]), None)
    if src:
        lines.append(f"| source | BF16 | | {figures.ppl(src['ppl_source'])} | 1 | 0 | 100% | | | |")
    for a in report["artifacts"]:
        gates = ", ".join(f"{k} {v}" for k, v in a["gates"].items() if v is not None) or "none"
        pub = a["published"]["url"] if a.get("published") else (a["publish_target"]["repo"] + " (not yet)" if a["publish_target"] else "")
        rows = a["results"] or [None]
        for r in rows:
            name = Path(r["artifact"]).name if r and Path(r["artifact"]).name != a["name"] else a["name"]
            size = output.human_bytes(r["size_bytes"]) if r else (output.human_bytes(a["size_bytes"]) if a["size_bytes"] else "")
            c = figures.cells(r) if r else {}
            shown = (" | ".join(c[k] for k in ("PPL quantized", "PPL ratio", "KLD mean", "top-1 agreement"))
                     if r else "| | |")
            status = a["status"] + ("; " + "; ".join(a["gate_failures"]) if a["gate_failures"] else "")
            lines.append(f"| {name} | {a['format']} | {size} | {shown} | {gates} | {status} | {pub} |")
    if src:
        lines += ["", f"PPL and KLD on the same {src['tokens_scored']:,} scored tokens per model (ctx {src['ctx']}); "
                      f"chart: {REPORT_PNG}."]
    return "\n".join(lines) + "\n"
