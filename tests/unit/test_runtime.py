"""The run's time for every kind of run (cart_recovery.runtime.run_time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pendulum
import pytest

from cart_recovery.runtime import run_time

SLOT = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
QUEUED = SLOT + timedelta(seconds=7)


def _context(**values):
    run_after = values.pop("run_after", QUEUED)
    return {"dag_run": SimpleNamespace(run_after=run_after), **values}


@pytest.mark.parametrize(
    ("kind", "context", "expected"),
    [
        ("scheduled or backfill", _context(data_interval_end=SLOT, logical_date=SLOT), SLOT),
        ("manual with a logical date", _context(data_interval_end=None, logical_date=SLOT), SLOT),
        ("manual without a logical date", _context(data_interval_end=None, logical_date=None), QUEUED),
        ("asset-triggered (no such keys)", _context(), QUEUED),
    ],
)
def test_run_time_for_each_kind_of_run(kind, context, expected):
    moment = run_time(context)
    assert moment == expected, kind
    assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
    assert isinstance(moment, pendulum.DateTime)


def test_run_time_is_utc_whatever_the_zone_of_the_run():
    istanbul = timezone(timedelta(hours=3))
    assert run_time(_context(logical_date=datetime(2026, 12, 10, 15, 0, tzinfo=istanbul))) == SLOT
    assert run_time(_context(run_after="2026-12-10T15:00:00+03:00")) == SLOT


def test_a_context_without_a_run_says_what_to_pass():
    with pytest.raises(ValueError, match="get_current_context"):
        run_time({})
