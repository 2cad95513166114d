"""What a test does when something it needs is missing: skip with the reason, or fail in CI.

On a contributor's machine a missing browser or console script skips the test and says why
(``-ra`` prints every reason in the summary). In CI (``CI`` set, as ``.ci/run`` does) the same
gap fails the test instead, so a missing dependency never turns a check into a silent pass.
"""

from __future__ import annotations

import os

import pytest

STRICT_ENV = "CI"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """Skip the calling test with ``reason``; fail it instead when running in CI."""
    if strict():
        pytest.fail(
            f"{reason} (CI={os.environ[STRICT_ENV]}: a missing dependency fails in CI)", pytrace=False
        )
    pytest.skip(reason)
