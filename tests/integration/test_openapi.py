"""/openapi.json describes the protocol, is valid for every way of serving, makes a client without a warning,
and Schemathesis finds nothing wrong with a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_document_lists_public_jobs_with_their_input_schema(serve: Any):
    server = serve("examples.app:ot")
    doc = httpx.get(f"{server.url}/openapi.json", timeout=5).json()
    assert doc["openapi"] == "3.1.0"
    report = doc["paths"]["/jobs/report"]["post"]
    schema = report["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"delay", "rows"}
    assert schema["properties"]["rows"]["maximum"] == 1_000_000
    assert "/jobs/payload" not in doc["paths"]  # a route's job is not submitted by name
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/jobs/{job_id}/events", "/jobs/{job_id}/cancel"):
        assert path in doc["paths"]


# (target, where its document is, paths it must describe)
SERVINGS = {
    "outlast's app": ("examples.app:ot", "/openapi.json", ["/jobs/report", "/payload", "/jobs/{job_id}"]),
    "Starlette + ot.mount": (
        "tests.openapi_apps:starlette_app",
        "/outlast/openapi.json",
        ["/outlast/jobs/paint", "/outlast/jobs/{job_id}/result", "/payload", "/items/{item_id}"],
    ),
    "FastAPI + ot.mount": ("tests.openapi_apps:fastapi_app", "/openapi.json", ["/postings", "/slow", "/jobs/add"]),
}
EVERY_ROUTE = ["/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/jobs/{job_id}/events", "/jobs/{job_id}/cancel"]
EVERY_ROUTE += ["/events", "/artifacts/{job_id}/{name}", "/healthz", "/metrics"]


@pytest.mark.parametrize("serving", list(SERVINGS))
def test_each_document_is_valid_complete_and_makes_a_client_without_a_warning(serve: Any, tmp_path: Path, serving: str):
    target, where, wanted = SERVINGS[serving]
    server = serve(target, root_path="/api")
    doc = httpx.get(f"{server.url}{where}", timeout=5).json()
    validate(doc)
    base = "/outlast" if where.startswith("/outlast") else ""
    paths = doc["paths"]
    assert {*wanted, *(base + path for path in EVERY_ROUTE)} <= set(paths), sorted(paths)
    assert doc["servers"][0]["url"] == "/api"  # behind the proxy's prefix

    # A long-running route answers its 303 and 202 too, with their headers.
    route = paths["/slow" if "/slow" in paths else "/payload"]["get"]
    see_other, accepted = route["responses"]["303"], route["responses"]["202"]
    components = doc["components"]
    see_other = components["responses"][see_other["$ref"].rsplit("/", 1)[1]]
    assert {"Location", "Retry-After"} <= set(see_other["headers"])
    assert {"Location", "Retry-After", "Preference-Applied"} <= set(accepted["headers"])
    result = paths[base + "/jobs/{job_id}/result"]["get"]["responses"]
    assert {"200", "202", "303", "304"} <= set(result)
    assert "405" in paths[base + "/jobs/{job_id}"]["get"]["responses"]

    # The Problem schema keeps its errors' items, so generators keep every error response.
    problem = next(v for k, v in components["schemas"].items() if k.endswith("Problem") and "detail" in v["properties"])
    assert "items" in problem["properties"]["errors"]

    (tmp_path / "doc.json").write_text(json.dumps(doc))
    (tmp_path / "config.yaml").write_text("post_hooks: []\n")
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("openapi-python-client")),
            "generate",
            "--path",
            "doc.json",
            "--output-path",
            "client",
            "--config",
            "config.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "warning" not in output.lower() and "unable to" not in output.lower(), output
    generated = {p.stem for p in (tmp_path / "client").glob("*/api/*/*.py")}
    assert {"get_job", "get_result", "list_jobs", "get_artifact", "metrics", "get_status_events"} <= generated
    models = {p.stem for p in (tmp_path / "client").glob("*/models/*.py")}
    assert "problem" in models


def test_fastapi_keeps_its_own_components_and_operations(serve: Any):
    server = serve("tests.openapi_apps:fastapi_app")
    doc = httpx.get(f"{server.url}/openapi.json", timeout=5).json()
    schemas = doc["components"]["schemas"]
    assert set(schemas["Job"]["properties"]) == {"title"}  # the app's own Job
    assert "links" in schemas["OutlastJob"]["properties"]  # outlast's, renamed
    job_schema = doc["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert job_schema == {"$ref": "#/components/schemas/OutlastJob"}
    slow = doc["paths"]["/slow"]["get"]
    assert "422" in slow["responses"]  # FastAPI's own validation
    assert slow["parameters"][0]["name"] == "delay"


def test_schemathesis_finds_no_failure(serve: Any):
    server = serve("tests.fuzz_app:ot", gateway_timeout=3, margin=2)
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            # A schema can't say that a reused Idempotency-Key with another input, or a
            # cursor this server never gave out, is refused: both are the protocol's 4xx.
            "--exclude-checks",
            "positive_data_acceptance",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "30",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "Traceback" not in server.output()
