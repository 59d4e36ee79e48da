"""The seed's Flask app, made long-running with one decorator, served by outlast.

    outlast serve examples.flask_app:app

- `GET /payload?delay=40`: the seed's endpoint. `longrunner` takes `delay`
  seconds; `curl -L` gets its answer through the 303 chain, whatever the gateway.
- `GET /hello`: an ordinary Flask view, untouched.
"""

from __future__ import annotations

import time

from a2wsgi import WSGIMiddleware
from flask import Flask

from outlast import Outlast
from outlast.flask import long_running

ot = Outlast()
flask_app = Flask(__name__)


def longrunner(delay: float) -> dict[str, str]:
    time.sleep(delay)
    return {"MESSAGE": f"It took {delay:g} seconds to generate this."}


@flask_app.route("/payload")
@long_running(ot)
def payload(delay: float = 60) -> dict[str, str]:
    return longrunner(delay)


@flask_app.route("/hello")
def hello() -> dict[str, str]:
    return {"hello": "from Flask"}


# Flask runs in a2wsgi's thread pool; each long request holds a thread up to the hold.
app = ot.app(fallback=WSGIMiddleware(flask_app, workers=32))  # type: ignore[arg-type]
