"""What the request-head guard of `outlast serve` costs: the same app on either HTTP protocol.

    python -m bench.head_guard guarded 8101   # outlast.web.server's protocol (what `outlast serve` runs)
    python -m bench.head_guard stock 8102     # uvicorn's own httptools protocol
    wrk -t2 -c64 -d10s --latency http://127.0.0.1:8101/healthz

An outlast app with a no-op job, a memory store and no workers; uvloop either way.
"""

from __future__ import annotations

import sys

import uvicorn

from outlast import Outlast
from outlast.web.server import guarded_protocol

ot = Outlast(store="memory://", workers=0)


@ot.job()
async def noop() -> None: ...


def main() -> None:
    which, port = sys.argv[1], int(sys.argv[2])
    http: type | str = guarded_protocol() if which == "guarded" else "httptools"
    uvicorn.run(ot.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="on", loop="uvloop", http=http)


if __name__ == "__main__":
    main()
