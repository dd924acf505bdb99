"""`quantkit publish`: upload an artifact folder to the Hugging Face Hub, idempotently.

The folder must still match its manifest (sha256 of every file), checked before any network
call. The remote revision is listed once and compared file by file: LFS files by sha256,
regular (git) files by git blob sha1. Only what differs is uploaded, in commits of bounded size
(model files first, then quantkit.json and README.md), so an interrupted run loses at most one
batch and the same command run again resumes; a run where everything matches makes no commit.

The token comes from the `token` argument or huggingface_hub's own resolution (HF_TOKEN, then
the saved `hf auth login`). It is handed to huggingface_hub and nowhere else: it is never
printed, returned, logged, or written. Nor is a user:password that HF_ENDPOINT may carry: the
endpoint is shown as https://***@host.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from quantkit import hub_ids, manifest as manifests, output
from quantkit.errors import InputError, QuantkitError
from quantkit.manifest import Manifest

BATCH_FILES = 50  # at most this many files per commit ...
BATCH_BYTES = 5 * 2**30  # ... and at most this many bytes (one larger file makes a commit of its own)
LAST = (output.MANIFEST, output.CARD)  # committed last: a repo that has them has all the rest


class PublishError(QuantkitError):
    """The Hub refused a request or could not be reached. Commits already made are kept;
    running the same command again uploads only what is still missing."""


def publish(
    folder: Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    show_progress: bool = False,
    notice: Callable[[str], None] = lambda m: None,
) -> dict:
    """Upload `folder` to the model repo `repo_id` (branch `revision`, default main) and return
    what happened: {"repo_id", "revision", "url", "uploaded", "unchanged", "commits", "dry_run",
    "private", "card"}. With `dry_run` nothing is written anywhere (not even the local card) and
    "uploaded" is what a real run would upload."""
    folder = Path(folder).expanduser().absolute()
    manifest = check_artifact(folder)
    check_repo_id(repo_id)
    if revision is not None:
        check_revision(revision)
    if token is None:
        token = _saved_token()
    if not token and not dry_run:
        raise PublishError("no Hugging Face token: set HF_TOKEN to a token with write access, or run `hf auth login`")
    if not token and dry_run:
        notice("no Hugging Face token, so the Hub was not asked what it already has; listing every file")
    card_state = _prepare_card(folder, manifest, repo_id, dry_run, notice)

    from huggingface_hub import HfApi, constants

    branch = revision or "main"
    api = HfApi(token=token or False)
    endpoint = redact(api.endpoint)  # HF_ENDPOINT may carry user:password; only this form is shown
    base = f"{endpoint}/{repo_id}"
    result = {
        "repo_id": repo_id,
        "revision": branch,
        "url": base if revision is None else f"{base}/tree/{branch}",
        "uploaded": [],
        "unchanged": [],
        "commits": [],
        "dry_run": dry_run,
        "private": private,
        "card": card_state,
    }
    local = local_files(folder, manifest, notice)
    with _hub_errors(repo_id, branch, endpoint, token), _hub_quiet(notice):
        if dry_run and token and constants.is_offline_mode():
            notice("HF_HUB_OFFLINE is set, so the Hub was not asked what it already has; listing every file")
        if dry_run:
            remote, result["private"] = _read_remote(api, repo_id, branch, private, notice, endpoint) if (
                token and not constants.is_offline_mode()) else ({}, private)
        else:
            api.create_repo(repo_id, private=private, exist_ok=True)
            result["private"] = bool(api.repo_info(repo_id).private)
            if private and not result["private"]:
                raise PublishError(
                    f"{repo_id} already exists and is public, but a private upload was asked for; "
                    f"make it private in its Settings on the Hub, or publish without --private")
            if revision is not None and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            remote = remote_files(api, repo_id, branch)
        todo, same = plan(folder, local, remote)
        result["uploaded"], result["unchanged"] = todo, same
        if not dry_run and todo:
            result["commits"] = _upload(api, folder, repo_id, branch, local, todo, commit_message, show_progress)
    return result


def check_artifact(folder: Path) -> Manifest:
    """The manifest of `folder`, refusing folders that are not artifacts or no longer match it."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the artifact folder that `quantkit` wrote")
    manifest = manifests.read(folder)
    if manifest is None or "files" not in manifest.model_fields_set:
        raise InputError(f"{folder} is not a quantkit artifact (no readable {output.MANIFEST}); "
                         "publish a folder that a quantkit conversion wrote")
    problems = output.changed_files(folder, manifest.to_dict())
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{folder}: {problems[0]}{more}; nothing was uploaded: rebuild the artifact "
                         "(run the same `quantkit` conversion again with --force) before publishing it")
    return manifest


