"""An in-process, Hub-compatible HTTP server for offline tests.

The server speaks the subset of the Hugging Face Hub HTTP API that ``huggingface_hub`` and ``datasets`` use to
create repositories, upload files (regular files inline in the commit, large/binary files through the LFS batch
API), list and download them. It listens on ``127.0.0.1`` on a random free port and keeps its state in a temporary
directory (blobs, content-addressed by sha256) plus in-memory commit metadata.

Each repository holds commits with full file snapshots, so revisions and commit ids are real 40-hex ids; branches
(``main``, PR refs) point at commits and a commit is atomic: all of its files appear or none does.

Usage in pytest (the ``hub`` fixture is exposed by ``tests/conftest.py``)::

    def test_roundtrip(hub):
        ds.push_to_hub("tester/demo", token=hub.token)
        assert "README.md" in hub.repo_files("tester/demo")
        hub.fail_next("POST", r"/commit/", status=500)

Outside pytest::

    with running_hub(tmp_dir) as hub:
        ...

The fixture patches the module-level configuration that ``huggingface_hub`` and ``datasets`` read at import time
(endpoint, cache folders, offline/Xet/telemetry switches, ...) and restores it afterwards, so the server can be used
whatever was imported before. See :func:`patch_hub_clients`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

__all__ = [
    "CommitRecord",
    "FileRecord",
    "HubServer",
    "RequestRecord",
    "hub",
    "patch_hub_clients",
    "running_hub",
]

DEFAULT_TOKEN = "hf_test_token"
DEFAULT_USER = "tester"
DEFAULT_ORGS = ("pds-org",)

_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_LFS_THRESHOLD = 10 * 1024 * 1024  # files this large always go through LFS, like on the Hub
_LFS_CONTENT_TYPE = "application/vnd.git-lfs+json"
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{7,40}")

# What the Hub writes in the first commit of every new repository.
_INITIAL_GITATTRIBUTES = (
    "\n".join(
        f"{pattern} filter=lfs diff=lfs merge=lfs -text"
        for pattern in (
            "*.7z",
            "*.arrow",
            "*.bin",
            "*.bz2",
            "*.ckpt",
            "*.ftz",
            "*.gz",
            "*.h5",
            "*.joblib",
            "*.lz4",
            "*.mds",
            "*.mlmodel",
            "*.model",
            "*.msgpack",
            "*.npy",
            "*.npz",
            "*.onnx",
            "*.ot",
            "*.parquet",
            "*.pb",
            "*.pickle",
            "*.pkl",
            "*.pt",
            "*.pth",
            "*.rar",
            "*.safetensors",
            "saved_model/**/*",
            "*.tar",
            "*.tar.*",
            "*.tflite",
            "*.tgz",
            "*.wasm",
            "*.xz",
            "*.zip",
            "*.zst",
            "*tfevents*",
            # image and audio files, as on dataset repositories
            "*.jpg",
            "*.jpeg",
            "*.png",
            "*.gif",
            "*.webp",
            "*.mp3",
            "*.wav",
            "*.flac",
            "*.ogg",
        )
    )
    + "\n"
)


# ----------------------------------------------------------------------------------------------------------------
# Public records
# ----------------------------------------------------------------------------------------------------------------


class RequestRecord(NamedTuple):
    """One request seen by the server: compares equal to a ``(method, path, status)`` tuple."""

    method: str
    path: str  # URL path as sent (percent-encoded), without the query string
    status: int


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """A file in a commit snapshot."""

    path: str
    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob id: of the content for regular files, of the LFS pointer for LFS files
    pointer_size: int = 0

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclasses.dataclass(frozen=True)
class CommitRecord:
    """A commit of a repository, with the full snapshot of its files."""

    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileRecord]


@dataclasses.dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, CommitRecord] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)  # "main", "refs/pr/1" -> commit oid
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    lfs_objects: set[str] = dataclasses.field(default_factory=set)  # sha256 of LFS objects uploaded to this repo
    pr_count: int = 0
    gated: Any = False


@dataclasses.dataclass
class _FailureRule:
    method: str
    pattern: re.Pattern
    status: int
    times: int
    message: str
    headers: dict[str, str]


@dataclasses.dataclass
class _Request:
    method: str
    raw_path: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise _HttpError(400, f"Invalid JSON body: {err}") from None


@dataclasses.dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_length: int | None = None  # when set, overrides len(body) (HEAD requests)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _now() -> str:
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _json_response(
    status: int, payload: Any, headers: dict | None = None, content_type="application/json"
) -> _Response:
    return _Response(status, json.dumps(payload).encode(), {"Content-Type": content_type, **(headers or {})})


def _header_safe(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1").replace("\r", " ").replace("\n", " ")


def _split_front_matter(text: str) -> tuple[str | None, str]:
    """Return (yaml_text or None, body) for a README."""
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start >= len(lines) or lines[start].strip() != "---":
        return None, text
    for end in range(start + 1, len(lines)):
        if lines[end].strip() == "---":
            return "".join(lines[start + 1 : end]), "".join(lines[end + 1 :])
    return None, text


def _parse_card_data(text: str) -> tuple[dict | None, str | None]:
    """Parse the YAML block of a README: (metadata dict or None, error message or None)."""
    import yaml

    block, _ = _split_front_matter(text)
    if block is None or not block.strip():
        return None, None
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as err:
        return None, f"Invalid YAML in README.md metadata: {err}"
    if data is None:
        return None, None
    if not isinstance(data, dict):
        return None, "README.md metadata must be a YAML mapping"
    return data, None


def _gitattributes_lfs_patterns(text: str) -> list[str]:
    patterns = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches(path: str, pattern: str) -> bool:
    if "/" in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(path, pattern.lstrip("/")) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0))


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or path.endswith("/"):
        raise _HttpError(400, f"Invalid path in repo: {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise _HttpError(400, f"Invalid path in repo: {path!r}")
    return path


# ----------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# ----------------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HubTestServer/1.0"
    timeout = 60  # idle keep-alive connections are dropped after this many seconds

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr logging
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                if not size_line:
                    break
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        response = self.server.hub._handle(self.command, self.path, self.headers, body)
        try:
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            length = response.content_length if response.content_length is not None else len(response.body)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command != "HEAD" and response.body:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


# ----------------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------------


class HubServer:
    """Hub-compatible test server and the handle tests use to configure and inspect it.

    Attributes:
        endpoint: base URL, e.g. ``http://127.0.0.1:54321``.
        token: the default valid token (``hf_test_token``), for user ``tester`` (member of org ``pds-org``).
        user: the default user name.
        requests: log of :class:`RequestRecord` ``(method, path, status)``, in arrival order.
        server_errors: tracebacks of unexpected exceptions raised while handling requests (should stay empty).
        blocked_requests: requests the wired clients tried to send to another host (refused; should stay empty).
        hf_home: root of the fresh client caches (``HF_HOME``) while wired by :func:`running_hub`.
        storage_dir: where blobs are stored.
        tree_page_size: page size of the ``tree`` API (the Hub uses 1000; lower it to exercise pagination).
    """

    def __init__(
        self,
        storage_dir: str | os.PathLike | None = None,
        *,
        token: str = DEFAULT_TOKEN,
        user: str = DEFAULT_USER,
        orgs: tuple[str, ...] = DEFAULT_ORGS,
    ):
        self._own_storage = storage_dir is None
        self.storage_dir = Path(storage_dir if storage_dir is not None else tempfile.mkdtemp(prefix="hub-server-"))
        (self.storage_dir / "blobs").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        self.tree_page_size = 1000
        self.requests: list[RequestRecord] = []
        self.server_errors: list[str] = []
        self.blocked_requests: list[str] = []  # filled by patch_hub_clients' guard (requests to other hosts)
        self.hf_home: Path | None = None  # client cache root, set by running_hub
        self._lock = threading.RLock()
        self._users: dict[str, set[str]] = {}  # user -> orgs
        self._tokens: dict[str, str] = {}  # token -> user
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._rules: list[_FailureRule] = []
        self._lfs_tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._counter = 0
        self._httpd: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self.add_user(user, token=token, orgs=orgs)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        self._httpd = _ThreadingServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None
        if self._own_storage:
            shutil.rmtree(self.storage_dir, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("The hub test server is not running.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api(self):
        """An ``HfApi`` bound to this server and authenticated with the default token."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    # -- configuration -----------------------------------------------------------------------------------------

    def add_user(self, name: str, *, token: str | None = None, orgs: tuple[str, ...] | list[str] = ()) -> str:
        """Register a user (and its organisations); returns a valid token for it."""
        token = token or f"hf_{name}_{secrets.token_hex(8)}"
        with self._lock:
            self._users.setdefault(name, set()).update(orgs)
            self._tokens[token] = name
        return token

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 500,
        times: int = 1,
        message: str = "Injected failure (hub test server)",
        headers: dict[str, str] | None = None,
    ) -> None:
        r"""Make the next ``times`` requests matching ``method`` (``"*"`` for any) and ``path_regex`` fail.

        ``path_regex`` is searched (``re.search``) in the URL path (without query string), e.g.
        ``r"/commit/"`` (the commit call), ``r"^/_lfs/upload/"`` (the LFS PUT that stands for the storage URL),
        ``r"\.git/info/lfs/objects/batch$"``, ``r"/preupload/"``, ``r"/resolve/"``. The failure happens before the
        request is processed, so the server state is untouched.

        ``huggingface_hub`` retries some calls on 408/429/5xx with a backoff of 1, 2, 4, 8 s (LFS batch, LFS PUT,
        preupload, tree listing); the commit call itself is not retried. Use a 4xx status (or ``times`` above the
        retry count, and patience) to make a retried call fail.
        """
        with self._lock:
            self._rules.append(
                _FailureRule(method.upper(), re.compile(path_regex), status, times, message, dict(headers or {}))
            )

    def clear_failures(self) -> None:
        with self._lock:
            self._rules.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- server-side repo helpers (no HTTP, no auth) -------------------------------------------------------------

    def create_repo(self, repo_id: str, *, repo_type: str = "dataset", private: bool = False) -> None:
        """Create a repository directly (any namespace), with the Hub's initial ``.gitattributes`` commit."""
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            self._create_repo(repo_type, repo_id, private=private, author=repo_id.split("/")[0])

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes | str] | None = None,
        *,
        delete: tuple[str, ...] | list[str] = (),
        message: str = "Add files",
        repo_type: str = "dataset",
        revision: str = "main",
        author: str | None = None,
    ) -> str:
        """Commit files directly (creating the repo if needed); returns the commit id."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id)) or self._create_repo(
                repo_type, repo_id, private=False, author=repo_id.split("/")[0]
            )
            head = repo.commits[repo.branches[revision]]
            snapshot = dict(head.files)
            for path in delete:
                snapshot.pop(path, None)
            lfs_patterns = self._snapshot_lfs_patterns(snapshot)
            for path, content in (files or {}).items():
                data = content.encode() if isinstance(content, str) else bytes(content)
                use_lfs = self._wants_lfs(path, len(data), data[:512], lfs_patterns)
                snapshot[_check_path(path)] = self._store(path, data, lfs=use_lfs)
                if use_lfs:
                    repo.lfs_objects.add(snapshot[path].sha256)
            return self._new_commit(repo, revision, snapshot, message, "", author or self.user).oid

    def repo_exists(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def is_private(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return self._get_repo(repo_type, repo_id).private

    def repo_files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Content of every file of ``repo_id`` at ``revision`` (branch, tag or commit id)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid = self._resolve_revision(repo, revision)
            if oid is None:
                raise KeyError(f"Revision {revision!r} not found in {repo_type} repo {repo_id}")
            files = repo.commits[oid].files
        return {path: self._read_blob(entry.sha256) for path, entry in sorted(files.items())}

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> list[CommitRecord]:
        """History of ``revision``, oldest first (``commits(...)[-1]`` is the head)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid = self._resolve_revision(repo, revision)
            if oid is None:
                raise KeyError(f"Revision {revision!r} not found in {repo_type} repo {repo_id}")
            return list(reversed(self._history(repo, oid)))

    def branches(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        with self._lock:
            return dict(self._get_repo(repo_type, repo_id).branches)

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"No {repo_type} repo {repo_id} on the hub test server")
        return repo

    # -- storage -------------------------------------------------------------------------------------------------

    def _blob_path(self, sha256: str) -> Path:
        return self.storage_dir / "blobs" / sha256

    def _read_blob(self, sha256: str) -> bytes:
        return self._blob_path(sha256).read_bytes()

    def _write_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        target = self._blob_path(sha256)
        if not target.exists():
            tmp = target.with_name(f".{sha256}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return sha256

    def _store(self, path: str, data: bytes, *, lfs: bool) -> FileRecord:
        sha256 = self._write_blob(data)
        if lfs:
            pointer = _lfs_pointer(sha256, len(data))
            return FileRecord(path, sha256, len(data), True, _git_blob_oid(pointer), len(pointer))
        return FileRecord(path, sha256, len(data), False, _git_blob_oid(data))

    # -- repo model ----------------------------------------------------------------------------------------------

    def _create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> _Repo:
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
        self._repos[(repo_type, repo_id)] = repo
        snapshot = {".gitattributes": self._store(".gitattributes", _INITIAL_GITATTRIBUTES.encode(), lfs=False)}
        self._new_commit(repo, "main", snapshot, "initial commit", "", author)
        return repo

    def _new_commit(self, repo: _Repo, branch: str, files: dict, title: str, message: str, author: str):
        parent = repo.branches.get(branch)
        self._counter += 1
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_type}/{repo.repo_id}\0{parent}\0{title}\0{message}\0{author}\0".encode())
        digest.update(f"{datetime.now(timezone.utc).isoformat()}\0{self._counter}\0".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{files[path].git_oid}\n".encode())
        commit = CommitRecord(digest.hexdigest(), parent, title, message, author, _now(), dict(files))
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _history(self, repo: _Repo, oid: str | None) -> list[CommitRecord]:
        """Commits reachable from ``oid``, newest first."""
        out = []
        while oid is not None:
            commit = repo.commits[oid]
            out.append(commit)
            oid = commit.parent
        return out

    def _resolve_revision(self, repo: _Repo, revision: str) -> str | None:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in repo.branches:
            return repo.branches[revision[len("refs/heads/") :]]
        tag = revision[len("refs/tags/") :] if revision.startswith("refs/tags/") else revision
        if tag in repo.tags:
            return repo.tags[tag]
        if _HEX_PREFIX.fullmatch(revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None

    def _snapshot_lfs_patterns(self, snapshot: dict[str, FileRecord]) -> list[str]:
        entry = snapshot.get(".gitattributes")
        if entry is None:
            return []
        return _gitattributes_lfs_patterns(self._read_blob(entry.sha256).decode("utf-8", "replace"))

    def _wants_lfs(self, path: str, size: int, sample: bytes, patterns: list[str] | None) -> bool:
        if path == ".gitattributes":
            return False
        if size >= _LFS_THRESHOLD or b"\0" in sample:
            return True
        return any(_matches(path, pattern) for pattern in patterns or [])

    def _card_data(self, commit: CommitRecord) -> dict | None:
        entry = commit.files.get("README.md")
        if entry is None:
            return None
        data, _ = _parse_card_data(self._read_blob(entry.sha256).decode("utf-8", "replace"))
        return data

    def _last_commit_for(self, repo: _Repo, head: str, path: str, is_dir: bool) -> dict:
        def signature(commit: CommitRecord | None):
            if commit is None:
                return None
            if not is_dir:
                entry = commit.files.get(path)
                return entry.git_oid if entry else None
            prefix = path + "/"
            return tuple(sorted((p, e.git_oid) for p, e in commit.files.items() if p.startswith(prefix)))

        for commit in self._history(repo, head):
            parent = repo.commits[commit.parent] if commit.parent else None
            if signature(commit) != signature(parent):
                return {"id": commit.oid, "title": commit.title, "date": commit.date}
        commit = repo.commits[head]
        return {"id": commit.oid, "title": commit.title, "date": commit.date}

    # -- auth --------------------------------------------------------------------------------------------------

    def _authenticate(self, req: _Request) -> str | None:
        auth = req.headers.get("Authorization")
        if not auth:
            return None
        token = auth[len("Bearer ") :].strip() if auth.lower().startswith("bearer ") else auth.strip()
        user = self._tokens.get(token)
        if user is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return user

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or namespace in self._users.get(user, set()))

    def _not_found(self, user: str | None) -> _HttpError:
        # Like the Hub: missing and hidden (private) repos look the same; 401 when anonymous.
        return _HttpError(401 if user is None else 404, "Repository not found", code="RepoNotFound")

    def _repo_for_read(self, repo_type: str, repo_id: str, user: str | None) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._can_write(user, repo_id.split("/")[0])):
            raise self._not_found(user)
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str, user: str | None) -> _Repo:
        repo = self._repo_for_read(repo_type, repo_id, user)
        if user is None:
            raise _HttpError(401, "You must be authenticated to write to this repository")
        if not self._can_write(user, repo_id.split("/")[0]):
            raise _HttpError(403, f"You don't have the rights to write to {repo_type} repo {repo_id}")
        return repo

    def _revision_or_404(self, repo: _Repo, revision: str) -> str:
        oid = self._resolve_revision(repo, revision)
        if oid is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return oid

    # -- dispatch ----------------------------------------------------------------------------------------------

    def _handle(self, method: str, raw_target: str, headers: Any, body: bytes) -> _Response:
        split = urlsplit(raw_target)
        req = _Request(method, split.path, parse_qs(split.query, keep_blank_values=True), headers, body)
        with self._lock:
            try:
                response = self._injected_failure(req) or self._route(req)
            except _HttpError as err:
                response = self._error_response(err)
            except Exception:  # a bug in the test server: report it loudly
                tb = traceback.format_exc()
                self.server_errors.append(tb)
                response = self._error_response(_HttpError(500, f"Hub test server error: {tb.splitlines()[-1]}"))
            self.requests.append(RequestRecord(method, req.raw_path, response.status))
        return response

    def _injected_failure(self, req: _Request) -> _Response | None:
        for rule in self._rules:
            if rule.times > 0 and rule.method in ("*", req.method) and rule.pattern.search(req.raw_path):
                rule.times -= 1
                self._rules = [r for r in self._rules if r.times > 0]
                return self._error_response(_HttpError(rule.status, rule.message, headers=rule.headers))
        return None

    @staticmethod
    def _error_response(err: _HttpError) -> _Response:
        headers = {"X-Error-Message": _header_safe(err.message), **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        return _json_response(err.status, {"error": err.message}, headers)

    def _route(self, req: _Request) -> _Response:
        segs = req.raw_path.split("/")[1:]
        dec = [unquote(s) for s in segs]
        user = self._authenticate(req)
        m = req.method

        if dec[:1] == ["api"]:
            if dec[1:] == ["whoami-v2"] and m == "GET":
                return self._whoami(user)
            if dec[1:] == ["repos", "create"] and m == "POST":
                return self._api_create_repo(req, user)
            if dec[1:] == ["repos", "delete"] and m == "DELETE":
                return self._api_delete_repo(req, user)
            if dec[1:] == ["validate-yaml"] and m == "POST":
                return self._api_validate_yaml(req)
            if len(dec) >= 4 and dec[1] in _API_TYPES:
                return self._route_repo_api(req, user, _API_TYPES[dec[1]], f"{dec[2]}/{dec[3]}", segs[4:])
        elif dec[:2] == ["_lfs", "upload"] and len(dec) == 3 and m == "PUT":
            return self._lfs_put(req, dec[2])
        else:
            repo_type, i = ("model", 0)
            if dec and dec[0] in ("datasets", "spaces"):
                repo_type, i = (dec[0][:-1], 1)
            if len(dec) >= i + 3:
                namespace, name, rest = dec[i], dec[i + 1], segs[i + 2 :]
                if name.endswith(".git") and [unquote(s) for s in rest[:3]] == ["info", "lfs", "objects"]:
                    repo_id = f"{namespace}/{name[: -len('.git')]}"
                    action = "/".join(unquote(s) for s in rest[3:])
                    if action == "batch" and m == "POST":
                        return self._lfs_batch(req, user, repo_type, repo_id)
                    if action == "verify" and m == "POST":
                        return self._lfs_verify(req, user, repo_type, repo_id)
                if unquote(rest[0]) == "resolve" and len(rest) >= 3 and m in ("GET", "HEAD"):
                    revision, path_segs = self._split_revision([unquote(s) for s in rest[1:]])
                    return self._resolve(req, user, repo_type, f"{namespace}/{name}", revision, "/".join(path_segs))
        raise _HttpError(404, f"The hub test server has no route for {m} {req.raw_path}")

    @staticmethod
    def _split_revision(parts: list[str]) -> tuple[str, list[str]]:
        """Split ``[revision, *path]`` where an unquoted special ref (``refs/pr/1``) may span several parts."""
        if parts and parts[0] == "refs" and len(parts) >= 3 and parts[1] in ("pr", "convert", "tags", "heads"):
            return "/".join(parts[:3]), parts[3:]
        return parts[0], parts[1:]

    def _route_repo_api(self, req: _Request, user, repo_type: str, repo_id: str, rest_raw: list[str]) -> _Response:
        rest = [unquote(s) for s in rest_raw]
        m = req.method
        action = rest[0] if rest else ""
        arg = "/".join(rest[1:])
        if action == "" and m == "GET":
            return self._repo_info(req, user, repo_type, repo_id, "main")
        if action == "revision" and m == "GET" and arg:
            return self._repo_info(req, user, repo_type, repo_id, arg)
        if action == "tree" and m == "GET" and len(rest) >= 2:
            revision, path_parts = self._split_revision(rest[1:])
            return self._tree(req, user, repo_type, repo_id, revision, "/".join(path_parts).strip("/"))
        if action == "paths-info" and m == "POST" and arg:
            return self._paths_info(req, user, repo_type, repo_id, arg)
        if action == "preupload" and m == "POST" and arg:
            return self._preupload(req, user, repo_type, repo_id, arg)
        if action == "commit" and m == "POST" and arg:
            return self._commit(req, user, repo_type, repo_id, arg)
        if action == "commits" and m == "GET" and arg:
            return self._list_commits(req, user, repo_type, repo_id, arg)
        if action == "refs" and m == "GET" and not arg:
            return self._refs(req, user, repo_type, repo_id)
        if action == "branch" and arg and m in ("POST", "DELETE"):
            return self._branch(req, user, repo_type, repo_id, arg)
        if action == "tag" and arg and m in ("POST", "DELETE"):
            return self._tag(req, user, repo_type, repo_id, arg)
        if action == "settings" and m == "PUT" and not arg:
            return self._settings(req, user, repo_type, repo_id)
        raise _HttpError(404, f"The hub test server has no route for {m} {req.raw_path}")

    # -- account / repo management -----------------------------------------------------------------------------

    def _whoami(self, user: str | None) -> _Response:
        if user is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        orgs = [
            {"type": "org", "name": org, "fullname": org, "roleInOrg": "write"} for org in sorted(self._users[user])
        ]
        return _json_response(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user.title(),
                "email": f"{user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            },
        )

    def _api_create_repo(self, req: _Request, user: str | None) -> _Response:
        payload = req.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HttpError(400, f"Invalid repo type: {repo_type}")
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name):
            raise _HttpError(400, f"Invalid repo name: {name!r}")
        if user is None:
            raise _HttpError(401, "You must be authenticated to create a repository")
        namespace = payload.get("organization") or user
        if not self._can_write(user, namespace):
            raise _HttpError(
                403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"'
            )
        repo_id = f"{namespace}/{name}"
        url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            raise _HttpError(409, f"You already created this {repo_type} repo: {repo_id}", headers={})
        visibility = payload.get("visibility")
        private = bool(payload.get("private")) if visibility is None else visibility != "public"
        repo = self._create_repo(repo_type, repo_id, private=private, author=user)
        return _json_response(
            200,
            {"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()[:24], "private": repo.private},
        )

    def _api_delete_repo(self, req: _Request, user: str | None) -> _Response:
        payload = req.json()
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload.get('name')}"
        self._repo_for_write(repo_type, repo_id, user)
        del self._repos[(repo_type, repo_id)]
        return _Response(200, b"", {"Content-Type": "text/plain"})

    def _settings(self, req: _Request, user, repo_type: str, repo_id: str) -> _Response:
        repo = self._repo_for_write(repo_type, repo_id, user)
        payload = req.json()
        if "private" in payload:
            repo.private = bool(payload["private"])
        if payload.get("visibility") is not None:
            repo.private = payload["visibility"] != "public"
        if "gated" in payload:
            repo.gated = payload["gated"]
        return _json_response(200, {"private": repo.private, "gated": repo.gated})

    def _api_validate_yaml(self, req: _Request) -> _Response:
        payload = req.json()
        content = payload.get("content")
        if not isinstance(content, str):
            raise _HttpError(400, "Missing 'content'")
        data, error = _parse_card_data(content)
        if error is not None:
            return _json_response(400, {"errors": [{"message": error}], "warnings": []})
        warnings = [] if data else [{"message": "Empty or missing yaml metadata in repo card"}]
        return _json_response(200, {"errors": [], "warnings": warnings})

    # -- read API ----------------------------------------------------------------------------------------------

    def _repo_info(self, req: _Request, user, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._repo_for_read(repo_type, repo_id, user)
        commit = repo.commits[self._revision_or_404(repo, revision)]
        blobs = req.flag("blobs")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        card = self._card_data(commit)
        tags: list[str] = []
        if card:
            card_tags = card.get("tags") or []
            tags += [str(t) for t in (card_tags if isinstance(card_tags, list) else [card_tags])]
            for key in ("task_categories", "size_categories", "language", "license"):
                values = card.get(key) or []
                tags += [f"{key}:{v}" for v in (values if isinstance(values, list) else [values])]
        if any(p.endswith(".parquet") for p in commit.files):
            tags.append("format:parquet")
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if card is not None:
            info["cardData"] = card
        if repo_type == "model":
            info["modelId"] = repo_id
        return _json_response(200, info)

    def _entry_json(self, repo: _Repo, head: str, entry: FileRecord, expand: bool) -> dict:
        out: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": entry.path}
        if entry.lfs:
            out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            out["lastCommit"] = self._last_commit_for(repo, head, entry.path, is_dir=False)
        return out

    def _folder_json(self, repo: _Repo, head: str, files: dict[str, FileRecord], path: str, expand: bool) -> dict:
        prefix = path + "/"
        digest = hashlib.sha1(b"tree\0")
        for p in sorted(p for p in files if p.startswith(prefix)):
            digest.update(f"{p}\0{files[p].git_oid}\n".encode())
        out: dict[str, Any] = {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}
        if expand:
            out["lastCommit"] = self._last_commit_for(repo, head, path, is_dir=True)
        return out

    @staticmethod
    def _folders(files: dict[str, FileRecord]) -> set[str]:
        folders = set()
        for path in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folders.add("/".join(parts[:i]))
        return folders

    def _tree(self, req: _Request, user, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._repo_for_read(repo_type, repo_id, user)
        head = self._revision_or_404(repo, revision)
        files = repo.commits[head].files
        folders = self._folders(files)
        if path and path not in folders:
            raise _HttpError(404, f"Path {path!r} not found (or not a directory) at {revision}", code="EntryNotFound")
        recursive, expand = req.flag("recursive"), req.flag("expand")
        prefix = path + "/" if path else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        listing = [(p, True) for p in folders if wanted(p)] + [(p, False) for p in files if wanted(p)]
        listing.sort(key=lambda item: (item[0].split("/")[:-1], not item[1], item[0]))
        page_size = min(self.tree_page_size, 50) if expand else self.tree_page_size
        try:
            start = int(req.param("cursor") or 0)
        except ValueError:
            raise _HttpError(400, "Invalid cursor") from None
        page = listing[start : start + page_size]
        out = [
            self._folder_json(repo, head, files, p, expand)
            if is_dir
            else self._entry_json(repo, head, files[p], expand)
            for p, is_dir in page
        ]
        headers = {}
        if start + page_size < len(listing):
            query = f"recursive={str(recursive).lower()}&expand={str(expand).lower()}&cursor={start + page_size}"
            headers["Link"] = f'<{self.endpoint}{req.raw_path}?{query}>; rel="next"'
        return _json_response(200, out, headers)

    def _paths_info(self, req: _Request, user, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._repo_for_read(repo_type, repo_id, user)
        head = self._revision_or_404(repo, revision)
        files = repo.commits[head].files
        if "json" in (req.headers.get("Content-Type") or ""):
            payload = req.json()
            paths, expand = payload.get("paths") or [], bool(payload.get("expand"))
        else:
            form = parse_qs(req.body.decode("utf-8"), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[-1].lower() in ("1", "true")
        folders = self._folders(files)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self._entry_json(repo, head, files[path], expand))
            elif path in folders:
                out.append(self._folder_json(repo, head, files, path, expand))
        return _json_response(200, out)

    def _list_commits(self, req: _Request, user, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._repo_for_read(repo_type, repo_id, user)
        head = self._revision_or_404(repo, revision)
        formatted = "formatted" in req.query.get("expand[]", [])
        out = []
        for commit in self._history(repo, head):
            item = {
                "id": commit.oid,
                "title": commit.title,
                "message": commit.message,
                "authors": [{"user": commit.author, "avatar": ""}],
                "date": commit.date,
            }
            if formatted:
                item["formatted"] = {"title": f"<p>{commit.title}</p>", "message": f"<p>{commit.message}</p>"}
            out.append(item)
        return _json_response(200, out)

    def _refs(self, req: _Request, user, repo_type: str, repo_id: str) -> _Response:
        repo = self._repo_for_read(repo_type, repo_id, user)

        def ref(name: str, full: str, oid: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": oid}

        branches = [ref(b, f"refs/heads/{b}", o) for b, o in repo.branches.items() if not b.startswith("refs/")]
        prs = [ref(b, b, o) for b, o in repo.branches.items() if b.startswith("refs/pr/")]
        tags = [ref(t, f"refs/tags/{t}", o) for t, o in repo.tags.items()]
        payload = {"branches": branches, "converts": [], "tags": tags}
        if req.flag("include_prs"):
            payload["pullRequests"] = prs
        return _json_response(200, payload)

    def _resolve(self, req: _Request, user, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._repo_for_read(repo_type, repo_id, user)
        oid = self._revision_or_404(repo, revision)
        entry = repo.commits[oid].files.get(path)
        if entry is None:
            raise _HttpError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": oid})
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": (
                f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}; "
                f'filename="{_header_safe(path.rsplit("/", 1)[-1])}";'
            ),
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        size = entry.size
        start, end = 0, size - 1
        status = 200
        range_header = req.headers.get("Range")
        match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header or "")
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(size - int(match.group(2)), 0)
            if start >= size or start > end:
                headers["Content-Range"] = f"bytes */{size}"
                raise _HttpError(416, "Requested range not satisfiable", headers=headers)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        if req.method == "HEAD":
            return _Response(status, b"", headers, content_length=length)
        data = self._read_blob(entry.sha256)[start : end + 1] if length else b""
        return _Response(status, data, headers)

    # -- write API ---------------------------------------------------------------------------------------------

    def _branch(self, req: _Request, user, repo_type: str, repo_id: str, branch: str) -> _Response:
        repo = self._repo_for_write(repo_type, repo_id, user)
        if req.method == "DELETE":
            if branch not in repo.branches or branch == "main":
                raise _HttpError(404 if branch not in repo.branches else 400, f"Cannot delete branch {branch}")
            del repo.branches[branch]
            return _json_response(200, {})
        if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
            raise _HttpError(400, f"Invalid reference for a branch: {branch}")
        if branch in repo.branches:
            raise _HttpError(409, "Reference already exists")
        starting_point = req.json().get("startingPoint") or "main"
        repo.branches[branch] = self._revision_or_404(repo, starting_point)
        return _json_response(200, {})

    def _tag(self, req: _Request, user, repo_type: str, repo_id: str, arg: str) -> _Response:
        repo = self._repo_for_write(repo_type, repo_id, user)
        if req.method == "DELETE":
            if arg not in repo.tags:
                raise _HttpError(404, f"Tag {arg} not found", code="RevisionNotFound")
            del repo.tags[arg]
            return _json_response(200, {})
        tag = req.json().get("tag")
        if not tag:
            raise _HttpError(400, "Missing tag name")
        if tag in repo.tags:
            raise _HttpError(409, "Tag already exists")
        repo.tags[tag] = self._revision_or_404(repo, arg)
        return _json_response(200, {})

    def _preupload(self, req: _Request, user, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._repo_for_write(repo_type, repo_id, user)
        head = self._revision_or_404(repo, revision)
        snapshot = repo.commits[head].files
        payload = req.json()
        patterns = self._snapshot_lfs_patterns(snapshot)
        ignore = [
            line.strip()
            for line in (payload.get("gitIgnore") or "").splitlines()
            if line.strip() and not line.strip().startswith(("#", "!"))
        ]
        out = []
        for item in payload.get("files") or []:
            path = _check_path(item.get("path"))
            sample = base64.b64decode(item.get("sample") or "")
            mode = "lfs" if self._wants_lfs(path, int(item.get("size") or 0), sample, patterns) else "regular"
            info: dict[str, Any] = {
                "path": path,
                "uploadMode": mode,
                "shouldIgnore": any(_matches(path, p) for p in ignore),
            }
            existing = snapshot.get(path)
            if existing is not None:
                info["oid"] = existing.sha256 if mode == "lfs" else existing.git_oid
            out.append(info)
        return _json_response(200, {"files": out, "commitOid": head})

    def _commit(self, req: _Request, user, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._repo_for_write(repo_type, repo_id, user)
        create_pr = req.flag("create_pr")
        base_oid = self._revision_or_404(repo, revision)
        if not create_pr and revision not in repo.branches:
            if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in repo.branches:
                revision = revision[len("refs/heads/") :]
            else:
                raise _HttpError(400, f"Invalid rev id: {revision} is not a branch")
        try:
            lines = [json.loads(line) for line in req.body.decode("utf-8").splitlines() if line.strip()]
        except ValueError as err:
            raise _HttpError(400, f"Invalid NDJSON body: {err}") from None
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "The first line of a commit must be its header")
        header = lines[0].get("value") or {}
        title = header.get("summary") or ""
        if not title:
            raise _HttpError(400, "Commit summary can't be empty")
        parent_commit = header.get("parentCommit")
        if parent_commit and not base_oid.startswith(parent_commit):
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")

        snapshot = dict(repo.commits[base_oid].files)
        known_lfs = set(repo.lfs_objects) | {e.sha256 for c in repo.commits.values() for e in c.files.values() if e.lfs}
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            if key == "file":
                path = _check_path(value.get("path"))
                content = value.get("content") or ""
                try:
                    data = (
                        base64.b64decode(content, validate=True)
                        if value.get("encoding") == "base64"
                        else content.encode("utf-8")
                    )
                except ValueError:
                    raise _HttpError(400, f"Invalid base64 content for {path}") from None
                snapshot[path] = self._store(path, data, lfs=False)
            elif key == "lfsFile":
                path = _check_path(value.get("path"))
                oid = value.get("oid")
                if value.get("algo", "sha256") != "sha256" or oid not in known_lfs:
                    raise _HttpError(422, f"LFS object {oid} for {path} was not uploaded to {repo_type} repo {repo_id}")
                size = self._blob_path(oid).stat().st_size
                if value.get("size") is not None and int(value["size"]) != size:
                    raise _HttpError(422, f"Size mismatch for LFS file {path}")
                pointer = _lfs_pointer(oid, size)
                snapshot[path] = FileRecord(path, oid, size, True, _git_blob_oid(pointer), len(pointer))
            elif key == "deletedFile":
                path = value.get("path")
                if snapshot.pop(path, None) is None:
                    raise _HttpError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
            elif key == "deletedFolder":
                prefix = (value.get("path") or "").strip("/") + "/"
                doomed = [p for p in snapshot if p.startswith(prefix)]
                if not doomed:
                    raise _HttpError(404, f"A folder with this name doesn't exist: {prefix}", code="EntryNotFound")
                for p in doomed:
                    del snapshot[p]
            else:
                raise _HttpError(400, f"Unknown commit operation: {key!r}")

        # Everything validated: the commit becomes visible at once.
        pr_url = None
        if create_pr:
            repo.pr_count += 1
            revision = f"refs/pr/{repo.pr_count}"
            repo.branches[revision] = base_oid
            pr_url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/discussions/{repo.pr_count}"
        commit = self._new_commit(repo, revision, snapshot, title, header.get("description") or "", user)
        return _json_response(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            },
        )

    # -- LFS ---------------------------------------------------------------------------------------------------

    def _lfs_batch(self, req: _Request, user, repo_type: str, repo_id: str) -> _Response:
        payload = req.json()
        operation = payload.get("operation")
        if operation != "upload":
            raise _HttpError(400, f"The hub test server only supports LFS uploads, not {operation!r}")
        repo = self._repo_for_write(repo_type, repo_id, user)
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int)):
                objects.append(
                    {"oid": str(oid), "size": int(size or 0), "error": {"code": 422, "message": "Invalid object"}}
                )
                continue
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs_objects:
                ticket = secrets.token_urlsafe(16)
                self._lfs_tickets[ticket] = ((repo_type, repo_id), oid, size)
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/_lfs/upload/{ticket}", "expires_in": 86400},
                    "verify": {
                        "href": f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects/verify",
                        "header": {},
                    },
                }
            objects.append(entry)
        return _json_response(200, {"transfer": "basic", "objects": objects}, content_type=_LFS_CONTENT_TYPE)

    def _lfs_put(self, req: _Request, ticket: str) -> _Response:
        # Stands for the pre-signed storage URL: authorised by the ticket in the URL, not by a token.
        target = self._lfs_tickets.get(ticket)
        if target is None:
            raise _HttpError(403, "Invalid or expired upload URL")
        key, oid, size = target
        data = req.body
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise _HttpError(400, f"Uploaded content does not match oid {oid} / size {size}")
        self._write_blob(data)
        repo = self._repos.get(key)
        if repo is not None:
            repo.lfs_objects.add(oid)
        return _Response(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _lfs_verify(self, req: _Request, user, repo_type: str, repo_id: str) -> _Response:
        repo = self._repo_for_write(repo_type, repo_id, user)
        payload = req.json()
        oid = payload.get("oid")
        if oid not in repo.lfs_objects or self._blob_path(oid).stat().st_size != payload.get("size"):
            raise _HttpError(404, f"LFS object {oid} not found")
        return _json_response(200, {"success": True}, content_type=_LFS_CONTENT_TYPE)


# ----------------------------------------------------------------------------------------------------------------
# Client wiring
# ----------------------------------------------------------------------------------------------------------------


class _Patcher:
    """setattr / os.environ changes that can be undone in reverse order."""

    _MISSING = object()

    def __init__(self):
        self._undo: list = []

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name, self._MISSING)
        self._undo.append((obj, name, old))
        setattr(obj, name, value)

    def setenv(self, name: str, value: str | None) -> None:
        self._undo.append((os.environ, name, os.environ.get(name, self._MISSING)))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def undo(self) -> None:
        while self._undo:
            obj, name, old = self._undo.pop()
            if obj is os.environ:
                if old is self._MISSING:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
            elif old is self._MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(obj, name)
            else:
                setattr(obj, name, old)


