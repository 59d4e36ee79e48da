"""Settings: keywords of `Outlast(...)`, `OUTLAST_*` variables, CLI flags.

A flag wins over a variable, a variable over a keyword, a keyword over the
default. Durations are seconds (floats allowed).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from outlast.exceptions import ConfigError

ENV_PREFIX = "OUTLAST_"

Seconds = Annotated[float, Field(ge=0)]

# An origin as browsers send it in `Origin`: scheme, host, maybe a port; no path.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+/?", re.IGNORECASE)


class Settings(BaseModel):
    """Everything an operator can set. See docs/protocol.md, "Settings"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str = Field(
        "sqlite:///outlast.db", description="where jobs are kept: sqlite:///path, redis://host:port/db or memory://"
    )
    gateway_timeout: Annotated[float, Field(gt=0)] = Field(29.0, description="the gateway's timeout, in seconds")
    margin: Seconds = Field(4.0, description="safety margin under the gateway's timeout, in seconds")
    default_wait: Seconds = Field(0.0, description="how long a submit waits when the client says nothing")
    retention: Seconds = Field(86400.0, description="how long a finished job is kept, in seconds")
    max_body: Annotated[int, Field(ge=1)] = Field(1024 * 1024, description="the largest request body, in bytes")
    workers: Annotated[int, Field(ge=0)] = Field(8, description="jobs the embedded workers run at once; 0 = none")
    lease: Annotated[float, Field(gt=0)] = Field(30.0, description="how long a worker holds a job between heartbeats")
    max_attempts: Annotated[int, Field(ge=1)] = Field(3, description="attempts before a job fails for good")
    max_connections: Annotated[int, Field(ge=1)] = Field(
        10_000, description="open HTTP requests and WebSockets per process; 503 beyond"
    )
    max_head: Annotated[int, Field(ge=1024)] = Field(
        64 * 1024, description="the largest request head (request line and headers), in bytes; 431 beyond"
    )
    max_url: Annotated[int, Field(ge=256)] = Field(
        8 * 1024, description="the longest request target (URL), in bytes; 414 beyond"
    )
    head_timeout: Annotated[float, Field(gt=0)] = Field(
        10.0, description="seconds from a request head's first byte to its end; 408 and close beyond"
    )
    max_queue: Annotated[int, Field(ge=1)] | None = Field(None, description="queued jobs per name; 503 beyond")
    submit_rate: Annotated[float, Field(gt=0)] | None = Field(
        None, description="submits per second per API key (or client address); 429 beyond"
    )
    webhook_secret: str | None = None
    webhook_allow: tuple[str, ...] = ()
    webhook_backoff: tuple[Annotated[float, Field(ge=0)], ...] = Field(
        (0, 5, 300, 1800, 7200, 18000, 36000), description="seconds before each webhook attempt"
    )
    signing_key: str | None = None
    artifacts: str = "./outlast-artifacts"
    api_keys: tuple[str, ...] = ()
    dashboard: bool = Field(
        False,
        description="without API keys, list every job (GET /jobs, GET /events) and serve the page at /",
    )
    openapi_public: bool = Field(False, description="with API keys, serve /openapi.json without a key")
    cors_origins: tuple[str, ...] = Field(
        (), description="origins (scheme://host[:port], or *) whose browser apps may call the API; none by default"
    )

    @field_validator("webhook_allow", "api_keys", "webhook_backoff", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad one
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], with no path, or *")
        return tuple(origin.rstrip("/") for origin in value)

    @model_validator(mode="after")
    def _hold_is_positive(self) -> Settings:
        if self.hold_s <= 0:
            raise ValueError(
                f"margin ({self.margin:g} s) must be smaller than gateway_timeout ({self.gateway_timeout:g} s)"
            )
        return self

    @property
    def hold_s(self) -> float:
        """The longest any response is held: gateway_timeout - margin."""
        return self.gateway_timeout - self.margin

    @classmethod
    def load(
        cls,
        keywords: Mapping[str, Any] | None = None,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Merge defaults < keywords < environment < flags, and validate."""
        environ = os.environ if environ is None else environ
        keywords = dict(keywords or {})
        unknown = set(keywords) - set(cls.model_fields)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        from_env = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        merged = {**keywords, **from_env, **{k: v for k, v in (flags or {}).items() if v is not None}}
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, from_env)) from None

    def with_flags(self, flags: Mapping[str, Any]) -> Settings:
        """These settings with command-line flags applied on top."""
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            return self.model_validate({**self.model_dump(), **given})
        except ValidationError as exc:
            raise ConfigError(_describe(exc, {})) from None


def _describe(exc: ValidationError, from_env: Mapping[str, str]) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"])
        where = f"{field} (from {ENV_PREFIX}{field.upper()})" if field in from_env else field or "settings"
        problems.append(f"{where}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)