def check_repo_id(repo_id: str) -> None:
    if not hub_ids.is_repo_id(repo_id):
        raise InputError(f"--repo {repo_id!r} is not a Hub model id; give it as ORG/NAME "
                         "(letters, digits, '-', '_', '.'), e.g. my-org/Llama-3-8B-FP8")


def check_revision(revision: str) -> None:
    if not hub_ids.is_branch(revision):
        raise InputError(f"--revision {revision!r} is not a usable branch name; use letters, digits and "
                         "'-', '_', '.', '/', e.g. fp8-v2")


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file stored as a plain git blob (what the Hub reports for non-LFS files)."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def local_files(folder: Path, manifest: Manifest, notice=lambda m: None) -> dict[str, dict]:
    """{path: {"bytes", "sha256"}} of every file to publish: all but hidden names (staging
    leftovers, caches) at any depth. sha256 comes from the (just verified) manifest when listed."""
    listed = manifest.files
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or not p.is_file():
            continue
        entry = listed.get(rel)
        if entry is None and rel not in output.UNHASHED:
            notice(f"{rel} is not listed in {output.MANIFEST}; it is uploaded as it is")
        files[rel] = {"bytes": p.stat().st_size, "sha256": entry.sha256 if entry else output.sha256_file(p)}
    return files


def remote_files(api, repo_id: str, branch: str) -> dict:
    """{path: RepoFile} of the files on `branch` (one recursive tree listing)."""
    return {f.path: f for f in api.list_repo_tree(repo_id, revision=branch, recursive=True)
            if hasattr(f, "blob_id")}


def plan(folder: Path, local: dict[str, dict], remote: dict) -> tuple[list[str], list[str]]:
    """(paths to upload, paths the remote already holds as they are), in commit order."""
    todo, same = [], []
    for rel in sorted(local, key=lambda r: (r in LAST, LAST.index(r) if r in LAST else 0, r)):
        r, mine = remote.get(rel), local[rel]
        if r is None or r.size != mine["bytes"]:
            todo.append(rel)
        elif r.lfs is not None:
            (same if r.lfs.sha256 == mine["sha256"] else todo).append(rel)
        else:
            (same if r.blob_id == git_blob_sha1(folder / rel) else todo).append(rel)
    return todo, same


def batches(paths: list[str], sizes: dict[str, int]) -> Iterator[list[str]]:
    """Consecutive groups of at most BATCH_FILES files and BATCH_BYTES bytes (a bigger file alone)."""
    batch, total = [], 0
    for p in paths:
        if batch and (len(batch) >= BATCH_FILES or total + sizes[p] > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(p)
        total += sizes[p]
    if batch:
        yield batch


def _upload(api, folder, repo_id, branch, local, todo, commit_message, show_progress) -> list[str]:
    from huggingface_hub import CommitOperationAdd

    from quantkit.progress import ByteProgress

    sizes = {p: local[p]["bytes"] for p in todo}
    groups = list(batches(todo, sizes))
    message = commit_message or f"Upload {folder.name} with quantkit"
    commits = []
    with ByteProgress(f"upload to {repo_id}", sum(sizes.values()), enabled=show_progress) as bar:
        for i, group in enumerate(groups, 1):
            ops = []
            for p in group:
                op = CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p))
                op.upload_info.sha256 = bytes.fromhex(local[p]["sha256"])  # known: no second read to hash
                ops.append(op)
            title = message if len(groups) == 1 else f"{message} ({i}/{len(groups)})"
            info = api.create_commit(repo_id, operations=ops, commit_message=title, revision=branch)
            commits.append(info.commit_url)
            bar.advance(sum(sizes[p] for p in group))
    return commits


def _read_remote(api, repo_id, branch, private, notice, endpoint) -> tuple[dict, bool]:
    """For a dry run: what the Hub holds, or nothing when the repo or branch does not exist yet."""
    import httpx
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        is_private = bool(api.repo_info(repo_id).private)
        return remote_files(api, repo_id, branch), is_private
    except RepositoryNotFoundError:
        notice(f"{repo_id} does not exist yet; a real run creates it ({'private' if private else 'public'})")
        return {}, private
    except RevisionNotFoundError:
        notice(f"branch {branch} does not exist yet in {repo_id}; a real run creates it from main")
        return {}, is_private
    except (httpx.TransportError, ConnectionError, TimeoutError) as e:  # no network: still show the plan
        notice(f"cannot reach the Hub at {endpoint} ({type(e).__name__}); listing every file")
        return {}, private


