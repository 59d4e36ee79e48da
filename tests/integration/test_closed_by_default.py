"""Closed by default, on a real server: no list of jobs, no page, no schema for strangers.

Without API keys, a job is readable only by whoever holds its id; `dashboard`
opens the lists and the page. With keys, each key lists its own jobs and
`/openapi.json` needs a key unless `openapi_public` says otherwise.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_without_keys_nothing_lists_jobs_unless_the_dashboard_is_on(serve: Any):
    server = serve("examples.app:ot", dashboard=False)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        fast = client.get("/payload", params={"delay": 0})  # a long-running route's job
        assert fast.status_code == 200
        submitted = client.post("/jobs/report", json={"delay": 0, "rows": 1}, headers={"Prefer": "wait=5"})
        job = submitted.json()
        assert job["status"] == "succeeded"

        for path in ("/jobs", "/events"):
            refused = client.get(path)
            assert refused.status_code == 403, path
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["type"] == "listing_disabled"
            assert "dashboard" in refused.json()["detail"]
        assert client.get("/").status_code == 404  # no page either

        # Whoever holds the id still reads the job.
        assert client.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"
        assert client.get(f"/jobs/{job['id']}/result").json()["rows"] == 1


def test_the_dashboard_setting_opens_the_list_and_the_page(serve: Any):
    server = serve("examples.app:ot", env={"OUTLAST_DASHBOARD": "1"})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        job = client.post("/jobs/report", json={"delay": 0, "rows": 1}, headers={"Prefer": "wait=5"}).json()
        assert [listed["id"] for listed in client.get("/jobs").json()["jobs"]] == [job["id"]]
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")


def test_with_keys_the_schema_needs_a_key_unless_it_is_published(serve: Any):
    keys = {"OUTLAST_API_KEYS": "alice-key"}
    closed = serve(env=keys)
    assert httpx.get(f"{closed.url}/openapi.json", timeout=10).status_code == 401
    with_key = httpx.get(f"{closed.url}/openapi.json", headers={"Authorization": "Bearer alice-key"}, timeout=10)
    assert with_key.status_code == 200
    assert "/jobs/echo" in with_key.json()["paths"]

    published = serve(env={**keys, "OUTLAST_OPENAPI_PUBLIC": "true"})
    assert httpx.get(f"{published.url}/openapi.json", timeout=10).status_code == 200


def test_each_key_lists_only_its_own_jobs_without_the_dashboard(serve: Any):
    server = serve(env={"OUTLAST_API_KEYS": "alice-key,bob-key", "OUTLAST_DASHBOARD": "0"})
    alice, bob = ({"Authorization": f"Bearer {who}-key"} for who in ("alice", "bob"))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        job = client.post("/jobs/echo", json={"text": "a"}, headers={**alice, "Prefer": "wait=5"}).json()
        assert [listed["id"] for listed in client.get("/jobs", headers=alice).json()["jobs"]] == [job["id"]]
        assert client.get("/jobs", headers=bob).json()["jobs"] == []
        assert client.get("/jobs").status_code == 401
