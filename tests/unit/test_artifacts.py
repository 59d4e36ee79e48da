"""Artifacts: names that stay in their folder, signatures that can't be forged, files that go with their job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from outlast import InvalidRequest, JobContext, Outlast
from outlast.artifacts import LocalStorage, Signer, check_name


@pytest.mark.parametrize("name", ["../x", "..", "a/b", ".hidden", "a\x00b", "", "x" * 300, "..\\x", "%2e%2e"])
def test_names_never_leave_the_job_folder(name: str):
    with pytest.raises(InvalidRequest):
        check_name(name)


def test_signatures_bind_job_name_and_expiry():
    signer = Signer("k")
    url = signer.url("j_a", "r.csv", 60)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert signer.verify("j_a", "r.csv", query["expires"], query["sig"])
    assert not signer.verify("j_b", "r.csv", query["expires"], query["sig"])  # another job
    assert not signer.verify("j_a", "s.csv", query["expires"], query["sig"])  # another file
    assert not signer.verify("j_a", "r.csv", str(int(query["expires"]) + 1), query["sig"])  # a later expiry
    assert not signer.verify("j_a", "r.csv", query["expires"], query["sig"][:-1] + "A")  # tampered
    assert not Signer("other").verify("j_a", "r.csv", query["expires"], query["sig"])  # another key
    old = signer.url("j_a", "r.csv", -10)
    old_query = {k: v[0] for k, v in parse_qs(urlsplit(old).query).items()}
    assert not signer.verify("j_a", "r.csv", old_query["expires"], old_query["sig"])  # expired
    assert not signer.verify("j_a", "r.csv", None, None)


def test_a_generated_key_is_kept_and_shared(tmp_path: Path):
    first = Signer.for_settings(None, tmp_path)
    second = Signer.for_settings(None, tmp_path)
    url = first.url("j_a", "x", 60)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert second.verify("j_a", "x", query["expires"], query["sig"])
    assert (tmp_path / ".signing-key").stat().st_mode & 0o777 == 0o600


async def test_storage_saves_bytes_paths_and_streams(tmp_path: Path):
    storage = LocalStorage(tmp_path / "a")
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 3_000_000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"abc"

    assert await storage.save("j_1", "one.txt", b"hello", "text/plain") == 5
    assert await storage.save("j_1", "two.bin", source, "application/octet-stream") == 3_000_000
    assert await storage.save("j_1", "three.txt", chunks(), "text/plain") == 9
    assert storage.media_type("j_1", "one.txt") == "text/plain"
    path = storage.path("j_1", "three.txt")
    assert path is not None and path.read_bytes() == b"abcabcabc"
    storage.delete("j_1")
    assert storage.path("j_1", "one.txt") is None


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Outlast, httpx.AsyncClient]]:
    ot = Outlast(store="memory://", artifacts=str(tmp_path / "files"), signing_key="test-key")

    @ot.job()
    async def export(ctx: JobContext, text: str) -> dict[str, str]:
        return {"download": await ctx.artifact("export.txt", text.encode(), "text/plain")}

    @ot.job()
    def sync_export(ctx: JobContext) -> str:
        return ctx.artifact_sync("s.txt", b"from a thread")

    app = ot.app()
    async with ot.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield ot, c


async def run(client: httpx.AsyncClient, name: str, body: dict[str, str]) -> dict[str, object]:
    response = await client.post(f"/jobs/{name}", json=body, headers={"Prefer": "wait=5"})
    assert response.status_code == 200, response.text
    job: dict[str, object] = response.json()
    return job


async def test_a_job_stores_a_file_served_by_its_signed_url(served: tuple[Outlast, httpx.AsyncClient]):
    ot, client = served
    job = await run(client, "export", {"text": "0123456789"})
    url = job["result"]["download"]  # type: ignore[index]
    response = await client.get(url)
    assert response.status_code == 200
    assert response.text == "0123456789"
    assert response.headers["content-type"].startswith("text/plain")
    assert 'filename="export.txt"' in response.headers["content-disposition"]
    partial = await client.get(url, headers={"Range": "bytes=2-4"})
    assert partial.status_code == 206
    assert partial.text == "234"

    tampered = url.replace("export.txt", "other.txt")
    assert (await client.get(tampered)).status_code == 403
    other_job = url.replace(str(job["id"]), "j_someoneelse")
    assert (await client.get(other_job)).status_code == 403
    assert (await client.get(url.split("?")[0])).status_code == 403
    forged = ot.signer.url(str(job["id"]), "missing.txt", 60)  # type: ignore[union-attr]
    assert (await client.get(forged)).status_code == 404

    assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204
    assert (await client.get(url)).status_code == 404  # the file went with its job


async def test_sync_jobs_store_files_too(served: tuple[Outlast, httpx.AsyncClient]):
    _, client = served
    job = await run(client, "sync_export", {})
    assert (await client.get(str(job["result"]))).text == "from a thread"


async def test_expired_links_are_refused(served: tuple[Outlast, httpx.AsyncClient]):
    ot, client = served
    job = await run(client, "export", {"text": "x"})
    assert ot.signer is not None
    expired = ot.signer.url(str(job["id"]), "export.txt", -1)
    response = await client.get(expired)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
