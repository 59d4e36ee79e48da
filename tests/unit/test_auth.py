"""API keys: 401 without, 403 unknown, and each key's jobs invisible to every other key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from outlast import JobContext, Outlast

ALICE = {"Authorization": "Bearer alice-key"}
BOB = {"Authorization": "Bearer bob-key"}


def make() -> Outlast:
    ot = Outlast(store="memory://", api_keys="alice-key,bob-key", signing_key="k")

    @ot.job()
    async def note(ctx: JobContext, text: str) -> str:
        return await ctx.artifact("note.txt", text.encode(), "text/plain")

    return ot


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    ot = make()
    async with ot.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app=ot.app()), base_url="http://t") as c:
        yield c


async def test_keys_are_required_except_for_health_and_signed_files(client: httpx.AsyncClient):
    missing = await client.post("/jobs/note", json={"text": "x"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    unknown = await client.get("/jobs", headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 403
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/metrics")).status_code == 401
    job = (await client.post("/jobs/note", json={"text": "hi"}, headers={**ALICE, "Prefer": "wait=5"})).json()
    artifact = await client.get(job["result"])  # no key: the signed URL is the credential
    assert artifact.text == "hi"


async def test_another_keys_job_does_not_exist_for_you(client: httpx.AsyncClient):
    job = (await client.post("/jobs/note", json={"text": "a"}, headers={**ALICE, "Prefer": "wait=5"})).json()
    job_id = job["id"]
    for method, path in [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/result"),
        ("GET", f"/jobs/{job_id}/events"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("DELETE", f"/jobs/{job_id}"),
    ]:
        response = await client.request(method, path, headers=BOB)
        assert response.status_code == 404, (method, path, response.text)
    assert (await client.get("/jobs", headers=BOB)).json()["jobs"] == []
    assert [j["id"] for j in (await client.get("/jobs", headers=ALICE)).json()["jobs"]] == [job_id]
    assert (await client.get(f"/jobs/{job_id}", headers=ALICE)).status_code == 200


async def test_idempotency_keys_are_scoped_to_the_api_key(client: httpx.AsyncClient):
    headers = {"Idempotency-Key": "same", "Prefer": "respond-async"}
    a = (await client.post("/jobs/note", json={"text": "a"}, headers={**ALICE, **headers})).json()
    b = (await client.post("/jobs/note", json={"text": "b"}, headers={**BOB, **headers})).json()
    assert a["id"] != b["id"]
