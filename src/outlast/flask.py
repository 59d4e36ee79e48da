"""Long-running routes for Flask (and any WSGI app served under outlast's ASGI app).

    from a2wsgi import WSGIMiddleware
    from outlast.flask import long_running

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from outlast.long_running import serve_route
from outlast.problems import from_exception
from outlast.registry import JobDefinition

if TYPE_CHECKING:
    from outlast.core import Outlast

F = TypeVar("F", bound=Callable[..., Any])


def long_running(
    ot: Outlast, *, name: str | None = None, timeout: float | None = None, max_attempts: int | None = None
) -> Callable[[F], Any]:
    """Make a Flask view long-running (PROTOCOL.md, "Long-running routes")."""
    from flask import Response, request

    def decorate(fn: F) -> Any:
        definition = JobDefinition.from_function(
            fn, name=name, timeout_s=timeout, max_attempts=max_attempts, public=False
        )
        ot.add_job(definition)
        parameters = {field.alias for field in definition.input_model.model_fields.values()}

        @functools.wraps(fn)
        def view(**url_values: Any) -> Response:
            given = {**request.args.to_dict(), **url_values}
            raw = {key: value for key, value in given.items() if key in parameters}
            base = request.environ.get("SCRIPT_NAME", "").rstrip("/") + ot.mount_path
            try:
                owner = ot.keys.owner({"authorization": request.headers.get("Authorization", "")})
                serving = serve_route(
                    ot,
                    definition,
                    raw,
                    request.headers.getlist("Prefer"),
                    request.headers.get("Idempotency-Key"),
                    base,
                    owner=owner,
                    as_response=True,
                )
                answer = ot.run_threadsafe(serving)
            except Exception as exc:
                answer = from_exception(exc)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers]
            return Response(bytes(answer.body), status=answer.status_code, headers=headers)

        return view

    return decorate
