"""Artifacts: files a job stores, handed out through signed, expiring URLs.

A URL is `/artifacts/{job_id}/{name}?expires=<unix>&sig=<hmac>`, like an S3
presigned URL: it needs no other credential, and the HMAC-SHA256 (with the
`signing_key` setting) covers the job, the name and the expiry, so a URL can be
neither altered nor reused for another job's file. Files live in a local
directory by default (`artifacts` setting), one folder per job, behind the
small `ArtifactStorage` protocol so that other storage can be added; they go
when their job goes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote

from outlast.exceptions import InvalidRequest
from outlast.parsing import whole_number

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")
KEY_FILE = ".signing-key"
CHUNK_BYTES = 1 << 20

Source = bytes | str | os.PathLike[str] | AsyncIterator[bytes]


def check_name(name: str) -> str:
    """A file name within its job's folder: one segment, no `..`, no hidden files."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise InvalidRequest(f"{name!r} is not a valid artifact name (letters, digits, '.', '_', '-', ' ')")
    return name


class ArtifactStorage(Protocol):
    """Where artifacts are kept. `path()` must be a local file the server can stream."""

    async def save(self, job_id: str, name: str, source: Source, media_type: str) -> int: ...

    def path(self, job_id: str, name: str) -> Path | None: ...

    def media_type(self, job_id: str, name: str) -> str: ...

    def delete(self, job_id: str) -> None: ...


class LocalStorage:
    """One folder per job under `root`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def _folder(self, job_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", job_id):
            raise InvalidRequest("not a job id")
        return self.root / job_id

    def _file(self, job_id: str, name: str) -> Path:
        folder = self._folder(job_id)
        path = (folder / check_name(name)).resolve()
        if path.parent != folder.resolve():  # never outside the job's own folder
            raise InvalidRequest(f"{name!r} is not a valid artifact name")
        return path

    async def save(self, job_id: str, name: str, source: Source, media_type: str) -> int:
        target = self._file(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        size = 0
        try:
            with partial.open("wb") as out:
                if isinstance(source, bytes):
                    size = await asyncio.to_thread(out.write, source)
                elif isinstance(source, (str, os.PathLike)):
                    size = await asyncio.to_thread(_copy, source, out)
                else:
                    async for chunk in source:
                        size += await asyncio.to_thread(out.write, chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        target.with_name(f".{target.name}.meta").write_text(json.dumps({"media_type": media_type, "size": size}))
        return size

    def path(self, job_id: str, name: str) -> Path | None:
        path = self._file(job_id, name)
        return path if path.is_file() else None

    def media_type(self, job_id: str, name: str) -> str:
        meta = self._file(job_id, name).with_name(f".{name}.meta")
        try:
            return str(json.loads(meta.read_text())["media_type"])
        except (OSError, ValueError, KeyError):
            return "application/octet-stream"

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._folder(job_id), ignore_errors=True)


def _copy(source: str | os.PathLike[str], out: BinaryIO) -> int:
    size = 0
    with open(source, "rb") as src:
        while chunk := src.read(CHUNK_BYTES):
            size += out.write(chunk)
    return size


class Signer:
    """HMAC-SHA256 signatures of artifact URLs."""

    def __init__(self, key: str | bytes) -> None:
        self._key = key.encode() if isinstance(key, str) else key

    @classmethod
    def for_settings(cls, signing_key: str | None, root: str | os.PathLike[str]) -> Signer:
        """The configured key, or one generated once and kept (0600) beside the artifacts.

        Processes on one host then share it; across hosts, set `signing_key`.
        """
        if signing_key:
            return cls(signing_key)
        folder = Path(root)
        folder.mkdir(parents=True, exist_ok=True)
        key_file = folder / KEY_FILE
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(key_file.read_text().strip())
        with os.fdopen(fd, "w") as out:
            key = secrets.token_urlsafe(32)
            out.write(key)
        return cls(key)

    def _digest(self, job_id: str, name: str, expires: int) -> str:
        message = f"{job_id}\n{name}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def url(self, job_id: str, name: str, expires_in_s: float, base: str = "") -> str:
        expires = int(time.time() + expires_in_s)
        sig = self._digest(job_id, name, expires)
        return f"{base.rstrip('/')}/artifacts/{job_id}/{quote(name)}?expires={expires}&sig={sig}"

    def verify(self, job_id: str, name: str, expires: str | None, sig: str | None) -> bool:
        """True for a URL this server signed, for this job and name, not yet expired."""
        at = whole_number(expires, max_digits=12)  # ASCII digits only: "²" passes str.isdigit()
        if at is None or not sig:
            return False
        expected = self._digest(job_id, name, at)
        return hmac.compare_digest(expected.encode(), sig.encode()) and at >= time.time()
