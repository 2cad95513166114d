"""Webhook signatures: HMAC-SHA256 over the raw request body, compared in constant time.

- Shopify ``X-Shopify-Hmac-Sha256``, WooCommerce ``X-WC-Webhook-Signature`` and (unverified)
  Ideasoft: base64 of the digest.
- Meta (WhatsApp) ``X-Hub-Signature-256``: ``sha256=`` followed by the hex digest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def hmac_sha256(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def base64_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac_sha256(secret, body)).decode()


def meta_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac_sha256(secret, body).hex()


def verify_base64(secret: str, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    return hmac.compare_digest(base64_signature(secret, body).encode(), header.strip().encode())


def verify_meta(secret: str, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    # Hex case is not significant; the compared strings are ASCII so compare_digest accepts them.
    return hmac.compare_digest(meta_signature(secret, body).encode(), header.strip().lower().encode())
