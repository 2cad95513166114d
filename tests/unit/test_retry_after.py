"""``Retry-After`` as shops really send it (cart_recovery.platforms.base._retry_after_seconds)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from cart_recovery.platforms.base import _retry_after_seconds

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-30", 0.0),  # in the past: retry now
        ("nan", None),  # says nothing: the caller's backoff applies (time.sleep(nan) raised before)
        ("NaN", None),
        ("soon", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("Thu, 03 Dec 2026 10:00:30 GMT", 30.0),
        ("Thu, 03 Dec 2026 10:00:30", 30.0),  # no zone: HTTP dates are GMT (this raised TypeError)
        ("Thu, 03 Dec 2026 13:00:30 +0300", 30.0),
        ("Thu, 03 Dec 2026 09:00:00 GMT", 0.0),
        ("Thu, 99 Dec 2026 10:00:30 GMT", None),
    ],
)
def test_retry_after(header, expected):
    assert _retry_after_seconds(header, now=NOW) == expected


@pytest.mark.parametrize("header", ["inf", "1e400", "99999999999"])
def test_huge_values_stay_huge_so_the_caller_gives_up_instead_of_sleeping(header):
    seconds = _retry_after_seconds(header, now=NOW)
    assert seconds is not None and (math.isinf(seconds) or seconds > 10**9)
