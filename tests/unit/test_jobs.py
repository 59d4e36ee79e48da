from __future__ import annotations

import re

import pytest

from outlast import InvalidTransition, JobStatus
from outlast.jobs import TRANSITIONS, Job, new_job_id


def test_ids_are_url_safe_with_128_random_bits():
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    for job_id in ids:
        assert re.fullmatch(r"j_[A-Za-z0-9_-]{22}", job_id)


@pytest.mark.parametrize("status", list(JobStatus))
def test_terminal_statuses_have_no_way_out(status: JobStatus):
    assert (not TRANSITIONS[status]) == status.is_terminal


def test_illegal_transitions_raise():
    job = Job.new("r", {}, max_attempts=3, retention_s=10)
    with pytest.raises(InvalidTransition):
        job.succeed(1, now=0)  # queued -> succeeded skips running
    job.cancel(now=0)
    with pytest.raises(InvalidTransition):
        job.start("w", 30, now=0)


def test_public_view_hides_internals_and_shows_result_only_on_success():
    job = Job.new("r", {"a": 1}, max_attempts=3, retention_s=10, now=1_700_000_000.0)
    public = job.to_public()
    assert set(public) == {
        "id", "name", "status", "created_at", "started_at", "finished_at", "expires_at",
        "attempt", "queue_position", "progress", "result", "error",
    }  # fmt: skip
    assert public["created_at"] == "2023-11-14T22:13:20.000Z"
    job.start("w", 30, now=1_700_000_001.0)
    job.succeed({"x": 1}, now=1_700_000_002.5)
    public = job.to_public()
    assert public["result"] == {"x": 1}
    assert public["finished_at"] == "2023-11-14T22:13:22.500Z"
    assert public["expires_at"] == "2023-11-14T22:13:32.500Z"


def test_the_public_api_is_what_all_lists():
    import outlast

    for name in outlast.__all__:
        assert getattr(outlast, name) is not None
    assert sorted(outlast.__all__) == sorted(set(outlast.__all__))
