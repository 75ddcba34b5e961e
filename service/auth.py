"""API keys → tenants (``Authorization: Bearer <key>``).

Keys come from ``GIF_API_KEYS`` ("tenantA:keyA,tenantB:keyB") and the key file (one
``tenant:key`` per line). Presented keys are compared in constant time against every known key.
When ``serve`` starts with no key at all, it generates one for tenant ``default``, stores it in
``<home>/api-keys.txt`` (mode 0600) and prints it once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobs.config import Settings
from jobs.errors import Forbidden, RateLimited, Unauthenticated

DEFAULT_TENANT = "default"
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def parse_keys(text: str) -> list[tuple[str, str]]:
    """``tenant:key`` entries separated by commas or newlines (``#`` starts a comment line)."""
    pairs = []
    lines = [line.strip() for line in text.splitlines()]
    for entry in (e.strip() for line in lines if not line.startswith("#") for e in line.split(",")):
        if not entry:
            continue
        tenant, sep, key = entry.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError("API keys must be given as tenant:key")
        pairs.append((tenant.strip(), key.strip()))
    return pairs


class KeyRing:
    """The known keys; only their SHA-256 digests are kept in memory."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._entries = [(tenant, _digest(key)) for tenant, key in pairs]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        pairs = parse_keys(settings.api_keys)
        if settings.key_file.is_file():
            pairs += parse_keys(settings.key_file.read_text())
        return cls(pairs)

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_for(self, presented: str) -> str | None:
        """The tenant of ``presented``; every entry is compared so timing reveals nothing."""
        digest, found = _digest(presented), None
        for tenant, known in self._entries:
            if hmac.compare_digest(digest, known) and found is None:
                found = tenant
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def generate_key() -> str:
    """``gif_local_`` + 32 base32 characters (160 random bits)."""
    return "gif_local_" + base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=").lower()


def ensure_key(settings: Settings) -> str | None:
    """Create a key file with one fresh key when no key is configured; returns the new key."""
    if parse_keys(settings.api_keys) or (
        settings.key_file.is_file() and parse_keys(settings.key_file.read_text())
    ):
        return None
    key = generate_key()
    _write_private(
        settings.key_file, f"# gif-service API keys: tenant:key, one per line\n{DEFAULT_TENANT}:{key}\n"
    )
    return key


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


async def require_tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> str:
    """Dependency: the caller's tenant, or 401 with ``WWW-Authenticate: Bearer``; 429 with
    ``Retry-After`` when the tenant is over its request rate. (Taking the key through
    ``Security`` puts the bearer requirement on every route that needs a tenant in the OpenAPI.)"""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("missing API key: send `Authorization: Bearer <key>`", headers=challenge)
    tenant = request.app.state.services.keys.tenant_for(credentials.credentials)
    if tenant is None:
        raise Unauthenticated("invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    wait = request.app.state.services.limiter.wait_time(tenant)
    if wait > 0:
        raise RateLimited(
            f"request rate limit exceeded; retry in {wait:.2f} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    return tenant


async def require_admin(request: Request, tenant: Annotated[str, Security(require_tenant)]) -> str:
    """Dependency: a tenant with the admin scope (``GIF_ADMIN_TENANTS``), else 403 ``forbidden``."""
    if tenant not in request.app.state.services.settings.admins:
        raise Forbidden("this key lacks the admin scope (GIF_ADMIN_TENANTS) needed here")
    return tenant
