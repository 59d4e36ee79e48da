"""API keys: `Authorization: Bearer <key>`, and each key's jobs kept to itself.

Keys are kept only as SHA-256 digests and compared in constant time. A job
belongs to the key that created it (its owner is a digest prefix, never the
key): any other key gets `404` for it, as if it did not exist. Without keys
configured, auth is off and jobs have no owner.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from outlast.exceptions import Forbidden, Unauthorized

OWNER_HEX = 24


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [_digest(key) for key in keys if key]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def owner(self, authorization: str | None) -> str | None:
        """The owner for a request's `Authorization` header; None when auth is off.

        Raises `Unauthorized` without a Bearer key and `Forbidden` for an unknown key.
        """
        if not self.enabled:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("send Authorization: Bearer <key>")
        presented = _digest(key.strip())
        found = False
        for digest in self._digests:  # every digest is compared: the time says nothing
            found |= hmac.compare_digest(presented, digest)
        if not found:
            raise Forbidden("this key is not known")
        return presented.hex()[:OWNER_HEX]
