"""Long-running Flask views: `from outlast.flask import long_running` (see `outlast.web.flask`)."""

from outlast.web.flask import long_running

__all__ = ["long_running"]
