"""A fake Hugging Face Hub for tests: the HTTP calls huggingface_hub 1.33 makes to create a model
repo and a branch, list a tree, and commit files (regular in the commit body, LFS by the batch API
and a plain PUT). See docs/publish.md for the list. Xet is not served: the `hub` fixture sets
HF_HUB_DISABLE_XET, which is how huggingface_hub chooses between Xet and LFS (client side only).
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.npy", "*.zip")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_MIN_BYTES = 10 * 1024 * 1024  # the Hub stores bigger files in LFS whatever their name


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict = field(default_factory=dict)  # branch -> {"head": oid, "files": {path: (bytes, is_lfs)}}
    commits: list = field(default_factory=list)  # {"oid", "branch", "title", "paths"}


class FakeHub:
    """State of the fake Hub; tests read it and may set `fail_commits` (commit POSTs to answer 500)."""

    def __init__(self, token: str, namespaces=("quantkit-test",)):
        self.token, self.namespaces = token, set(namespaces)
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.fail_commits: set[int] = set()  # 1-based numbers of commit POSTs that fail once with 500
        self.commit_posts = 0
        self.sig = secrets.token_hex(8)  # stands in for the signature of a presigned upload URL
        self.lock = threading.Lock()
        self.url = ""

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return {p: c for p, (c, _) in self.repos[repo_id].branches[branch]["files"].items()}

    def lfs_paths(self, repo_id: str, branch: str = "main") -> set[str]:
        return {p for p, (_, lfs) in self.repos[repo_id].branches[branch]["files"].items() if lfs}

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    def _commit(self, repo: Repo, branch: str, title: str, files: dict) -> str:
        oid = secrets.token_hex(20)
        br = repo.branches.setdefault(branch, {"head": None, "files": {}})
        br["files"].update(files)
        br["head"] = oid
        repo.commits.append({"oid": oid, "branch": branch, "title": title, "paths": sorted(files)})
        return oid

    def _entry(self, path: str, content: bytes, lfs: bool) -> dict:
        if not lfs:
            return {"type": "file", "path": path, "size": len(content), "oid": git_sha1(content)}
        sha = hashlib.sha256(content).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(content)}\n".encode()
        return {"type": "file", "path": path, "size": len(content), "oid": git_sha1(pointer),
                "lfs": {"oid": sha, "size": len(content), "pointerSize": len(pointer)}}


REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (method, path regex, handler name)
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("GET", rf"^/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("POST", rf"^/api/models/{REPO}/branch/(?P<rev>[^/]+)$", "create_branch"),
    ("GET", rf"^/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?$", "tree"),
    ("POST", rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$", "commit"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("POST", rf"^/{REPO}\.git/info/lfs/objects/batch$", "lfs_batch"),
    ("PUT", r"^/_lfs/(?P<oid>[0-9a-f]{64})$", "lfs_put"),
    ("POST", r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$", "lfs_verify"),
]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        self.status, self.message, self.code = status, message, code


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    hub: FakeHub

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while (size := int(self.rfile.readline().strip().split(b";")[0], 16)):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload=None, headers: dict | None = None):
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        body = self._body()
        hub = self.hub
        with hub.lock:
            hub.requests.append((method, url.path))
        for m, pattern, name in ROUTES:
            match = re.match(pattern, url.path)
            if m == method and match:
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    if name != "lfs_put":  # a presigned URL carries its own signature, no token
                        self._check_token()
                    with hub.lock:
                        status, payload = getattr(self, name)(body=body, **args)
                    return self._send(status, payload)
                except HubError as e:
                    headers = {"X-Error-Code": e.code} if e.code else {}
                    if e.status == 401:
                        headers["X-Error-Message"] = e.message
                    return self._send(e.status, {"error": e.message}, headers)
        self._send(404, {"error": f"fake hub: no route for {method} {url.path}"})

    def _check_token(self):
        given = self.headers.get("Authorization", "")
        if given != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo: str, rev: str | None = None) -> tuple[Repo, dict | None]:
        r = self.hub.repos.get(repo)
        if r is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if rev is not None and rev not in r.branches:
            raise HubError(404, "Invalid rev id: " + rev, "RevisionNotFound")
        return r, (r.branches[rev] if rev is not None else None)

    # --- hf_api.py -----------------------------------------------------------------------------
    def create_repo(self, body):
        req = json.loads(body)
        repo_id = f"{req['organization']}/{req['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:  # huggingface_hub reads "url" from this answer too
            return 409, {"error": "You already created this model repo", "url": url}
        if req["organization"] not in self.hub.namespaces:
            raise HubError(403, f"You don't have the rights to create a model under the namespace {req['organization']}")
        repo = self.hub.repos[repo_id] = Repo(private=req.get("visibility") == "private")
        self.hub._commit(repo, "main", "initial commit", {".gitattributes": (GITATTRIBUTES, False)})
        return 200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)}

    def repo_info(self, body, repo, rev="main"):
        r, br = self._repo(repo, rev)
        return 200, {"id": repo, "author": repo.split("/")[0], "sha": br["head"], "private": r.private,
                     "siblings": [{"rfilename": p} for p in sorted(br["files"])]}

    def create_branch(self, body, repo, rev):
        r, _ = self._repo(repo)
        if rev in r.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{rev}")
        start = (json.loads(body or b"{}") or {}).get("startingPoint", "main")
        _, src = self._repo(repo, start)
        r.branches[rev] = {"head": src["head"], "files": dict(src["files"])}
        return 200, {}

    def tree(self, body, repo, rev, sub=""):
        _, br = self._repo(repo, rev)
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = sub.strip("/") + "/" if sub else ""
        out, folders = [], set()
        for path, (content, lfs) in sorted(br["files"].items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append(self.hub._entry(path, content, lfs))
        out += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0}
                for f in sorted(folders)]
        return 200, out

    def preupload(self, body, repo, rev):
        _, br = self._repo(repo, rev)
        lfs_globs = [ln.split()[0] for ln in br["files"].get(".gitattributes", (b"", False))[0].decode().splitlines()
                     if "filter=lfs" in ln]
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = (f["size"] >= LFS_MIN_BYTES or b"\0" in sample
                   or any(fnmatch.fnmatch(f["path"].rsplit("/", 1)[-1], g) for g in lfs_globs))
            old = br["files"].get(f["path"])
            oid = None
            if old is not None:
                e = self.hub._entry(f["path"], *old)
                oid = e["lfs"]["oid"] if "lfs" in e else e["oid"]
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        return 200, {"files": files, "commitOid": br["head"]}

    def commit(self, body, repo, rev):
        r, _ = self._repo(repo, rev)
        self.hub.commit_posts += 1
        if self.hub.commit_posts in self.hub.fail_commits:
            self.hub.fail_commits.discard(self.hub.commit_posts)
            raise HubError(500, "Internal Error (injected by the fake hub)")
        title, files = "", {}
        for line in body.decode().splitlines():
            item = json.loads(line)
            key, v = item["key"], item["value"]
            if key == "header":
                title = v["summary"]
            elif key == "file":
                files[v["path"]] = (base64.b64decode(v["content"]), False)
            elif key == "lfsFile":
                if v["oid"] not in self.hub.lfs:
                    raise HubError(400, f"LFS object {v['oid']} of {v['path']} was never uploaded")
                files[v["path"]] = (self.hub.lfs[v["oid"]], True)
            else:
                raise HubError(400, f"fake hub: unsupported commit operation {key}")
        oid = self.hub._commit(r, rev, title, files)
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{repo}/commit/{oid}",
                     "hookOutput": "", "pullRequestUrl": None}

    def validate_yaml(self, body):
        return 200, {"errors": [], "warnings": []}

    # --- lfs.py: batch API, presigned PUT, verify ----------------------------------------------
    def lfs_batch(self, body, repo):
        self._repo(repo)
        req = json.loads(body)
        objects = []
        for o in req["objects"]:
            obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.hub.lfs:  # already stored objects get no actions: nothing to send
                obj["actions"] = {
                    "upload": {"href": f"{self.hub.url}/_lfs/{o['oid']}?size={o['size']}&sig={self.hub.sig}"},
                    "verify": {"href": f"{self.hub.url}/_lfs/{o['oid']}/verify"},
                }
            objects.append(obj)
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_put(self, body, oid):
        if self.query.get("sig") != [self.hub.sig]:
            raise HubError(403, "bad signature")
        if hashlib.sha256(body).hexdigest() != oid or str(len(body)) != self.query["size"][0]:
            raise HubError(400, "content does not match its oid and size")
        self.hub.lfs[oid] = body
        return 200, None

    def lfs_verify(self, body, oid):
        req = json.loads(body)
        if oid not in self.hub.lfs or len(self.hub.lfs[oid]) != req["size"]:
            raise HubError(404, "object not found")
        return 200, {}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running FakeHub; huggingface_hub (in this process and in subprocesses started with
    os.environ) points at it, uses LFS rather than Xet, and sees no saved login or HF_TOKEN."""
    from huggingface_hub import constants

    state = FakeHub(token="hf_fake_" + secrets.token_hex(16))
    handler = type("BoundHandler", (Handler,), {"hub": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    home = tmp_path / "hf-home"
    for k, v in {"HF_ENDPOINT": state.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
                 "NO_PROXY": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", state.url)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
