"""A shop's policies: what the conversation assistant may tell a customer, and nothing more.

The ``policy:`` section of a shop in the shops file (see :mod:`cart_recovery.shops` and README
"The shops file: policy"). Every value is data, not prose, so that a reply can say it in the
customer's language; amounts are in the shop's currency. The assistant never invents an answer:
what a policy does not say, it hands to the shop's team.

    policy:
      shipping: {carrier: Yurtiçi Kargo, cost: 89.90, free_over: 1500, days_min: 1, days_max: 3,
                 dispatch_cutoff: "14:00", international: false}
      returns: {days: 14, free: true, refund_days: 7}
      payment: {methods: [credit_card, debit_card, bank_transfer], installments_max: 6,
                installments_min_total: 500, secure_3d: true}
      support: {days: mon-fri, opens: "09:00", closes: "18:00", phone: "+90 212 555 01 23",
                email: destek@example.com}
      guest_checkout: true
      company: {legal_name: Anatolia Tekstil A.Ş., address: "...", tax_id: "1234567890",
                reviews_url: https://example.com/reviews}
      size_charts:
        apparel: {unit: cm, rows: [{size: S, chest: 90, waist: 76, length: 68,
                                    height_min: 160, height_max: 170, weight_min: 50, weight_max: 62}]}
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PAYMENT_METHODS = (
    "credit_card",
    "debit_card",
    "bank_transfer",
    "cash_on_delivery",
    "paypal",
    "apple_pay",
    "google_pay",
    "papara",
    "klarna",
)
DAY_RANGES = ("mon-fri", "mon-sat", "mon-sun")
_CLOCK = re.compile(r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShippingPolicy(_Strict):
    carrier: str | None = Field(default=None, description="The courier customers know, e.g. Yurtiçi Kargo.")
    cost: Decimal = Field(ge=0, description="Shipping cost of an order below free_over.")
    free_over: Decimal | None = Field(
        default=None, gt=0, description="Order value from which shipping is free; omit for none."
    )
    days_min: int = Field(ge=0, description="Fewest working days from order to door.")
    days_max: int = Field(ge=0, description="Most working days from order to door.")
    dispatch_cutoff: str | None = Field(
        default=None, description="Orders before this local time (HH:MM) leave the same day."
    )
    international: bool = Field(default=False, description="Whether the shop ships abroad.")

    @field_validator("dispatch_cutoff")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is not None and not _CLOCK.match(value):
            raise ValueError(f"dispatch_cutoff must be a 24-hour HH:MM time, got {value!r}")
        return value

    @model_validator(mode="after")
    def _days_ordered(self) -> ShippingPolicy:
        if self.days_max < self.days_min:
            raise ValueError(f"days_max ({self.days_max}) is below days_min ({self.days_min})")
        return self


class ReturnsPolicy(_Strict):
    days: int = Field(ge=0, description="Days after delivery within which an item may be returned.")
    free: bool = Field(description="Whether the return shipping is free for the customer.")
    refund_days: int = Field(ge=0, description="Working days from the return's arrival to the refund.")
    exchanges: bool = Field(default=True, description="Whether a size or colour exchange is offered.")


class PaymentPolicy(_Strict):
    methods: list[Literal[PAYMENT_METHODS]] = Field(min_length=1)  # type: ignore[valid-type]
    installments_max: int = Field(default=1, ge=1, le=24, description="1: no instalments.")
    installments_min_total: Decimal | None = Field(
        default=None, ge=0, description="Smallest order value that may be paid in instalments."
    )
    secure_3d: bool = Field(default=True, description="Card payments go through 3-D Secure.")


class SupportPolicy(_Strict):
    days: Literal[DAY_RANGES]  # type: ignore[valid-type]
    opens: str
    closes: str
    phone: str | None = None
    email: str | None = None

    @field_validator("opens", "closes")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"support hours must be 24-hour HH:MM times, got {value!r}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> SupportPolicy:
        if self.closes <= self.opens:
            raise ValueError(f"support closes ({self.closes}) before it opens ({self.opens})")
        return self


class Company(_Strict):
    legal_name: str
    address: str
    tax_id: str | None = None
    reviews_url: str | None = None


class SizeRow(_Strict):
    size: str
    chest: float | None = Field(default=None, gt=0)
    waist: float | None = Field(default=None, gt=0)
    hip: float | None = Field(default=None, gt=0)
    length: float | None = Field(default=None, gt=0)
    height_min: float | None = Field(default=None, gt=0, description="cm; with height_max, for a size advice")
    height_max: float | None = Field(default=None, gt=0)
    weight_min: float | None = Field(default=None, gt=0, description="kg; with weight_max, for a size advice")
    weight_max: float | None = Field(default=None, gt=0)


class SizeChart(_Strict):
    unit: Literal["cm", "in"] = "cm"
    rows: list[SizeRow] = Field(min_length=1)

    @field_validator("rows")
    @classmethod
    def _unique_sizes(cls, rows: list[SizeRow]) -> list[SizeRow]:
        sizes = [row.size for row in rows]
        duplicates = sorted({s for s in sizes if sizes.count(s) > 1})
        if duplicates:
            raise ValueError(f"size chart lists size(s) {', '.join(duplicates)} more than once")
        return rows


class ShopPolicy(_Strict):
    shipping: ShippingPolicy
    returns: ReturnsPolicy
    payment: PaymentPolicy
    support: SupportPolicy
    company: Company | None = None
    guest_checkout: bool | None = Field(
        default=None, description="Whether an order needs no account; omit when unsure (never claimed)."
    )
    size_charts: dict[str, SizeChart] = Field(
        default_factory=dict, description="By product type as the platform names it (e.g. apparel)."
    )
