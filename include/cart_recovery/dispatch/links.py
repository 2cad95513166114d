"""Signed click and unsubscribe links, served by the webhook service (``/r/<token>``, ``/u/<token>``).

A token is ``urlsafe_base64(plan_key + mac)`` without padding, where ``mac`` is the first 16 bytes
(128 bits) of HMAC-SHA256(``CART_RECOVERY_LINK_SECRET``, kind + NUL + plan_key). The kind is in the
MAC, so a click token is no unsubscribe token and the other way round. The token carries the
plan_key itself, so no table of tokens is needed and a link stays valid as long as the secret does;
nothing in it is secret (the plan_key names a cart and stage, not a person), it only cannot be
forged. The link's target is never in the token: ``/r/`` redirects to the ``cart_url`` the outbox
row holds, so the service is no open redirect.

Rotating the secret invalidates every link already sent (they answer 404): do it only when it leaked.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cart_recovery.errors import ConfigurationError

SECRET_ENV = "CART_RECOVERY_LINK_SECRET"
PUBLIC_URL_ENV = "CART_RECOVERY_PUBLIC_URL"

CLICK = "click"
UNSUBSCRIBE = "unsubscribe"
KINDS = (CLICK, UNSUBSCRIBE)
_PATHS = {CLICK: "r", UNSUBSCRIBE: "u"}

MAC_BYTES = 16
MIN_SECRET_CHARS = 16
# A plan_key is short; a longer token is refused before any decoding or hashing.
MAX_TOKEN_CHARS = 1024
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class LinkSigner:
    """The secret and the public base URL; :meth:`from_env` says what to set when one is missing."""

    secret: bytes = field(repr=False)
    public_url: str  # without a trailing slash

    @classmethod
    def from_env(cls) -> LinkSigner:
        return _signer(os.environ.get(SECRET_ENV, ""), os.environ.get(PUBLIC_URL_ENV, ""))

    def _mac(self, kind: str, plan_key: bytes) -> bytes:
        return hmac.new(self.secret, kind.encode() + b"\x00" + plan_key, hashlib.sha256).digest()[:MAC_BYTES]

    def token(self, kind: str, plan_key: str) -> str:
        _check_kind(kind)
        if not isinstance(plan_key, str) or not plan_key:
            raise ValueError(f"a link needs a plan_key, got {plan_key!r}")
        raw = plan_key.encode()
        return _encode(raw + self._mac(kind, raw))

    def url(self, kind: str, plan_key: str) -> str:
        return f"{self.public_url}/{_PATHS[kind]}/{self.token(kind, plan_key)}"

    def verify(self, kind: str, token: str) -> str | None:
        """The plan_key a genuine ``kind`` token carries; None for anything else (forged, altered,
        the other kind, not base64, too long), without saying which."""
        _check_kind(kind)
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if _encode(raw) != token:  # one spelling per token (no padding, no stray low bits)
            return None
        plan_key, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not plan_key or not hmac.compare_digest(mac, self._mac(kind, plan_key)):
            return None
        try:
            return plan_key.decode()
        except UnicodeDecodeError:
            return None


@functools.lru_cache(maxsize=8)
def _signer(secret: str, public_url: str) -> LinkSigner:
    """The signer for these settings, checked once (a message's links are signed per message)."""
    if not secret:
        raise ConfigurationError(
            f"{SECRET_ENV} is not set: set it to a long random string, e.g. the output of "
            '`python -c "import secrets; print(secrets.token_urlsafe(32))"`, the same for the '
            "Airflow workers and the webhook service"
        )
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigurationError(f"{SECRET_ENV} is too short: use at least {MIN_SECRET_CHARS} characters")
    public_url = public_url.strip()
    if not public_url:
        raise ConfigurationError(
            f"{PUBLIC_URL_ENV} is not set: set it to the webhook service's public address, "
            "e.g. https://hooks.example.com (the links in messages point there)"
        )
    parts = urlsplit(public_url)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{PUBLIC_URL_ENV} must be an absolute http(s) URL without query, got {public_url!r}"
        )
    return LinkSigner(secret=secret.encode(), public_url=public_url.rstrip("/"))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"link kind must be one of {', '.join(KINDS)}, got {kind!r}")


def click_url(plan_key: str) -> str:
    """``<public url>/r/<token>``: records the click and redirects to the outbox row's cart_url."""
    return LinkSigner.from_env().url(CLICK, plan_key)


def unsubscribe_url(plan_key: str) -> str:
    """``<public url>/u/<token>``: the email unsubscribe page (and RFC 8058 one-click POST target)."""
    return LinkSigner.from_env().url(UNSUBSCRIBE, plan_key)


def verify(kind: str, token: str) -> str | None:
    """The plan_key of a genuine token of ``kind`` (``click`` or ``unsubscribe``), else None."""
    return LinkSigner.from_env().verify(kind, token)
