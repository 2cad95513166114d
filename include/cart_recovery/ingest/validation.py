"""great-expectations checks on each polled batch, mapped back to the rows that failed.

Each batch becomes a pandas DataFrame of the facts the clients extracted (id, update time,
currency, total, email, whether the phone reads as a number in the shop's country) and is
validated against one suite per entity, first with the
cheap ``BOOLEAN_ONLY`` result format and, only when that reports a failure, again with
``result_format=COMPLETE``, whose ``unexpected_index_list`` names the failing rows. A row fails
with every expectation it breaks; the expectation names below are the reasons stored in
``ops.quarantine``.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cart_recovery import phones
from cart_recovery.ingest.currencies import ISO_4217
from cart_recovery.platforms.base import PolledRecord

log = logging.getLogger(__name__)
# great-expectations logs every API it registers at INFO on import; keep task logs readable.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

EARLIEST_SANE = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
MAX_SECONDS_AHEAD = 86_400  # update times more than a day past the run's end are clock errors
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
DECIMAL = r"^-?[0-9]+(?:\.[0-9]+)?$"


@dataclass
class BatchVerdict:
    good: list[PolledRecord] = field(default_factory=list)
    bad: list[tuple[PolledRecord, list[str]]] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)  # reason -> failing rows


def _expectations(entity: str) -> list[tuple[str, object]]:
    """(reason, expectation) pairs for one entity."""
    import great_expectations.expectations as gxe

    checks: list[tuple[str, object]] = [
        ("record_id_present", gxe.ExpectColumnValuesToNotBeNull(column="record_id")),
        # One version per id and update time. Two versions of one record with different update
        # times are both real (a cart updated while its listing was being paged) and both load;
        # two different payloads claiming the same id and time contradict each other.
        (
            "version_unique",
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["record_id", "updated_epoch"]),
        ),
        ("updated_at_present", gxe.ExpectColumnValuesToNotBeNull(column="updated_epoch")),
        (
            "updated_at_sane",
            gxe.ExpectColumnValuesToBeBetween(column="updated_epoch", min_value=EARLIEST_SANE),
        ),
        (
            "updated_at_not_in_future",
            gxe.ExpectColumnValuesToBeBetween(column="updated_ahead_seconds", max_value=MAX_SECONDS_AHEAD),
        ),
        (
            "created_at_sane",
            gxe.ExpectColumnValuesToBeBetween(column="created_epoch", min_value=EARLIEST_SANE),
        ),
        (
            "created_before_updated",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="updated_epoch",
                column_B="created_epoch",
                or_equal=True,
                ignore_row_if="either_value_is_missing",
            ),
        ),
        ("currency_iso_4217", gxe.ExpectColumnValuesToBeInSet(column="currency", value_set=sorted(ISO_4217))),
        ("total_numeric", gxe.ExpectColumnValuesToMatchRegex(column="total_text", regex=DECIMAL)),
        ("total_non_negative", gxe.ExpectColumnValuesToBeBetween(column="total", min_value=0)),
        # The phone has an E.164 form, read in the shop's country (cart_recovery.phones):
        # "0532 123 45 67" passes in a Turkish shop, "07700 900456" in a British one, "0532 12"
        # nowhere. A record without a phone passes (null is not checked).
        ("phone_e164", gxe.ExpectColumnValuesToBeInSet(column="phone_readable", value_set=[True])),
        ("email_valid", gxe.ExpectColumnValuesToMatchRegex(column="email", regex=EMAIL)),
    ]
    if entity in ("cart", "order"):
        checks += [
            ("currency_present", gxe.ExpectColumnValuesToNotBeNull(column="currency")),
            ("total_present", gxe.ExpectColumnValuesToNotBeNull(column="total_text")),
        ]
    return checks


@functools.cache
def _validation(entity: str):
    """The entity's ValidationDefinition in an ephemeral GX context (built once per process)."""
    import great_expectations as gx

    context = _context()
    asset = context.data_sources.get("polled_batches").add_dataframe_asset(f"{entity}_batch")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole batch")
    suite = gx.ExpectationSuite(name=f"polled_{entity}")
    for reason, expectation in _expectations(entity):
        expectation.meta = {"reason": reason}
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"polled_{entity}", data=batch_definition, suite=suite)
    )
    return definition


