"""The output contract every backend shares.

An artifact is built in a hidden sibling folder (`.NAME.partial-PID`) and renamed
into place only when complete, so an interrupted or killed run never leaves a
folder that looks finished. Stale partial folders of dead runs are removed by
the next run. An existing output is replaced only with --force, and only when it is
an earlier quantkit artifact; the source, the current folder and their parents never.
One run at a time writes an output (`.NAME.lock`). Every other file write is atomic
(a temporary sibling renamed over the target).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from quantkit.errors import Interrupted, OutputError

PARTIAL = ".partial-"
MANIFEST = "quantkit.json"
CARD = "README.md"  # the model card: written from the manifest, so not hashed in it (verify rewrites it)
UNHASHED = (MANIFEST, CARD)


LOCK = ".lock"
CHILDREN: list = []  # callables that kill child processes still running (llama.cpp), for SIGTERM
REPLACED = ".replaced-"


def is_artifact(folder: Path) -> bool:
    """A folder whose quantkit.json says quantkit wrote it: the only kind --force may replace."""
    from quantkit.manifest import read_dict  # manifest.py writes through this module

    m = read_dict(folder)
    return bool(m) and "quantkit_version" in m and isinstance(m.get("files"), dict)


def check_target(final: Path, force: bool, protect: tuple[Path, ...] = ()) -> Path:
    """Refuse an output that cannot be written, or whose replacement would lose something.

    `protect` (the source checkpoint) and the current folder are never replaced, nor any folder
    that holds them; --force replaces only an earlier quantkit artifact.
    """
    final = normalized(final)
    recover(final)
    _check(final, force, protect)
    return final


def normalized(path: Path) -> Path:
    """Absolute, with `..` and `.` resolved lexically (Path.absolute keeps them)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _check(final: Path, force: bool, protect: tuple[Path, ...]) -> None:
    real = final.resolve()
    for kept, what in [(Path(p).resolve(), "the source checkpoint") for p in protect] + [(Path.cwd().resolve(), "the current folder")]:
        if real == kept or real in kept.parents:
            holds = "is" if real == kept else "holds"
            raise OutputError(f"{final} {holds} {what}; choose another -o (quantkit never replaces it)")
    anc = creatable_folder(final)
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise OutputError(f"{final} is a file, not an artifact folder; choose another -o")
        if not force:
            raise OutputError(f"{final} already exists; pass --force to replace it, or -o to choose another folder")
        if not is_artifact(final):
            raise OutputError(
                f"{final} is not a quantkit artifact (no quantkit.json written by quantkit); --force replaces "
                "only an earlier quantkit output: move it away yourself or choose another -o"
            )
    _probe_writable(anc)


def creatable_folder(folder: Path, option: str = "-o") -> Path:
    """The nearest existing folder above `folder`, which `folder` can be created in; one OutputError
    when that is a file instead."""
    anc = _existing_ancestor(Path(folder).parent)
    if not anc.is_dir():
        raise OutputError(f"{anc} is a file, so {folder} cannot be a folder; choose another {option}")
    return anc


