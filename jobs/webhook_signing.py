"""Standard Webhooks signatures (https://www.standardwebhooks.com/): the receiver's proof that a
delivery came from this service and was not altered or replayed.

The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; the signature is
``v1,`` + base64(HMAC-SHA256(key, content)) where the key is the bytes of the base64 text after
``whsec_`` in the tenant's secret. Several signatures are separated by spaces, which is how a
rotated secret keeps verifying during its grace period: receivers accept any one that matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh secret, ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One signature, ``v1,<base64>``, of ``body`` sent as ``message_id`` at ``timestamp`` (Unix s)."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets_: list[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one signature per secret, space-separated."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets_)


def headers(secrets_: list[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a delivery (and its content type)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, message_id, timestamp, body),
        "content-type": "application/json",
    }
