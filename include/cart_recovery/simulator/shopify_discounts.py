"""Fake Shopify discount codes: ``discountCodeBasicCreate``, ``discountCodeFreeShippingCreate`` and
``codeDiscountNodeByCode`` of the Admin GraphQL API (2024-10).

Inputs are read from variables (``discountCodeBasicCreate(basicCodeDiscount: $input)``), as the
project's client sends them. A variable is type-checked against the 2024-10 input types below, so a
client that sends a field the version does not define (``context`` is 2025-01 and later) gets the
``INVALID_VARIABLE`` error Shopify answers; business rules answer ``userErrors`` with Shopify's
field paths, codes and messages (a code already in use anywhere in the shop: ``TAKEN``). Without
the ``write_discounts`` scope (``Knobs.read_only_keys``) a mutation answers ``ACCESS_DENIED``.
Created discounts land in the shop's ``CouponBook`` (``coupons.py``), where orders redeem them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cart_recovery.simulator.coupons import CouponBook, SimCoupon
from cart_recovery.simulator.data import ShopData, iso
from cart_recovery.simulator.state import SimulatorState

ROOT_FIELD = re.compile(
    r"\b(discountCodeBasicCreate|discountCodeFreeShippingCreate|codeDiscountNodeByCode)\s*\("
)
_ARGUMENT = re.compile(r"(\w+)\s*:\s*(\$\w+|\"(?:[^\"\\]|\\.)*\")")
_TAKEN = "Code must be unique. Please try a different code."
_CUSTOMER_GID = re.compile(r"^gid://shopify/Customer/(\d+)$")

# name -> (argument, input type, payload kind)
_MUTATIONS = {
    "discountCodeBasicCreate": ("basicCodeDiscount", "DiscountCodeBasicInput", "percentage"),
    "discountCodeFreeShippingCreate": (
        "freeShippingCodeDiscount",
        "DiscountCodeFreeShippingInput",
        "free_shipping",
    ),
}
_COMMON = {
    "appliesOncePerCustomer": "Boolean",
    "code": "String",
    "combinesWith": "DiscountCombinesWithInput",
    "customerSelection": "DiscountCustomerSelectionInput",
    "endsAt": "DateTime",
    "minimumRequirement": "*",
    "recurringCycleLimit": "Int",
    "startsAt": "DateTime",
    "title": "String",
    "usageLimit": "Int",
}
# The 2024-10 input types the discount mutations take; "*" is accepted as sent (not used here).
INPUT_TYPES: dict[str, dict[str, str]] = {
    "DiscountCodeBasicInput": {**_COMMON, "customerGets": "DiscountCustomerGetsInput"},
    "DiscountCodeFreeShippingInput": {
        **_COMMON,
        "appliesOnOneTimePurchase": "Boolean",
        "appliesOnSubscription": "Boolean",
        "destination": "DiscountShippingDestinationSelectionInput",
        "maximumShippingPrice": "Decimal",
    },
    "DiscountCombinesWithInput": {
        "productDiscounts": "Boolean",
        "orderDiscounts": "Boolean",
        "shippingDiscounts": "Boolean",
    },
    "DiscountCustomerSelectionInput": {
        "all": "Boolean",
        "customers": "DiscountCustomersInput",
        "customerSegments": "*",
    },
    "DiscountCustomersInput": {"add": "[ID]", "remove": "[ID]"},
    "DiscountCustomerGetsInput": {
        "value": "DiscountCustomerGetsValueInput",
        "items": "DiscountItemsInput",
        "appliesOnOneTimePurchase": "Boolean",
        "appliesOnSubscription": "Boolean",
    },
    "DiscountCustomerGetsValueInput": {
        "percentage": "Float",
        "discountAmount": "*",
        "discountOnQuantity": "*",
    },
    "DiscountItemsInput": {"all": "Boolean", "products": "*", "collections": "*"},
    "DiscountShippingDestinationSelectionInput": {"all": "Boolean", "countries": "*"},
}


def gid(kind: str, number: int) -> str:
    return f"gid://shopify/{kind}/{number}"


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _scalar_ok(kind: str, value: Any) -> bool:
    if kind == "Boolean":
        return isinstance(value, bool)
    if kind in ("String", "ID"):
        return isinstance(value, str)
    if kind == "Int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "Float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "DateTime":
        return isinstance(value, str) and _parse_time(value) is not None
    if kind == "Decimal":
        try:
            Decimal(str(value))
        except InvalidOperation:
            return False
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    return True


def type_problems(type_name: str, value: Any, path: list) -> list[dict]:
    """GraphQL's variable coercion: undefined fields and wrong scalar types, with their paths."""
    if value is None or type_name == "*":
        return []
    if type_name.startswith("["):
        inner = type_name[1:-1]
        if not isinstance(value, list):
            value = [value]  # GraphQL coerces a single value to a list
        return [p for n, item in enumerate(value) for p in type_problems(inner, item, [*path, n])]
    fields = INPUT_TYPES.get(type_name)
    if fields is None:
        if _scalar_ok(type_name, value):
            return []
        return [{"path": path, "explanation": f"Could not coerce value {value!r} to {type_name}"}]
    if not isinstance(value, dict):
        return [{"path": path, "explanation": f"Expected value to be an object for {type_name}"}]
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append({"path": [*path, key], "explanation": f"Field is not defined on {type_name}"})
        else:
            problems.extend(type_problems(fields[key], item, [*path, key]))
    return problems


