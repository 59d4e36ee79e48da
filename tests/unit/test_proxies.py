"""X-Forwarded-Prefix values and trusted peers (outlast.web.proxies)."""

from __future__ import annotations

from typing import Any

import pytest

from outlast.web.proxies import ForwardedPrefix, TrustedPeers, forwarded_prefix


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        ("/api", "/api"),
        ("/api/", "/api"),
        ("/a/b-c/d.e", "/a/b-c/d.e"),
        ("/api, /other", "/api"),
        (None, None),
        ("", None),
        ("api", None),
        ("//evil.example", None),
        ("/a//b", None),
        ("/a b", None),
        ("/a?x=1", None),
        ("/a#x", None),
        ("/" + "a" * 2000, None),
    ],
)
def test_forwarded_prefix(value: str | None, prefix: str | None):
    assert forwarded_prefix(value) == prefix


def test_trusted_peers():
    peers = TrustedPeers("127.0.0.1, 10.0.0.0/8,::1")
    assert "127.0.0.1" in peers
    assert "10.1.2.3" in peers
    assert "::1" in peers
    assert "192.168.0.1" not in peers
    assert "not-an-ip" not in peers
    assert None not in peers
    assert "192.168.0.1" in TrustedPeers("*")
    with pytest.raises(ValueError, match="nope"):
        TrustedPeers("nope")


async def nothing() -> Any:
    raise AssertionError("not called")


async def ignore(message: Any) -> None:
    raise AssertionError("not called")


async def test_the_prefix_goes_in_front_of_root_path_and_path_from_trusted_peers_only():
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = ForwardedPrefix(app, "127.0.0.1")
    scope = {
        "type": "http",
        "client": ("127.0.0.1", 5000),
        "root_path": "/base",
        "path": "/base/jobs",
        "raw_path": b"/base/jobs",
        "headers": [(b"x-forwarded-prefix", b"/api")],
    }
    await middleware(scope, nothing, ignore)
    await middleware({**scope, "client": ("10.0.0.9", 5000)}, nothing, ignore)
    await middleware({"type": "lifespan"}, nothing, ignore)
    assert (seen[0]["root_path"], seen[0]["path"], seen[0]["raw_path"]) == (
        "/api/base",
        "/api/base/jobs",
        b"/api/base/jobs",
    )
    assert (seen[1]["root_path"], seen[1]["path"]) == ("/base", "/base/jobs")
    assert seen[2] == {"type": "lifespan"}
