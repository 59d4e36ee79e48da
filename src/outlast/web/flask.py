"""Long-running routes for Flask (and any WSGI app served under outlast's ASGI app).

    from a2wsgi import WSGIMiddleware
    from outlast.web.flask import long_running

    flask_app = Flask(__name__)

    @flask_app.route("/payload")
    @long_running(ot)
    def payload(delay: float = 60) -> dict:
        return longrunner(delay)

    app = ot.app(fallback=WSGIMiddleware(flask_app))   # outlast serve module:app

The view runs as a job, its query-string and URL parameters as input, exactly as
`ot.long_running()` does for Starlette: fast, Flask answers with the job's
result; slow, `303 See Other` to `/jobs/{id}/result?hop=1` and the chain that
follows. A WSGI thread waits up to the hold for each such request, so give
`WSGIMiddleware` enough `workers` for the long requests you expect at once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from outlast.registry import JobDefinition
from outlast.web.answers import Answer
from outlast.web.long_running import head_refused, serve_route
from outlast.web.problems import describe

if TYPE_CHECKING:
    from flask import Response

    from outlast.core import Outlast

F = TypeVar("F", bound=Callable[..., Any])


def long_running(
    ot: Outlast, *, name: str | None = None, timeout: float | None = None, max_attempts: int | None = None
) -> Callable[[F], Any]:
    """Make a Flask view long-running (docs/protocol.md, "Long-running routes")."""
    from flask import request

    def decorate(fn: F) -> Any:
        definition = JobDefinition.from_function(
            fn, name=name, timeout_s=timeout, max_attempts=max_attempts, public=False
        )
        ot.add_job(definition)
        parameters = {field.alias for field in definition.input_model.model_fields.values()}

        @functools.wraps(fn)
        def view(**url_values: Any) -> Response:
            arrived = time.monotonic()
            if request.method == "HEAD":  # Flask adds HEAD to GET views: start no job for it
                return _flask(head_refused())
            given = {**request.args.to_dict(), **url_values}
            raw = {key: value for key, value in given.items() if key in parameters}
            base = request.environ.get("SCRIPT_NAME", "").rstrip("/") + ot.mount_path
            try:
                caller = ot.admission.identify(request.headers.get("Authorization"), request.remote_addr)
                serving = serve_route(
                    ot,
                    definition,
                    caller,
                    raw,
                    request.headers.getlist("Prefer"),
                    request.headers.get("Idempotency-Key"),
                    base,
                    as_response=True,
                )
                answer = ot.run_threadsafe(serving, arrived=arrived)
            except Exception as exc:
                answer = Answer.problem(describe(exc))
            return _flask(answer)

        return view

    return decorate


def _flask(answer: Answer) -> Response:
    """The Flask response for an answer: the same status, headers and bytes a Starlette route sends."""
    from flask import Response

    return Response(answer.body, status=answer.status, headers=dict(answer.headers), content_type=answer.media_type)