def _user_error(argument: str, field: list[str], code: str, message: str) -> dict:
    return {"field": [argument, *field], "message": message, "code": code, "extraInfo": None}


def _validate(
    argument: str, kind: str, data: ShopData, book: CouponBook, payload: dict
) -> tuple[list[dict], dict]:
    """Shopify's business rules; returns (userErrors, the parsed terms)."""
    errors: list[dict] = []

    def error(field: list[str], code: str, message: str) -> None:
        errors.append(_user_error(argument, field, code, message))

    title = (payload.get("title") or "").strip()
    if not title:
        error(["title"], "BLANK", "Title can't be blank")
    code = payload.get("code") or ""
    if not code.strip():
        error(["code"], "BLANK", "Code can't be blank")
    elif len(code) > 255:
        error(["code"], "TOO_LONG", "Code is too long (maximum is 255 characters)")
    elif "\n" in code or "\r" in code:
        error(["code"], "INVALID", "Code cannot contain newline characters.")
    elif book.get(code) is not None:
        error(["code"], "TAKEN", _TAKEN)
    starts_at = _parse_time(payload["startsAt"]) if payload.get("startsAt") else None
    ends_at = _parse_time(payload["endsAt"]) if payload.get("endsAt") else None
    if starts_at is None:
        error(["startsAt"], "BLANK", "Starts at can't be blank")
    elif ends_at is not None and ends_at <= starts_at:
        error(["endsAt"], "END_DATE_BEFORE_START_DATE", "Ends at needs to be after starts_at")
    usage_limit = payload.get("usageLimit")
    if usage_limit is not None and usage_limit < 1:
        error(["usageLimit"], "GREATER_THAN", "Usage limit must be greater than 0")

    selection = payload.get("customerSelection")
    customer_ids: list[int] = []
    if not selection:
        error(["customerSelection"], "BLANK", "Customer selection can't be blank")
    else:
        added = (selection.get("customers") or {}).get("add") or []
        if selection.get("all") and added:
            error(["customerSelection"], "CONFLICT", "Customer selection can't be all customers and a list")
        known = {c.id for c in data.customers}
        for n, customer_gid in enumerate(added):
            match = _CUSTOMER_GID.match(customer_gid)
            if match is None or int(match.group(1)) not in known:
                error(["customerSelection", "customers", "add", str(n)], "INVALID", "Customer does not exist")
            else:
                customer_ids.append(int(match.group(1)))
        if not selection.get("all") and not added and not selection.get("customerSegments"):
            error(["customerSelection"], "BLANK", "Customer selection can't be blank")

    pct = Decimal("0")
    if kind == "percentage":
        gets = payload.get("customerGets")
        if not gets:
            error(["customerGets"], "BLANK", "Customer gets can't be blank")
        else:
            percentage = (gets.get("value") or {}).get("percentage")
            if percentage is None:
                error(["customerGets", "value"], "BLANK", "Value can't be blank")
            elif not 0 < percentage <= 1:
                error(
                    ["customerGets", "value", "percentage"],
                    "VALUE_OUTSIDE_RANGE",
                    "Value must be between 0.0 and 1.0",
                )
            else:
                pct = (Decimal(str(percentage)) * 100).quantize(Decimal("0.01"))
            if not (gets.get("items") or {}).get("all") and not (gets.get("items") or {}).get("products"):
                error(["customerGets", "items"], "BLANK", "Items can't be blank")
    elif not payload.get("destination"):
        error(["destination"], "BLANK", "Destination can't be blank")
    terms = {
        "code": code,
        "title": title,
        "pct": pct,
        "starts_at": starts_at,
        "ends_at": ends_at,
        "usage_limit": usage_limit,
        "customer_ids": tuple(customer_ids),
    }
    return errors, terms


