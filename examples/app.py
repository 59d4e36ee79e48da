"""The demo's app, as an example to serve: `outlast serve examples.app:ot`.

It ships inside the package (`outlast demo` serves it from any folder); read it
at src/outlast/devtools/demo_app.py. `GET /payload?delay=40` is a long-running
route, `POST /jobs/report` a job with progress and a file, and the page at `/`
(with the `dashboard` setting) lists jobs live and generates reports.
"""

from outlast.devtools.demo_app import app, generate_report, ot, payload, report

__all__ = ["app", "generate_report", "ot", "payload", "report"]