def check_file_target(path: Path, option: str) -> Path:
    """A single file quantkit will write (a chart, a report): its folder must exist and be writable,
    and it must not be a folder."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; name a file, e.g. {path / 'chart.png'}")
    if not path.parent.is_dir():
        raise OutputError(f"{option} {path}: the folder {path.parent} does not exist; create it or choose another path")
    _probe_writable(path.parent, option)
    return path


def _probe_writable(folder: Path, option: str = "-o") -> None:
    """Create and remove a folder in `folder`: the one test of writability that also holds for root,
    read-only mounts and pseudo file systems (/proc)."""
    probe = folder / f".quantkit-probe-{_token()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise OutputError(f"cannot write in {folder} ({e.strerror}); choose an {option} you can write to") from None


def check_free_space(final: Path, needed: int, scratch: int = 0) -> None:
    """`needed` bytes for the output and `scratch` for working files beside it while it is built."""
    anc = _existing_ancestor(final.parent)
    free = shutil.disk_usage(anc).free
    if needed + scratch > free:
        working = f" (with {scratch / 2**30:.2f} GiB of working files, removed after)" if scratch else ""
        raise OutputError(
            f"not enough free disk for the output: needs about {(needed + scratch) / 2**30:.2f} GiB{working}, "
            f"{anc} has {free / 2**30:.2f} GiB free; free space or choose another -o"
        )


def _leftovers(final: Path, kind: str) -> list[Path]:
    return sorted(final.parent.glob(f".{glob_escape(final.name)}{kind}*"))


def remove_stale_partials(final: Path) -> None:
    """Remove what earlier runs left beside `final`: partial folders, probes, and an old artifact a
    --force run had moved aside once the new one is in place. Call with the lock held: then no
    other run is writing `final`, so everything left there is stale, whatever PID its name has."""
    if not final.parent.is_dir():
        return
    for p in _leftovers(final, PARTIAL):
        _remove(p)
    if final.exists():
        for p in _leftovers(final, REPLACED):
            _remove(p)


def _remove(p: Path) -> None:
    """Remove a folder quantkit made, or the symlink -o named."""
    if p.is_symlink():
        p.unlink()
    else:
        shutil.rmtree(p, ignore_errors=True)


def recover(final: Path) -> None:
    """A --force run killed between its two renames has moved the old artifact aside and not yet put
    the new one in place: move the old one back, so that nothing is lost, and clean up after dead runs."""
    if not final.parent.is_dir():
        return
    try:
        with OutputLock(final):
            _recover_locked(final)
    except OutputError:  # a live run holds it: that run cleans up
        pass


def _recover_locked(final: Path) -> None:
    if not final.exists():
        for p in _leftovers(final, REPLACED):
            if is_artifact(p):
                p.rename(final)
                break
    remove_stale_partials(final)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _token() -> str:
    """PID and a random part: names no other run (another container's PID 1 too) will use."""
    return f"{os.getpid()}-{os.urandom(4).hex()}"


class OutputLock:
    """An exclusive lock on one output path: `.NAME.lock` beside it, held with flock.

    The kernel releases it when its process dies, so a killed run never blocks the next one;
    a second live run on the same output is refused with one line naming the first.
    """

    def __init__(self, final: Path):
        self.final = Path(final)
        self.path = self.final.parent / f".{self.final.name}{LOCK}"
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        while True:
            try:  # O_NOFOLLOW: a symlink planted at the lock's name is refused, never truncated
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                raise write_error(self.path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputError(
                    f"another quantkit run (PID {holder}) is writing {self.final}; wait for it to finish "
                    "or choose another -o"
                ) from None
            try:  # the file we locked must still be the one at the path (a finishing run unlinks it)
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def _make_parents(folder: Path) -> Path | None:
    """mkdir -p; returns the topmost folder this created (None if it existed), to remove on failure."""
    top = None
    anc = folder
    while not anc.exists():
        top = anc
        anc = anc.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) from None
    return top


@contextmanager
def staged(final: Path, force: bool = False, protect: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a fresh staging folder; on success rename it to `final`.

    The output is locked for the whole run, and checked again under the lock and before the final
    rename: an output that appeared meanwhile is replaced only as --force allows (check_target). A
    full disk or an unwritable folder is one OutputError; on any failure the partial folder, and
    the parent folders this run created, are removed, and a replaced artifact is put back.
    """
    final = normalized(final)
    created = _make_parents(final.parent)
    staging: Path | None = None
    try:
        with OutputLock(final) as lock:
            _recover_locked(final)
            _check(final, force, protect)
            staging = final.parent / f".{final.name}{PARTIAL}{_token()}"
            staging.mkdir()
            with _sigterm_removes(staging, lock.path):
                yield staging
            _check(final, force, protect)  # something may have appeared there meanwhile, outside quantkit
            _swap_in(staging, final)
            created = None
    except KeyboardInterrupt:
        _discard(staging)
        raise Interrupted("interrupted; the partial output was removed") from None
    except OSError as e:
        _discard(staging)
        if e.errno not in DISK_FULL + READ_ONLY:
            raise
        if e.filename and not normalized(e.filename).is_relative_to(final.parent):
            raise os_error(e) from None  # not our output: a source file that cannot be read, say
        raise write_error(final, e) from None
    except BaseException:
        _discard(staging)
        raise
    finally:
        if created is not None:
            _remove_empty(final.parent, created)


def _discard(staging: Path | None) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, final: Path) -> None:
    """Put the finished staging folder in place; an artifact it replaces is moved aside first and
    removed last, and put back if the second rename fails (killed here, recover() puts it back)."""
    if not final.exists():
        staging.rename(final)
        return
    old = final.parent / f".{final.name}{REPLACED}{_token()}"
    final.rename(old)
    try:
        staging.rename(final)
    except BaseException:
        old.rename(final)
        raise
    _remove(old)


def _remove_empty(folder: Path, top: Path) -> None:
    """rmdir folder and its parents up to `top`, as long as they are empty."""
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return
        folder = folder.parent


@contextmanager
def _sigterm_removes(staging: Path, lock: Path) -> Iterator[None]:
    def on_term(signum, frame):
        # Raising here could land inside a queue or lock of a worker thread and deadlock the
        # clean-up, so stop llama.cpp children, remove the partial folder and the lock, and leave.
        for stop in CHILDREN:
            with contextlib.suppress(Exception):
                stop()
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.write(2, b"quantkit: error: stopped by SIGTERM; the partial output was removed\n")
        os._exit(130)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def copy_carried(files: list[Path], staging: Path) -> list[str]:
    names = []
    for f in files:
        shutil.copyfile(f, staging / f.name)
        names.append(f.name)
    return names


def file_table(folder: Path, known: dict[str, str]) -> dict[str, dict]:
    """bytes and sha256 of every file in the artifact; hashes computed while writing are reused."""
    table = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in UNHASHED:
            table[rel] = {"bytes": p.stat().st_size, "sha256": known.get(rel) or sha256_file(p)}
    return table


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_error(path: Path, e: OSError) -> OutputError:
    """An OSError met while writing under `path`, as one line naming the place and the fix."""
    where = Path(path)
    if e.errno in DISK_FULL:
        anc = _existing_ancestor(where)
        return OutputError(f"the disk holding {anc} is full (writing {where.name}: {e.strerror}); "
                           "free space there or choose another -o")
    if e.errno in READ_ONLY:
        return OutputError(f"cannot write {where} ({e.strerror}); choose a folder you can write to")
    return OutputError(f"cannot write {where} ({e.strerror or e}); check that folder")


def os_error(e: OSError) -> OutputError:
    """An OSError no quantkit code expected (the CLI's last resort): one line that does not guess
    whether it was a read or a write, nor which disk, when the error does not say."""
    if e.errno in DISK_FULL:
        where = f" (writing {e.filename})" if e.filename else ""
        return OutputError(f"a disk is full{where}: {e.strerror}; free space and run again")
    if e.errno == errno.EROFS:
        return OutputError(f"{e.filename or 'a file'} is on a read-only file system; use a folder you can write to")
    return OutputError(f"{e.strerror}: {e.filename or 'a file quantkit needed'}; check its permissions")


def _existing_ancestor(path: Path) -> Path:
    anc = Path(path).absolute()
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    return anc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: a temporary sibling, flushed to disk, then renamed over `path`.
    A full disk or a folder that cannot be written is one OutputError; `path` keeps its old content."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{_token()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, e) from None


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, data: dict, sort_keys: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def changed_files(folder: Path, manifest: dict, hashes: bool = True) -> list[str]:
    """Files of an artifact that no longer match its manifest: missing, resized, or (with `hashes`)
    different content. Files the manifest does not list are not its business."""
    problems = []
    for rel, entry in manifest.get("files", {}).items():
        p = Path(folder) / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != entry["bytes"]:
            problems.append(f"{rel} has {p.stat().st_size} bytes, the manifest says {entry['bytes']}")
        elif hashes and sha256_file(p) != entry["sha256"]:
            problems.append(f"{rel} has changed since it was written (sha256 differs from the manifest)")
    return problems


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