def node(coupon: SimCoupon, now: datetime) -> dict:
    """A ``DiscountCodeNode`` with every field the project reads (the selection set is not applied)."""
    if coupon.starts_at and now < coupon.starts_at:
        status = "SCHEDULED"
    elif coupon.ends_at and now >= coupon.ends_at:
        status = "EXPIRED"
    else:
        status = "ACTIVE"
    if coupon.customer_ids:
        selection = {
            "__typename": "DiscountCustomers",
            "customers": [{"id": gid("Customer", n)} for n in coupon.customer_ids],
        }
    else:
        selection = {"__typename": "DiscountCustomerAll", "allCustomers": True}
    combines = coupon.request.get("combinesWith") or {}
    discount: dict[str, Any] = {
        "title": coupon.title,
        "status": status,
        "createdAt": iso(coupon.created_at),
        "startsAt": iso(coupon.starts_at),
        "endsAt": iso(coupon.ends_at),
        "usageLimit": coupon.usage_limit,
        "appliesOncePerCustomer": coupon.usage_limit_per_customer == 1,
        "asyncUsageCount": coupon.usage_count,
        "codesCount": {"count": 1, "precision": "EXACT"},
        "codes": {
            "nodes": [
                {
                    "id": gid("DiscountRedeemCode", coupon.id),
                    "code": coupon.code,
                    "asyncUsageCount": coupon.usage_count,
                }
            ]
        },
        "customerSelection": selection,
        "combinesWith": {
            "productDiscounts": bool(combines.get("productDiscounts")),
            "orderDiscounts": bool(combines.get("orderDiscounts")),
            "shippingDiscounts": bool(combines.get("shippingDiscounts")),
        },
    }
    if coupon.kind == "percentage":
        discount.update(
            __typename="DiscountCodeBasic",
            customerGets={
                "value": {"__typename": "DiscountPercentage", "percentage": float(coupon.pct / 100)},
                "items": {"__typename": "AllDiscountItems", "allItems": True},
            },
        )
    else:
        discount.update(
            __typename="DiscountCodeFreeShipping",
            destinationSelection={"__typename": "DiscountCountryAll", "allCountries": True},
            maximumShippingPrice=None,
        )
    return {"id": gid("DiscountCodeNode", coupon.id), "codeDiscount": discount}


def _arguments(query_tail: str, variables: dict) -> dict[str, Any]:
    """The root field's arguments (``query_tail`` starts after its opening parenthesis):
    ``$variables`` resolved, inline strings decoded."""
    depth, end = 1, len(query_tail)
    for n, char in enumerate(query_tail):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            end = n
            break
    args = {}
    for name, raw in _ARGUMENT.findall(query_tail[:end]):
        args[name] = variables.get(raw[1:]) if raw.startswith("$") else raw[1:-1].replace('\\"', '"')
    return args


def answer(state: SimulatorState, data: ShopData, field_name: str, query_tail: str, variables: dict) -> dict:
    """The GraphQL response body for one discount operation."""
    now = datetime.now(UTC)  # the fake models a live server: statuses follow the wall clock
    book = state.coupon_book(data.shop.id)
    args = _arguments(query_tail, variables)
    if field_name == "codeDiscountNodeByCode":
        code = args.get("code")
        if not isinstance(code, str):
            return {"errors": [{"message": "Argument 'code' on Field 'codeDiscountNodeByCode' is required"}]}
        coupon = book.get(code)
        return {"data": {field_name: node(coupon, now) if coupon else None}}

    argument, input_type, kind = _MUTATIONS[field_name]
    if state.knobs.read_only_keys:
        required = "`write_discounts` access scope."
        return {
            "errors": [
                {
                    "message": f"Access denied for {field_name} field. Required access: {required}",
                    "path": [field_name],
                    "extensions": {
                        "code": "ACCESS_DENIED",
                        "documentation": "https://shopify.dev/api/usage/access-scopes",
                        "requiredAccess": required,
                    },
                }
            ],
            "data": {field_name: None},
        }
    payload = args.get(argument)
    problems = (
        type_problems(input_type, payload, [])
        if isinstance(payload, dict)
        else [{"path": [], "explanation": "Expected value to not be null"}]
    )
    if problems:
        where = ".".join(str(p) for p in problems[0]["path"])
        return {
            "errors": [
                {
                    "message": f"Variable ${argument} of type {input_type}! was provided invalid value"
                    + (f" for {where}" if where else "")
                    + f" ({problems[0]['explanation']})",
                    "extensions": {"code": "INVALID_VARIABLE", "value": payload, "problems": problems},
                }
            ]
        }
    errors, terms = _validate(argument, kind, data, book, payload)
    coupon = None
    if not errors:
        coupon = book.add(
            lambda number: SimCoupon(
                id=number,
                code=terms["code"],
                kind=kind,
                pct=terms["pct"],
                free_shipping=kind == "free_shipping",
                starts_at=terms["starts_at"],
                ends_at=terms["ends_at"],
                usage_limit=terms["usage_limit"],
                usage_limit_per_customer=1 if payload.get("appliesOncePerCustomer") else None,
                customer_ids=terms["customer_ids"],
                title=terms["title"],
                created_at=now,
                request=payload,
            )
        )
        if coupon is None:  # created by a concurrent request since the check
            errors = [_user_error(argument, ["code"], "TAKEN", _TAKEN)]
    return {
        "data": {
            field_name: {
                "codeDiscountNode": node(coupon, now) if coupon else None,
                "userErrors": errors,
            }
        }
    }
