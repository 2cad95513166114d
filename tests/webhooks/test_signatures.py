"""Signature helpers against references they did not compute: RFC 4231 test case 2 and vectors
computed once with openssl."""

from __future__ import annotations

import pytest
from webhook_helpers import b64_hmac, hex_hmac

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


# Computed once with another implementation, not with the formula under test:
#   printf '%s' "$BODY" | openssl dgst -sha256 -hmac shpss_0123456789abcdef -hex      (OpenSSL 3.0.19)
#   printf '%s' "$BODY" | openssl dgst -sha256 -hmac shpss_0123456789abcdef -binary | base64
OPENSSL_SECRET = "shpss_0123456789abcdef"
OPENSSL_VECTORS = [
    (
        b"{}",
        "c7a3be68250cd1be03d14f77183517894e04c4f4e52c35ed9b63dfd90118fcea",
        "x6O+aCUM0b4D0U93GDUXiU4ExPTlLDXtm2Pf2QEY/Oo=",
    ),
    (
        '{"email":"ayşe@example.com","total_price":"129.90"}'.encode(),  # UTF-8 bytes, as sent
        "ed408408f558fc7e25397d74e4ef38d7a116dcf849820e55f8486f6c0778edc9",
        "7UCECPVY/H4lOX105O8416EW3PhJgg5V+EhvbAd47ck=",
    ),
    (
        b"x" * 100_000,
        "f1588948378bf4e4d4627e7b4599913aef43682cc5592abe33731d801ad1e545",
        "8ViJSDeL9OTUYn57RZmROu9DaCzFWSq+M3MdgBrR5UU=",
    ),
]


@pytest.mark.parametrize(
    ("body", "expected_hex", "expected_b64"), OPENSSL_VECTORS, ids=["empty", "utf8", "100k"]
)
def test_vectors_computed_by_openssl(body, expected_hex, expected_b64):
    # The tests' own signing helpers (webhook_helpers) are held to the same references.
    assert b64_hmac(OPENSSL_SECRET, body) == expected_b64
    assert hex_hmac(OPENSSL_SECRET, body) == f"sha256={expected_hex}"
    assert signatures.base64_signature(OPENSSL_SECRET, body) == expected_b64
    assert signatures.meta_signature(OPENSSL_SECRET, body) == f"sha256={expected_hex}"
    assert signatures.verify_base64(OPENSSL_SECRET, body, expected_b64)
    assert signatures.verify_meta(OPENSSL_SECRET, body, f"sha256={expected_hex}")


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
