"""Behind a proxy and for browsers: `--root-path`, `X-Forwarded-Prefix` from trusted peers only, CORS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}


def test_root_path_puts_the_prefix_in_location_and_links(serve: Any):
    server = serve(root_path="/api")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        # The proxy strips /api before it reaches the node: requests come without it.
        response = client.post("/jobs/sleep", json={"seconds": 0.5}, headers=ASYNC)
        assert response.status_code == 202
        job = response.json()
        assert response.headers["location"] == f"/api/jobs/{job['id']}"
        assert job["links"]["result"] == f"/api/jobs/{job['id']}/result"
        hop = client.get(f"/jobs/{job['id']}/result", headers={"Prefer": "wait=0"})
        assert hop.status_code == 303
        assert hop.headers["location"] == f"/api/jobs/{job['id']}/result?hop=1"
        listed = client.get("/jobs").json()["jobs"]
        assert listed[0]["links"]["self"] == f"/api/jobs/{job['id']}"


def test_x_forwarded_prefix_is_believed_from_a_trusted_peer(serve: Any):
    server = serve()  # uvicorn's default: 127.0.0.1, where the test connects from, is trusted
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post("/jobs/noop", headers={**ASYNC, "X-Forwarded-Prefix": "/edge/v1/"})
        job_id = response.json()["id"]
        assert response.headers["location"] == f"/edge/v1/jobs/{job_id}"
        status = client.get(f"/jobs/{job_id}", headers={"X-Forwarded-Prefix": "/edge/v1"}).json()
        assert status["links"]["events"] == f"/edge/v1/jobs/{job_id}/events"
        # Not a path: ignored.
        for bad in ("edge", "//evil.example", "/a b", "/a/../../b?x"):
            response = client.post("/jobs/noop", headers={**ASYNC, "X-Forwarded-Prefix": bad})
            assert response.headers["location"].startswith("/jobs/"), bad


@pytest.mark.parametrize("proxy_flags", [{"forwarded_allow_ips": "10.9.8.7"}, {"proxy_headers": False}])
def test_x_forwarded_prefix_from_an_untrusted_peer_is_ignored(serve: Any, proxy_flags: dict[str, Any]):
    server = serve(**proxy_flags)
    response = httpx.post(f"{server.url}/jobs/noop", headers={**ASYNC, "X-Forwarded-Prefix": "/evil"}, timeout=10)
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"


def test_a_bad_root_path_is_a_usage_error(tmp_path):
    import subprocess
    import sys

    from tests.integration.conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "outlast", "serve", "tests.apps:ot", "--root-path", "api"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "--root-path" in done.stderr


ALLOWED = "https://app.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "prefer, idempotency-key, authorization, content-type, last-event-id",
}


def test_cors_preflight_from_an_allowed_origin_and_a_refused_one(serve: Any):
    server = serve(env={"OUTLAST_CORS_ORIGINS": f"{ALLOWED}, https://other.example"})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        allowed = client.options("/jobs/sleep", headers={"Origin": ALLOWED, **PREFLIGHT})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in allowed.headers["access-control-allow-methods"]
        granted = {h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")}
        assert {"prefer", "idempotency-key", "authorization", "content-type", "last-event-id"} <= granted

        refused = client.options("/jobs/sleep", headers={"Origin": "https://evil.example", **PREFLIGHT})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers

        # The actual request: the browser may read Location, Retry-After and Preference-Applied.
        submitted = client.post("/jobs/noop", headers={"Origin": ALLOWED, **ASYNC})
        assert submitted.status_code == 202
        assert submitted.headers["access-control-allow-origin"] == ALLOWED
        exposed = {h.strip().lower() for h in submitted.headers["access-control-expose-headers"].split(",")}
        assert {"location", "retry-after", "preference-applied", "content-location"} <= exposed
        other = client.post("/jobs/noop", headers={"Origin": "https://evil.example", **ASYNC})
        assert "access-control-allow-origin" not in other.headers


def test_without_cors_origins_no_cross_origin_headers_are_sent(serve: Any):
    server = serve()
    response = httpx.options(f"{server.url}/jobs/sleep", headers={"Origin": ALLOWED, **PREFLIGHT}, timeout=10)
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers
