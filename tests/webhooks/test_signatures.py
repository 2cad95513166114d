"""Signature helpers against fixed vectors (RFC 4231 test case 2) and independently computed ones."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from cart_recovery.webhooks import signatures

# RFC 4231, test case 2: HMAC-SHA256(key "Jefe", "what do ya want for nothing?").
RFC_KEY = "Jefe"
RFC_DATA = b"what do ya want for nothing?"
RFC_HEX = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
RFC_BASE64 = "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="


def test_fixed_vector_base64_and_meta():
    assert signatures.base64_signature(RFC_KEY, RFC_DATA) == RFC_BASE64
    assert signatures.meta_signature(RFC_KEY, RFC_DATA) == "sha256=" + RFC_HEX
    assert signatures.verify_base64(RFC_KEY, RFC_DATA, RFC_BASE64)
    assert signatures.verify_meta(RFC_KEY, RFC_DATA, "sha256=" + RFC_HEX)
    assert signatures.verify_meta(RFC_KEY, RFC_DATA, "sha256=" + RFC_HEX.upper())


@pytest.mark.parametrize(
    "body", [b"{}", '{"email":"ayşe@example.com","total_price":"129.90"}'.encode(), b"x" * 100_000]
)
def test_independent_vectors(body):
    secret = "shpss_0123456789abcdef"
    expected_b64 = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    expected_hex = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert signatures.verify_base64(secret, body, expected_b64)
    assert signatures.verify_meta(secret, body, f"sha256={expected_hex}")


@pytest.mark.parametrize("header", [None, "", "not-base64", RFC_BASE64[:-2], RFC_BASE64.lower(), "ÿÿÿ"])
def test_base64_rejects(header):
    assert not signatures.verify_base64(RFC_KEY, RFC_DATA, header)


@pytest.mark.parametrize(
    "header", [None, "", RFC_HEX, "sha1=" + RFC_HEX, "sha256=" + RFC_HEX[:-1] + "0", "sha256="]
)
def test_meta_rejects(header):
    assert not signatures.verify_meta(RFC_KEY, RFC_DATA, header)


def test_wrong_secret_or_body():
    good = signatures.base64_signature("secret", b'{"a":1}')
    assert not signatures.verify_base64("secret2", b'{"a":1}', good)
    assert not signatures.verify_base64("secret", b'{"a": 1}', good)  # the raw body, not the JSON value
