"""A small in-memory Hugging Face Hub for tests: the endpoints huggingface_hub's client calls, on 127.0.0.1.

It speaks the protocol the real client expects (read from huggingface_hub 2.4's source): repo creation, YAML
validation, preupload (LFS for binary files, as the Hub's default .gitattributes does), the LFS batch / upload /
verify steps (the client falls back to plain LFS when Xet is disabled), ndjson commits, branches, revision info,
tree and paths-info listings, file resolution with ``X-Repo-Commit`` / ``ETag`` / ``X-Linked-Etag`` /
``X-Linked-Size`` headers (HEAD and GET, with ``Range``), and the model listing with ``filter`` / ``search`` /
``sort`` / ``cardData``.

Switches make it misbehave on purpose: ``fail`` answers every request (or those whose path contains a string) with
a status; ``interrupt`` cuts a file's download halfway (and answers the retries with 500); ``corrupt`` serves a
file's bytes altered while advertising the original sha256; ``tokens`` turns authentication on. ``requests``
records every ``(method, path)`` seen.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from huggingface_hub import constants

LFS_SUFFIXES = (".safetensors", ".bin", ".png", ".jpg", ".pt", ".ckpt")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
_REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_oid(data: bytes) -> str:
    """The git blob id of ``data`` (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass
class Repo:
    """A model repo: branches pointing at commits, each commit a full snapshot ``{path: bytes}``."""

    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    downloads: int = 0

    def snapshot(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        sha = self.branches.get(revision, revision)
        return (sha, self.commits[sha]) if sha in self.commits else None


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or b"\0" in data[:512]


def entry(path: str, data: bytes) -> dict:
    """A file as the tree / paths-info endpoints describe it."""
    if is_lfs(path, data):
        return {"type": "file", "path": path, "size": len(data), "oid": git_oid(lfs_pointer(data)),
                "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                        "pointerSize": len(lfs_pointer(data))}}
    return {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}


def card_data(files: dict[str, bytes]) -> dict:
    """The YAML header of a snapshot's README.md (what the Hub calls cardData)."""
    text = files.get("README.md", b"").decode()
    if not text.startswith("---"):
        return {}
    return yaml.safe_load(text.split("---", 2)[1]) or {}


class FakeHub:
    """The server and its state; ``url`` is the endpoint to give the client."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: tuple[int, str] | None = None  # (status, path substring)
        self.interrupt: set[str] = set()  # file names whose download is cut halfway, later ones answered 500
        self.cut: set[str] = set()
        self.corrupt: set[str] = set()  # file names served altered
        self.tokens: dict[str, str] | None = None  # token -> "read" | "write"; None: no authentication
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes | None], branch: str = "main") -> str:
        """Apply ``files`` (None deletes) on top of ``branch`` and return the new commit sha."""
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches.get(branch)
            tree = dict(repo.commits[parent]) if parent else {}
            for path, data in files.items():
                if data is None:
                    tree.pop(path, None)
                else:
                    tree[path] = data
            sha = hashlib.sha1(f"{repo_id}:{parent}:{next(self._counter)}".encode()).hexdigest()
            repo.commits[sha] = tree
            repo.branches[branch] = sha
            return sha

    def create(self, repo_id: str, *, private: bool = False) -> None:
        self.repos[repo_id] = Repo(private=private)
        self.commit(repo_id, {".gitattributes": GITATTRIBUTES})

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].snapshot(revision)[1]

    def commit_count(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits)


class HubError(Exception):
    """An HTTP error answer: status, optional X-Error-Code, message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        # --- plumbing -------------------------------------------------------------------------------------

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def _dispatch(self, method: str) -> None:
            split = urlsplit(self.path)
            self.query = parse_qs(split.query)
            path = split.path
            hub.requests.append((method, path))
            body = self._read_body()
            try:
                if hub.fail and hub.fail[1] in path:
                    raise HubError(hub.fail[0], f"switched to fail with {hub.fail[0]}")
                for verb, pattern, name in ROUTES:
                    match = re.fullmatch(pattern, path)
                    if match and (verb == method or (verb == "GET" and method == "HEAD")):
                        params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        return getattr(self, name)(body=body, **params)
                raise HubError(404, f"no route for {method} {path}")
            except HubError as err:
                headers = {"X-Error-Message": str(err), **err.headers}
                if err.code:
                    headers["X-Error-Code"] = err.code
                self._send(err.status, json.dumps({"error": str(err)}).encode(), headers)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        return b"".join(chunks)
                    chunks.append(chunk)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
                  content_type: str = "application/json", length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data, status: int = 200, content_type: str = "application/json") -> None:
            self._send(status, json.dumps(data).encode(), content_type=content_type)

        def _auth(self, repo: Repo | None = None, *, write: bool = False) -> None:
            """401 for a bad token, 403 for a read token writing, 404 for a private repo seen anonymously."""
            header = self.headers.get("Authorization", "")
            token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
            if hub.tokens is None:
                return
            role = hub.tokens.get(token) if token else None
            if token and role is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            if write and role is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            if write and role != "write":
                raise HubError(403, "You don't have the rights to write to this repo")
            if repo is not None and repo.private and role is None:
                raise HubError(404, "Repository not found", "RepoNotFound")

        def _repo(self, repo_id: str, *, write: bool = False) -> Repo:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._auth(write=write)
                raise HubError(404, "Repository not found", "RepoNotFound")
            self._auth(repo, write=write)
            return repo

        def _snapshot(self, repo: Repo, revision: str) -> tuple[str, dict[str, bytes]]:
            found = repo.snapshot(revision)
            if found is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return found

        def _form(self, body: bytes) -> dict:
            if self.headers.get("Content-Type", "").startswith("application/json"):
                return json.loads(body or b"{}")
            return parse_qs(body.decode())

        # --- endpoints ------------------------------------------------------------------------------------

        def create_repo(self, body: bytes) -> None:
            payload = json.loads(body)
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            self._auth(write=True)
            if repo_id in hub.repos:
                return self._json({"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"},
                                  status=409)
            hub.create(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
            self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def validate_yaml(self, body: bytes) -> None:
            content = json.loads(body)["content"]
            try:
                card_data({"README.md": content.encode()})
            except yaml.YAMLError as exc:
                return self._json({"errors": [{"message": str(exc)}], "warnings": []}, status=400)
            self._json({"errors": [], "warnings": []})

        def list_models(self, body: bytes) -> None:
            wanted = self.query.get("filter", [])
            text = self.query.get("search", [""])[0].lower()
            found = []
            for repo_id, repo in hub.repos.items():
                if repo.private:
                    continue
                sha, files = repo.snapshot("main")
                data = card_data(files)
                tags = list(data.get("tags") or []) + ([data["library_name"]] if data.get("library_name") else [])
                if all(t in tags for t in wanted) and text in repo_id.lower():
                    item = {"id": repo_id, "_id": sha[:24], "modelId": repo_id, "author": repo_id.split("/")[0],
                            "sha": sha, "private": False, "downloads": repo.downloads, "likes": 0, "tags": tags,
                            "library_name": data.get("library_name"), "pipeline_tag": data.get("pipeline_tag")}
                    if self.query.get("cardData") or self.query.get("full"):
                        item["cardData"] = data
                    found.append(item)
            if self.query.get("sort", [""])[0] == "downloads":
                found.sort(key=lambda item: -item["downloads"])
            self._json(found[:int(self.query.get("limit", [1000])[0])])

        def model_info(self, body: bytes, repo: str, revision: str = "main") -> None:
            info = self._repo(repo)
            sha, files = self._snapshot(info, revision)
            siblings = []
            for path, data in sorted(files.items()):
                sibling = {"rfilename": path}
                if self.query.get("blobs"):
                    e = entry(path, data)
                    sibling.update(size=e["size"], blobId=e["oid"])
                    if "lfs" in e:
                        sibling["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"],
                                          "pointerSize": e["lfs"]["pointerSize"]}
                siblings.append(sibling)
            data = card_data(files)
            self._json({"id": repo, "_id": sha[:24], "modelId": repo, "author": repo.split("/")[0], "sha": sha,
                        "private": info.private, "disabled": False, "gated": False, "downloads": info.downloads,
                        "likes": 0, "tags": list(data.get("tags") or []), "cardData": data,
                        "library_name": data.get("library_name"), "siblings": siblings,
                        "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"})

        def tree(self, body: bytes, repo: str, revision: str, path: str = "") -> None:
            _, files = self._snapshot(self._repo(repo), revision)
            prefix = path.strip("/") + "/" if path.strip("/") else ""
            recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
            listed, folders = [], set()
            for name, data in sorted(files.items()):
                if not name.startswith(prefix):
                    continue
                rest = name[len(prefix):]
                if "/" in rest and not recursive:
                    folders.add(prefix + rest.split("/")[0])
                    continue
                listed.append(entry(name, data))
            listed += [{"type": "directory", "path": f, "oid": git_oid(f.encode()), "size": 0} for f in sorted(folders)]
            if prefix and not listed:
                raise HubError(404, f"{path} does not exist", "EntryNotFound")
            self._json(listed)

        def paths_info(self, body: bytes, repo: str, revision: str) -> None:
            _, files = self._snapshot(self._repo(repo), revision)
            paths = self._form(body).get("paths", [])
            self._json([entry(p, files[p]) for p in paths if p in files])

        def preupload(self, body: bytes, repo: str, revision: str) -> None:
            _, files = self._snapshot(self._repo(repo, write=True), revision)
            answer = []
            for item in json.loads(body)["files"]:
                sample = base64.b64decode(item["sample"])
                lfs = is_lfs(item["path"], sample)
                info = {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
                if item["path"] in files:
                    old = files[item["path"]]
                    info["oid"] = hashlib.sha256(old).hexdigest() if lfs else git_oid(old)
                answer.append(info)
            self._json({"files": answer, "commitOid": None})

        def lfs_batch(self, body: bytes, repo: str) -> None:
            self._repo(repo, write=True)
            objects = []
            for obj in json.loads(body)["objects"]:
                item = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:
                    item.update(authenticated=True, actions={
                        "upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"},
                        "verify": {"href": f"{hub.url}/{repo}.git/info/lfs/objects/verify"}})
                objects.append(item)
            self._json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

        def lfs_upload(self, body: bytes, oid: str) -> None:
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, "uploaded content does not match its oid")
            hub.lfs[oid] = body
            self._send(200)

        def lfs_verify(self, body: bytes, repo: str) -> None:
            self._repo(repo, write=True)
            if json.loads(body)["oid"] not in hub.lfs:
                raise HubError(404, "object not uploaded")
            self._json({"message": "ok"})

        def create_branch(self, body: bytes, repo: str, branch: str) -> None:
            info = self._repo(repo, write=True)
            if branch in info.branches:
                raise HubError(409, "Branch already exists")
            start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
            info.branches[branch] = self._snapshot(info, start)[0]
            self._json({"message": "ok"})

        def commit(self, body: bytes, repo: str, revision: str) -> None:
            info = self._repo(repo, write=True)
            if revision not in info.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            changes: dict[str, bytes | None] = {}
            summary = ""
            for line in body.decode().splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value["summary"]
                elif item["key"] == "file":
                    changes[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                    changes[value["path"]] = hub.lfs[value["oid"]]
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    changes[value["path"]] = None
            if not summary:
                raise HubError(400, "commit summary is empty")
            sha = hub.commit(repo, changes, branch=revision)
            self._json({"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{repo}/commit/{sha}",
                        "pullRequestUrl": None})

        def resolve(self, body: bytes, repo: str, revision: str, path: str) -> None:
            info = self._repo(repo)
            sha, files = self._snapshot(info, revision)
            if path not in files:
                raise HubError(404, f"{path} does not exist", "EntryNotFound", {"X-Repo-Commit": sha})
            data = files[path]
            described = entry(path, data)
            headers = {"X-Repo-Commit": sha, "ETag": f'"{described["oid"]}"', "Accept-Ranges": "bytes"}
            if "lfs" in described:
                headers.update({"X-Linked-Etag": f'"{described["lfs"]["oid"]}"', "X-Linked-Size": len(data)})
            name = path.rsplit("/", 1)[-1]
            if name in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if self.command == "GET":
                info.downloads += 1
                if name in hub.interrupt:
                    if name in hub.cut:
                        raise HubError(500, "storage backend unavailable")
                    hub.cut.add(name)
                    self._send(200, data[:len(data) // 2], headers, "application/octet-stream", length=len(data))
                    self.close_connection = True
                    return
            if ranged and self.command == "GET":
                start = int(ranged.group(1))
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._send(206, data[start:], headers, "application/octet-stream")
            self._send(200, data, headers, "application/octet-stream")

    return Handler


ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/models", "list_models"),
    ("GET", rf"/api/models/{_REPO}", "model_info"),
    ("GET", rf"/api/models/{_REPO}/revision/(?P<revision>[^/]+)", "model_info"),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/models/{_REPO}/paths-info/(?P<revision>[^/]+)", "paths_info"),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<revision>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<revision>[^/]+)", "commit"),
    ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", "lfs_verify"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("GET", rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
]


@pytest.fixture
def refused_url() -> str:
    """The URL of a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def make_variant(sd1_adapter, tmp_path):
    """Make other valid adapters to push: ``sd1_adapter``'s tensors scaled, optionally recording another base."""
    from esd_lora.adapter import load_adapter

    def make(out: Path | None = None, *, scale: float = 2.0, base_model: str | None = None) -> Path:
        adapter = load_adapter(sd1_adapter)
        adapter.state_dict = {k: v * scale for k, v in adapter.state_dict.items()}
        if base_model:
            adapter.metadata.base_model = base_model
        adapter.path = None
        return adapter.save(out or tmp_path / f"variant-{scale:g}-{base_model or 'same'}.safetensors")

    return make


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running :class:`FakeHub`; huggingface_hub gets a fresh cache, no token, and Xet off (so the client
    uploads with plain LFS, which the fake Hub speaks, without first trying Xet and falling back: one test covers
    that fallback)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server = FakeHub().start()
    yield server
    server.stop()
