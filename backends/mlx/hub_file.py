"""One file of a hub model into the Hugging Face cache, resumable across runs and checked.

huggingface_hub downloads into a temporary file unique to each process and deletes it when the
download fails or is interrupted, so a pull that is killed or Ctrl-C'd mid-file loses every byte
of it. Here the bytes go to `blobs/<etag>.incomplete` instead, which survives the process; the
next run asks the hub for the rest (HTTP Range from its size), checks the whole file against the
hub's checksum and only then moves it into place as the blob huggingface_hub itself would write.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from gateway.protocol.backend import PullFailed
from gateway.protocol.units import human_size


class CorruptFile(PullFailed):
    """A downloaded file whose checksum is not the hub's; it was removed."""


@dataclass(frozen=True)
class Expected:
    """What the hub's tree says a file is: its size and checksum (sha256 for LFS files, else the git blob id)."""

    size: int
    checksum: str
    lfs: bool

    @classmethod
    def of(cls, entry) -> Expected:
        lfs = getattr(entry, "lfs", None)
        return cls(entry.size, (lfs.sha256 if lfs is not None else entry.blob_id).lower(), lfs is not None)


def fetch(name: str, path: str, commit: str, expected: Expected, out: TextIO) -> Path:
    """Download `path` of hub model `name` at `commit` into the cache (continuing a partial file an
    earlier run left), verify it, and return its path in the snapshot."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    url = hf_hub_url(name, path, revision=commit)
    headers = build_hf_headers()
    meta = get_hf_file_metadata(url, headers=headers)
    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="model")
    blob = storage / "blobs" / str(meta.etag)
    lock = storage.parent / ".locks" / storage.name / f"{meta.etag}.lock"
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):  # the lock huggingface_hub takes for this blob
        if not blob.exists():
            partial = blob.with_name(blob.name + ".incomplete")
            _download(meta.location, url, headers, partial, expected, path, out)
            _check(name, path, partial, expected)
            os.replace(partial, blob)  # created by open() under the umask, like huggingface_hub's blobs
    # The blob is in place: huggingface_hub only links it into the snapshot (one HEAD, no download).
    return Path(hf_hub_download(name, path, revision=commit))


def _download(location: str, url: str, headers: dict, partial: Path, expected: Expected, path: str,
              out: TextIO) -> None:
    from huggingface_hub.file_download import http_get

    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}  # a signed CDN url
    have = partial.stat().st_size if partial.exists() else 0
    if have > expected.size:  # not a prefix of this file: start over
        partial.unlink()
        have = 0
    if have:
        print(f"  {path}: resuming at {human_size(have)} of {human_size(expected.size)} "
              f"(kept from an interrupted pull)", file=out, flush=True)
    elif not out.isatty():
        print(f"  {path} ({human_size(expected.size)})", file=out, flush=True)
    # Append mode: the bytes on disk stay when the process is interrupted; http_get truncates the
    # file itself if the server ignores the Range and sends the whole file.
    with partial.open("ab") as f:
        http_get(location, f, resume_size=have, headers=headers, expected_size=expected.size,
                 displayed_filename=path, tqdm_class=bar_class(out, path))


def _check(name: str, path: str, local: Path, expected: Expected) -> None:
    """The file has the hub's checksum, else it is removed and the pull fails."""
    actual = _sha256(local) if expected.lfs else _git_blob_sha1(local)
    if actual == expected.checksum:
        return
    local.unlink(missing_ok=True)
    raise CorruptFile(f"'{path}' of {name} arrived corrupted: its {'sha256' if expected.lfs else 'git blob id'} "
                      f"is {actual}, the hub says {expected.checksum}. The file was removed; run `claude-gateway "
                      f"pull {name}` again (a proxy or a full disk can cause this).")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """What git names a blob: sha1 of "blob <size>\\0" and the content."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def bar_class(out: TextIO, label: str | None = None, silent: bool = False) -> type:
    """A tqdm class for one file's bar on `out` (name, size, rate, ETA); silent when `out` is not a terminal."""
    from tqdm import tqdm

    class FileBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            if label is not None:
                kwargs["desc"] = label  # instead of the download URL's tail
            cols, rows = _terminal_size(out)
            kwargs.update(file=out, disable=silent or not out.isatty(), ncols=cols, nrows=rows, mininterval=0.2)
            if kwargs.get("unit") == "B":
                kwargs.update(unit_scale=True, unit_divisor=1024)
            super().__init__(*args, **kwargs)

    return FileBar


def _terminal_size(out: TextIO) -> tuple[int, int]:
    """The terminal's columns and rows, 100 x 24 where it says 0 (tqdm hides bars below row 0)."""
    try:
        size = os.get_terminal_size(out.fileno())
    except (OSError, ValueError, AttributeError):
        return 100, 24
    return size.columns or 100, size.lines or 24
