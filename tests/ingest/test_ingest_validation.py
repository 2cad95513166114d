"""The great-expectations checks, row by row, without a network or a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cart_recovery.ingest.validation import validate_batch
from cart_recovery.platforms import PolledRecord

END = datetime(2025, 11, 24, 12, tzinfo=UTC)


def _cart(record_id: str | None = "1", **facts) -> PolledRecord:
    values = {
        "updated_at": END - timedelta(hours=1),
        "created_at": END - timedelta(hours=2),
        "currency": "TRY",
        "total": "10.50",
        "email": "ayse@example.com",
        "phone": "+905321234567",
    }
    values.update(facts)
    return PolledRecord(entity="cart", record_id=record_id, payload={"id": record_id}, **values)


def test_each_broken_fact_is_named_and_good_rows_pass():
    records = [
        _cart("1"),
        _cart(None),
        _cart("3", currency="TL"),
        _cart("4", total="-1.00"),
        _cart("5", total="abc"),
        _cart("6", phone="0532 12"),
        _cart("7", email="ayse@"),
        _cart("8", updated_at=None),
        _cart("9", updated_at=END + timedelta(days=3), created_at=END),
        _cart("10", created_at=datetime(1970, 1, 1, tzinfo=UTC)),
        _cart("11", created_at=END, updated_at=END - timedelta(days=1)),
        _cart("12", currency=None, total=None),
        _cart("13", phone=None, email=None),
        # One cart in two versions (changed while its listing was paged): both are real.
        _cart("14", updated_at=END - timedelta(hours=1)),
        _cart("14", updated_at=END - timedelta(minutes=5), total="12.00"),
        # Two payloads claiming the same id and update time contradict each other. (Exact
        # repeats never get here: the load path drops them first, see test_polling.py.)
        _cart("15", total="10.50"),
        _cart("15", total="99.00"),
    ]
    verdict = validate_batch("cart", records, END, "TR")
    reasons = {record.record_id: found for record, found in verdict.bad}
    assert [r.record_id for r in verdict.good] == ["1", "13", "14", "14"]
    assert reasons[None] == ["record_id_present"]
    assert reasons["3"] == ["currency_iso_4217"]
    assert reasons["4"] == ["total_non_negative"]
    assert reasons["5"] == ["total_numeric"]
    assert reasons["6"] == ["phone_e164"]
    assert reasons["7"] == ["email_valid"]
    assert reasons["8"] == ["updated_at_present"]
    assert reasons["9"] == ["updated_at_not_in_future"]
    assert reasons["10"] == ["created_at_sane"]
    assert reasons["11"] == ["created_before_updated"]
    assert reasons["12"] == ["currency_present", "total_present"]
    assert reasons["15"] == ["version_unique"]
    assert [r.total for r, _ in verdict.bad if r.record_id == "15"] == ["10.50", "99.00"]
    assert verdict.failures["version_unique"] == 2


def test_products_need_no_currency_or_total():
    product = PolledRecord(entity="product", record_id="1", payload={}, updated_at=END)
    verdict = validate_batch("product", [product], END, "TR")
    assert verdict.good == [product] and not verdict.bad


def test_phone_numbers_are_read_in_the_shops_country():
    """A national number is fine (it used to be quarantined for not being E.164 already): it is
    read in the shop's country. What is no phone number anywhere is quarantined."""
    records = [
        _cart("1", phone="0532 123 45 67"),
        _cart("2", phone="07700 900456"),
        _cart("3", phone="+44 7700 900456"),
        _cart("4", phone="123"),
        _cart("5", phone="abc"),
        _cart("6", phone="+0123456789"),
    ]
    for country in ("TR", "GB"):
        verdict = validate_batch("cart", records, END, country)
        assert [r.record_id for r in verdict.good] == ["1", "2", "3"]
        assert {r.record_id: found for r, found in verdict.bad} == {
            "4": ["phone_e164"],
            "5": ["phone_e164"],
            "6": ["phone_e164"],
        }
