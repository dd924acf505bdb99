"""source -> backend -> artifact: the one path every conversion takes."""
from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path

from quantkit import __version__, card, manifest as manifests, output
from quantkit.backends.base import Options
from quantkit.backends.registry import REGISTRY
from quantkit.manifest import FileEntry, Manifest, SourceRecord
from quantkit.progress import ByteProgress
from quantkit.source import Source, resolve


def default_output(source: Source, suffix: str) -> Path:
    return Path.cwd() / f"{source.name}-{suffix}"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def convert(
    backend_name: str,
    model: str,
    out: Path | None = None,
    force: bool = False,
    allow_pickle: bool = False,
    show_progress: bool = True,
    notice=lambda msg: None,
    options: Options | dict | None = None,
    provenance: dict | None = None,
) -> tuple[Path, dict]:
    """Run one backend on one source; return the artifact folder and its manifest.

    `provenance` says what asked for it ({"command": ...} or {"recipe": ...}); it goes into
    the manifest and the model card. `options` is the backend's options model (or a dict of its
    fields); they are recorded, so that a recipe can tell whether an existing artifact is the one
    it would make.
    """
    cls = REGISTRY[backend_name]
    backend = cls(options if isinstance(options, Options) else cls.Options(**(options or {})))
    source = resolve(model, allow_pickle=allow_pickle)
    for n in source.notices:
        notice(n)
    protect = (source.path,)
    final = output.check_target(out or default_output(source, backend.suffix()), force, protect)
    t0 = time.perf_counter()
    with output.staged(final, force, protect) as staging:  # the output is locked from here on
        plan = backend.check(source)  # options against this source, before any work
        for n in plan.notices:
            notice(n)
        output.check_free_space(final, plan.output_bytes, plan.scratch_bytes)
        with ByteProgress(f"{backend_name} {source.name}", source.weight_bytes, enabled=show_progress) as bar:
            result = backend.run(plan, staging, bar.advance)
        carried = output.copy_carried(source.carried_files(), staging)
        wall = time.perf_counter() - t0
        record = Manifest(
            quantkit_version=__version__, created=output.now_iso(), backend=backend_name,
            format=result.format, method=result.method, parameters=result.parameters,
            options=backend.options.model_dump(mode="json"), produced_by=provenance or {},
            source=SourceRecord(
                spec=source.spec, path=str(source.path), hub_id=source.hub_id, upstream_id=source.upstream_id,
                card_metadata=card.source_metadata(source.path), architecture=source.architecture,
                weight_files={p.name: FileEntry(bytes=p.stat().st_size, sha256=result.source_hashes.get(p.name))
                              for p in source.weight_files}),
            carried_files=carried, files=output.file_table(staging, result.file_hashes),
            timings={"wall_s": round(wall, 3)}, peak_rss_bytes=peak_rss_bytes(),
            host={"python": sys.version.split()[0], "machine": platform.machine()})
        manifests.write(staging, record)
        manifest = record.to_dict()
        card.write_card(staging, manifest)
    return final, manifest
