"""Constants shared by the polling tests (imported by name: ``conftest`` is ambiguous when
several test folders run in one session)."""

from __future__ import annotations

from datetime import datetime

from cart_recovery.simulator.data import DEFAULT_REFERENCE_TIME

# The simulator's data ends at its reference time; a run whose interval ends there sees all of it.
INTERVAL_END: datetime = DEFAULT_REFERENCE_TIME
