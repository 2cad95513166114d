"""The dispatcher's settings: defaults that suit a shop, each overridable by an environment variable.

| env (CART_RECOVERY_...) | default |
|---|---|
| EXPIRE_AFTER_HOURS | 6: later than this past its due time, a row is `expired`, not sent |
| FREQUENCY_CAP_HOURS | 16: one message per person per window (one episode's stages exempt) |
| STAGE_GAP_MINUTES | 60: an episode's stages held back together go out this far apart |
| REPLY_QUIET_HOURS | 12: an episode pauses until the person's conversation is this quiet |
| QUIET_HOURS | 21:00-09:00 in the customer's time zone (or `off`): deferred, never dropped |
| SHOPIFY_RECOVERY_MINUTES | 10: Shopify's recovery URL works this long after abandonment |
| COUPON_HOURS | 48: coupon validity, and always before the next sale (the plan's cap) |
| SENDING_LEASE_MINUTES | 10: a row still `sending` after this becomes `unknown` |
| DISPATCH_LOOKBACK_DAYS | 7: older due plan rows are left alone |
| DISPATCH_CHUNK | rows per claim; unset: one second of sends at the WhatsApp limit, 200 to 2,000 |
| DISPATCH_MAX_ATTEMPTS | 5 refusals before the provider (429/5xx), then `failed` |
| SEND_RETRY_DELAY_SECONDS | 30: a failed send task is retried (twice) after this (read at parse) |
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import time, timedelta

from cart_recovery.errors import ConfigurationError


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigurationError(f"{name} must be a number >= 0, got {raw!r}")
    return value


def _quiet_hours(raw: str) -> tuple[time, time] | None:
    """``"21:00-09:00"`` -> (21:00, 09:00); ``"off"`` -> None."""
    if raw.strip().lower() in ("off", "none", ""):
        return None
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", raw)
    if not match:
        raise ConfigurationError(f"CART_RECOVERY_QUIET_HOURS must look like 21:00-09:00 or off, got {raw!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    try:
        return time(h1, m1), time(h2, m2)
    except ValueError as exc:
        raise ConfigurationError(f"CART_RECOVERY_QUIET_HOURS {raw!r}: {exc}") from exc


# A chunk (one claim transaction) holds one second of sends at the WhatsApp limit, at least
# MIN_CHUNK_ROWS and at most MAX_CHUNK_ROWS rows: each claim costs PostgreSQL a fixed share (the
# raw rows that landed since the last build are read for every chunk), so at 1,000 messages per
# second chunks of 200 would spend most of the database's time on it. A dispatcher killed
# mid-batch leaves at most two chunks ``sending`` (then ``unknown``): a few seconds of sends.
MIN_CHUNK_ROWS = 200
MAX_CHUNK_ROWS = 2000
CHUNK_SECONDS = 1.0


def _chunk_size() -> int | None:
    """CART_RECOVERY_DISPATCH_CHUNK; None (rows sized by the rate) when unset."""
    if not os.environ.get("CART_RECOVERY_DISPATCH_CHUNK", "").strip():
        return None
    return max(1, int(_number("CART_RECOVERY_DISPATCH_CHUNK", 0)))


@dataclass(frozen=True)
class DispatchSettings:
    expire_after: timedelta = timedelta(hours=6)
    frequency_cap: timedelta = timedelta(hours=16)
    stage_gap: timedelta = timedelta(minutes=60)
    reply_quiet: timedelta = timedelta(hours=12)
    quiet_hours: tuple[time, time] | None = (time(21, 0), time(9, 0))
    shopify_recovery_delay: timedelta = timedelta(minutes=10)
    coupon_validity: timedelta = timedelta(hours=48)
    lease: timedelta = timedelta(minutes=10)
    lookback: timedelta = timedelta(days=7)
    chunk_size: int | None = None  # None: ``chunk_rows(rate)``, one second of sends, at least 200
    max_attempts: int = 5
    retry_delay: timedelta = field(default=timedelta(minutes=1))

    @classmethod
    def from_env(cls) -> DispatchSettings:
        return cls(
            expire_after=timedelta(hours=_number("CART_RECOVERY_EXPIRE_AFTER_HOURS", 6)),
            frequency_cap=timedelta(hours=_number("CART_RECOVERY_FREQUENCY_CAP_HOURS", 16)),
            stage_gap=timedelta(minutes=_number("CART_RECOVERY_STAGE_GAP_MINUTES", 60)),
            reply_quiet=timedelta(hours=_number("CART_RECOVERY_REPLY_QUIET_HOURS", 12)),
            quiet_hours=_quiet_hours(os.environ.get("CART_RECOVERY_QUIET_HOURS", "21:00-09:00")),
            shopify_recovery_delay=timedelta(minutes=_number("CART_RECOVERY_SHOPIFY_RECOVERY_MINUTES", 10)),
            coupon_validity=timedelta(hours=_number("CART_RECOVERY_COUPON_HOURS", 48)),
            lease=timedelta(minutes=_number("CART_RECOVERY_SENDING_LEASE_MINUTES", 10)),
            lookback=timedelta(days=_number("CART_RECOVERY_DISPATCH_LOOKBACK_DAYS", 7)),
            chunk_size=_chunk_size(),
            max_attempts=max(1, int(_number("CART_RECOVERY_DISPATCH_MAX_ATTEMPTS", 5))),
        )

    def chunk_rows(self, messages_per_second: float | None = None) -> int:
        """Rows per claim: ``chunk_size`` when set, else one second of sends at the limit (when
        known), at least ``MIN_CHUNK_ROWS`` and at most ``MAX_CHUNK_ROWS``."""
        if self.chunk_size is not None:
            return self.chunk_size
        wanted = math.ceil((messages_per_second or 0) * CHUNK_SECONDS)
        return min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, wanted))


def send_retry_delay() -> timedelta:
    """How long Airflow waits before it retries a stage's send task (a worker lost mid-batch):
    the stage DAGs read it when they are parsed."""
    return timedelta(seconds=_number("CART_RECOVERY_SEND_RETRY_DELAY_SECONDS", 30))