def prepare(entities) -> None:
    """Build the suites of ``entities`` now (importing great-expectations), not at the first batch."""
    for entity in entities:
        _validation(entity)


@functools.cache
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no bars in task logs
    context.data_sources.add_pandas("polled_batches")
    return context


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _phone_readable(phone: str | None, country: str) -> bool | None:
    if phone is None or not str(phone).strip():
        return None
    return phones.to_e164(str(phone), country) is not None


def _frame(records: list[PolledRecord], interval_end: datetime, country: str):
    import pandas as pd

    end = interval_end.timestamp()
    rows = []
    for record in records:
        updated = _epoch(record.updated_at)
        rows.append(
            {
                "record_id": record.record_id,
                "updated_epoch": updated,
                "updated_ahead_seconds": updated - end if updated is not None else None,
                "created_epoch": _epoch(record.created_at),
                "currency": record.currency or None,
                "total_text": str(record.total) if record.total not in (None, "") else None,
                "total": _number(record.total),
                "email": record.email or None,
                "phone_readable": _phone_readable(record.phone, country),
            }
        )
    frame = pd.DataFrame.from_records(
        rows,
        columns=[
            "record_id",
            "updated_epoch",
            "updated_ahead_seconds",
            "created_epoch",
            "currency",
            "total_text",
            "total",
            "email",
            "phone_readable",
        ],
    )
    for column in ("updated_epoch", "updated_ahead_seconds", "created_epoch", "total"):
        frame[column] = frame[column].astype("float64")
    for column in ("record_id", "currency", "total_text", "email", "phone_readable"):
        frame[column] = frame[column].astype("object")
    return frame


def _rows(result) -> list[int]:
    indexes = (result.result or {}).get("unexpected_index_list") or []
    rows = []
    for index in indexes:
        if isinstance(index, dict):  # when index columns are named
            index = next(iter(index.values()))
        rows.append(int(index))
    return rows


def _run(entity: str, frame, result_format: str):
    """Run the entity's suite on ``frame``; a check that could not run must not wave rows through."""
    result = _validation(entity).run(
        batch_parameters={"dataframe": frame}, result_format={"result_format": result_format}
    )
    for outcome in result.results:
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"great-expectations check {_reason(outcome)} failed to run: "
                f"{outcome.exception_info.get('exception_message')}"
            )
    return result


def _reason(outcome) -> str:
    return (outcome.expectation_config.meta or {}).get("reason") or outcome.expectation_config.type


def validate_batch(
    entity: str, records: list[PolledRecord], interval_end: datetime, country: str
) -> BatchVerdict:
    """Split ``records`` into the ones to load and the ones to quarantine, with reasons.
    ``country``: the shop's, in which phone numbers without a country code are read.

    The suite runs on every batch. A ``BOOLEAN_ONLY`` run answers whether the batch is clean (the
    common case) at about half the cost of ``COMPLETE``, whose per-row index lists are only
    needed to name failing rows; only a batch with failures is validated again with ``COMPLETE``.
    """
    verdict = BatchVerdict()
    if not records:
        return verdict
    frame = _frame(records, interval_end, country)
    if _run(entity, frame, "BOOLEAN_ONLY").success:
        verdict.good = list(records)
        return verdict
    result = _run(entity, frame, "COMPLETE")
    reasons_by_row: dict[int, list[str]] = {}
    for outcome in result.results:
        if outcome.success:
            continue
        reason = _reason(outcome)
        rows = _rows(outcome)
        verdict.failures[reason] += len(rows)
        for row in rows:
            reasons_by_row.setdefault(row, []).append(reason)
    for row, record in enumerate(records):
        reasons = reasons_by_row.get(row)
        if reasons:
            verdict.bad.append((record, sorted(reasons)))
        else:
            verdict.good.append(record)
    return verdict