class BlockedRequestError(RuntimeError):
    """Raised by the test HTTP client for a request to a host other than the hub test server."""


@contextlib.contextmanager
def patch_hub_clients(endpoint: str, home: str | os.PathLike, blocked: list[str] | None = None) -> Iterator[None]:
    """Point ``huggingface_hub`` and ``datasets`` at ``endpoint`` and use fresh caches under ``home``.

    ``huggingface_hub.constants`` and ``datasets.config`` copy ``HF_ENDPOINT``, the cache folders and the
    offline/Xet/telemetry switches from the environment when they are imported, so setting environment
    variables afterwards has no effect: the module attributes are patched instead (and the environment too, for
    subprocesses such as ``push_to_hub(num_proc=...)`` workers). Everything is restored on exit.

    While active, the shared ``huggingface_hub`` HTTP client refuses requests to any other host than the
    endpoint's (they raise :class:`BlockedRequestError` and are appended to ``blocked``).
    """
    import huggingface_hub
    import huggingface_hub.hf_api
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    home = Path(home)
    hub_cache = home / "hub"
    datasets_cache = home / "datasets"
    for folder in (hub_cache, datasets_cache, home / "modules", home / "assets", home / "xet"):
        folder.mkdir(parents=True, exist_ok=True)
    endpoint = endpoint.rstrip("/")
    origin = _origin(endpoint)
    host = urlsplit(endpoint).hostname
    blocked = blocked if blocked is not None else []
    p = _Patcher()
    try:
        # Environment (read at import time, or at call time by a few helpers, and inherited by subprocesses).
        env = {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(hub_cache),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_DATASETS_CACHE": str(datasets_cache),
            "HF_MODULES_CACHE": str(home / "modules"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_TOKEN": None,
            "HUGGING_FACE_HUB_TOKEN": None,
            "HUGGINGFACE_HUB_CACHE": None,
            "TRANSFORMERS_OFFLINE": None,
            "HUGGINGFACE_CO_STAGING": None,
        }
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        for name, value in env.items():
            p.setenv(name, value)

        # huggingface_hub: module constants, the default `HfApi` behind module-level helpers, known Hub origins.
        constant_values = {
            "ENDPOINT": endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": frozenset(set(getattr(constants, "HF_URL_HOSTS", frozenset())) | {host}),
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(hub_cache),
            "HUGGINGFACE_HUB_CACHE": str(hub_cache),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
            "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        }
        for name, value in constant_values.items():
            if hasattr(constants, name) or name in ("ENDPOINT", "HF_HUB_CACHE"):
                p.setattr(constants, name, value)
        p.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
        if hasattr(_http, "_HUB_ORIGINS"):
            p.setattr(_http, "_HUB_ORIGINS", frozenset(set(_http._HUB_ORIGINS) | {origin}))

        # A fresh shared HTTP client that only talks to the test server.
        def guard(request) -> None:
            if _origin(str(request.url)) != origin:
                blocked.append(f"{request.method} {request.url}")
                raise BlockedRequestError(f"hub test server: blocked request to {request.url} (only {endpoint})")

        previous_factory = _http._GLOBAL_CLIENT_FACTORY

        def guarded_factory():
            client = previous_factory()
            hooks = dict(client.event_hooks)
            hooks["request"] = [*hooks.get("request", []), guard]
            client.event_hooks = hooks
            return client

        _http.set_client_factory(guarded_factory)
        p._undo.append((_http, "_GLOBAL_CLIENT_FACTORY", previous_factory))

        # datasets keeps its own copy of the endpoint, cache folders and switches.
        try:
            import datasets.config as dconfig
        except ImportError:  # pragma: no cover - datasets is a dependency of this project
            dconfig = None
        if dconfig is not None:
            for name, value in {
                "HF_ENDPOINT": endpoint,
                "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
                "HF_HUB_OFFLINE": False,
                "HF_DATASETS_OFFLINE": False,
                "HF_UPDATE_DOWNLOAD_COUNTS": False,  # would HEAD an S3 bucket on every load_dataset
                "USE_PARQUET_EXPORT": False,  # would query datasets-server.<endpoint host>
                "HF_CACHE_HOME": str(home),
                "HF_DATASETS_CACHE": datasets_cache,
                "HF_MODULES_CACHE": home / "modules",
                "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
                "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
            }.items():
                if hasattr(dconfig, name):
                    p.setattr(dconfig, name, value)

        # transformers (only if already imported: not worth importing it here).
        tf_hub = sys.modules.get("transformers.utils.hub")
        if tf_hub is not None and hasattr(tf_hub, "HF_MODULES_CACHE"):
            p.setattr(tf_hub, "HF_MODULES_CACHE", str(home / "modules"))

        _reset_client_state()
        yield
    finally:
        p.undo()
        _reset_client_state()
        try:
            from huggingface_hub.utils import _http as http_mod

            http_mod.close_session()
        except Exception:  # pragma: no cover
            pass


def _reset_client_state() -> None:
    """Drop pooled connections and cached filesystem instances (they remember endpoints and listings)."""
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import _http

    _http.close_session()
    HfFileSystem.clear_instance_cache()


@contextlib.contextmanager
def running_hub(tmp_dir: str | os.PathLike, **server_kwargs) -> Iterator[HubServer]:
    """Start a :class:`HubServer` storing under ``tmp_dir/hub-storage`` and wire the clients to it.

    The client caches (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_DATASETS_CACHE``) live under ``tmp_dir/hf-home``.
    """
    tmp_dir = Path(tmp_dir)
    server = HubServer(tmp_dir / "hub-storage", **server_kwargs)
    server.hf_home = tmp_dir / "hf-home"
    with server:
        with patch_hub_clients(server.endpoint, server.hf_home, blocked=server.blocked_requests):
            yield server


@pytest.fixture
def hub(tmp_path) -> Iterator[HubServer]:
    """A running hub test server; ``huggingface_hub`` and ``datasets`` point at it, with fresh caches."""
    with running_hub(tmp_path) as server:
        yield server
