"""A stand-in for the Hugging Face hub on 127.0.0.1: serves model directories in the hub's wire
format (repo info, recursive tree, HEAD/GET /resolve with X-Repo-Commit, ETag, Range), so
huggingface_hub downloads from it with HF_ENDPOINT pointed here. Runs on its own thread, so
subprocess tests and in-process tests can both use it."""
from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass
class Repo:
    files: dict[str, bytes]
    private: bool = False  # 401 unless the request carries the token below
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            h = hashlib.sha1()
            for name in sorted(self.files):
                h.update(name.encode() + b"\0" + self.files[name])
            self.commit = h.hexdigest()


def partial_download(blobs: Path) -> Path | None:
    """The partial file a pull is writing into a cache's blobs directory, once it holds some bytes."""
    if not blobs.is_dir():
        return None
    return next((p for p in blobs.glob("*.incomplete") if p.stat().st_size > 0), None)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    token: str = "hf_test_token"
    requests: list[tuple[str, str, dict]] = field(default_factory=list)  # (method, path, headers)
    # path → bytes after which the first GET of that file drops its connection
    drop_after: dict[str, int] = field(default_factory=dict)
    # path → bytes after which the first GET of that file sends nothing more until the client goes
    # away (a slow hub, for killing a pull mid-file)
    stall_after: dict[str, int] = field(default_factory=dict)
    # path → an event a GET of that file waits for before sending its body
    gates: dict[str, threading.Event] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # files served with one byte flipped
    ignore_range: bool = False  # answer a Range GET with the whole file (200), as some proxies do
    url: str = ""

    def add_dir(self, repo_id: str, directory: Path, private: bool = False) -> Repo:
        files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
        repo = self.repos[repo_id] = Repo(files, private)
        return repo

    def gets(self, suffix: str = "") -> list[tuple[str, dict]]:
        """(path, headers) of every GET of a file (the /resolve/ route) ending with `suffix`."""
        return [(p, h) for m, p, h in self.requests if m == "GET" and "/resolve/" in p and p.endswith(suffix)]

    def ranges(self, suffix: str) -> list[str]:
        """The Range header of each GET of a file ending with `suffix` ("" for a whole-file GET)."""
        return [next((v for k, v in h.items() if k.lower() == "range"), "") for _, h in self.gets(suffix)]

    # -- server -------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _repo(self, request: web.Request, repo_id: str) -> Repo:
        """The repo, or the hub's errors: 404 RepoNotFound for a missing one, 401 for a private one
        asked without its token (the real hub says 401 to anonymous callers for both)."""
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _error(404, "RepoNotFound", "Repository not found")
        if repo.private and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise _error(401, "RepoNotFound", "Repository not found")
        return repo

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.headers)))
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            repo = self._repo(request, repo_id)
            if len(parts) == 4 or parts[4] == "revision":
                return web.json_response({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": repo.private,
                                          "siblings": [{"rfilename": n} for n in sorted(repo.files)], "tags": []})
            if parts[4] == "tree":
                return web.json_response([self._entry(name, data) for name, data in sorted(repo.files.items())])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo(request, "/".join(parts[:2]))
            name = "/".join(parts[4:])
            if name not in repo.files:
                raise _error(404, "EntryNotFound", "Entry not found", repo.commit)
            return await self._file(request, repo, name)
        raise _error(404, "", "no such route")

    def _entry(self, name: str, data: bytes) -> dict:
        entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
        if is_lfs(name):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    async def _file(self, request: web.Request, repo: Repo, name: str) -> web.StreamResponse:
        data = repo.files[name]
        etag = hashlib.sha256(data).hexdigest() if is_lfs(name) else git_blob_id(data)
        if name in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        start = 0
        if (rng := request.headers.get("Range", "")).startswith("bytes=") and not self.ignore_range:
            start = int(rng[6:].split("-", 1)[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        gate = self.gates.get(name)
        if gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 60)
        resp = web.StreamResponse(status=206 if start else 200, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        cut = self.drop_after.pop(name, None)
        if cut is not None:
            await resp.write(body[:cut])
            request.transport.close()  # the client sees a body cut short, as when a connection drops
            return resp
        stall = self.stall_after.pop(name, None)
        if stall is not None:
            await resp.write(body[:stall])
            for _ in range(1200):  # until the client disconnects, at most a minute
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.05)
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp


def _error(status: int, code: str, message: str, commit: str | None = None) -> web.HTTPException:
    """The hub's error answer (raised by the caller): its status, X-Error-Code and X-Error-Message."""
    headers = {"X-Error-Code": code, "X-Error-Message": message} if code else {}
    if commit:
        headers["X-Repo-Commit"] = commit
    cls = {401: web.HTTPUnauthorized, 404: web.HTTPNotFound}[status]
    return cls(text=f'{{"error": "{message}"}}', content_type="application/json", headers=headers)
