"""/openapi.json describes the protocol, and Schemathesis finds nothing wrong with a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

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
