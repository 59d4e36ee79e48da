"""How the Redis store lays its data out: every key and channel, the Lua scripts
that change several keys in one step, and the writes of a change as the
compare-and-set script takes them.

The store's logic (the job lifecycle, retries, notifications) is in
`outlast.stores.redis`; this module holds what Redis itself sees.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from outlast.jobs import Job, job_record

# KEYS[1] delayed, KEYS[2] leases; ARGV: now, lease_until, queue key prefix, job key prefix,
# names... Moves due retries back to their queues, then pops the first job of the first
# non-empty queue and leases it: its id and its record.
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local a = string.find(member, '\\n', 1, true)
  local b = string.find(member, '\\n', a + 1, true)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', ARGV[3] .. string.sub(member, 1, a - 1), string.sub(member, a + 1, b - 1),
             string.sub(member, b + 1))
end
for i = 5, #ARGV do
  local popped = redis.call('ZPOPMIN', ARGV[3] .. ARGV[i])
  if popped[1] then
    redis.call('ZADD', KEYS[2], ARGV[2], popped[1])
    return {popped[1], redis.call('GET', ARGV[4] .. popped[1]) or ''}
  end
end
return false
"""


# KEYS[1] the due deliveries; ARGV: now, lease_until, limit. Takes the due ones and
# makes them due again at lease_until (a sender that crashes is retried then).
CLAIM_DELIVERIES = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return due
"""


# KEYS[1] a job; ARGV[1] its record as last seen, ARGV[2] a JSON array of commands (strings).
# Compare-and-set: runs the commands only if the job is still what was seen; else returns
# the record as it is now ('' if the job is gone), so that the caller can apply its change
# again without a read of its own.
CAS = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return {0, current or ''}
end
for _, command in ipairs(cjson.decode(ARGV[2])) do
  redis.call(unpack(command))
end
return {1}
"""


# KEYS[1] a job, KEYS[2] the leases; ARGV[1] the queue key prefix. The job's record, with
# its place in its queue if it is queued, or its lease's end if it is running: one round trip.
GET_JOB = """
local raw = redis.call('GET', KEYS[1])
if not raw then
  return false
end
local job = cjson.decode(raw)
local extra = false
if job.status == 'queued' then
  extra = redis.call('ZRANK', ARGV[1] .. job.name, job.id)
elseif job.status == 'running' then
  extra = redis.call('ZSCORE', KEYS[2], job.id)
end
return {raw, extra}
"""


# KEYS[1] the idempotency key ('' if none), KEYS[2] delayed, KEYS[3] the job, KEYS[4] its
# events, KEYS[5] leases, KEYS[6] the jobs index, KEYS[7] the queue order counter.
# ARGV[1] now, ARGV[2] queue key prefix, ARGV[3] the names (JSON), ARGV[4] the job's id,
# ARGV[5] its created_at, ARGV[6] its lease's end, ARGV[7] its record as started (without
# qorder), ARGV[8] the events channel, ARGV[9] a JSON array of commands (its webhook
# deliveries), ARGV[10...] pairs of (event, message).
# Creates a job already claimed, unless its idempotency key is taken or a due job of one
# of the names is queued (that one comes first): then it writes nothing.
CREATE_STARTED = """
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 'existing'
end
for _, name in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('ZCARD', ARGV[2] .. name) > 0 then
    return 'queued'
  end
end
if redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1)[1] then
  return 'queued'
end
local qorder = redis.call('INCR', KEYS[7])
redis.call('SET', KEYS[3], string.sub(ARGV[7], 1, -2) .. ',"qorder":' .. qorder .. '}')
for i = 10, #ARGV, 2 do
  redis.call('RPUSH', KEYS[4], ARGV[i])
  redis.call('PUBLISH', ARGV[8], ARGV[i + 1])
end
for _, command in ipairs(cjson.decode(ARGV[9])) do
  redis.call(unpack(command))
end
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[4])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[4])
if KEYS[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[4])
end
return 'started'
"""


# KEYS[1] the job, KEYS[2] its events, KEYS[3] the jobs index, KEYS[4] the queue order counter,
# KEYS[5] leases, KEYS[6] expiry. ARGV[1] its record (without qorder), ARGV[2] its id, ARGV[3] its
# created_at, ARGV[4] its lease's end ('' unless running), ARGV[5] when it expires and ARGV[6] when
# its keys go ('' unless ended), ARGV[7] the events channel, ARGV[8...] pairs of (event, message).
# Writes a job that ran before it was stored, as it is, with its events: one round trip.
# Returns the job's place in the queue order.
PUT = """
local qorder = redis.call('INCR', KEYS[4])
redis.call('SET', KEYS[1], string.sub(ARGV[1], 1, -2) .. ',"qorder":' .. qorder .. '}')
for i = 8, #ARGV, 2 do
  redis.call('RPUSH', KEYS[2], ARGV[i])
  redis.call('PUBLISH', ARGV[7], ARGV[i + 1])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[4], ARGV[2])
end
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[5], ARGV[2])
  redis.call('EXPIREAT', KEYS[1], ARGV[6])
  redis.call('EXPIREAT', KEYS[2], ARGV[6])
end
return qorder
"""


class Keys:
    """Every key and channel, in one place."""

    def __init__(self, namespace: str) -> None:
        self.prefix = f"outlast:{namespace}:"
        p = self.prefix
        self.counter = p + "qorder"
        self.queue_prefix = p + "queue:"
        self.job_prefix = p + "job:"
        self.delayed = p + "delayed"
        self.leases = p + "leases"
        self.jobs = p + "jobs"
        self.expiry = p + "expiry"
        self.deliveries_due = p + "deliveries"
        self.settings = p + "settings"
        self.events_channel = p + "events"
        self.cancel_channel = p + "cancel"

    def job(self, job_id: str) -> str:
        return f"{self.job_prefix}{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}events:{job_id}"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}delivery:{delivery_id}"

    def job_deliveries(self, job_id: str) -> str:
        return f"{self.prefix}job-deliveries:{job_id}"

    def queue(self, name: str) -> str:
        return self.queue_prefix + name

    def idempotency(self, owner: str | None, key: str) -> str:
        return f"{self.prefix}idem:{owner or ''}:{key}"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def job_document(job: Job, qorder: int | None) -> str:
    """A job as its key holds it: the record every store maps a job to, and its place in its queue."""
    return dumps({**job_record(job), "qorder": qorder})


class Commands:
    """The writes of one change, recorded for the compare-and-set script (`CAS`).

    It answers the pipeline methods the changes use, so the same code writes
    through either; every argument becomes a string here, so numbers reach
    Redis exactly as Python prints them (Lua would round them to 14 digits).
    """

    def __init__(self) -> None:
        self.written: list[list[str]] = []

    def _add(self, *command: Any) -> None:
        self.written.append([str(part) for part in command])

    def set(self, key: str, value: str) -> None:
        self._add("SET", key, value)

    def rpush(self, key: str, *values: str) -> None:
        self._add("RPUSH", key, *values)

    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        self._add("ZADD", key, *itertools.chain.from_iterable((repr(float(s)), m) for m, s in mapping.items()))

    def zrem(self, key: str, *members: str) -> None:
        self._add("ZREM", key, *members)

    def expireat(self, key: str, when: int) -> None:
        self._add("EXPIREAT", key, int(when))

    def publish(self, channel: str, message: str) -> None:
        self._add("PUBLISH", channel, message)

    def delete(self, *keys: str) -> None:
        self._add("DEL", *keys)
