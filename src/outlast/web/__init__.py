"""The web edge: the protocol's HTTP routes, SSE, the WebSocket, long-running routes and Flask views, on Starlette.

Everything here turns requests into calls of the core (`outlast.core`,
`outlast.admission`) and the core's answers and `OutlastError`s into responses.
The core imports none of it.
"""
