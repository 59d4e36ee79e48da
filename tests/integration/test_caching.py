"""Cache-Control, ETag and 304 on jobs, lists, results and artifacts, against a real server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_a_job_carries_an_etag_and_answers_304_until_it_changes(serve: Any):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        job_id = client.post("/jobs/sleep", json={"seconds": 1}, headers={"Prefer": "respond-async"}).json()["id"]
        first = client.get(f"/jobs/{job_id}")
        assert first.status_code == 200
        assert first.headers["cache-control"] == "private, no-cache"
        etag = first.headers["etag"]
        assert etag.startswith('"')
        again = client.get(f"/jobs/{job_id}", headers={"If-None-Match": etag})
        if again.status_code == 200:  # the job moved on between the two reads
            etag = again.headers["etag"]
            again = client.get(f"/jobs/{job_id}", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "private, no-cache"
        assert client.get(f"/jobs/{job_id}", headers={"If-None-Match": f'"x", W/{etag}'}).status_code in (200, 304)

        ended = client.get(f"/jobs/{job_id}", params={"wait": 5}, headers={"If-None-Match": etag})
        assert ended.status_code == 200  # it has ended: another representation
        assert ended.json()["status"] == "succeeded"
        assert ended.headers["etag"] != etag
        assert client.get(f"/jobs/{job_id}", headers={"If-None-Match": ended.headers["etag"]}).status_code == 304


def test_lists_are_revalidated(serve: Any):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/jobs/noop", headers={"Prefer": "wait=5"})
        listed = client.get("/jobs")
        assert listed.headers["cache-control"] == "private, no-cache"
        assert client.get("/jobs", headers={"If-None-Match": listed.headers["etag"]}).status_code == 304
        client.post("/jobs/noop", headers={"Prefer": "wait=5"})
        assert client.get("/jobs", headers={"If-None-Match": listed.headers["etag"]}).status_code == 200


def test_a_result_is_cached_privately_once_ended_and_never_before(serve: Any):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        job_id = client.post("/jobs/sleep", json={"seconds": 1}, headers={"Prefer": "respond-async"}).json()["id"]
        hop = client.get(f"/jobs/{job_id}/result", headers={"Prefer": "wait=0"})
        assert hop.status_code == 303
        assert hop.headers["cache-control"] == "no-store"
        accepted = client.get(f"/jobs/{job_id}/result", headers={"Prefer": "respond-async"})
        assert accepted.status_code == 202
        assert accepted.headers["cache-control"] == "no-store"
        result = client.get(f"/jobs/{job_id}/result", params={"wait": 5})
        assert result.status_code == 200
        directives = dict(part.strip().partition("=")[::2] for part in result.headers["cache-control"].split(","))
        assert "private" in directives
        assert 86000 < int(directives["max-age"]) <= 86400  # until the job expires (24 h retention)
        assert (
            client.get(f"/jobs/{job_id}/result", headers={"If-None-Match": result.headers["etag"]}).status_code == 304
        )


def test_an_artifact_answers_304_through_its_signed_url(serve: Any):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=20) as client:
        url = client.post("/jobs/big_file", json={"megabytes": 1}, headers={"Prefer": "wait=10"}).json()["result"]
        first = client.get(url)
        assert first.status_code == 200
        assert first.headers["cache-control"].startswith("private, max-age=")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        by_tag = client.get(url, headers={"If-None-Match": etag})
        assert by_tag.status_code == 304
        assert by_tag.content == b""
        assert by_tag.headers["etag"] == etag
        assert client.get(url, headers={"If-Modified-Since": modified}).status_code == 304
        assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
        # Without a valid signature, no 304 either: the 403 comes first.
        assert client.get(url.replace("sig=", "sig=x"), headers={"If-None-Match": etag}).status_code == 403
