"""`WS /ws`: submit, subscribe, cancel over one WebSocket (docs/protocol.md, "WebSocket").

Text frames, one JSON object each. Besides the named actions, any registered
job's name is an action of its own (the route-key style of API Gateway
WebSocket APIs). A message that can't be served gets an `error` message and the
connection stays open; one over the size limit (text or binary) closes it
with 1009. Numbers must be finite: `NaN`, `Infinity` and `1e400` are refused.

Each subscription follows its job with `streams.follow`, so it replays from a
cursor and never loses or repeats an event. A client that stops reading blocks
only its own sends; after `SEND_TIMEOUT_S` its connection is closed (it can
reconnect and resume with `after`). Keepalive pings are the server's
(`outlast serve` has uvicorn ping every 20 s and drop what does not answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from outlast.admission import Caller
from outlast.exceptions import OutlastError, UnknownJobName
from outlast.parsing import FINITE, non_finite
from outlast.stores.base import store_unavailable
from outlast.web.http import client_address
from outlast.web.links import job_json, with_links
from outlast.web.problems import describe
from outlast.web.streams import follow

if TYPE_CHECKING:
    from outlast.core import Outlast

logger = logging.getLogger("outlast.ws")

SEND_TIMEOUT_S = 10.0
MAX_SUBSCRIPTIONS = 1000
CLOSE_TOO_BIG = 1009
CLOSE_TOO_SLOW = 1013
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_RESTARTING = 1012
CLOSE_POLICY = 1008
NAMED_ACTIONS = frozenset({"submit", "subscribe", "unsubscribe", "cancel"})


class MessageError(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


class TooSlow(Exception):
    """The client did not take a message within SEND_TIMEOUT_S."""


class Connection:
    """One client's WebSocket and the jobs it follows."""

    def __init__(self, ot: Outlast, websocket: WebSocket, caller: Caller) -> None:
        self.ot = ot
        self.caller = caller
        self.owner = caller.owner
        self.websocket = websocket
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()
        self._closing: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def serve(self) -> None:
        await self.websocket.accept()
        receiving = asyncio.create_task(self._receive_loop())
        shutdown = asyncio.create_task(self.ot.store.hub.closing.wait())
        shutdown.add_done_callback(lambda _: self.close(CLOSE_RESTARTING))
        try:
            waiting: list[asyncio.Future[Any]] = [receiving, self._closing]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self._closing in done:
                with contextlib.suppress(Exception):
                    await self.websocket.close(self._closing.result())
        finally:
            shutdown.cancel()
            receiving.cancel()
            for task in self.subscriptions.values():
                task.cancel()
            await asyncio.gather(receiving, *self.subscriptions.values(), return_exceptions=True)

    def close(self, code: int) -> None:
        if not self._closing.done():
            self._closing.set_result(code)

    async def _receive_loop(self) -> None:
        limit = self.ot.settings.max_body
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    if len(message.get("bytes") or b"") > limit:  # too big is too big, whatever the frame
                        self.close(CLOSE_TOO_BIG)
                        return
                    await self.error(None, 400, "Text frames only", "send one JSON object per text frame")
                    continue
                if len(text) > limit or len(text.encode("utf-8", "replace")) > limit:
                    self.close(CLOSE_TOO_BIG)
                    return
                await self.handle(text)
        except (WebSocketDisconnect, TooSlow):
            self.close(CLOSE_TOO_SLOW)

    # -- client -> server ---------------------------------------------------------

    async def handle(self, text: str) -> None:
        ref = None
        try:
            message = _parse(text)
            ref = message.get("ref")
            action = message.get("action")
            if not isinstance(action, str):
                raise MessageError(400, "No action", 'every message needs an "action"')
            if action in NAMED_ACTIONS:
                await getattr(self, f"on_{action}")(message, ref)
            else:
                await self.submit(action, _route_input(message), ref)
        except MessageError as exc:
            await self.error(ref, exc.status, exc.title, exc.detail)
        except Exception as exc:
            if not isinstance(exc, OutlastError) and store_unavailable(exc) is None:
                raise
            problem = describe(exc)  # a store that is away too: 503, the client tries again later
            await self.error(ref, problem.status, problem.title, problem.detail, problem.errors)

    async def on_submit(self, message: dict[str, Any], ref: Any) -> None:
        name = message.get("name")
        if not isinstance(name, str):
            raise MessageError(400, "No job name", 'submit needs a "name"')
        raw = message.get("input", {})
        if not isinstance(raw, dict):
            raise MessageError(400, "Bad input", '"input" must be a JSON object')
        await self.submit(name, raw, ref)

    async def submit(self, name: str, input: dict[str, Any], ref: Any) -> None:
        try:
            job, _ = await self.ot.admission.admit(self.caller, name, input, strict_json=True)
        except UnknownJobName:
            raise MessageError(404, "Unknown action", f"no action or job is named {name!r}") from None
        await self.send({"type": "accepted", "ref": ref, "job": job_json(_base(self.websocket), job)})
        self.subscribe(job.id, 0)

    async def on_subscribe(self, message: dict[str, Any], ref: Any) -> None:
        job_id, after = _job_id(message, "subscribe"), message.get("after") or 0
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise MessageError(400, "Bad cursor", '"after" must be an event number, 0 or more')
        job = await self.ot.get(job_id, owner=self.owner)  # 404 for an unknown job, or another key's
        if job.is_terminal and after >= job.last_seq:
            # Nothing will ever come (as SSE's 204): say so, and keep no slot for it.
            self.unsubscribe(job_id)
            await self.send({"type": "ended", "ref": ref, "id": job_id, "job": job_json(_base(self.websocket), job)})
            return
        self.make_room(job_id)
        # Before any event of the subscription: they are replayed from `after` whenever it starts.
        await self.send({"type": "subscribed", "ref": ref, "id": job_id, "after": after})
        self.subscribe(job_id, after)

    async def on_unsubscribe(self, message: dict[str, Any], ref: Any) -> None:
        job_id = _job_id(message, "unsubscribe")
        self.unsubscribe(job_id)
        await self.send({"type": "unsubscribed", "ref": ref, "id": job_id})

    async def on_cancel(self, message: dict[str, Any], ref: Any) -> None:
        job_id = _job_id(message, "cancel")
        await self.ot.get(job_id, owner=self.owner)
        job = await self.ot.cancel(job_id)  # subscribers see the outcome as a status event
        await self.send({"type": "cancel", "ref": ref, "job": job_json(_base(self.websocket), job)})

    # -- server -> client --------------------------------------------------------------

    def unsubscribe(self, job_id: str) -> None:
        task = self.subscriptions.pop(job_id, None)
        if task is not None:
            task.cancel()

    def make_room(self, job_id: str) -> None:
        """Room for a subscription to `job_id` (one to the same job is replaced), or a 429."""
        if job_id not in self.subscriptions and len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise MessageError(
                429, "Too many subscriptions", f"one connection follows {MAX_SUBSCRIPTIONS} jobs at most"
            )

    def subscribe(self, job_id: str, after: int) -> None:
        self.make_room(job_id)
        self.unsubscribe(job_id)
        task = asyncio.create_task(self._follow(job_id, after), name=f"outlast-ws-{job_id}")
        self.subscriptions[job_id] = task
        task.add_done_callback(lambda t: self._forget(job_id, t))

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self.subscriptions.get(job_id) is task:
            del self.subscriptions[job_id]

    async def _follow(self, job_id: str, after: int) -> None:
        try:
            async for event in follow(self.ot, job_id, after):
                if event is not None:
                    data = with_links(_base(self.websocket), event.data) if event.type == "status" else event.data
                    message = {"type": "event", "job_id": job_id, "seq": event.seq, "event": event.type}
                    await self.send({**message, "data": data})
        except TooSlow:
            self.close(CLOSE_TOO_SLOW)
        except Exception as exc:
            if store_unavailable(exc) is not None:  # the client resumes from its cursor once the store is back
                problem = describe(exc)
                with contextlib.suppress(Exception):
                    await self.error(None, problem.status, problem.title, f"following job {job_id}: {problem.detail}")
                self.close(CLOSE_TRY_AGAIN_LATER)
                return
            logger.exception("following job %s for a WebSocket failed", job_id)
            self.close(1011)

    async def error(
        self, ref: Any, status: int, title: str, detail: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        message = {"type": "error", "ref": ref, "status": status, "title": title, "detail": detail}
        if errors is not None:  # invalid input: each problem, as HTTP's 422 lists them
            message["errors"] = errors
        await self.send(message)

    async def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        try:
            async with self._send_lock, asyncio.timeout(SEND_TIMEOUT_S):
                await self.websocket.send_text(text)
        except TimeoutError:
            raise TooSlow() from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.close(1000)  # gone: the receive loop ends too


def _parse(text: str) -> dict[str, Any]:
    """One message: strict JSON, as for HTTP bodies (no NaN or Infinity; 1e400 is no number)."""
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise MessageError(400, "Malformed JSON", "the message is not valid JSON") from None
    if not isinstance(message, dict):
        raise MessageError(400, "Malformed message", "a message is one JSON object")
    if non_finite(message) is not None:
        raise MessageError(400, "Malformed JSON", FINITE)
    return message


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _job_id(message: dict[str, Any], action: str) -> str:
    job_id = message.get("id")
    if not isinstance(job_id, str):
        raise MessageError(400, "No job id", f'{action} needs an "id"')
    return job_id


def _route_input(message: dict[str, Any]) -> dict[str, Any]:
    """Route-key style: the `input` member if there is one, else the message without action and ref."""
    if "input" in message:
        raw = message["input"]
        if not isinstance(raw, dict):
            raise MessageError(400, "Bad input", '"input" must be a JSON object')
        return raw
    return {key: value for key, value in message.items() if key not in ("action", "ref")}


def _base(websocket: WebSocket) -> str:
    return str(websocket.scope.get("root_path", ""))


async def websocket_endpoint(ot: Outlast, websocket: WebSocket) -> None:
    try:
        caller = ot.admission.identify(websocket.headers.get("authorization"), client_address(websocket))
    except OutlastError:
        await websocket.close(CLOSE_POLICY)  # before accepting: the client sees 403
        return
    await Connection(ot, websocket, caller).serve()