def _prepare_card(folder: Path, manifest: Manifest, repo_id: str, dry_run: bool, notice) -> str:
    """Re-render the model card for `repo_id` when quantkit wrote it; keep a hand-edited one."""
    from quantkit import card

    manifest = manifest.to_dict()
    readme = folder / output.CARD
    if readme.is_file() and not card.is_generated(folder, manifest):
        notice(f"{output.CARD} was edited by hand, so it is uploaded as it is "
               f"(its snippets may not name {repo_id})")
        return "kept"
    if dry_run:
        return "would render"
    card.write_card(folder, manifest, repo_id)
    return "rendered"


_USERINFO = re.compile(r"(?<=://)[^/?#\s@]*@")


def redact(text: str) -> str:
    """`text` with the user:password part of every URL in it replaced: https://***@host/..."""
    return _USERINFO.sub("***@", text)


def _saved_token() -> str | None:
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # a failed OIDC exchange (HF_OIDC_RESOURCE set) raises instead of returning None
        return None


@contextmanager
def _hub_quiet(notice) -> Iterator[None]:
    """huggingface_hub's own tqdm bars off (quantkit draws one bar); its warnings (README metadata,
    for instance) become notices, once each; library deprecation warnings are dropped."""
    from huggingface_hub.utils import disable_progress_bars

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with disable_progress_bars():
            try:
                yield
            finally:
                said = []
                for w in caught:
                    line = redact(" ".join(str(w.message).split()))
                    if not issubclass(w.category, DeprecationWarning) and line not in said:
                        said.append(line)
                        notice(line)


@contextmanager
def _hub_errors(repo_id: str, branch: str, endpoint: str, token: str | None) -> Iterator[None]:
    """huggingface_hub and network errors -> one-line PublishError (the token is never in it)."""
    try:
        yield
    except QuantkitError:
        raise
    except Exception as e:
        line = _explain(e, repo_id, branch, endpoint)
        if line is None:
            raise
        if token:
            line = line.replace(token, "***")
        raise PublishError(redact(line)) from e


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _explain(e: BaseException, repo_id: str, branch: str, endpoint: str) -> str | None:
    import httpx
    from huggingface_hub.errors import (HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    org = repo_id.split("/")[0]
    again = "run the same command again to resume (files already committed are not uploaded again)"
    for x in _chain(e):
        if isinstance(x, OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to publish (or use --dry-run)"
        if isinstance(x, RevisionNotFoundError):
            return f"branch {branch} was not found in {repo_id}; check --revision, then {again}"
        if isinstance(x, RepositoryNotFoundError):
            return (f"{repo_id} was not found, or this token cannot see it; check --repo and that the token "
                    f"may write to {org}")
        if isinstance(x, HfHubHTTPError) and x.response is not None:
            code = x.response.status_code
            if code == 401:
                return ("the Hub rejected the token (401 Unauthorized): it is invalid or expired; set HF_TOKEN to "
                        "a valid token with write access, or run `hf auth login`")
            if code == 403:
                return (f"this token may not write to {repo_id} (403 Forbidden); use a token with write access "
                        f"to {org} (a fine-grained token needs write permission on it)")
            if code == 409:
                return f"the Hub reported a conflict on {repo_id}@{branch} (409); wait for other uploads, then {again}"
            if code == 429:
                return f"the Hub is rate-limiting this token (429 Too Many Requests); wait a few minutes, then {again}"
            if code >= 500:
                return f"the Hub failed ({code} {x.response.reason_phrase}) while publishing {repo_id}; {again}"
            said = " ".join(str(getattr(x, "server_message", None) or "").split())[:200]
            said = f": {said}" if said else ""
            return f"the Hub answered {code} {x.response.reason_phrase}{said} while publishing {repo_id}; {again}"
        if isinstance(x, httpx.TransportError):
            return (f"cannot reach the Hub at {endpoint} ({type(x).__name__}); check the network "
                    f"(and HF_ENDPOINT if set), then {again}")
        if isinstance(x, (ConnectionError, TimeoutError)):  # hf_xet reports failed Xet calls this way
            return (f"the upload to the Hub at {endpoint} failed ({type(x).__name__}: "
                    f"{' '.join(str(x).split())[:200]}); check the network, then {again}")
        if isinstance(x, ValueError) and str(x).startswith("Invalid metadata in README.md"):
            return (f"the Hub rejected the metadata header of {output.CARD}: "
                    f"{' '.join(str(x).split()[4:]) or 'invalid YAML'}; fix it or delete {output.CARD} "
                    "so that quantkit writes the card again")
        if isinstance(x, ValueError) and str(x).startswith("LFS batch API returned errors"):
            return f"the Hub refused a large-file upload ({' '.join(str(x).split()[5:])}); {again}"
        if type(x).__module__.split(".")[0] == "hf_xet":
            return f"the Xet upload to {repo_id} failed ({type(x).__name__}: {' '.join(str(x).split())[:200]}); {again}"
    return None
